"""meshscope dashboard: the live world map, its JSON API, the live websocket and SQL over flow history."""
