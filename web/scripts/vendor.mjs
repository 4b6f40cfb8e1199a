// Copies Leaflet's dist files from node_modules into app/vendor/leaflet,
// where the server embeds them. Run after changing the leaflet version:
//   npm install && npm run vendor
// The copy is committed, so building the server needs no npm.
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const from = path.join(web, 'node_modules', 'leaflet', 'dist');
const to = path.join(web, 'app', 'vendor', 'leaflet');
rmSync(to, { recursive: true, force: true });
mkdirSync(to, { recursive: true });
for (const f of ['leaflet.js', 'leaflet.css', 'images']) cpSync(path.join(from, f), path.join(to, f), { recursive: true });
console.log(`leaflet copied to ${path.relative(web, to)}`);
