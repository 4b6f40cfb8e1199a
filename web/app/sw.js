// Service worker: keeps the app shell (pages, scripts, styles, Leaflet) in a
// cache so the runner page opens without network. API calls (/v1/...) are
// never cached: points wait in IndexedDB, not here.
const CACHE = 'trailcast-shell-v3';
const SHELL = [
  '/', '/index.html', '/runner.html', '/watch.html', '/activity.html', '/app.css', '/icon.svg',
  '/manifest.webmanifest', '/js/api.js', '/js/map.js', '/js/outbox.js', '/js/runner.js',
  '/js/watch.js', '/js/home.js', '/js/activity.js', '/js/charts.js', '/js/coach.js',
  '/vendor/leaflet/leaflet.js', '/vendor/leaflet/leaflet.css', '/vendor/qrcode/qrcode.js',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

// Network first (a new release shows at once), the cache when offline.
self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== location.origin || url.pathname.startsWith('/v1/')) return;
  event.respondWith(fetch(event.request).then((res) => {
    if (res.ok) { const copy = res.clone(); caches.open(CACHE).then((c) => c.put(event.request, copy)); }
    return res;
  }).catch(() => caches.match(event.request, { ignoreSearch: true })));
});
