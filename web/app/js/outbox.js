// The runner's outbox: every recorded point goes to IndexedDB first and is
// deleted only after the server acknowledged it, so a reload, a crash or a
// dead network loses nothing already recorded. Points are keyed by
// [activity, ts]; the server also dedupes on ts, so resending is harmless.

const DB = 'trailcast';
const STORE = 'outbox';

let dbPromise;
function db() {
  dbPromise ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: ['activity', 'ts'] });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return dbPromise;
}

function done(tx) {
  return new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = () => reject(tx.error); tx.onabort = () => reject(tx.error); });
}

export async function put(activity, point) {
  const tx = (await db()).transaction(STORE, 'readwrite');
  tx.objectStore(STORE).put({ activity, ts: point.ts, point });
  await done(tx);
}

/** Up to `limit` waiting points of one activity, oldest first. */
export async function pending(activity, limit = 1000) {
  const tx = (await db()).transaction(STORE, 'readonly');
  const range = IDBKeyRange.bound([activity, -Infinity], [activity, Infinity]);
  const req = tx.objectStore(STORE).getAll(range, limit);
  await done(tx);
  return req.result.map((r) => r.point);
}

export async function count(activity) {
  const tx = (await db()).transaction(STORE, 'readonly');
  const req = tx.objectStore(STORE).count(IDBKeyRange.bound([activity, -Infinity], [activity, Infinity]));
  await done(tx);
  return req.result;
}

export async function remove(activity, tss) {
  const tx = (await db()).transaction(STORE, 'readwrite');
  const store = tx.objectStore(STORE);
  for (const ts of tss) store.delete([activity, ts]);
  await done(tx);
}
