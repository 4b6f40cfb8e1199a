// Watch page: /watch.html?activity=ID[&share=TOKEN][&lag=6]
//
// The server releases each point `lag` seconds after it arrived. The page
// keeps the time-ordered track and plays it back on a clock that runs at
// real speed a little behind the newest released point (`lag` plus the
// usual gap between points), so the next point is almost always already
// here and the marker glides between points at requestAnimationFrame rate.
// The marker's time only ever moves forward.
//
// Transport: WebSocket first; if it cannot connect, polling the same stream
// (`?after=cursor`, waiting `retry_after_ms`). Either way a dropped
// connection is retried with backoff and resumes from the last cursor.

import { token, ms, fmtDistance, fmtDuration, fmtPace, renderHeader, registerServiceWorker } from './api.js';
import { createMap, athleteIcon } from './map.js';

const params = new URLSearchParams(location.search);
const activityId = params.get('activity');
const share = params.get('share');
const lag = Math.min(10, Math.max(5, Number(params.get('lag')) || 6));
const auth = share ? `share=${encodeURIComponent(share)}` : `token=${encodeURIComponent(token() || '')}`;

const $ = (id) => document.getElementById(id);
const map = createMap('map');
const line = L.polyline([], { color: '#e4572e', weight: 4 }).addTo(map);
const marker = L.marker([0, 0], { icon: athleteIcon() });

/** Playback state; also the test hook (window.__trailcast). */
const view = {
  track: [],            // points sorted by ts (ms)
  byTs: new Map(),
  cursor: null,
  state: null,
  stats: null,
  statsAt: 0,
  clockSkew: 0,         // server clock minus ours
  gap: 2000,            // typical ms between consecutive points (smoothed)
  markerTs: null,
  markerLatLng: null,
  transport: 'none',
  finished: false,
  fitted: false,
  reconnects: 0,
};
window.__trailcast = view;

function addPoints(points) {
  let resort = false;
  for (const raw of points) {
    const p = { ...raw, ts: ms(raw.ts) };
    if (view.byTs.has(p.ts)) continue;
    const last = view.track[view.track.length - 1];
    if (raw.late || (last && p.ts < last.ts)) resort = true;
    else if (last) view.gap = 0.8 * view.gap + 0.2 * Math.min(10000, Math.max(500, p.ts - last.ts));
    view.byTs.set(p.ts, p);
    view.track.push(p);
  }
  if (resort) {
    view.track.sort((a, b) => a.ts - b.ts);
    line.setLatLngs(view.track.map((p) => [p.lat, p.lng]));
  } else if (points.length) {
    line.setLatLngs(view.track.map((p) => [p.lat, p.lng]));
  }
  if (!view.fitted && view.track.length > 1) {
    map.fitBounds(line.getBounds(), { padding: [30, 30], maxZoom: 17 });
    view.fitted = true;
  } else if (!view.fitted && view.track.length === 1) {
    map.setView([view.track[0].lat, view.track[0].lng], 16);
  }
}

function setState(state) {
  if (!state) return;
  view.state = state;
  view.finished = state === 'COMPLETE' || state === 'DISCARDED';
  const badge = $('badge');
  badge.textContent = { STARTED: 'live', PAUSED: 'paused', COMPLETE: 'finished', DISCARDED: 'discarded' }[state] || state;
  badge.className = 'badge ' + ({ PAUSED: 'paused', COMPLETE: 'finished', DISCARDED: 'finished' }[state] || '');
  document.body.dataset.state = state;
}

function setStats(stats, route) {
  if (!stats) return;
  view.stats = stats;
  view.statsAt = Date.now();
  if (route !== undefined) view.route = route;
  renderCourse();
}

const STEP_NAMES = { warm_up: 'Warm-up', walk: 'Walk', jog: 'Jog', run: 'Run', rest: 'Rest', cool_down: 'Cool-down' };

/** The step the athlete is in, and progress along a planned route. */
function renderCourse() {
  const step = view.stats?.step, route = view.route;
  $('course-line').hidden = !step && !route;
  $('step').textContent = step
    ? `${STEP_NAMES[step.kind] || step.kind} · step ${step.index + 1} of ${step.count}` +
      (step.time_left_s != null ? ` · ${fmtDuration(step.time_left_s)} left` : step.distance_left_m != null ? ` · ${Math.ceil(step.distance_left_m)} m left` : '')
    : '';
  $('route-progress').textContent = route
    ? `${fmtDistance(route.done_m)} done · ${fmtDistance(route.left_m)} to go` +
      (route.eta_ms ? ` · arrives about ${new Date(route.eta_ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}` : '')
    : '';
  $('off-route').hidden = !route?.off_route;
}

function renderStats() {
  const s = view.stats;
  if (!s) return;
  // Moving time runs on between messages while the athlete is moving.
  const extra = view.state === 'STARTED' ? (Date.now() - view.statsAt) / 1000 : 0;
  $('distance').textContent = fmtDistance(s.distance_m);
  $('moving').textContent = fmtDuration(s.moving_time_s + extra);
  $('pace').textContent = fmtPace(s.avg_pace_s_per_km);
}

function onServerTime(serverTime) {
  if (serverTime) view.clockSkew = ms(serverTime) - Date.now();
}

/** Position on the track at time t (ms), interpolated between neighbours. */
function positionAt(t) {
  const tr = view.track;
  let lo = 0, hi = tr.length - 1;
  if (t <= tr[0].ts) return [tr[0].lat, tr[0].lng];
  if (t >= tr[hi].ts) return [tr[hi].lat, tr[hi].lng];
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (tr[mid].ts <= t) lo = mid; else hi = mid;
  }
  const a = tr[lo], b = tr[hi];
  const f = (t - a.ts) / (b.ts - a.ts);
  return [a.lat + (b.lat - a.lat) * f, a.lng + (b.lng - a.lng) * f];
}

function frame() {
  if (view.track.length) {
    const newest = view.track[view.track.length - 1].ts;
    // The playback clock: real time, `lag` + one gap behind, so the next
    // point is normally here before the head reaches it.
    const head = Date.now() + view.clockSkew - lag * 1000 - view.gap - 300;
    let t = Math.min(head, newest);
    if (view.finished) t = newest;
    if (view.markerTs === null || t > view.markerTs) view.markerTs = t;
    view.markerLatLng = positionAt(view.markerTs);
    marker.setLatLng(view.markerLatLng);
    if (!map.hasLayer(marker)) marker.addTo(map);
    const el = $('map');
    el.dataset.markerTs = String(Math.round(view.markerTs));
    el.dataset.markerLat = String(view.markerLatLng[0]);
    el.dataset.markerLng = String(view.markerLatLng[1]);
    $('delay').textContent = `${((Date.now() + view.clockSkew - view.markerTs) / 1000).toFixed(1)} s behind`;
  }
  renderStats();
  requestAnimationFrame(frame);
}

// --- WebSocket ---------------------------------------------------------

function connectSocket() {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/v1/activities/${activityId}/live/ws?lag=${lag}&${auth}`);
  let opened = false;
  setTransport('websocket (connecting)');
  ws.onopen = () => { opened = true; view.reconnects = 0; setTransport('websocket'); };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    switch (msg.type) {
      case 'catch_up':
        onServerTime(msg.server_time);
        addPoints(msg.points);
        setState(msg.state);
        setStats(msg.stats, msg.route);
        break;
      case 'points': addPoints(msg.points); break;
      case 'state': setState(msg.state); break;
      case 'stats': setStats(msg.stats, msg.route); break;
    }
    if (msg.cursor) view.cursor = msg.cursor;
  };
  ws.onclose = (ev) => {
    if (ev.code === 1000 && view.finished) return setTransport('finished');
    if (ev.code === 4003) return showError(`Watching ended: ${ev.reason}`);
    if (!opened) {
      // No WebSocket here (proxy, firewall): poll instead.
      poll();
      return;
    }
    retry(connectSocket);
  };
}

// --- Polling -------------------------------------------------------------

async function poll() {
  setTransport('polling');
  const after = view.cursor ? `&after=${encodeURIComponent(view.cursor)}` : '';
  let res;
  try {
    res = await fetch(`/v1/activities/${activityId}/live?lag=${lag}&${auth}${after}`);
  } catch {
    return retry(poll);
  }
  if (res.status === 401 || res.status === 404) return showError('This activity cannot be watched (signed out, or not shared with you).');
  if (!res.ok) return retry(poll);
  const body = await res.json();
  view.reconnects = 0;
  onServerTime(body.server_time);
  addPoints(body.points);
  setState(body.state);
  setStats(body.stats, body.route);
  view.cursor = body.cursor;
  if (view.finished && !body.points.length) return setTransport('finished');
  setTimeout(poll, Math.max(50, body.retry_after_ms));
}

/** The course's planned route, dashed under the track (signed-in viewers). */
async function drawPlannedRoute() {
  try {
    const headers = { authorization: `Bearer ${token()}` };
    const activity = await (await fetch(`/v1/activities/${activityId}`, { headers })).json();
    if (!activity.course_id) return;
    const course = await (await fetch(`/v1/courses/${activity.course_id}`, { headers })).json();
    if (!course.route) return;
    view.plannedRoute = L.polyline(course.route, { color: '#1d2430', weight: 3, dashArray: '6 8', opacity: 0.7 }).addTo(map);
    line.bringToFront();
  } catch { /* the live view works without it */ }
}

function retry(fn) {
  view.reconnects += 1;
  const delay = Math.min(15000, 500 * 2 ** Math.min(5, view.reconnects));
  setTransport(`reconnecting in ${Math.round(delay / 1000)} s`);
  setTimeout(fn, delay);
}

function setTransport(t) { view.transport = t; $('transport').textContent = t; }
function showError(text) { $('error').textContent = text; setTransport('stopped'); }

renderHeader();
registerServiceWorker();
if (!activityId) {
  showError('No activity given (?activity=ID).');
} else {
  const details = $('details');
  details.href = `/activity.html?id=${activityId}`;
  details.hidden = !!share;
  if (!share && token()) drawPlannedRoute();
  if (!share && !token()) showError('Sign in (or open a share link) to watch.');
  else if ('WebSocket' in window && params.get('transport') !== 'poll') connectSocket();
  else poll();
  requestAnimationFrame(frame);
}
