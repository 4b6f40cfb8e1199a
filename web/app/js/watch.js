// Watch page: /watch.html?activity=ID[&share=TOKEN][&lag=6]
//
// The server releases each point `lag` seconds after it arrived. The page
// keeps the time-ordered track and plays it back on a clock that runs at
// real speed a little behind the newest released point (`lag` plus the
// usual gap between points), so the next point is almost always already
// here and the marker glides between points at requestAnimationFrame rate.
// The marker's time only ever moves forward, and after an outage it
// catches up gliding (at most `CATCH_UP_SPEED` times real time), not
// jumping.
//
// The map follows the athlete until the watcher pans it; "Follow the
// athlete" brings it back. The lag is shown only while the athlete is live;
// paused and finished activities say so, and a lost connection says
// "connection lost, retrying" until it is back.
//
// Transport: WebSocket first, with the credential offered as a subprotocol
// (`bearer.<token>` / `share.<token>`), so no token is ever in a URL that a
// console or proxy logs; if it cannot connect, polling the same stream
// (`?after=cursor`) while a WebSocket is tried again now and then. A 4xx
// answer is final and explained; anything else is retried with backoff.

import { token, ms, fmtDistance, fmtDuration, fmtPace, renderHeader, registerServiceWorker } from './api.js';
import { createMap, athleteIcon, bearing, metresBetween } from './map.js';
import { lineChart } from './charts.js';
import { metres } from './coach.js';

const params = new URLSearchParams(location.search);
const activityId = params.get('activity');
const share = params.get('share');
const lag = Math.min(10, Math.max(5, Number(params.get('lag')) || 6));
const CATCH_UP_SPEED = 3;
const STALE_AFTER_MS = 30000;
const UPGRADE_EVERY_MS = 15000;
const STEP_NAMES = { warm_up: 'Warm-up', walk: 'Walk', jog: 'Jog', run: 'Run', rest: 'Rest', cool_down: 'Cool-down' };
const TYPE_NAMES = { RUN: 'run', RIDE: 'ride', WALK: 'walk', HIKE: 'hike', SKI: 'ski session', SWIM: 'swim', OTHER: 'activity' };

const $ = (id) => document.getElementById(id);
const map = createMap('map');
const line = L.polyline([], { color: '#e4572e', weight: 4 }).addTo(map);
const marker = L.marker([0, 0], { icon: athleteIcon(), keyboard: false });
const startMarker = L.marker([0, 0], { icon: L.divIcon({ className: '', html: '<div class="start-marker"></div>', iconSize: [12, 12], iconAnchor: [6, 6] }), title: 'Start' });

/** Playback state; also the test hook (window.__trailcast). */
const view = {
  track: [],            // points sorted by ts (ms)
  byTs: new Map(),
  cursor: null,
  state: null,
  stateAt: null,
  stats: null,
  statsAt: 0,
  route: null,
  about: null,
  clockSkew: 0,         // server clock minus ours
  gap: 2000,            // typical ms between consecutive points (smoothed)
  markerTs: null,
  markerLatLng: null,
  heading: null,        // direction of travel, degrees from north (null: unknown)
  frameAt: null,
  transport: 'none',
  connection: 'connecting', // connecting | ok | lost | ended
  finished: false,
  follow: true,
  reconnects: 0,
  socket: null,
  error: null,
};
window.__trailcast = view;

// --- Track and map -------------------------------------------------------

function addPoints(points) {
  let resort = false, added = 0;
  for (const raw of points) {
    const p = { ...raw, ts: ms(raw.ts) };
    if (view.byTs.has(p.ts)) continue;
    const last = view.track[view.track.length - 1];
    if (raw.late || (last && p.ts < last.ts)) resort = true;
    else if (last) view.gap = 0.8 * view.gap + 0.2 * Math.min(10000, Math.max(500, p.ts - last.ts));
    view.byTs.set(p.ts, p);
    view.track.push(p);
    added += 1;
  }
  if (!added) return;
  if (resort) view.track.sort((a, b) => a.ts - b.ts);
  line.setLatLngs(view.track.map((p) => [p.lat, p.lng]));
  const first = view.track[0];
  startMarker.setLatLng([first.lat, first.lng]);
  if (!map.hasLayer(startMarker)) startMarker.addTo(map);
  if (view.track.length === added) {
    // The first points: show them all, then follow.
    if (view.track.length > 1) map.fitBounds(line.getBounds(), { padding: [30, 30], maxZoom: 17 });
    else map.setView([first.lat, first.lng], 16);
  }
  renderElevation();
}

// A pan by the watcher (a drag of the map, by mouse, pen or finger) stops
// following; the button brings it back.
function stopFollowing() {
  if (!view.follow) return;
  view.follow = false;
  $('recentre').hidden = false;
}
map.on('dragstart', stopFollowing);
{
  let down = null;
  const el = map.getContainer();
  el.addEventListener('pointerdown', (e) => { down = { x: e.clientX, y: e.clientY }; });
  el.addEventListener('pointermove', (e) => {
    if (down && e.buttons && Math.hypot(e.clientX - down.x, e.clientY - down.y) > 10) stopFollowing();
  });
  window.addEventListener('pointerup', () => { down = null; });
}
$('recentre').addEventListener('click', () => {
  view.follow = true;
  $('recentre').hidden = true;
  if (view.markerLatLng) map.panTo(view.markerLatLng);
});

function follow() {
  if (!view.follow || !view.markerLatLng) return;
  // Keep the marker in the middle half of the map: pan only when it nears
  // the edge, so the map does not shake with every frame.
  const size = map.getSize();
  const p = map.latLngToContainerPoint(view.markerLatLng);
  if (p.x < size.x * 0.25 || p.x > size.x * 0.75 || p.y < size.y * 0.25 || p.y > size.y * 0.75) {
    map.panTo(view.markerLatLng, { animate: true, duration: 0.5 });
  }
}

let elevationDrawn = 0;
function renderElevation() {
  const withAlt = view.track.filter((p) => p.alt != null);
  const svg = $('elevation');
  // An <svg> has no `hidden` property (only HTML elements do): the attribute.
  const hide = withAlt.length < 2;
  svg.toggleAttribute('hidden', hide);
  if (hide || withAlt.length - elevationDrawn < 5) return;
  elevationDrawn = withAlt.length;
  const dist = [0];
  for (let i = 1; i < withAlt.length; i++) dist.push(dist[i - 1] + metres(withAlt[i - 1], withAlt[i]));
  lineChart(svg, dist, withAlt.map((p) => p.alt), { xLabel: (x) => (x / 1000).toFixed(1) + ' km', yLabel: (y) => `${Math.round(y)} m` });
  const alts = withAlt.map((p) => p.alt);
  svg.setAttribute('aria-label', `Elevation so far: from ${Math.round(Math.min(...alts))} m to ${Math.round(Math.max(...alts))} m over ${fmtDistance(dist.at(-1))}`);
}

// --- State, statistics, status line --------------------------------------

function setState(state, at) {
  if (!state) return;
  view.state = state;
  if (at) view.stateAt = ms(at);
  view.finished = state === 'COMPLETE' || state === 'DISCARDED';
  document.body.dataset.state = state;
  renderStats();
}

function setAbout(about) {
  if (!about) return;
  view.about = about;
  const kind = TYPE_NAMES[about.type] || 'activity';
  $('who').textContent = `${about.athlete}'s ${kind}`;
  document.title = `${about.athlete} live · trailcast`;
  const started = new Date(ms(about.started_at));
  $('about').textContent = `Started ${started.toLocaleDateString([], { weekday: 'short', day: 'numeric', month: 'short' })} at ${clock(started, false)}` +
    (about.course_name ? ` · on "${about.course_name}"` : '');
}

/** The badge tells the one thing that matters most now. */
function renderBadge() {
  const badge = $('badge');
  let text, cls = '';
  if (view.connection === 'ended') { text = 'ended'; cls = 'finished'; }
  else if (view.finished) { text = view.state === 'DISCARDED' ? 'discarded' : 'finished'; cls = 'finished'; }
  else if (view.connection === 'lost') { text = 'connection lost, retrying'; cls = 'offline'; }
  else if (view.connection === 'connecting' || !view.state) { text = 'connecting'; cls = 'paused'; }
  else if (view.state === 'PAUSED') { text = 'paused'; cls = 'paused'; }
  else if (isStale()) { text = 'no signal from the athlete'; cls = 'stale'; }
  else text = 'live';
  if (badge.textContent !== text) badge.textContent = text;
  const className = `badge ${cls}`.trim();
  if (badge.className !== className) badge.className = className;
}

/** Live, but no new fix for a while (a phone without signal). */
function isStale() {
  if (view.state !== 'STARTED' || !view.track.length) return false;
  const newest = view.track[view.track.length - 1].ts;
  return Date.now() + view.clockSkew - newest > lag * 1000 + STALE_AFTER_MS;
}

function setStats(stats, route) {
  if (!stats) return;
  view.stats = stats;
  view.statsAt = Date.now();
  if (route !== undefined) view.route = route;
  renderCourse();
}

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
      (route.eta_ms ? ` · arrives about ${clock(route.eta_ms, false)}` : '')
    : '';
  $('off-route').hidden = !route?.off_route;
}

const two = (n) => String(n).padStart(2, '0');
/** 24-hour wall-clock time: "18:42:05" (with seconds) or "18:42". */
const clock = (t, seconds = true) => {
  const d = new Date(t);
  return `${two(d.getHours())}:${two(d.getMinutes())}${seconds ? ':' + two(d.getSeconds()) : ''}`;
};

function renderStats() {
  const s = view.stats;
  if (s) {
    // Moving and elapsed time run on between messages while live.
    const live = view.state === 'STARTED' && view.connection === 'ok';
    const extra = live ? (Date.now() - view.statsAt) / 1000 : 0;
    const extraElapsed = !view.finished && view.connection === 'ok' ? (Date.now() - view.statsAt) / 1000 : 0;
    $('distance').textContent = fmtDistance(s.distance_m);
    $('moving').textContent = fmtDuration(s.moving_time_s + extra);
    $('elapsed').textContent = fmtDuration(s.elapsed_time_s + extraElapsed);
    $('pace').textContent = fmtPace(s.avg_pace_s_per_km);
  }
  // Pace over the last minute of the track played so far.
  const shown = view.track.filter((p) => view.markerTs != null && p.ts <= view.markerTs);
  const last = shown.at(-1);
  let paceNow = NaN;
  if (last && view.state === 'STARTED') {
    let d = 0, i = shown.length - 1;
    while (i > 0 && last.ts - shown[i - 1].ts <= 60000) { d += metres(shown[i - 1], shown[i]); i--; }
    const t = (last.ts - shown[i].ts) / 1000;
    if (d > 20 && t > 0) paceNow = t / (d / 1000);
  }
  $('pace-now').textContent = fmtPace(paceNow);
  const showValue = (box, id, value, unit) => {
    $(box).hidden = value == null;
    if (value != null) $(id).textContent = `${Math.round(value)} ${unit}`;
  };
  showValue('hr-box', 'hr', last?.hr, 'bpm');
  showValue('cadence-box', 'cadence', last?.cadence, 'spm');
  showValue('battery-box', 'battery', last?.battery, '%');
  // When the athlete was last heard of, and how far behind we play.
  const newest = view.track.at(-1);
  const now = Date.now() + view.clockSkew;
  $('last-fix').textContent = newest ? `last fix ${clock(newest.ts)} (${fmtAgo(now - newest.ts)})` : 'no fix yet';
  let delay;
  if (view.connection === 'lost') delay = 'connection lost, retrying';
  else if (view.connection === 'ended') delay = 'not watching';
  else if (view.finished) delay = view.stateAt ? `finished at ${clock(view.stateAt, false)}` : 'finished';
  else if (view.state === 'PAUSED') delay = 'paused';
  else if (view.markerTs != null) delay = `${((now - view.markerTs) / 1000).toFixed(1)} s behind`;
  else delay = '';
  $('delay').textContent = delay;
  renderBadge();
}

function fmtAgo(msAgo) {
  const s = Math.max(0, Math.round(msAgo / 1000));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
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

/** Points the marker's arrow the way the athlete moved over the last
 * ~10 s of playback; standing still keeps the last direction. */
function showHeading() {
  const back = positionAt(view.markerTs - 10000);
  if (metresBetween(back, view.markerLatLng) >= 3) view.heading = bearing(back, view.markerLatLng);
  const arrow = marker.getElement()?.querySelector('.heading');
  if (!arrow || view.heading === null) return;
  arrow.hidden = false;
  arrow.style.transform = `rotate(${Math.round(view.heading)}deg)`;
  $('map').dataset.heading = String(Math.round(view.heading));
}

function frame() {
  const now = Date.now();
  if (view.track.length) {
    const newest = view.track[view.track.length - 1].ts;
    // The playback clock: real time, `lag` + one gap behind, so the next
    // point is normally here before the head reaches it.
    const head = now + view.clockSkew - lag * 1000 - view.gap - 300;
    let t = Math.min(head, newest);
    if (view.finished) t = newest;
    if (view.markerTs !== null && view.frameAt !== null && t > view.markerTs) {
      // Glide to catch up (after an outage), never jump.
      const maxStep = Math.max(1, (now - view.frameAt) * CATCH_UP_SPEED);
      if (t - view.markerTs > maxStep && !view.finished) t = view.markerTs + maxStep;
    }
    if (view.markerTs === null || t > view.markerTs) view.markerTs = t;
    view.markerLatLng = positionAt(view.markerTs);
    marker.setLatLng(view.markerLatLng);
    if (!map.hasLayer(marker)) marker.addTo(map);
    showHeading();
    follow();
    const el = $('map');
    el.dataset.markerTs = String(Math.round(view.markerTs));
    el.dataset.markerLat = String(view.markerLatLng[0]);
    el.dataset.markerLng = String(view.markerLatLng[1]);
  }
  view.frameAt = now;
  renderStats();
  requestAnimationFrame(frame);
}

// --- Errors a person understands -----------------------------------------

/** What to tell the watcher about a refusal, by status (and close code). */
function explain(status) {
  if (status === 401) return share ? 'This share link is not valid (it may have expired or been revoked).' : 'Sign in to watch this activity, or ask the athlete for a share link.';
  if (status === 404) return share ? 'This share link no longer works: it expired, was revoked, or the activity was deleted.' : 'This activity does not exist, or it is not shared with you.';
  if (status === 400 || status === 422) return 'This watch link is broken: the activity id in it is not valid.';
  if (status === 429) return 'Too many requests from this browser; retrying shortly.';
  return 'The server could not show this activity.';
}

/** Stops watching for good, with a reason; the badge says "ended". */
function end(text) {
  view.error = text;
  view.connection = 'ended';
  $('error').textContent = text;
  setTransport('stopped');
  renderBadge();
}

function setConnection(state) {
  view.connection = state;
  // The whole status line at once (it includes the badge): the delay must
  // not say "s behind" next to a "connection lost" badge until the next
  // animation frame, which a hidden or busy tab may not draw for a while.
  renderStats();
}

// --- WebSocket ---------------------------------------------------------

function credential() {
  return share ? `share.${share}` : `bearer.${token() || ''}`;
}

function connectSocket({ upgrade = false } = {}) {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  let ws;
  try {
    ws = new WebSocket(`${proto}://${location.host}/v1/activities/${activityId}/live/ws?lag=${lag}`, ['trailcast', credential()]);
  } catch {
    if (!upgrade) poll();
    return;
  }
  let opened = false;
  if (!upgrade) setTransport('websocket (connecting)');
  ws.onopen = () => {
    opened = true;
    view.reconnects = 0;
    view.socket = ws;
    setTransport('websocket');
    setConnection('ok');
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    switch (msg.type) {
      case 'catch_up':
        onServerTime(msg.server_time);
        setAbout(msg.about);
        addPoints(msg.points);
        setState(msg.state, msg.state_at);
        setStats(msg.stats, msg.route);
        break;
      case 'points': addPoints(msg.points); break;
      case 'state': setState(msg.state, msg.at); break;
      case 'stats': setStats(msg.stats, msg.route); break;
    }
    if (msg.cursor) view.cursor = msg.cursor;
  };
  ws.onclose = (ev) => {
    if (view.socket === ws) view.socket = null;
    if (view.connection === 'ended') return;
    if (ev.code === 1000 && view.finished) { setTransport('finished'); return; }
    if (ev.code === 4003) return end(ev.reason === 'share expired' ? 'This share link has expired.' : ev.reason === 'share revoked' ? 'The athlete revoked this share link.' : 'The athlete stopped sharing this activity with you.');
    if (upgrade && !opened) return; // still polling; try again later
    if (!opened) {
      // No WebSocket here (proxy, firewall, or a refusal): polling tells
      // which, and a WebSocket is tried again now and then.
      poll();
      return;
    }
    setConnection('lost');
    retry(() => connectSocket());
  };
}

// --- Polling -------------------------------------------------------------

let upgradeAt = 0;

async function poll() {
  if (view.socket || view.connection === 'ended') return;
  setTransport('polling');
  const after = view.cursor ? `&after=${encodeURIComponent(view.cursor)}` : '';
  // Credentials in headers, never in the URL (consoles and proxies log URLs).
  const headers = share ? { 'x-share-token': share } : { authorization: `Bearer ${token() || ''}` };
  let res;
  try {
    res = await fetch(`/v1/activities/${activityId}/live?lag=${lag}${after}`, { headers });
  } catch {
    setConnection('lost');
    return retry(poll);
  }
  if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) return end(explain(res.status));
  if (!res.ok) { setConnection('lost'); return retry(poll); }
  const body = await res.json();
  view.reconnects = 0;
  setConnection('ok');
  onServerTime(body.server_time);
  setAbout(body.about);
  addPoints(body.points);
  setState(body.state, body.state_at);
  setStats(body.stats, body.route);
  view.cursor = body.cursor;
  if (view.finished && !body.points.length) return setTransport('finished');
  // Back to a WebSocket once one answers.
  if ('WebSocket' in window && params.get('transport') !== 'poll' && Date.now() >= upgradeAt) {
    upgradeAt = Date.now() + UPGRADE_EVERY_MS;
    connectSocket({ upgrade: true });
  }
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

renderHeader();
registerServiceWorker();
if (!activityId) {
  end('This watch link is incomplete: it names no activity.');
} else {
  const details = $('details');
  details.href = `/activity.html?id=${activityId}`;
  details.hidden = !!share;
  if (!share && token()) drawPlannedRoute();
  if (!share && !token()) end(explain(401));
  else if ('WebSocket' in window && params.get('transport') !== 'poll') connectSocket();
  else poll();
  requestAnimationFrame(frame);
}
