// The coach on the runner page: walks through a course's steps on the
// phone's own clock and distance (so it works offline), and speaks each
// cue with the Web Speech API when it is due: a step's cue at its start,
// its half-way cue, its last-30-seconds cue. Steps are timed on moving time
// (pauses stop the clock), as the server's step records are.

/** Metres between two [lat, lng] fixes. */
export function metres(a, b) {
  const r = 6371008.8, rad = Math.PI / 180;
  const dp = (b.lat - a.lat) * rad, dl = (b.lng - a.lng) * rad;
  const h = Math.sin(dp / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dl / 2) ** 2;
  return 2 * r * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Moving milliseconds from a state log [{state, at}] up to `now`. */
export function movingMs(events, now) {
  let total = 0, since = null;
  for (const e of events) {
    if (e.state === 'STARTED' && since === null) since = e.at;
    else if (e.state !== 'STARTED' && since !== null) { total += e.at - since; since = null; }
  }
  if (since !== null) total += Math.max(0, now - since);
  return total;
}

function speak(text) {
  try {
    const synth = window.speechSynthesis;
    if (!synth || !text) return;
    const u = typeof SpeechSynthesisUtterance === 'function' ? new SpeechSynthesisUtterance(text) : { text };
    synth.speak(u);
  } catch { /* no speech here: the cue is still shown */ }
}

export class Coach {
  /** `said` remembers which cues were spoken (kept across reloads). */
  constructor(steps, said = {}) {
    this.steps = steps;
    this.said = said;
    this.index = 0;
    this.start = { ms: 0, m: 0 };
  }

  /** Advances to moving time `ms` and distance `m`; speaks what is due. */
  update(ms, m) {
    const say = (key, text) => {
      if (!text || this.said[key]) return;
      this.said[key] = true;
      speak(text);
    };
    for (;;) {
      const step = this.steps[this.index];
      if (!step) return { done: true, index: this.steps.length };
      say(`${this.index}:cue`, step.cue);
      const doneS = (ms - this.start.ms) / 1000, doneM = m - this.start.m;
      if (step.duration_s != null) {
        if (doneS >= step.duration_s) { this.next(this.start.ms + step.duration_s * 1000, m); continue; }
        const left = step.duration_s - doneS;
        if (doneS >= step.duration_s / 2) say(`${this.index}:half`, step.halfway_cue);
        if (left <= 30 && step.duration_s > 45) say(`${this.index}:last30`, step.last_30s_cue);
        return { index: this.index, step, leftS: left, fraction: doneS / step.duration_s };
      }
      if (doneM >= step.distance_m) { this.next(ms, this.start.m + step.distance_m); continue; }
      if (doneM >= step.distance_m / 2) say(`${this.index}:half`, step.halfway_cue);
      return { index: this.index, step, leftM: step.distance_m - doneM, fraction: doneM / step.distance_m };
    }
  }

  next(ms, m) {
    this.index += 1;
    this.start = { ms, m };
  }
}
