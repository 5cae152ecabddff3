"""meshscope relay: event envelope, topic matching, routing, mesh links and flow records."""
