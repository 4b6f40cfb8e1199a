// Home: sign-up / sign-in, friends live now, my and friends' activities
// (paged with next_cursor), adding a friend.

import { api, token, me, signIn, signUp, signOut, el, human, fmtDistance, fmtDuration, fmtDate, renderHeader, registerServiceWorker } from './api.js';
import { createMap, athleteIcon } from './map.js';

const $ = (id) => document.getElementById(id);

const names = new Map();

function activityItem(a, extra) {
  const live = a.state === 'STARTED' || a.state === 'PAUSED';
  return el('li', {},
    el('a', { href: `/activity.html?id=${a.id}` }, `${a.type} · ${fmtDate(a.started_at)}`),
    names.has(a.athlete_id) ? el('span', {}, names.get(a.athlete_id)) : '',
    el('span', {}, fmtDistance(a.stats.distance_m)),
    el('span', { class: 'muted' }, fmtDuration(a.stats.moving_time_s)),
    live ? el('a', { class: 'badge', href: `/watch.html?activity=${a.id}` }, a.state === 'PAUSED' ? 'paused · watch' : 'live · watch') : '',
    extra || '');
}

function pager(mode) {
  let cursor = null;
  const list = $(mode), more = $(`${mode}-more`);
  async function load() {
    const q = new URLSearchParams({ mode, limit: '10' });
    if (cursor) q.set('cursor', cursor);
    const page = await api(`/v1/activities?${q}`);
    if (!cursor && !page.items.length) list.append(el('li', { class: 'muted' }, 'No activities yet.'));
    for (const a of page.items) list.append(activityItem(a));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener('click', () => load().catch(showError));
  return load();
}

/** Friends live now: a list, and a map with each one's last position. */
async function loadLive() {
  const { items } = await api('/v1/live');
  const list = $('live');
  if (!items.length) return;
  list.replaceChildren(...items.map(({ activity }) => activityItem(activity)));
  const placed = items.filter((i) => i.position);
  if (!placed.length) return;
  $('live-map').hidden = false;
  const map = createMap('live-map');
  const markers = placed.map(({ activity, position }) => {
    const name = names.get(activity.athlete_id) || 'A friend';
    return L.marker([position.lat, position.lng], { icon: athleteIcon(), title: name, alt: name })
      .addTo(map)
      .bindTooltip(name, { permanent: true, direction: 'top', offset: [0, -10] })
      .on('click', () => { location.href = `/watch.html?activity=${activity.id}`; });
  });
  map.fitBounds(L.featureGroup(markers).getBounds(), { padding: [40, 40], maxZoom: 15 });
}

// --- Devices: phones' tracker apps ---------------------------------------

const APPS = [
  ['OwnTracks', 'owntracks', 'Preferences → Connection: Mode HTTP, URL below (leave user and password empty); Monitoring: move.'],
  ['Overland', 'overland', 'Settings → Receiver Endpoint: the URL below; tracking mode high, batch size up to 1000.'],
  ['Traccar Client', 'traccar', 'Server URL: the URL below; frequency 2–5 s; any device identifier.'],
  ['GPSLogger', 'gpslogger', 'Logging details → Log to custom URL: the URL below, HTTP method GET; logging interval 2–5 s.'],
];

/** An inline SVG QR code of `text`, so the phone's camera can take the URL. */
function qr(text) {
  const box = el('span', { class: 'qr', role: 'img', 'aria-label': 'QR code of this URL' });
  if (typeof window.qrcode !== 'function') return box;
  const code = window.qrcode(0, 'M');
  code.addData(text);
  code.make();
  box.innerHTML = code.createSvgTag({ cellSize: 3, margin: 2, scalable: true });
  return box;
}

async function loadDevices() {
  const { items } = await api('/v1/devices');
  $('device-list').replaceChildren(...(items.length
    ? items.map((d) => el('li', { 'data-device': d.id },
      el('b', {}, d.name), el('span', { class: 'muted' }, d.type),
      d.current_activity ? el('a', { href: `/watch.html?activity=${d.current_activity}` }, 'live now') : '',
      el('button', { class: 'revoke', type: 'button', onclick: () => revokeDevice(d) }, 'Revoke')))
    : [el('li', { class: 'muted' }, 'No devices yet.')]));
}

async function revokeDevice(d) {
  if (!confirm(`Revoke "${d.name}"? Its app can no longer upload.`)) return;
  try { await api(`/v1/devices/${d.id}`, { method: 'DELETE' }); } catch (e) { $('friend-status').textContent = human(e); }
  $('new-device').hidden = true;
  await loadDevices();
}

$('add-device').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  try {
    const d = await api('/v1/devices', { method: 'POST', body: { name: form.get('name'), type: form.get('type') } });
    $('device-key').textContent = d.key;
    $('device-setup').querySelector('tbody').replaceChildren(...APPS.map(([name, app, how]) => el('tr', { 'data-app': app },
      el('td', {}, name),
      el('td', {}, el('p', {}, how), el('input', { value: d.urls[app], readonly: '', size: '60', 'aria-label': `${name} URL` })),
      el('td', {}, qr(d.urls[app])))));
    $('new-device').hidden = false;
    ev.target.reset();
    await loadDevices();
  } catch (e) { $('friend-status').textContent = human(e); }
});

/** `?invite=USER_ID`: offer to add whoever shared their invite link. */
async function offerInvite() {
  const inviter = new URLSearchParams(location.search).get('invite');
  if (!inviter || inviter === me()?.id) return;
  try {
    const user = await api(`/v1/users/${encodeURIComponent(inviter)}`);
    if (names.has(user.id)) return;
    $('invite-card').hidden = false;
    $('invite-text').textContent = `${user.name} invited you to be friends.`;
    $('invite-accept').onclick = async () => {
      const r = await api(`/v1/friends/${user.id}`, { method: 'PUT' });
      $('invite-text').textContent = r.status === 'friends' ? `You and ${user.name} are friends now.` : `Asked ${user.name}; friends once they add you too.`;
      $('invite-accept').hidden = true;
    };
  } catch (e) {
    $('invite-card').hidden = false;
    $('invite-text').textContent = e.status === 404 || e.status === 400 ? 'This invite link does not work (it may be mistyped).' : human(e);
    $('invite-accept').hidden = true;
  }
}

function showError(e) { $('auth-error').textContent = human(e); }

async function showSignedIn() {
  $('auth').hidden = true;
  $('signed-in').hidden = false;
  $('my-id').textContent = me()?.id || '';
  $('invite-link').value = `${location.origin}/?invite=${me()?.id || ''}`;
  const { items } = await api('/v1/friends');
  for (const f of items) names.set(f.id, f.name);
  $('friend-list').replaceChildren(...(items.length ? items.map((f) => el('li', {}, f.name)) : [el('li', { class: 'muted' }, 'No friends yet.')]));
  await Promise.all([loadLive(), pager('mine'), pager('friends'), offerInvite(), loadDevices()]);
}

$('signup').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const user = await signUp(new FormData(ev.target).get('name'));
    const p = $('new-token');
    p.querySelector('code').textContent = user.token;
    p.hidden = false;
    $('signup').hidden = true;
    $('signin').hidden = true;
    p.append(' ', el('a', { class: 'button', href: '/' }, 'Continue'));
  } catch (e) { showError(e); }
});

$('signin').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try { await signIn(new FormData(ev.target).get('token')); location.reload(); } catch (e) { $('auth-error').textContent = e.status === 401 ? 'That token is not valid.' : human(e); }
});

/**
 * Uploads a GPX or TCX file with XMLHttpRequest (fetch cannot report upload
 * progress) and lists the activities it made.
 */
function importFile(file) {
  const bar = $('import-progress'), status = $('import-status');
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1/activities/import');
    xhr.setRequestHeader('authorization', `Bearer ${token()}`);
    xhr.setRequestHeader('content-type', file.name.toLowerCase().endsWith('.tcx') ? 'application/vnd.garmin.tcx+xml' : 'application/gpx+xml');
    bar.hidden = false;
    bar.value = 0;
    status.textContent = 'Uploading…';
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 100); };
    xhr.upload.onload = () => { bar.value = 100; status.textContent = 'Reading the file…'; };
    xhr.onerror = () => { bar.hidden = true; status.textContent = 'The upload failed; check the connection and try again.'; resolve(); };
    xhr.onload = () => {
      bar.hidden = true;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 201 || xhr.status === 200) {
        const n = body.activities.length;
        status.textContent = xhr.status === 201
          ? `Imported ${n} ${n === 1 ? 'activity' : 'activities'} (${body.points} points${body.rejected ? `, ${body.rejected} skipped` : ''}).`
          : 'This file was imported before.';
        const list = $('mine');
        list.querySelector('li.muted')?.remove();
        const listed = new Set([...list.querySelectorAll('a[href^="/activity.html?id="]')].map((l) => new URL(l.href).searchParams.get('id')));
        for (const a of body.activities) if (!listed.has(a.id)) list.prepend(activityItem(a));
      } else if (xhr.status === 413) {
        status.textContent = 'That file is too large (25 MB at most).';
      } else {
        status.textContent = `That file could not be imported: ${body?.error?.message || xhr.statusText}`;
      }
      resolve();
    };
    xhr.send(file);
  });
}

$('import').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const file = ev.target.elements.file.files[0];
  if (!file) { $('import-status').textContent = 'Choose a file first.'; return; }
  await importFile(file);
});

$('sign-out').addEventListener('click', () => { signOut(); location.reload(); });

$('add-friend').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const r = await api(`/v1/friends/${encodeURIComponent(new FormData(ev.target).get('id').trim())}`, { method: 'PUT' });
    $('friend-status').textContent = r.status === 'friends' ? 'You are friends.' : 'Asked; friends once they add you too.';
  } catch (e) { $('friend-status').textContent = e.status === 404 || e.status === 400 ? 'There is no user with that id.' : human(e); }
});

$('invite-copy').addEventListener('click', async (ev) => {
  $('invite-link').select();
  try { await navigator.clipboard.writeText($('invite-link').value); ev.target.textContent = 'Copied'; } catch { ev.target.textContent = 'Select and copy'; }
});

renderHeader();
registerServiceWorker();
if (token()) showSignedIn().catch((e) => { if (e.status === 401) { signOut(); location.reload(); } else showError(e); });
