// Copies Leaflet's dist files (app/vendor/leaflet) and the QR code
// generator (app/vendor/qrcode) from node_modules to where the server embeds
// them. Run after changing a version:
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
const qr = path.join(web, 'app', 'vendor', 'qrcode');
rmSync(qr, { recursive: true, force: true });
mkdirSync(qr, { recursive: true });
cpSync(path.join(web, 'node_modules', 'qrcode-generator', 'qrcode.js'), path.join(qr, 'qrcode.js'));
// MIT licence: see the header of qrcode.js.
console.log(`qrcode-generator copied to ${path.relative(web, qr)}`);
