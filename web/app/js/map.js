// Leaflet maps with a configurable tile source. Default OpenStreetMap; set
// localStorage 'trailcast.tiles' to another URL template, or to "none" for
// a plain background (the route and scale bar still draw). `?tiles=` applies
// to that page only and only as "none" or "osm": a link must not be able to
// send every later map's tile requests (the viewer's whereabouts of
// interest) to a host of its choosing.

const OSM = 'https://tile.openstreetmap.org/{z}/{x}/{y}.png';

export function tileUrl() {
  const q = new URLSearchParams(location.search).get('tiles');
  if (q === 'none') return 'none';
  if (q === 'osm') return OSM;
  return localStorage.getItem('trailcast.tiles') || OSM;
}

export function createMap(elementId) {
  const map = L.map(elementId, { zoomControl: true }).setView([52.52, 13.405], 13);
  const url = tileUrl();
  if (url !== 'none') {
    L.tileLayer(url, {
      maxZoom: 19,
      attribution: url === OSM ? '&copy; OpenStreetMap contributors' : '',
    }).addTo(map);
  }
  L.control.scale({ imperial: false }).addTo(map);
  return map;
}

export function athleteIcon() {
  // The arrow shows the direction of travel once it is known (`heading`).
  return L.divIcon({ className: '', html: '<div class="athlete-marker"><div class="heading" hidden></div></div>', iconSize: [18, 18], iconAnchor: [9, 9] });
}

/** Initial bearing from a to b ([lat, lng]), degrees clockwise from north. */
export function bearing(a, b) {
  const rad = Math.PI / 180;
  const [p1, p2] = [a[0] * rad, b[0] * rad];
  const dl = (b[1] - a[1]) * rad;
  const y = Math.sin(dl) * Math.cos(p2);
  const x = Math.cos(p1) * Math.sin(p2) - Math.sin(p1) * Math.cos(p2) * Math.cos(dl);
  return (Math.atan2(y, x) / rad + 360) % 360;
}

/** Metres between two [lat, lng] (equirectangular: fine for a few hundred m). */
export function metresBetween(a, b) {
  const rad = Math.PI / 180;
  const x = (b[1] - a[1]) * rad * Math.cos(((a[0] + b[0]) / 2) * rad);
  const y = (b[0] - a[0]) * rad;
  return Math.hypot(x, y) * 6371000;
}
