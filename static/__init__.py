"""The dashboard's browser side: HTML, JS, CSS and the world topojson (served by the dashboard)."""
