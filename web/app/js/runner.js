// Runner page (the phone client): start, pause, resume, finish.
//
// Positions come from navigator.geolocation.watchPosition and go straight
// into the IndexedDB outbox (outbox.js); every FLUSH_MS the outbox is sent
// in {points: [...]} batches and acknowledged points are deleted. Offline,
// points simply wait; the 'online' event flushes at once. The session
// (activity id, state) lives in localStorage, so a reload picks up where it
// was. State changes are sent with the time they happened (`at`) and
// retried until the server takes them.

import { api, token, human, fmtDistance, fmtDuration, fmtPace, el, renderHeader, registerServiceWorker } from './api.js';
import * as outbox from './outbox.js';
import { Coach, metres, movingMs } from './coach.js';
import { createMap, athleteIcon } from './map.js';

const FLUSH_MS = 3000;
const VIEWERS_MS = 5000;
const COACH_MS = 250;
const STEP_NAMES = { warm_up: 'Warm-up', walk: 'Walk', jog: 'Jog', run: 'Run', rest: 'Rest', cool_down: 'Cool-down' };
const params = new URLSearchParams(location.search);
let coach = null;
let map = null, trackLine = null, meMarker = null;
let wakeLock = null;
const SESSION_KEY = 'trailcast.session';
const $ = (id) => document.getElementById(id);

let session = load();
let watchId = null;
let flushing = false;

/** Test hook and debugging aid. */
const view = { recorded: [], uploaded: 0, rejected: 0, pending: 0, flushes: 0, errors: 0 };
window.__trailcast = view;

function load() { try { return JSON.parse(localStorage.getItem(SESSION_KEY)); } catch { return null; } }
function save() { session ? localStorage.setItem(SESSION_KEY, JSON.stringify(session)) : localStorage.removeItem(SESSION_KEY); }

function render() {
  const st = session?.state;
  const done = st === 'COMPLETE' || st === 'DISCARDED';
  const canStart = !session || (done && !view.pending && !session.changes?.length);
  $('start').hidden = !canStart;
  $('type').disabled = !canStart;
  $('course').disabled = !canStart;
  $('hide-ends').disabled = !canStart;
  $('pause').hidden = st !== 'STARTED';
  $('resume').hidden = st !== 'PAUSED';
  $('end-controls').hidden = !(st === 'STARTED' || st === 'PAUSED');
  const badge = $('badge');
  badge.hidden = !session;
  if (session) {
    badge.textContent = { STARTED: 'recording', PAUSED: 'paused', COMPLETE: 'finished', DISCARDED: 'discarded' }[st] || st;
    badge.className = 'badge ' + ({ PAUSED: 'paused', COMPLETE: 'finished', DISCARDED: 'finished' }[st] || '');
    $('links').replaceChildren(
      el('a', { href: `/watch.html?activity=${session.id}` }, 'Watch page'), ' · ',
      el('a', { href: `/activity.html?id=${session.id}` }, 'Activity details'));
  }
  $('net').hidden = navigator.onLine;
  $('recorded').textContent = view.recorded.length;
  $('pending').textContent = view.pending;
  document.body.dataset.state = st || 'IDLE';
  keepAwake(st === 'STARTED' || st === 'PAUSED');
}

/**
 * Keeps the screen on while recording (the browser stops reading GPS when
 * it locks), and says so; re-taken when the page becomes visible again.
 */
async function keepAwake(on) {
  const note = $('wake');
  if (!on) {
    if (wakeLock) { wakeLock.release().catch(() => {}); wakeLock = null; }
    note.hidden = true;
    return;
  }
  note.hidden = false;
  if (wakeLock || document.visibilityState !== 'visible') return;
  if (!('wakeLock' in navigator)) {
    note.textContent = 'Keep this page open and the screen on: this browser cannot keep it awake, and GPS stops when the screen locks.';
    return;
  }
  try {
    wakeLock = await navigator.wakeLock.request('screen');
    note.textContent = 'The screen stays on while recording (GPS stops if it locks).';
    wakeLock.addEventListener('release', () => { wakeLock = null; });
  } catch {
    note.textContent = 'Keep the screen on: the browser refused to keep it awake, and GPS stops when it locks.';
  }
}
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') render(); });

/** The own track on a small map, following the newest fix. */
function drawTrack() {
  if (!view.recorded.length || typeof L === 'undefined') return;
  if (!map) {
    $('map').hidden = false;
    map = createMap('map');
    trackLine = L.polyline([], { color: '#e4572e', weight: 4 }).addTo(map);
    meMarker = L.marker([0, 0], { icon: athleteIcon(), keyboard: false }).addTo(map);
  }
  const last = view.recorded.at(-1);
  trackLine.setLatLngs(view.recorded.map((p) => [p.lat, p.lng]));
  meMarker.setLatLng([last.lat, last.lng]);
  map.setView([last.lat, last.lng], Math.max(map.getZoom() || 16, 15), { animate: false });
}

/** Elapsed time and the pace of the last minute, from the phone alone. */
function renderLocal() {
  if (!session?.events?.length) return;
  const now = Date.now();
  const start = session.events[0].at;
  const end = session.state === 'COMPLETE' ? session.events.at(-1).at : now;
  $('elapsed').textContent = fmtDuration((end - start) / 1000);
  const pts = view.recorded;
  let paceNow = NaN;
  if (pts.length > 1 && session.state === 'STARTED') {
    let d = 0, i = pts.length - 1;
    while (i > 0 && pts.at(-1).ts - pts[i - 1].ts <= 60000) { d += metres(pts[i - 1], pts[i]); i--; }
    const t = (pts.at(-1).ts - pts[i].ts) / 1000;
    if (d > 20 && t > 0) paceNow = t / (d / 1000);
  }
  $('pace-now').textContent = fmtPace(paceNow);
}

/** The coach: the current step, what is left of it, the session's progress. */
function coachTick() {
  const c = session?.course;
  $('coach').hidden = !c || !c.steps.length;
  if (!c || !c.steps.length || !(session.state === 'STARTED' || session.state === 'PAUSED')) return;
  coach ??= new Coach(c.steps, c.said ??= {});
  const now = movingMs(session.events || [], Date.now());
  const s = coach.update(now, session.distance || 0);
  if (s.done) {
    $('step').textContent = `${c.name}: done`;
    $('step-left').textContent = '';
    $('course-progress').value = 1;
  } else {
    $('step').textContent = `${STEP_NAMES[s.step.kind] || s.step.kind} · step ${s.index + 1} of ${c.steps.length}`;
    $('step-left').textContent = s.leftS != null ? `${fmtDuration(s.leftS)} left` : `${Math.ceil(s.leftM)} m left`;
    $('cue').textContent = s.step.cue;
    $('course-progress').value = (s.index + Math.min(1, s.fraction)) / c.steps.length;
  }
  save();
}

/** Fills the course list from the catalogue (and `?course=` if it is another one). */
async function loadCourses() {
  const select = $('course');
  try {
    const { items } = await api('/v1/courses');
    for (const c of items) select.append(el('option', { value: c.id }, `${c.name} (${Math.round(c.planned_s / 60)} min)`));
    const wanted = params.get('course');
    if (wanted && !items.some((c) => c.id === wanted)) {
      const own = await api(`/v1/courses/${wanted}`);
      select.append(el('option', { value: own.id }, own.name));
    }
    if (wanted) select.value = wanted;
  } catch { /* offline or signed out: recording works without a course */ }
}

/** The "Watching now" panel: friends by name (each removable), share links counted. */
async function refreshViewers() {
  const live = session && (session.state === 'STARTED' || session.state === 'PAUSED');
  $('audience').hidden = !live;
  if (!live || !navigator.onLine) return;
  try {
    const v = await api(`/v1/activities/${session.id}/viewers`);
    $('viewer-count').textContent = v.total;
    const items = v.users.map((u) => el('li', { 'data-user': u.id },
      el('span', {}, u.name), ' ',
      el('button', { class: 'remove', onclick: () => removeViewer(u) }, 'Remove')));
    for (const s of v.shares) items.push(el('li', {}, `${s.viewers} via a share link`));
    if (!items.length) items.push(el('li', { class: 'muted' }, 'Nobody yet.'));
    $('viewers').replaceChildren(...items);
  } catch (e) {
    if (e.status === 404) $('audience').hidden = true;
  }
}

async function removeViewer(user) {
  try {
    await api(`/v1/activities/${session.id}/viewers/${user.id}`, { method: 'DELETE' });
    await refreshViewers();
  } catch (e) { showError(e); }
}

function showError(e) { $('error').textContent = e ? (e.status ? human(e, 'this activity') : e.message || String(e)) : ''; }

function onPosition(pos) {
  if (!session || session.state !== 'STARTED') return;
  const c = pos.coords;
  const point = { ts: Math.round(pos.timestamp || Date.now()), lat: c.latitude, lng: c.longitude };
  if (c.altitude != null) point.alt = c.altitude;
  if (c.speed != null && c.speed >= 0) point.speed = c.speed;
  if (c.accuracy != null) point.accuracy = c.accuracy;
  if (view.recorded.length && view.recorded.at(-1).ts >= point.ts) point.ts = view.recorded.at(-1).ts + 1;
  const prev = view.recorded.at(-1);
  if (prev) session.distance = (session.distance || 0) + metres(prev, point);
  view.recorded.push(point);
  $('position').textContent = `${c.latitude.toFixed(5)}, ${c.longitude.toFixed(5)} ± ${Math.round(c.accuracy || 0)} m`;
  drawTrack();
  outbox.put(session.id, point).then(refreshPending).catch(showError);
  render();
}

function startWatching() {
  if (watchId !== null || !('geolocation' in navigator)) return;
  watchId = navigator.geolocation.watchPosition(onPosition, onPositionError,
    { enableHighAccuracy: true, maximumAge: 0, timeout: 30000 });
}

/** Only a refused permission is an error; no fix for a while is normal. */
function onPositionError(e) {
  if (e.code === e.PERMISSION_DENIED) showError(new Error('Location access was refused; recording needs it.'));
  else $('position').textContent = 'Waiting for a GPS fix…';
}

async function refreshPending() {
  if (!session) return;
  view.pending = await outbox.count(session.id);
  render();
}

/** Sends waiting points, then waiting state changes; stops at the first failure. */
async function flush() {
  if (!session || flushing) return;
  flushing = true;
  try {
    for (;;) {
      const points = await outbox.pending(session.id, 1000);
      if (!points.length) break;
      const r = await api(`/v1/activities/${session.id}/points`, { method: 'POST', body: { points } });
      view.uploaded += r.accepted + r.duplicates;
      view.rejected += r.rejected.length;
      if (r.stats) session.stats = r.stats;
      await outbox.remove(session.id, points.map((p) => p.ts));
      if (points.length < 1000) break;
    }
    while (session.changes?.length) {
      const change = session.changes[0];
      try {
        await api(`/v1/activities/${session.id}`, { method: 'PATCH', body: change });
      } catch (e) {
        if (e.status !== 409) throw e; // 409: the server is already past it
      }
      session.changes.shift();
      save();
    }
    view.flushes += 1;
    showError(null);
  } catch (e) {
    view.errors += 1;
    if (e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429) showError(e);
  } finally {
    flushing = false;
    save();
    await refreshPending();
    renderStats();
  }
}

function renderStats() {
  const s = session?.stats;
  if (!s) return;
  $('distance').textContent = fmtDistance(s.distance_m);
  $('moving').textContent = fmtDuration(s.moving_time_s);
}

function changeState(state) {
  session.state = state;
  (session.events ??= []).push({ state, at: Date.now() });
  (session.changes ??= []).push({ state, at: Date.now() });
  save();
  render();
  flush();
}

$('start').addEventListener('click', async () => {
  showError(null);
  if (!token()) return showError(new Error('Sign in first (home page).'));
  try {
    const courseId = $('course').value;
    const course = courseId ? await api(`/v1/courses/${courseId}`) : null;
    const startedAt = Date.now();
    const body = { type: $('type').value, started_at: startedAt };
    if (course) body.course_id = course.id;
    const a = await api('/v1/activities', { method: 'POST', body });
    session = { id: a.id, state: 'STARTED', changes: [], stats: a.stats, events: [{ state: 'STARTED', at: startedAt }], distance: 0 };
    if (course) session.course = { id: course.id, name: course.name, steps: course.steps, said: {} };
    coach = course ? new Coach(course.steps, session.course.said) : null;
    const hideEnds = Number($('hide-ends').value);
    if (hideEnds) session.changes.push({ hide_ends_m: hideEnds });
    view.recorded = [];
    save();
    render();
    startWatching();
  } catch (e) { showError(e.status ? e : new Error('Starting needs the network once; try again.')); }
});
$('pause').addEventListener('click', () => changeState('PAUSED'));
$('resume').addEventListener('click', () => changeState('STARTED'));
$('finish').addEventListener('click', () => {
  if (confirm('Finish this activity? It is saved to your history and watchers see it end.')) changeState('COMPLETE');
});
$('discard').addEventListener('click', () => {
  if (confirm('Discard this activity? It is deleted from your history and watchers lose it.')) changeState('DISCARDED');
});

window.addEventListener('online', () => { render(); flush(); });
window.addEventListener('offline', render);
setInterval(flush, FLUSH_MS);
setInterval(refreshViewers, VIEWERS_MS);
setInterval(() => { coachTick(); renderLocal(); }, COACH_MS);
if (token()) loadCourses();

renderHeader();
registerServiceWorker();
render();
if (session) {
  if (session.state === 'STARTED' || session.state === 'PAUSED') startWatching();
  renderStats();
  refreshPending();
  flush();
  refreshViewers();
}
window.__trailcastRunner = { flush, refreshViewers, coachTick, session: () => session, newSession: () => { session = null; coach = null; save(); render(); } };
