"""meshscope collector: flow records from the Redis stream into ClickHouse, and live edge stats."""
