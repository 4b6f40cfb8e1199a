// Browser tests for the web app, against the real server: the watch page's
// lagged, forward-only playback; the runner page losing nothing across a
// network cut; every page rendering (screenshots in test-artifacts/).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startServer, client, launchBrowser, signInContext, watchErrors, artifacts, sleep } from './helpers.mjs';

let server;
let call;
let ann; // the athlete
let bob; // her friend, who watches

before(async () => {
  server = await startServer();
  call = client(server.base);
  ann = await call('POST', '/v1/users', { body: { name: 'Ann' } });
  bob = await call('POST', '/v1/users', { body: { name: 'Bob' } });
  await call('PUT', `/v1/friends/${bob.id}`, { token: ann.token });
  await call('PUT', `/v1/friends/${ann.id}`, { token: bob.token });
});

after(async () => {
  await server?.stop();
});

/** A browser whose pages may read a GPS fix, at first this one. */
const WITH_GPS = {
  geolocation: { latitude: 52.5, longitude: 13.3, accuracy: 5 },
  permissions: ['geolocation'],
};

/** East along a parallel through Berlin, ~6.8 m per 0.0001° of longitude. */
const route = (i) => ({ lat: 52.52, lng: 13.4 + i * 0.0001 });

test('watch page: the marker glides forward, 5 to 10 s behind the newest point', async () => {
  const run = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN' } });
  const posted = [];
  let i = 0;
  async function postNext() {
    const p = { ts: Date.now(), ...route(i++), alt: 30 + i * 0.5 };
    await call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points: [p] } });
    posted.push(p);
  }
  await postNext();
  // The athlete posts every 2 s, for the whole test.
  const athlete = setInterval(() => postNext().catch(() => {}), 2000);

  const browser = await launchBrowser();
  const errors = [];
  try {
    await signInContext(browser, bob);
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/watch.html?activity=${run.id}`);
    await page.waitForFunction(() => window.__trailcast?.markerTs != null, null, { timeout: 20000 });
    assert.equal(await page.evaluate(() => window.__trailcast.transport), 'websocket');
    await sleep(3000); // let playback settle on its clock

    const samples = [];
    const until = Date.now() + 14000;
    while (Date.now() < until) {
      const s = await page.evaluate(() => ({ ts: window.__trailcast.markerTs, ll: window.__trailcast.markerLatLng }));
      samples.push({ ...s, behind: posted.at(-1).ts - s.ts });
      await sleep(200);
    }
    for (let k = 1; k < samples.length; k++) {
      assert.ok(samples[k].ts >= samples[k - 1].ts, `marker time went backwards at sample ${k}`);
      assert.ok(samples[k].ll[1] >= samples[k - 1].ll[1] - 1e-9, `marker moved backwards at sample ${k}`);
    }
    for (const s of samples) {
      assert.ok(s.behind >= 5000 && s.behind <= 10000, `marker ${s.behind} ms behind the newest point`);
      assert.ok(Math.abs(s.ll[0] - 52.52) < 1e-6, 'marker off the route');
    }
    // Gliding, not jumping from point to point: nearly every 200 ms sample
    // shows a new position.
    const moved = samples.filter((s, k) => k && s.ll[1] > samples[k - 1].ll[1]).length;
    assert.ok(moved >= samples.length * 0.8, `marker moved in only ${moved} of ${samples.length} samples`);
    assert.match(await page.textContent('#badge'), /live/);
    assert.notEqual(await page.textContent('#distance'), '–');
    // The route runs east: the arrow points east (90°).
    const heading = await page.evaluate(() => window.__trailcast.heading);
    assert.ok(Math.abs(heading - 90) < 3, `heading ${heading}`);
    assert.match(await page.getAttribute('.athlete-marker .heading', 'style'), /rotate\((89|90|91)deg\)/);
    await page.screenshot({ path: path.join(artifacts, 'watch.png') });

    // Pause, then finish: the badges follow (after the lag).
    clearInterval(athlete);
    await call('PATCH', `/v1/activities/${run.id}`, { token: ann.token, body: { state: 'PAUSED' } });
    await page.waitForSelector('#badge.paused', { timeout: 15000 });
    await call('PATCH', `/v1/activities/${run.id}`, { token: ann.token, body: { state: 'COMPLETE' } });
    await page.waitForSelector('#badge.finished', { timeout: 15000 });
    assert.deepEqual(errors, []);
  } finally {
    clearInterval(athlete);
    await browser.closeAndClean();
  }
});

test('watch page falls back to polling and redraws late points in time order', async () => {
  const run = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN' } });
  const t0 = Date.now() - 20000;
  const pts = [0, 2, 4, 8].map((k) => ({ ts: t0 + k * 1000, ...route(k) }));
  await call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points: pts } });
  const share = await call('POST', '/v1/shares', { token: ann.token, body: { activity_id: run.id } });

  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await page.addInitScript(() => localStorage.setItem('trailcast.tiles', 'none'));
    await page.goto(`${server.base}/watch.html?activity=${run.id}&share=${share.token}&transport=poll`);
    await page.waitForFunction(() => window.__trailcast?.track.length === 4, null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => window.__trailcast.transport), 'polling');
    // A point from the middle of the track arrives late (offline sync).
    await call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points: [{ ts: t0 + 6000, ...route(6) }] } });
    await page.waitForFunction(() => window.__trailcast.track.length === 5, null, { timeout: 15000 });
    const order = await page.evaluate(() => window.__trailcast.track.map((p) => p.ts));
    assert.deepEqual(order, [0, 2, 4, 6, 8].map((k) => t0 + k * 1000));
  } finally {
    await browser.closeAndClean();
  }
});

test('runner page: no recorded point is lost when the network drops', async () => {
  const browser = await launchBrowser(WITH_GPS);
  const errors = [];
  try {
    await signInContext(browser, ann);
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/runner.html`);
    await page.click('#start');
    await page.waitForSelector('body[data-state="STARTED"]');

    let k = 0;
    const move = async (n) => {
      for (let j = 0; j < n; j++, k++) {
        await browser.setGeolocation({ latitude: 52.5 + k * 0.0001, longitude: 13.3, accuracy: 5 });
        await sleep(700);
      }
    };
    await move(4);
    await browser.setOffline(true);
    await move(8);
    const offline = await page.evaluate(() => window.__trailcast.pending);
    assert.ok(offline >= 6, `only ${offline} points waiting while offline`);
    await page.screenshot({ path: path.join(artifacts, 'runner-offline.png') });

    // A reload while offline: the service worker serves the page, the
    // points wait in IndexedDB.
    const recordedBefore = await page.evaluate(() => window.__trailcast.recorded);
    await page.reload();
    await page.waitForSelector('body[data-state="STARTED"]');
    await browser.setOffline(false);
    await move(3);
    const recordedAfter = await page.evaluate(() => window.__trailcast.recorded);
    page.once('dialog', (d) => d.accept()); // "Finish this activity?"
    await page.click('#finish');
    await page.waitForFunction(() => window.__trailcast.pending === 0 && window.__trailcast.flushes > 0
      && window.__trailcastRunner.session().changes.length === 0, null, { timeout: 20000 });
    await page.screenshot({ path: path.join(artifacts, 'runner.png') });

    const session = await page.evaluate(() => window.__trailcastRunner.session());
    const a = await call('GET', `/v1/activities/${session.id}`, { token: ann.token });
    assert.equal(a.state, 'COMPLETE');
    const onServer = await call('GET', `/v1/activities/${session.id}/route?format=json`, { token: ann.token });
    const serverTs = new Set(onServer.points.map((p) => Date.parse(p.ts)));
    const recorded = [...recordedBefore, ...recordedAfter];
    assert.ok(recorded.length >= 13, `the page recorded only ${recorded.length} positions`);
    for (const p of recorded) assert.ok(serverTs.has(p.ts), `recorded point ${p.ts} missing on the server`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('home, activity, sign-in and runner pages render', async () => {
  // A finished activity with splits and elevation for the activity page.
  const t0 = Date.now() - 30 * 60000;
  const run = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN', started_at: t0 } });
  const points = Array.from({ length: 400 }, (_, k) => ({
    ts: t0 + k * 3000, lat: 52.52 + Math.sin(k / 60) * 0.004, lng: 13.4 + k * 0.00012, alt: 40 + 15 * Math.sin(k / 40),
  }));
  await call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points } });
  await call('PATCH', `/v1/activities/${run.id}`, { token: ann.token, body: { state: 'COMPLETE', at: t0 + 400 * 3000 } });
  const live = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RIDE' } });
  await call('POST', `/v1/activities/${live.id}/points`, { token: ann.token, body: { ts: Date.now(), ...route(0) } });

  const res = await fetch(`${server.base}/nope`);
  assert.equal(res.status, 404);
  assert.equal((await res.json()).error.code, 'not_found');

  const browser = await launchBrowser();
  const errors = [];
  try {
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.addInitScript(() => localStorage.setItem('trailcast.tiles', 'none'));

    // Sign up through the form, then sign in by pasting the token.
    await page.goto(`${server.base}/`);
    await page.screenshot({ path: path.join(artifacts, 'sign-in.png') });
    await page.fill('#signup input[name=name]', 'Cleo');
    await page.click('#signup button');
    await page.waitForSelector('#new-token:not([hidden])');
    const token = (await page.textContent('#new-token code')).trim();
    assert.ok(token.length > 10);
    await page.evaluate(() => localStorage.clear());
    await page.goto(`${server.base}/`);
    await page.fill('#signin input[name=token]', bob.token);
    await page.click('#signin button');
    await page.waitForSelector('#signed-in:not([hidden])');
    await page.waitForSelector(`#friends a[href="/activity.html?id=${run.id}"]`);
    await page.waitForSelector(`#live a[href="/activity.html?id=${live.id}"]`);
    await page.screenshot({ path: path.join(artifacts, 'home.png'), fullPage: true });

    await page.goto(`${server.base}/activity.html?id=${run.id}`);
    await page.waitForSelector('#splits tbody tr');
    assert.ok(await page.locator('#splits tbody tr').count() >= 2);
    await page.waitForSelector('#pace-chart path');
    await page.waitForSelector('#elevation-chart path');
    assert.equal(await page.locator('.leaflet-control-scale').count(), 1);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#gpx')]);
    const gpx = path.join(artifacts, 'activity.gpx');
    await download.saveAs(gpx);
    const { readFileSync } = await import('node:fs');
    assert.match(readFileSync(gpx, 'utf8'), /<gpx/);
    await page.screenshot({ path: path.join(artifacts, 'activity.png'), fullPage: true });

    await page.goto(`${server.base}/runner.html`);
    const manifest = await page.evaluate(() => fetch(document.querySelector('link[rel=manifest]').href).then((r) => r.json()));
    assert.equal(manifest.start_url, '/runner.html');
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.screenshot({ path: path.join(artifacts, 'runner-idle.png') });
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('runner page: the athlete sees who watches and removes one viewer', async () => {
  const cid = await call('POST', '/v1/users', { body: { name: 'Cid' } });
  await call('PUT', `/v1/friends/${cid.id}`, { token: ann.token });
  await call('PUT', `/v1/friends/${ann.id}`, { token: cid.token });
  const browser = await launchBrowser();
  const errors = [];
  try {
    await signInContext(browser, ann);
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/runner.html`);
    await page.evaluate(() => window.__trailcastRunner.newSession());
    await page.selectOption('#hide-ends', '200');
    await page.click('#start');
    await page.waitForFunction(() => window.__trailcastRunner.session()?.id);
    const id = await page.evaluate(() => window.__trailcastRunner.session().id);
    await page.evaluate(() => window.__trailcastRunner.flush());
    const activity = await call('GET', `/v1/activities/${id}`, { token: ann.token });
    assert.equal(activity.hide_ends_m, 200, 'the chosen hidden ends reach the server');

    // Bob and Cid watch (polling); both show up by name.
    for (const friend of [bob, cid]) {
      await call('GET', `/v1/activities/${id}/live?lag=5`, { token: friend.token });
    }
    await page.evaluate(() => window.__trailcastRunner.refreshViewers());
    await page.waitForSelector(`#viewers li[data-user="${bob.id}"]`);
    await page.waitForSelector(`#viewers li[data-user="${cid.id}"]`);
    assert.equal(await page.textContent('#viewer-count'), '2');
    await page.screenshot({ path: path.join(artifacts, 'runner-viewers.png') });

    await page.click(`#viewers li[data-user="${bob.id}"] button.remove`);
    await page.waitForSelector(`#viewers li[data-user="${bob.id}"]`, { state: 'detached' });
    await assert.rejects(
      call('GET', `/v1/activities/${id}/live?lag=5`, { token: bob.token }),
      /404/,
      'the removed viewer no longer sees the activity',
    );
    await call('GET', `/v1/activities/${id}/live?lag=5`, { token: cid.token });
    await page.evaluate(() => window.__trailcastRunner.newSession());
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('home page: a GPX file is imported with a progress bar and listed', async () => {
  const dan = await call('POST', '/v1/users', { body: { name: 'Dan' } });
  const t0 = Date.now() - 3 * 86400000;
  const points = Array.from({ length: 300 }, (_, i) =>
    `<trkpt lat="${52.5 + i * 3e-5}" lon="13.4"><ele>${30 + i % 7}</ele><time>${new Date(t0 + i * 1000).toISOString()}</time></trkpt>`);
  const gpx = `<?xml version="1.0"?>\n<gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1"><trk><type>running</type><trkseg>\n${points.join('\n')}\n</trkseg></trk></gpx>\n`;
  const browser = await launchBrowser();
  const errors = [];
  try {
    await signInContext(browser, dan);
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/`);
    await page.waitForSelector('#signed-in:not([hidden])');
    await page.setInputFiles('#import input[type=file]', { name: 'run.gpx', mimeType: 'application/gpx+xml', buffer: Buffer.from(gpx) });
    await page.click('#import button');
    await page.waitForFunction(() => /Imported 1 activity \(300 points/.test(document.getElementById('import-status').textContent));
    assert.match(await page.textContent('#mine li:first-child a'), /^RUN ·/);
    assert.equal(await page.isHidden('#import-progress'), true);
    // Again: recognised, not duplicated.
    await page.click('#import button');
    await page.waitForFunction(() => /imported before/.test(document.getElementById('import-status').textContent));
    const mine = await call('GET', '/v1/activities', { token: dan.token });
    assert.equal(mine.items.length, 1);
    assert.equal(await page.locator('#mine li').count(), 1, 'listed once');
    // A broken file: a sentence, with the line.
    await page.setInputFiles('#import input[type=file]', { name: 'bad.gpx', mimeType: 'application/gpx+xml', buffer: Buffer.from('<gpx>\n<trk>\n</gpx>') });
    await page.click('#import button');
    await page.waitForFunction(() => /could not be imported: line 3/.test(document.getElementById('import-status').textContent));
    await page.screenshot({ path: path.join(artifacts, 'import.png') });
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('runner page: a course speaks each cue on time and shows the step and progress', async () => {
  const eve = await call('POST', '/v1/users', { body: { name: 'Eve' } });
  const course = await call('POST', '/v1/courses', {
    token: eve.token,
    body: {
      name: 'Quick test session',
      steps: [
        { kind: 'walk', duration_s: 2, cue: 'Walk two seconds.' },
        { kind: 'run', duration_s: 4, cue: 'Run four seconds.', halfway_cue: 'Halfway.' },
        { kind: 'cool_down', duration_s: 2, cue: 'Cool down.' },
      ],
    },
  });
  const browser = await launchBrowser();
  const errors = [];
  try {
    await signInContext(browser, eve);
    // A stub speech synthesiser that records what is said, and when.
    await browser.addInitScript(() => {
      window.__spoken = [];
      Object.defineProperty(window, 'speechSynthesis', {
        value: { speak: (u) => window.__spoken.push({ text: u.text, at: performance.now() }), cancel() {} },
      });
    });
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/runner.html?course=${course.id}`);
    await page.waitForFunction((id) => document.getElementById('course').value === id, course.id);
    await page.click('#start');
    const startedAt = await page.evaluate(() => performance.now());
    await page.waitForFunction(() => window.__spoken.length >= 1);
    assert.match(await page.textContent('#step'), /Walk · step 1 of 3/);
    await page.waitForFunction(() => window.__spoken.some((s) => s.text === 'Cool down.'), null, { timeout: 15000 });
    const spoken = await page.evaluate(() => window.__spoken);
    assert.deepEqual(spoken.map((s) => s.text), ['Walk two seconds.', 'Run four seconds.', 'Halfway.', 'Cool down.']);
    // Each cue when its step starts (steps of 2, 4 and 2 s; a 250 ms tick).
    const due = [0, 2000, 4000, 6000];
    spoken.forEach((s, i) => {
      const late = s.at - startedAt - due[i];
      assert.ok(late > -300 && late < 1200, `"${s.text}" ${Math.round(late)} ms off its time`);
    });
    const progress = await page.evaluate(() => document.getElementById('course-progress').value);
    assert.ok(progress > 0.66 && progress <= 1, `progress ${progress}: in the last of 3 steps`);
    const activity = await call('GET', `/v1/activities/${await page.evaluate(() => window.__trailcastRunner.session().id)}`, { token: eve.token });
    assert.equal(activity.course_name, 'Quick test session');
    await page.screenshot({ path: path.join(artifacts, 'runner-course.png') });
    await page.evaluate(() => window.__trailcastRunner.newSession());
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('watch page, second pass: who, following, honest states, no tokens in logs, final errors', async () => {
  const run = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN', started_at: Date.now() - 60000 } });
  const t0 = Date.now() - 50000;
  // 40 points east, each 4 s: a track longer than the map's first view.
  const pts = Array.from({ length: 12 }, (_, k) => ({ ts: t0 + k * 4000, lat: 52.52, lng: 13.4 + k * 0.002, hr: 140 + k }));
  await call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points: pts } });
  const share = await call('POST', '/v1/shares', { token: ann.token, body: { activity_id: run.id, expires_in_s: 3600 } });
  assert.match(share.watch_url, new RegExp(`^/watch.html\\?activity=${run.id}&share=`));

  const browser = await launchBrowser();
  const errors = [];
  const consoleText = [];
  try {
    const page = await browser.newPage();
    watchErrors(page, errors);
    page.on('console', (m) => consoleText.push(m.text()));
    page.on('requestfailed', (r) => consoleText.push(r.url()));
    await page.addInitScript(() => localStorage.setItem('trailcast.tiles', 'none'));
    await page.goto(`${server.base}${share.watch_url}`);
    await page.waitForFunction(() => window.__trailcast?.transport === 'websocket' && window.__trailcast.track.length === 12, null, { timeout: 15000 });
    assert.equal(await page.textContent('#who'), "Ann's run", 'a share-link viewer sees whose run it is');
    assert.match(await page.textContent('#about'), /^Started /);
    assert.match(await page.textContent('#last-fix'), /^last fix \d\d:\d\d:\d\d \(\d+ s ago\)$/);
    assert.equal(await page.textContent('#hr'), '151 bpm');
    assert.equal(await page.isHidden('#recentre'), true, 'following by default');

    // Panning stops following; the button brings it back.
    const box = await page.locator('#map').boundingBox();
    await page.mouse.move(box.x + 60, box.y + 60); // away from the marker
    await page.mouse.down();
    await page.mouse.move(box.x + 360, box.y + 160, { steps: 8 });
    await page.mouse.up();
    await page.waitForSelector('#recentre:not([hidden])');
    assert.equal(await page.evaluate(() => window.__trailcast.follow), false);
    await page.click('#recentre');
    assert.equal(await page.evaluate(() => window.__trailcast.follow), true);

    // Paused: no "s behind"; finished: "finished at HH:MM".
    await call('PATCH', `/v1/activities/${run.id}`, { token: ann.token, body: { state: 'PAUSED' } });
    await page.waitForSelector('#badge.paused', { timeout: 15000 });
    await page.waitForFunction(() => document.getElementById('delay').textContent === 'paused');
    await call('PATCH', `/v1/activities/${run.id}`, { token: ann.token, body: { state: 'COMPLETE' } });
    await page.waitForFunction(() => /^finished at \d\d:\d\d$/.test(document.getElementById('delay').textContent), null, { timeout: 15000 });
    assert.equal(await page.textContent('#badge'), 'finished');
    await page.screenshot({ path: path.join(artifacts, 'watch-finished.png') });

    // A broken link: explained once, no retry loop, no "live" badge.
    const broken = await browser.newPage();
    watchErrors(broken, errors);
    broken.on('console', (m) => consoleText.push(m.text()));
    await signInContext(browser, bob);
    await broken.goto(`${server.base}/watch.html?activity=not-a-uuid`);
    await broken.waitForFunction(() => document.getElementById('error').textContent.length > 0, null, { timeout: 15000 });
    assert.match(await broken.textContent('#error'), /broken/);
    assert.equal(await broken.textContent('#badge'), 'ended');
    await sleep(1500);
    assert.equal(await broken.evaluate(() => window.__trailcast.transport), 'stopped', 'no retries after a 4xx');
    assert.ok(!(await broken.textContent('body')).includes('UUID'), 'no raw server message');

    // A revoked share link: the socket closes, the page says why, the badge is not "live".
    const run2 = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN' } });
    const share2 = await call('POST', '/v1/shares', { token: ann.token, body: { activity_id: run2.id } });
    const revoked = await browser.newPage();
    watchErrors(revoked, errors);
    revoked.on('console', (m) => consoleText.push(m.text()));
    await revoked.goto(`${server.base}${share2.watch_url}`);
    await revoked.waitForFunction(() => window.__trailcast?.transport === 'websocket', null, { timeout: 15000 });
    await call('DELETE', `/v1/shares/${share2.id}`, { token: ann.token });
    await revoked.waitForFunction(() => /revoked/.test(document.getElementById('error').textContent), null, { timeout: 15000 });
    assert.equal(await revoked.textContent('#badge'), 'ended');

    for (const text of consoleText) {
      assert.ok(!text.includes(share.token) && !text.includes(share2.token) && !text.includes(bob.token), `a token in the console: ${text}`);
    }
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('home, activity and runner pages, second pass: header, invites, live map, shares, partial splits, finish', async () => {
  const gil = await call('POST', '/v1/users', { body: { name: 'Gil' } });
  const live = await call('POST', '/v1/activities', { token: gil.token, body: { type: 'RIDE', started_at: Date.now() - 60000 } });
  await call('POST', `/v1/activities/${live.id}/points`, { token: gil.token, body: { points: [{ ts: Date.now() - 30000, lat: 48.1, lng: 11.5 }] } });
  const browser = await launchBrowser();
  const errors = [];
  try {
    const page = await browser.newPage();
    watchErrors(page, errors);
    // ?tiles= is for this page only, never remembered.
    await page.goto(`${server.base}/?tiles=none`);
    assert.equal(await page.evaluate(() => localStorage.getItem('trailcast.tiles')), null);
    await page.goto(`${server.base}/?tiles=https://evil.example/{z}/{x}/{y}.png`);
    assert.equal(await page.evaluate(() => localStorage.getItem('trailcast.tiles')), null);
    // The header knows you right after sign-up.
    await page.fill('#signup input[name=name]', 'Hal');
    await page.click('#signup button');
    await page.waitForSelector('#new-token:not([hidden])');
    assert.equal(await page.textContent('header.top .me'), 'signed in as Hal');
    assert.equal(await page.locator('#signup label input').count(), 1, 'inputs have labels');

    // Gil's invite link: Hal adds Gil; Gil adds Hal back.
    const hal = await page.evaluate(() => ({ id: JSON.parse(localStorage.getItem('trailcast.me')).id, token: localStorage.getItem('trailcast.token') }));
    await page.addInitScript(() => localStorage.setItem('trailcast.tiles', 'none'));
    await page.goto(`${server.base}/?invite=${gil.id}`);
    await page.waitForSelector('#invite-card:not([hidden])');
    assert.match(await page.textContent('#invite-text'), /^Gil invited you/);
    await page.click('#invite-accept');
    await page.waitForFunction(() => /Asked Gil/.test(document.getElementById('invite-text').textContent));
    await call('PUT', `/v1/friends/${hal.id}`, { token: gil.token });

    // Gil is live: Hal's home shows him on a map once his position is
    // released to watchers.
    for (let i = 0; ; i++) {
      const { items } = await call('GET', '/v1/live', { token: hal.token });
      if (items[0]?.position) break;
      assert.ok(i < 40, 'Gil\'s position never released');
      await sleep(500);
    }
    await page.goto(`${server.base}/`);
    await page.waitForSelector('#live-map:not([hidden]) .leaflet-marker-icon', { timeout: 20000 });
    assert.match(await page.textContent('#live-map'), /Gil/);

    // Gil's activity page: share links made, copied and revoked.
    const gilPage = await browser.newPage();
    watchErrors(gilPage, errors);
    await gilPage.addInitScript(([token, me]) => {
      localStorage.setItem('trailcast.token', token);
      localStorage.setItem('trailcast.me', me);
      localStorage.setItem('trailcast.tiles', 'none');
    }, [gil.token, JSON.stringify({ id: gil.id, name: 'Gil' })]);
    await gilPage.goto(`${server.base}/activity.html?id=${live.id}`);
    await gilPage.waitForSelector('#sharing:not([hidden])');
    assert.equal(await gilPage.textContent('#title'), 'Your ride (live)');
    await gilPage.click('#share-form button');
    await gilPage.waitForSelector('#shares li');
    const url = await gilPage.inputValue('#shares li input');
    assert.match(url, /\/watch\.html\?activity=.*&share=tc_/);
    const token = new URL(url).searchParams.get('share');
    const polled = await fetch(`${server.base}/v1/activities/${live.id}/live?lag=5`, { headers: { 'x-share-token': token } });
    assert.equal(polled.status, 200);
    // A link made on another device is listed too (without its address)
    // and can be revoked here.
    const other = await call('POST', '/v1/shares', { token: gil.token, body: { activity_id: live.id, expires_in_s: 3600 } });
    await gilPage.reload();
    await gilPage.waitForSelector(`#shares li[data-share="${other.id}"] .elsewhere`);
    assert.equal(await gilPage.locator('#shares li').count(), 2);
    assert.equal(await gilPage.inputValue('#shares li input'), url, 'the address made here is shown again');
    await gilPage.click(`#shares li[data-share="${other.id}"] button.revoke`);
    await gilPage.waitForSelector(`#shares li[data-share="${other.id}"]`, { state: 'detached' });
    const gone = await fetch(`${server.base}/v1/activities/${live.id}/live?lag=5`, { headers: { 'x-share-token': other.token } });
    assert.equal(gone.status, 404);
    await gilPage.click('#shares li button.revoke');
    await gilPage.waitForSelector('#shares li', { state: 'detached' });
    const after = await fetch(`${server.base}/v1/activities/${live.id}/live?lag=5`, { headers: { 'x-share-token': token } });
    assert.equal(after.status, 404);

    // A finished activity: the last split is marked partial.
    const t0 = Date.now() - 3600000;
    const done = await call('POST', '/v1/activities', { token: gil.token, body: { type: 'RUN', started_at: t0 } });
    const track = Array.from({ length: 200 }, (_, k) => ({ ts: t0 + k * 3000, lat: 48.1 + k * 0.0001, lng: 11.5 }));
    await call('POST', `/v1/activities/${done.id}/points`, { token: gil.token, body: { points: track } });
    await call('PATCH', `/v1/activities/${done.id}`, { token: gil.token, body: { state: 'COMPLETE', at: t0 + 600000 } });
    await gilPage.goto(`${server.base}/activity.html?id=${done.id}`);
    await gilPage.waitForSelector('#splits tbody tr.partial');
    assert.match(await gilPage.textContent('#splits tbody tr.partial'), /partial/);
    const own = await browser.newPage();
    watchErrors(own, errors);
    await own.goto(`${server.base}/activity.html?id=${crypto.randomUUID()}`);
    await own.waitForFunction(() => document.getElementById('error').textContent.length > 0);
    assert.equal(await own.textContent('#error'), 'This activity does not exist, or it is not shared with you.');
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('devices: add one, see its key and each app\'s settings with a QR code, revoke it', async () => {
  const ivy = await call('POST', '/v1/users', { body: { name: 'Ivy' } });
  const browser = await launchBrowser();
  const errors = [];
  try {
    await signInContext(browser, ivy);
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/#devices`);
    await page.waitForSelector('#device-list li');
    await page.fill('#add-device input[name=name]', 'Ivy\'s phone');
    await page.selectOption('#add-device select[name=type]', 'RIDE');
    await page.click('#add-device button');
    await page.waitForSelector('#new-device:not([hidden])');
    const key = (await page.textContent('#device-key')).trim();
    assert.match(key, /^tc_[0-9a-f]{64}$/);
    for (const app of ['owntracks', 'overland', 'traccar', 'gpslogger']) {
      const url = await page.inputValue(`#device-setup tr[data-app=${app}] input`);
      assert.ok(url.startsWith(`${server.base}/ingest/${app}/${key}`), url);
      assert.equal(await page.locator(`#device-setup tr[data-app=${app}] .qr svg`).count(), 1, `${app} QR code`);
    }
    await page.screenshot({ path: path.join(artifacts, 'devices.png'), fullPage: true });
    // The GPSLogger URL works as the app fills it in.
    const template = await page.inputValue('#device-setup tr[data-app=gpslogger] input');
    const filled = template.replace('%LAT', '52.5').replace('%LON', '13.4').replace('%TIME', encodeURIComponent(new Date().toISOString()))
      .replace('%ALT', '30').replace('%ACC', '5').replace('%SPD', '3').replace('%DIR', '0').replace('%BATT', '80');
    assert.equal((await fetch(filled)).status, 200);
    await page.reload();
    await page.waitForSelector('#device-list li[data-device] a', { timeout: 15000 });
    assert.match(await page.textContent('#device-list'), /Ivy's phone.*RIDE.*live now/s);
    page.once('dialog', (d) => d.accept());
    await page.click('#device-list li[data-device] button.revoke');
    await page.waitForFunction(() => /No devices yet/.test(document.getElementById('device-list').textContent));
    assert.equal((await fetch(filled)).status, 401, 'revoked at once');
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

test('watch page: a server outage says "connection lost, retrying", then the page is back on a WebSocket with every point', async () => {
  const run = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN', started_at: Date.now() - 20000 } });
  let i = 0;
  const postPoints = (n) => {
    const t = Date.now() - n * 1000;
    const points = Array.from({ length: n }, (_, k) => ({ ts: t + k * 1000, ...route(i + k) }));
    i += n;
    return call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points } });
  };
  await postPoints(5);

  const browser = await launchBrowser();
  const errors = [];
  try {
    await signInContext(browser, bob);
    const page = await browser.newPage();
    watchErrors(page, errors);
    await page.goto(`${server.base}/watch.html?activity=${run.id}&lag=5`);
    await page.waitForFunction(() => window.__trailcast?.transport === 'websocket' && window.__trailcast.track.length === 5, null, { timeout: 20000 });
    assert.equal(await page.textContent('#badge'), 'live');

    await server.down();
    try {
      await page.waitForFunction(() => document.getElementById('badge').textContent === 'connection lost, retrying', null, { timeout: 15000 });
      assert.equal(await page.textContent('#delay'), 'connection lost, retrying', 'no "s behind" while nothing arrives');
      assert.equal(await page.getAttribute('#badge', 'class'), 'badge offline');
      // Down long enough that the WebSocket retry failed and the page fell
      // back to polling, which failed too: it has to find its way back.
      await page.waitForFunction(() => window.__trailcast.reconnects >= 2, null, { timeout: 15000 });
    } finally {
      await server.up();
    }
    // The athlete went on while the server was away (her phone kept the points).
    await postPoints(5);
    // The page finds the server again, goes back to a WebSocket (it may poll
    // once on the way) and has every point, in time order, with no gap.
    await page.waitForFunction(() => window.__trailcast.transport === 'websocket' && window.__trailcast.connection === 'ok' && window.__trailcast.track.length === 10, null, { timeout: 40000 });
    const ts = await page.evaluate(() => window.__trailcast.track.map((p) => p.ts));
    for (let k = 1; k < ts.length; k++) assert.ok(ts[k] > ts[k - 1], `track out of order at ${k}`);
    await page.waitForFunction(() => document.getElementById('badge').textContent === 'live', null, { timeout: 10000 });
    // The marker glides on from where it was: it never runs backwards.
    const marks = [];
    for (let k = 0; k < 15; k++) {
      marks.push(await page.evaluate(() => window.__trailcast.markerTs));
      await sleep(200);
    }
    for (let k = 1; k < marks.length; k++) assert.ok(marks[k] >= marks[k - 1], `marker ran backwards at sample ${k}`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});

/**
 * What a page offers assistive technology and low vision, checked in the
 * page: every form control has a label, every visible button's text has
 * 4.5:1 contrast (WCAG AA) against its background, every chart has a text
 * alternative, and there is a live region for announcements.
 */
function accessibilityProblems() {
  const problems = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    const labelled = el.closest('label') || (el.id && document.querySelector(`label[for="${el.id}"]`))
      || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
    if (!labelled) problems.push(`unlabelled control ${el.outerHTML.slice(0, 80)}`);
  }
  const rgba = (s) => s.match(/[\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  for (const b of document.querySelectorAll('button, a.button')) {
    if (!b.offsetParent || b.disabled) continue;
    const [hi, lo] = [luminance(rgba(getComputedStyle(b).color)), luminance(background(b))].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) problems.push(`button "${b.textContent.trim()}" has contrast ${ratio.toFixed(2)}:1`);
  }
  for (const svg of document.querySelectorAll('svg.chart')) {
    if (svg.getAttribute('role') !== 'img' || !svg.getAttribute('aria-label')) problems.push(`chart #${svg.id} has no text alternative`);
  }
  if (!document.querySelector('[aria-live], [role=status], [role=alert]')) problems.push('no live region');
  return problems;
}

test('second pass, the rest: no signal, pace now, cadence, battery, start marker, live elevation; runner map, wake lock, discard; pace breaks at a pause; labels and contrast', async () => {
  // A live run whose phone lost signal: the newest fix is ~50 s old.
  const run = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN', started_at: Date.now() - 120000 } });
  const t0 = Date.now() - 90000;
  const fixes = Array.from({ length: 20 }, (_, k) => ({ ts: t0 + k * 2000, ...route(k), alt: 30 + k, hr: 150, cadence: 172, battery: 64 }));
  await call('POST', `/v1/activities/${run.id}/points`, { token: ann.token, body: { points: fixes } });

  // A finished run with a five-minute pause in the middle.
  const t1 = Date.now() - 3600000;
  const paused = await call('POST', '/v1/activities', { token: ann.token, body: { type: 'RUN', started_at: t1 } });
  const legs = Array.from({ length: 80 }, (_, k) => ({ ts: t1 + k * 3000 + (k >= 40 ? 300000 : 0), ...route(k * 1.5), alt: 40 }));
  await call('POST', `/v1/activities/${paused.id}/points`, { token: ann.token, body: { points: legs } });
  await call('PATCH', `/v1/activities/${paused.id}`, { token: ann.token, body: { state: 'COMPLETE', at: legs.at(-1).ts } });

  const browser = await launchBrowser(WITH_GPS);
  const errors = [];
  try {
    await signInContext(browser, ann);
    // A wake lock that records what the page asks of it.
    await browser.addInitScript(() => {
      window.__wake = [];
      Object.defineProperty(navigator, 'wakeLock', {
        configurable: true,
        value: {
          async request(type) {
            window.__wake.push(type);
            const sentinel = new EventTarget();
            sentinel.release = async () => { window.__wake.push('released'); };
            return sentinel;
          },
        },
      });
    });

    const watch = await browser.newPage();
    watchErrors(watch, errors);
    await watch.goto(`${server.base}/watch.html?activity=${run.id}&lag=5`);
    await watch.waitForFunction(() => window.__trailcast?.track.length === 20, null, { timeout: 20000 });
    await watch.waitForFunction(() => document.getElementById('badge').textContent === 'no signal from the athlete', null, { timeout: 10000 });
    assert.equal(await watch.getAttribute('#badge', 'class'), 'badge stale');
    assert.match(await watch.textContent('#pace-now'), /^\d+:\d\d \/km$/, 'pace over the last minute');
    assert.match(await watch.textContent('#elapsed'), /\d/);
    assert.equal(await watch.textContent('#cadence'), '172 spm');
    assert.equal(await watch.textContent('#battery'), '64 %');
    assert.equal(await watch.locator('.start-marker').count(), 1, 'the start is marked');
    await watch.waitForSelector('#elevation:not([hidden]) path', { state: 'attached' });
    assert.match(await watch.getAttribute('#elevation', 'aria-label'), /from 30 m to 49 m/);
    assert.deepEqual(await watch.evaluate(accessibilityProblems), [], 'watch page');

    // The activity page: the pace line stops at the pause and goes on after it.
    const activity = await browser.newPage();
    watchErrors(activity, errors);
    await activity.goto(`${server.base}/activity.html?id=${paused.id}`);
    await activity.waitForSelector('#pace-chart path', { state: 'attached' });
    const d = await activity.getAttribute('#pace-chart path', 'd');
    assert.equal(d.match(/M/g).length, 2, 'one line before the pause, one after');
    assert.deepEqual(await activity.evaluate(accessibilityProblems), [], 'activity page');

    const home = await browser.newPage();
    watchErrors(home, errors);
    await home.goto(`${server.base}/`);
    await home.waitForSelector('header.top .me');
    assert.deepEqual(await home.evaluate(accessibilityProblems), [], 'home page');

    // Recording: the own track on a map, the screen kept on, finish and
    // discard away from pause and both asking first.
    const runner = await browser.newPage();
    watchErrors(runner, errors);
    await runner.goto(`${server.base}/runner.html`);
    assert.deepEqual(await runner.evaluate(accessibilityProblems), [], 'runner page');
    await runner.click('#start');
    await runner.waitForSelector('body[data-state="STARTED"]');
    for (let k = 1; k <= 3; k++) {
      await browser.setGeolocation({ latitude: 52.5 + k * 0.0002, longitude: 13.3, accuracy: 5 });
      await runner.waitForFunction((n) => window.__trailcast.recorded.length >= n, k, { timeout: 10000 });
    }
    await runner.waitForSelector('#map:not([hidden]) path.leaflet-interactive', { state: 'attached' });
    assert.deepEqual(await runner.evaluate(() => window.__wake), ['screen']);
    assert.match(await runner.textContent('#wake'), /screen stays on/);
    assert.equal(await runner.evaluate(() => document.getElementById('finish').closest('.runner-controls')), null, 'finish is not next to pause');
    assert.equal(await runner.evaluate(() => document.getElementById('pause').closest('.runner-controls') !== null), true);
    runner.once('dialog', (dialog) => dialog.dismiss());
    await runner.click('#discard');
    assert.equal(await runner.evaluate(() => document.body.dataset.state), 'STARTED', 'discard asks first');
    runner.once('dialog', (dialog) => dialog.accept());
    await runner.click('#discard');
    await runner.waitForSelector('body[data-state="DISCARDED"]', { timeout: 15000 });
    assert.deepEqual(await runner.evaluate(() => window.__wake), ['screen', 'released']);
    const session = await runner.evaluate(() => window.__trailcastRunner.session());
    await runner.waitForFunction(() => window.__trailcastRunner.session().changes.length === 0, null, { timeout: 15000 });
    const discarded = await fetch(`${server.base}/v1/activities/${session.id}`, { headers: { authorization: `Bearer ${ann.token}` } });
    assert.ok(discarded.status === 404 || (await discarded.json()).state === 'DISCARDED', `discarded activity answered ${discarded.status}`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.closeAndClean();
  }
});
