// Small inline-SVG line charts (no chart library).

const NS = 'http://www.w3.org/2000/svg';

/**
 * Draws ys over xs into an <svg>; labels format the axis ends. A missing
 * value (NaN: a pause, no altitude) breaks the line instead of bridging it.
 */
export function lineChart(svg, xs, ys, { xLabel = (x) => x, yLabel = (y) => y, invert = false } = {}) {
  svg.replaceChildren();
  const W = Math.round(svg.clientWidth) || 600, H = Math.round(svg.clientHeight) || 140, pad = 28;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const ok = xs.map((x, i) => [x, ys[i]]).filter(([x, y]) => isFinite(x) && isFinite(y));
  if (ok.length < 2) {
    const t = document.createElementNS(NS, 'text');
    t.setAttribute('x', 10); t.setAttribute('y', 20); t.textContent = 'Not enough data';
    svg.append(t);
    return;
  }
  const x0 = Math.min(...ok.map((p) => p[0])), x1 = Math.max(...ok.map((p) => p[0]));
  let y0 = Math.min(...ok.map((p) => p[1])), y1 = Math.max(...ok.map((p) => p[1]));
  if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * pad);
  const sy = (y) => { const f = (y - y0) / (y1 - y0); return invert ? pad / 2 + f * (H - pad) : H - pad / 2 - f * (H - pad); };
  const path = document.createElementNS(NS, 'path');
  let d = '', pen = 'M';
  xs.forEach((x, i) => {
    if (!isFinite(x) || !isFinite(ys[i])) { pen = 'M'; return; }
    d += `${pen}${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`;
    pen = 'L';
  });
  path.setAttribute('d', d);
  path.setAttribute('vector-effect', 'non-scaling-stroke');
  svg.append(path);
  const label = (x, y, text, anchor = 'start') => {
    const t = document.createElementNS(NS, 'text');
    t.setAttribute('x', x); t.setAttribute('y', y); t.setAttribute('text-anchor', anchor); t.textContent = text;
    svg.append(t);
  };
  label(2, 12, yLabel(invert ? y0 : y1));
  label(2, H - pad / 2 - 4, yLabel(invert ? y1 : y0));
  label(pad + 60, H - 2, xLabel(x0));
  label(W - 2, H - 2, xLabel(x1), 'end');
}
