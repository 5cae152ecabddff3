// meshscope dashboard: geometry. Great circles bent a little to one side, so the two directions of
// a pair part (the bend follows a x b, which flips with the direction), and cut where they cross
// the antimeridian, so a line that leaves the map on one side comes back whole on the other.
"use strict";

const DEG = Math.PI / 180;

function toVec(lat, lon) {
  const p = lat * DEG, l = lon * DEG;
  return [Math.cos(p) * Math.cos(l), Math.cos(p) * Math.sin(l), Math.sin(p)];
}

function toLatLon(v) {
  const n = Math.hypot(v[0], v[1], v[2]);
  return [Math.asin(v[2] / n) / DEG, Math.atan2(v[1], v[0]) / DEG];
}

/** Points along the great circle a -> b, lifted by `bend` (radians at the middle) to the left. */
function arcPoints(a, b, steps = 48, bend = 0.045) {
  const va = toVec(a.lat, a.lon), vb = toVec(b.lat, b.lon);
  const dot = Math.min(1, Math.max(-1, va[0] * vb[0] + va[1] * vb[1] + va[2] * vb[2]));
  const omega = Math.acos(dot) || 1e-9;
  const normal = [va[1] * vb[2] - va[2] * vb[1], va[2] * vb[0] - va[0] * vb[2], va[0] * vb[1] - va[1] * vb[0]];
  const nn = Math.hypot(...normal) || 1;
  const lats = [], lons = [];
  for (let i = 0; i <= steps; i++) {
    const t = i / steps;
    const s1 = Math.sin((1 - t) * omega) / Math.sin(omega), s2 = Math.sin(t * omega) / Math.sin(omega);
    const lift = bend * Math.sin(Math.PI * t);
    const [lat, lon] = toLatLon([0, 1, 2].map((k) => s1 * va[k] + s2 * vb[k] + (lift * normal[k]) / nn));
    lats.push(lat);
    lons.push(lon);
  }
  return { lats, lons };
}

/**
 * Cut a polyline where consecutive longitudes jump by more than 180 degrees (it crossed the
 * antimeridian): each side runs on to ±180 at the crossing's latitude, with a null (a gap for
 * plotly) between. `index` maps each output point to its input point (null at the gap).
 */
function splitAntimeridian(lats, lons) {
  const out = { lats: [], lons: [], index: [] };
  for (let i = 0; i < lats.length; i++) {
    if (i > 0 && Math.abs(lons[i] - lons[i - 1]) > 180) {
      const from = lons[i - 1], to = lons[i];
      const edge = from > 0 ? 180 : -180;
      const unwrapped = to + (from > 0 ? 360 : -360);
      const share = (edge - from) / (unwrapped - from || 1);
      const lat = lats[i - 1] + share * (lats[i] - lats[i - 1]);
      out.lats.push(lat, null, lat);
      out.lons.push(edge, null, -edge);
      out.index.push(i - 1, null, i);
    }
    out.lats.push(lats[i]);
    out.lons.push(lons[i]);
    out.index.push(i);
  }
  return out;
}

/** A drawable great-circle arc from a to b: {lats, lons} with gaps at the antimeridian. */
function arc(a, b, bend) {
  const g = arcPoints(a, b, 48, bend);
  const cut = splitAntimeridian(g.lats, g.lons);
  return { lats: cut.lats, lons: cut.lons, raw: g };
}

/** Initial bearing in degrees (0 north, 90 east) from point 1 to point 2. */
function bearing(lat1, lon1, lat2, lon2) {
  const y = Math.sin((lon2 - lon1) * DEG) * Math.cos(lat2 * DEG);
  const x = Math.cos(lat1 * DEG) * Math.sin(lat2 * DEG) - Math.sin(lat1 * DEG) * Math.cos(lat2 * DEG) * Math.cos((lon2 - lon1) * DEG);
  return (Math.atan2(y, x) / DEG + 360) % 360;
}

/** The point a share of the way along a raw arc, and the bearing there. */
function along(raw, share) {
  const i = Math.min(raw.lats.length - 2, Math.max(0, Math.floor((raw.lats.length - 1) * share)));
  return {
    lat: raw.lats[i], lon: raw.lons[i],
    angle: bearing(raw.lats[i], raw.lons[i], raw.lats[i + 1], raw.lons[i + 1]),
  };
}
