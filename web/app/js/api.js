// The API client shared by every page: the token kept in localStorage, JSON
// requests with the bearer header, and the small formatting helpers.

const TOKEN_KEY = 'trailcast.token';
const ME_KEY = 'trailcast.me';

export function token() { return localStorage.getItem(TOKEN_KEY); }
export function me() { try { return JSON.parse(localStorage.getItem(ME_KEY)); } catch { return null; } }
export function signOut() { localStorage.removeItem(TOKEN_KEY); localStorage.removeItem(ME_KEY); }

export class ApiError extends Error {
  constructor(status, code, message) { super(message || code); this.status = status; this.code = code; }
}

/** fetch() against the API: JSON in, JSON out, errors as ApiError. */
export async function api(path, { method = 'GET', body, auth = token(), raw = false } = {}) {
  const headers = {};
  if (auth) headers.authorization = `Bearer ${auth}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (raw && res.ok) return res;
  const text = await res.text();
  const data = text ? safeJson(text) : null;
  if (!res.ok) {
    const e = data && data.error;
    throw new ApiError(res.status, e ? e.code : 'http_' + res.status, e ? e.message : res.statusText);
  }
  return data;
}

function safeJson(text) { try { return JSON.parse(text); } catch { return null; } }

/** Stores a token after checking it against GET /v1/me. */
export async function signIn(tok) {
  const user = await api('/v1/me', { auth: tok.trim() });
  localStorage.setItem(TOKEN_KEY, tok.trim());
  localStorage.setItem(ME_KEY, JSON.stringify(user));
  return user;
}

export async function signUp(name) {
  const user = await api('/v1/users', { method: 'POST', body: { name }, auth: null });
  localStorage.setItem(TOKEN_KEY, user.token);
  localStorage.setItem(ME_KEY, JSON.stringify({ id: user.id, name: user.name }));
  const badge = document.querySelector('header.top .me');
  if (badge) badge.textContent = `signed in as ${user.name}`;
  return user;
}

/** A sentence a person understands, for an error of `api()`. */
export function human(e, what = 'this') {
  if (!(e instanceof ApiError)) return 'The server could not be reached; check the connection and try again.';
  switch (e.status) {
    case 400: case 422:
      if (e.code === 'invalid_name') return 'A name must be 1 to 64 characters.';
      return /id|uuid/i.test(e.message) ? `This link is broken: the id in it is not valid.` : e.message;
    case 401: return `Sign in to see ${what}.`;
    case 404: return `${what[0].toUpperCase()}${what.slice(1)} does not exist, or it is not shared with you.`;
    case 413: return 'That is too large.';
    case 429: return 'Too many requests; wait a moment and try again.';
    default: return e.status >= 500 ? 'The server had a problem; try again in a moment.' : e.message;
  }
}

export const ms = (t) => (typeof t === 'number' ? t : Date.parse(t));

export function fmtDistance(m) { return m >= 1000 ? (m / 1000).toFixed(2) + ' km' : Math.round(m || 0) + ' m'; }
export function fmtDuration(s) {
  s = Math.max(0, Math.round(s || 0));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}
export function fmtPace(sPerKm) { return sPerKm && isFinite(sPerKm) && sPerKm > 0 ? fmtDuration(sPerKm) + ' /km' : '–'; }
export function fmtDate(t) { return new Date(ms(t)).toLocaleString(); }

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/** The header every page shows. */
export function renderHeader() {
  const user = me();
  const h = el('header', { class: 'top' },
    el('a', { class: 'brand', href: '/' }, 'trailcast'),
    el('a', { href: '/' }, 'Activities'),
    el('a', { href: '/runner.html' }, 'Record'),
    el('span', { class: 'me' }, user ? `signed in as ${user.name}` : 'not signed in'));
  h.setAttribute('role', 'banner');
  document.body.prepend(h);
}

export function registerServiceWorker() {
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(() => {});
}
