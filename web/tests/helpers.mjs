// Shared by the browser tests: the real server (started from the cargo
// build, on port 0, with its own data directory), a tiny API client and a
// headless Chromium driven by playwright-core.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..', '..');
export const artifacts = path.join(root, 'test-artifacts');

/** Starts `trailcast serve` and resolves once it printed its address. */
export async function startServer() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'trailcast-web-'));
  let { child, base } = await spawnServer(dataDir, '127.0.0.1:0');
  const stopped = () => new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
  return {
    base,
    async stop() {
      child.kill('SIGTERM');
      await stopped();
      rmSync(dataDir, { recursive: true, force: true });
    },
    /** An outage: the process stops, its data stays. */
    async down() {
      child.kill('SIGTERM');
      await stopped();
    },
    /** Back after `down()`, on the same address and data. */
    async up() {
      ({ child } = await spawnServer(dataDir, new URL(base).host));
    },
  };
}

async function spawnServer(dataDir, listen) {
  const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(root, process.env.CARGO_TARGET_DIR) : path.join(root, 'target');
  const bin = process.env.TRAILCAST_BIN || path.join(targetDir, 'debug', 'trailcast');
  // Every test user signs up from this one address.
  const child = spawn(bin, ['serve', '--listen', listen, '--data-dir', dataDir, '--signup-burst', '1000'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start in 30 s')), 30000);
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
    createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      const m = /trailcast listening on (http:\/\/\S+)/.exec(line);
      m ? resolve(m[1]) : reject(new Error(`unexpected first line: ${line}`));
    });
  });
  return { child, base };
}

/** A JSON API client for the tests' own calls. */
export function client(base) {
  return async function call(method, url, { token, body } = {}) {
    const headers = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(base + url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
}

/**
 * A headless Chromium with a fresh user-data-dir, as one persistent context
 * (each test launches its own, so storage, service workers and offline
 * state never leak between tests).
 */
export async function launchBrowser(options = {}) {
  mkdirSync(artifacts, { recursive: true });
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'trailcast-chromium-'));
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage'];
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, args, viewport: { width: 1100, height: 800 }, ...options,
  });
  const close = context.close.bind(context);
  context.closeAndClean = async () => {
    await close();
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return context;
}

/** Signs a context in: its pages find the token in localStorage. */
export async function signInContext(ctx, user) {
  await ctx.addInitScript(([token, me]) => {
    localStorage.setItem('trailcast.token', token);
    localStorage.setItem('trailcast.me', me);
    // No tile server in tests: a plain background, route and scale only.
    localStorage.setItem('trailcast.tiles', 'none');
  }, [user.token, JSON.stringify({ id: user.id, name: user.name })]);
}

/** Fails the test on any uncaught page error. */
export function watchErrors(page, errors) {
  page.on('pageerror', (e) => errors.push(String(e)));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
