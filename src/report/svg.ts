/**
 * Hand-written inline SVG for the training report: a line chart and a
 * confusion-matrix heat map. Output is well-formed XML, so the page is
 * valid both as HTML5 and as XHTML.
 */

/** Escapes text for XML/HTML element content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&${{ '&': 'amp', '<': 'lt', '>': 'gt', '"': 'quot', "'": '#39' }[c]};`);
}

/** A compact label for an axis tick or table cell: 3 significant digits, exponent form below 1e-3. */
export function formatNumber(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(1);
  return String(Number(x.toPrecision(3)));
}

export interface Series {
  name: string;
  color: string;
  /** (x, y) pairs in data units; non-finite y values are skipped. */
  points: Array<[number, number]>;
  /** 'line' draws a polyline, 'dots' draws circles (e.g. sparse eval points). */
  style: 'line' | 'dots';
}

export interface ChartOptions {
  xLabel: string;
  yLabel: string;
  width?: number;
  height?: number;
}

const MARGIN = { left: 64, right: 16, top: 12, bottom: 40 };

/**
 * A line chart (linear axes, 5 ticks each, legend) of `series`, as an <svg> string.
 * Axis ranges cover all finite points; the y axis starts at 0 when all y ≥ 0.
 */
export function lineChart(series: Series[], o: ChartOptions): string {
  const width = o.width ?? 640;
  const height = o.height ?? 260;
  const pts = series.map((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  const all = pts.flat();
  if (all.length === 0) return `<p class="empty">No data for ${escapeXml(o.yLabel)}.</p>`;
  const [x0, x1] = extent(all.map((p) => p[0]));
  const [ylo, y1] = extent(all.map((p) => p[1]));
  const y0 = ylo >= 0 ? 0 : ylo;
  const pw = width - MARGIN.left - MARGIN.right;
  const ph = height - MARGIN.top - MARGIN.bottom;
  const sx = (x: number) => MARGIN.left + ((x - x0) / (x1 - x0 || 1)) * pw;
  const sy = (y: number) => MARGIN.top + ph - ((y - y0) / (y1 - y0 || 1)) * ph;
  const parts = [axes(x0, x1, y0, y1, sx, sy, o, width, height)];
  series.forEach((s, i) => {
    const p = pts[i];
    if (s.style === 'line') {
      const d = p.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
      parts.push(`<polyline class="series" data-name="${escapeXml(s.name)}" fill="none" stroke="${s.color}" stroke-width="1.5" points="${d}"/>`);
    } else {
      const dots = p.map(([x, y]) => `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3.5"/>`).join('');
      parts.push(`<g class="series" data-name="${escapeXml(s.name)}" fill="${s.color}">${dots}</g>`);
    }
    parts.push(
      `<text x="${width - MARGIN.right - 4}" y="${MARGIN.top + 14 + 16 * i}" text-anchor="end" fill="${s.color}">${escapeXml(s.name)}</text>`,
    );
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-size="11">${parts.join('')}</svg>`;
}

function axes(
  x0: number, x1: number, y0: number, y1: number,
  sx: (x: number) => number, sy: (y: number) => number,
  o: ChartOptions, width: number, height: number,
): string {
  const bottom = height - MARGIN.bottom;
  const out = [`<g stroke="#999" stroke-width="1"><line x1="${MARGIN.left}" y1="${bottom}" x2="${width - MARGIN.right}" y2="${bottom}"/><line x1="${MARGIN.left}" y1="${MARGIN.top}" x2="${MARGIN.left}" y2="${bottom}"/></g>`];
  for (const x of ticks(x0, x1)) {
    out.push(`<text x="${sx(x).toFixed(1)}" y="${bottom + 14}" text-anchor="middle">${formatNumber(x)}</text>`);
  }
  for (const y of ticks(y0, y1)) {
    const py = sy(y).toFixed(1);
    out.push(`<line x1="${MARGIN.left}" y1="${py}" x2="${width - MARGIN.right}" y2="${py}" stroke="#eee"/>`);
    out.push(`<text x="${MARGIN.left - 4}" y="${py}" text-anchor="end" dominant-baseline="middle">${formatNumber(y)}</text>`);
  }
  out.push(`<text x="${MARGIN.left + (width - MARGIN.left - MARGIN.right) / 2}" y="${height - 6}" text-anchor="middle">${escapeXml(o.xLabel)}</text>`);
  out.push(`<text transform="translate(12 ${MARGIN.top + (bottom - MARGIN.top) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(o.yLabel)}</text>`);
  return out.join('');
}

function extent(values: number[]): [number, number] {
  return [Math.min(...values), Math.max(...values)];
}

/** About five "nice" tick values (1, 2 or 5 × 10^k apart) within [lo, hi]. */
export function ticks(lo: number, hi: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / 5;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = pow * ([1, 2, 5].find((f) => f * pow >= raw * (1 - 1e-9)) ?? 10);
  const out: number[] = [];
  for (let k = Math.ceil(lo / step); k * step <= hi * (1 + 1e-12); k++) out.push(Number((k * step).toPrecision(12)));
  return out;
}

/**
 * The confusion matrix as a heat map, rows = true label, columns = predicted.
 * Colour = share of the row (recall view), square-root scaled so that rare
 * confusions stay visible; zero cells are not drawn. Each cell has a <title>
 * tooltip "true → predicted: count". Cell size and font shrink with the number
 * of labels (77 labels: 12 px cells, 9 px text); the caller scrolls it.
 */
export function confusionHeatmap(matrix: number[][], labels: string[]): string {
  const n = labels.length;
  const cell = n > 30 ? 12 : n > 12 ? 18 : 36;
  const font = n > 30 ? 9 : 11;
  const gutter = Math.ceil(Math.max(...labels.map((l) => l.length), 4) * font * 0.6) + 8;
  const size = gutter + n * cell + 8;
  const parts: string[] = [];
  labels.forEach((label, i) => {
    const c = (i + 0.5) * cell;
    parts.push(`<text x="${gutter - 4}" y="${(gutter + c).toFixed(1)}" text-anchor="end" dominant-baseline="middle">${escapeXml(label)}</text>`);
    parts.push(`<text transform="translate(${(gutter + c).toFixed(1)} ${gutter - 4}) rotate(-90)" dominant-baseline="middle">${escapeXml(label)}</text>`);
  });
  matrix.forEach((row, r) => {
    const total = row.reduce((a, b) => a + b, 0);
    row.forEach((count, c) => {
      if (count === 0) return;
      const v = Math.sqrt(count / total);
      const fill = `rgb(${Math.round(255 - 247 * v)},${Math.round(255 - 207 * v)},${Math.round(255 - 148 * v)})`;
      const x = gutter + c * cell;
      const y = gutter + r * cell;
      const tip = `${escapeXml(labels[r])} → ${escapeXml(labels[c])}: ${count}`;
      const text = cell >= 30 ? `<text x="${x + cell / 2}" y="${y + cell / 2}" text-anchor="middle" dominant-baseline="middle" fill="${v > 0.6 ? '#fff' : '#000'}">${count}</text>` : '';
      parts.push(`<g class="cell"><rect x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${fill}"><title>${tip}</title></rect>${text}</g>`);
    });
  });
  const grid = `<rect x="${gutter}" y="${gutter}" width="${n * cell}" height="${n * cell}" fill="none" stroke="#999"/>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}" font-size="${font}">${grid}${parts.join('')}</svg>`;
}
