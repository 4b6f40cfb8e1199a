// Activity page: /activity.html?id=ID — who and what, route on a map,
// summary, splits (the last partial one marked), step records of a course,
// pace and elevation charts (pace breaks across pauses rather than
// spiking), GPX and TCX downloads (fetched with the bearer header, saved
// through a blob URL), and for the athlete: live share links.

import { api, me, ms, el, human, fmtDistance, fmtDuration, fmtPace, fmtDate, renderHeader, registerServiceWorker } from './api.js';
import { createMap } from './map.js';
import { lineChart } from './charts.js';
import { metres } from './coach.js';

const $ = (id) => document.getElementById(id);
const id = new URLSearchParams(location.search).get('id');
const TYPE_NAMES = { RUN: 'Run', RIDE: 'Ride', WALK: 'Walk', HIKE: 'Hike', SKI: 'Ski', SWIM: 'Swim', OTHER: 'Activity' };
const STEP_NAMES = { warm_up: 'Warm-up', walk: 'Walk', jog: 'Jog', run: 'Run', rest: 'Rest', cool_down: 'Cool-down' };
/** A gap between fixes longer than this is a pause or an outage, not pace. */
const GAP_MS = 60000;

async function load() {
  const [a, route] = await Promise.all([api(`/v1/activities/${id}`), api(`/v1/activities/${id}/route?format=json`)]);
  const mine = a.athlete_id === me()?.id;
  const athlete = mine ? 'Your' : `${(await api(`/v1/users/${a.athlete_id}`).catch(() => ({ name: 'Someone' }))).name}'s`;
  const state = a.state === 'COMPLETE' ? '' : ` (${a.state === 'STARTED' ? 'live' : a.state.toLowerCase()})`;
  $('title').textContent = `${athlete} ${(TYPE_NAMES[a.type] || 'activity').toLowerCase()}${state}`;
  document.title = `${$('title').textContent} · trailcast`;
  $('when').textContent = `${fmtDate(a.started_at)}${a.finished_at ? ' – ' + fmtDate(a.finished_at) : ''}` + (a.course_name ? ` · on "${a.course_name}"` : '');
  const s = a.stats;
  $('stats').replaceChildren(...[
    ['Distance', fmtDistance(s.distance_m)], ['Moving time', fmtDuration(s.moving_time_s)],
    ['Elapsed', fmtDuration(s.elapsed_time_s)], ['Pace', fmtPace(s.avg_pace_s_per_km)],
    ['Elevation gain', `${Math.round(s.elevation_gain_m || 0)} m`], ['Calories', `${Math.round(s.calories_kcal || 0)} kcal`],
    ...(a.fields?.avg_hr ? [['Heart rate', `${Math.round(a.fields.avg_hr)} bpm`]] : []),
  ].map(([k, v]) => el('div', {}, el('span', { class: 'muted' }, k), el('b', {}, v))));
  const live = a.state === 'STARTED' || a.state === 'PAUSED';
  if (live) {
    const w = $('watch'); w.href = `/watch.html?activity=${a.id}`; w.hidden = false;
  }
  $('sharing').hidden = !(mine && live);
  if (mine && live) renderShares();

  const pts = route.points.map((p) => ({ ...p, ts: ms(p.ts) }));
  const map = createMap('map');
  if (pts.length) {
    const line = L.polyline(pts.map((p) => [p.lat, p.lng]), { color: '#e4572e', weight: 4 }).addTo(map);
    L.circleMarker([pts[0].lat, pts[0].lng], { radius: 6, color: '#067647' }).addTo(map).bindTooltip('Start');
    L.circleMarker([pts.at(-1).lat, pts.at(-1).lng], { radius: 6, color: '#1d2430' }).addTo(map).bindTooltip(live ? 'Latest' : 'Finish');
    map.fitBounds(line.getBounds(), { padding: [20, 20], maxZoom: 17 });
  }

  $('splits').querySelector('tbody').replaceChildren(...a.splits.map((sp) => {
    const partial = sp.distance_m < 999.5;
    return el('tr', partial ? { class: 'partial' } : {},
      el('td', {}, partial ? `${sp.km} (partial, ${fmtDistance(sp.distance_m)})` : sp.km),
      el('td', {}, fmtDuration(sp.time_s)), el('td', {}, fmtPace(sp.pace_s_per_km)));
  }));

  if (a.steps?.length) {
    $('course-card').hidden = false;
    $('course-title').textContent = a.course_name || 'Course';
    const planned = (r) => (r.planned_s != null ? fmtDuration(r.planned_s) : fmtDistance(r.planned_m));
    $('steps').querySelector('tbody').replaceChildren(...a.steps.map((r) => el('tr', {},
      el('td', {}, `${r.index + 1}. ${STEP_NAMES[r.kind] || r.kind}${r.completed ? '' : ' (not finished)'}`),
      el('td', {}, planned(r)),
      el('td', {}, `${fmtDuration(r.actual_s)} · ${fmtDistance(r.actual_m)}`),
      el('td', {}, fmtPace(r.pace_s_per_km)))));
  }

  // Cumulative distance along the raw route; pace over a ~30 s window that
  // never reaches across a pause (a gap in the fixes).
  const dist = [0];
  for (let i = 1; i < pts.length; i++) dist.push(dist[i - 1] + metres(pts[i - 1], pts[i]));
  const pace = pts.map((p, i) => {
    let j = i;
    while (j > 0 && p.ts - pts[j - 1].ts < 30000 && pts[j].ts - pts[j - 1].ts < GAP_MS) j--;
    const d = dist[i] - dist[j], t = (p.ts - pts[j].ts) / 1000;
    return d > 5 && t > 0 ? Math.min(1800, t / (d / 1000)) : NaN;
  });
  const km = (x) => (x / 1000).toFixed(1) + ' km';
  lineChart($('pace-chart'), dist, pace, { xLabel: km, yLabel: (y) => fmtPace(y), invert: true });
  lineChart($('elevation-chart'), dist, pts.map((p) => (p.alt ?? NaN)), { xLabel: km, yLabel: (y) => `${Math.round(y)} m` });
  const finite = (xs) => xs.filter((x) => isFinite(x));
  const paces = finite(pace), alts = finite(pts.map((p) => p.alt ?? NaN));
  if (paces.length) $('pace-chart').setAttribute('aria-label', `Pace along ${fmtDistance(dist.at(-1))}: fastest ${fmtPace(Math.min(...paces))}, slowest ${fmtPace(Math.max(...paces))}`);
  if (alts.length) $('elevation-chart').setAttribute('aria-label', `Elevation from ${Math.round(Math.min(...alts))} m to ${Math.round(Math.max(...alts))} m`);

  $('gpx').addEventListener('click', () => download('gpx'));
  $('tcx').addEventListener('click', () => download('tcx'));
}

async function download(format) {
  try {
    const res = await api(`/v1/activities/${id}/route?format=${format}`, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const a = el('a', { href: url, download: `trailcast-${id}.${format}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { $('error').textContent = human(e, 'this activity'); }
}

// --- Share links (the athlete's, for a live activity) ----------------------
// The server lists every link of the activity (from any device) without its
// token; the address is shown once, so this browser remembers the ones it
// made and shows their address again. A link made elsewhere can still be
// revoked here.

const SHARES_KEY = `trailcast.shares.${id}`;
const loadShares = () => { try { return JSON.parse(localStorage.getItem(SHARES_KEY)) || []; } catch { return []; } };
const saveShares = (list) => localStorage.setItem(SHARES_KEY, JSON.stringify(list));

async function renderShares() {
  let listed;
  try {
    listed = (await api(`/v1/activities/${id}/shares`)).items.filter((s) => s.active);
  } catch (e) { $('error').textContent = human(e, 'the share links'); return; }
  const known = new Map(loadShares().map((s) => [s.id, s]));
  // Forget addresses of links that expired or were revoked.
  saveShares(listed.filter((s) => known.has(s.id)).map((s) => known.get(s.id)));
  $('shares').replaceChildren(...listed.map((s) => {
    const mine = known.get(s.id);
    const parts = [];
    if (mine) {
      const url = new URL(mine.watch_url, location.origin).href;
      const input = el('input', { value: url, readonly: '', size: '50', 'aria-label': 'Share link' });
      parts.push(input, el('button', { type: 'button', onclick: async (ev) => {
        input.select();
        try { await navigator.clipboard.writeText(url); ev.target.textContent = 'Copied'; } catch { ev.target.textContent = 'Select and copy'; }
      } }, 'Copy'));
    } else {
      parts.push(el('span', { class: 'elsewhere' }, 'Link made on another device (its address is shown only where it was made)'));
    }
    return el('li', { 'data-share': s.id }, ...parts,
      el('span', { class: 'muted' }, ` until ${fmtDate(s.expires_at)}`),
      el('button', { type: 'button', class: 'revoke', onclick: () => revoke(s) }, 'Revoke'));
  }));
}

async function revoke(s) {
  try {
    await api(`/v1/shares/${s.id}`, { method: 'DELETE' });
  } catch (e) { if (e.status !== 404) { $('error').textContent = human(e, 'this link'); return; } }
  saveShares(loadShares().filter((x) => x.id !== s.id));
  await renderShares();
}

$('share-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const expires = Number(new FormData(ev.target).get('expires_in_s'));
    const s = await api('/v1/shares', { method: 'POST', body: { activity_id: id, expires_in_s: expires } });
    saveShares([...loadShares(), { id: s.id, watch_url: s.watch_url, expires_at: s.expires_at }]);
    await renderShares();
  } catch (e) { $('error').textContent = human(e, 'this activity'); }
});

renderHeader();
registerServiceWorker();
if (!id) $('error').textContent = 'This link is incomplete: it names no activity.';
else load().catch((e) => { $('error').textContent = human(e, 'this activity'); });
