// Activity page: /activity.html?id=ID — route on a map, summary, splits,
// pace and elevation charts, GPX download (fetched with the bearer header,
// saved through a blob URL).

import { api, ms, el, fmtDistance, fmtDuration, fmtPace, fmtDate, renderHeader, registerServiceWorker } from './api.js';
import { createMap } from './map.js';
import { lineChart } from './charts.js';

const $ = (id) => document.getElementById(id);
const id = new URLSearchParams(location.search).get('id');

function haversine(a, b) {
  const R = 6371008.8, rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad, dLng = (b.lng - a.lng) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLng / 2) ** 2;
  return 2 * R * Math.asin(Math.sqrt(h));
}

async function load() {
  const [a, route] = await Promise.all([api(`/v1/activities/${id}`), api(`/v1/activities/${id}/route?format=json`)]);
  $('title').textContent = `${a.type} · ${a.state === 'COMPLETE' ? 'finished' : a.state.toLowerCase()}`;
  $('when').textContent = `${fmtDate(a.started_at)}${a.finished_at ? ' – ' + fmtDate(a.finished_at) : ''}`;
  const s = a.stats;
  $('stats').replaceChildren(...[
    ['Distance', fmtDistance(s.distance_m)], ['Moving time', fmtDuration(s.moving_time_s)],
    ['Elapsed', fmtDuration(s.elapsed_time_s)], ['Pace', fmtPace(s.avg_pace_s_per_km)],
    ['Elevation gain', `${Math.round(s.elevation_gain_m || 0)} m`], ['Calories', `${Math.round(s.calories_kcal || 0)} kcal`],
  ].map(([k, v]) => el('div', {}, el('span', { class: 'muted' }, k), el('b', {}, v))));
  if (a.state === 'STARTED' || a.state === 'PAUSED') {
    const w = $('watch'); w.href = `/watch.html?activity=${a.id}`; w.hidden = false;
  }

  const pts = route.points.map((p) => ({ ...p, ts: ms(p.ts) }));
  const map = createMap('map');
  if (pts.length) {
    const line = L.polyline(pts.map((p) => [p.lat, p.lng]), { color: '#e4572e', weight: 4 }).addTo(map);
    L.circleMarker([pts[0].lat, pts[0].lng], { radius: 6, color: '#067647' }).addTo(map);
    L.circleMarker([pts.at(-1).lat, pts.at(-1).lng], { radius: 6, color: '#1d2430' }).addTo(map);
    map.fitBounds(line.getBounds(), { padding: [20, 20], maxZoom: 17 });
  }

  $('splits').querySelector('tbody').replaceChildren(...a.splits.map((sp) =>
    el('tr', {}, el('td', {}, sp.km), el('td', {}, fmtDuration(sp.time_s)), el('td', {}, fmtPace(sp.pace_s_per_km)))));

  // Cumulative distance along the raw route, pace over a ~30 s window.
  const dist = [0];
  for (let i = 1; i < pts.length; i++) dist.push(dist[i - 1] + haversine(pts[i - 1], pts[i]));
  const pace = pts.map((p, i) => {
    let j = i;
    while (j > 0 && p.ts - pts[j].ts < 30000) j--;
    const d = dist[i] - dist[j], t = (p.ts - pts[j].ts) / 1000;
    return d > 5 ? Math.min(1800, t / (d / 1000)) : NaN;
  });
  const km = (x) => (x / 1000).toFixed(1) + ' km';
  lineChart($('pace-chart'), dist, pace, { xLabel: km, yLabel: (y) => fmtPace(y), invert: true });
  lineChart($('elevation-chart'), dist, pts.map((p) => (p.alt ?? NaN)), { xLabel: km, yLabel: (y) => `${Math.round(y)} m` });

  $('gpx').addEventListener('click', downloadGpx);
}

async function downloadGpx() {
  try {
    const res = await api(`/v1/activities/${id}/route?format=gpx`, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = el('a', { href: url, download: `trailcast-${id}.gpx` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { $('error').textContent = e.message; }
}

renderHeader();
registerServiceWorker();
if (!id) $('error').textContent = 'No activity given (?id=ID).';
else load().catch((e) => { $('error').textContent = e.status === 404 ? 'No such activity (or not yours to see).' : e.message; });
