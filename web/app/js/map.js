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
  return L.divIcon({ className: '', html: '<div class="athlete-marker"></div>', iconSize: [18, 18], iconAnchor: [9, 9] });
}
