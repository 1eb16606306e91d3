/**
 * The one output format of `nodetune bench train` and `nodetune bench kernels`:
 * a {@link BenchReport} printed as an aligned table for people, or as JSON
 * (`--json`) for tools. Both suites fill the same shape, so a dashboard can
 * read either.
 */

/** A column of the table: `key` into each row, a header, how to print numbers. */
export interface BenchColumn {
  key: string;
  header: string;
  /** Decimal places for numbers (default 0). */
  digits?: number;
  /** Print a fraction (0.42) as a percentage (42.0%). */
  percent?: boolean;
  /** Row key whose text is shown when this cell is null (e.g. "torch not installed"). */
  missing?: string;
}

export type BenchValue = string | number | boolean | null;

/** One benchmark run: what was measured, where, and the results. */
export interface BenchReport {
  suite: 'train' | 'kernels' | 'generate';
  title: string;
  /** Machine, thread count, shapes, versions, ceilings: scalar facts about the run. */
  context: Record<string, BenchValue>;
  columns: BenchColumn[];
  /** One record per measured case; numbers in the units of their column header. */
  rows: Array<Record<string, BenchValue>>;
  /** Free-text findings and caveats, printed under the table. */
  notes: string[];
}

function cell(row: Record<string, BenchValue>, col: BenchColumn): string {
  const v = row[col.key];
  if (v === null || v === undefined) return col.missing ? String(row[col.missing] ?? '-') : '-';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (col.percent) return `${(v * 100).toFixed(col.digits ?? 1)}%`;
  return v.toFixed(col.digits ?? 0);
}

/**
 * Renders a report as plain text: title, context lines, a column-aligned table
 * (numbers right-aligned, text left-aligned) and the notes.
 */
export function formatTable(report: BenchReport): string {
  const header = report.columns.map((c) => c.header);
  const body = report.rows.map((r) => report.columns.map((c) => cell(r, c)));
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const numeric = report.columns.map((c) => report.rows.some((r) => typeof r[c.key] === 'number'));
  const line = (cells: string[]) =>
    cells.map((s, i) => (numeric[i] ? s.padStart(widths[i]) : s.padEnd(widths[i]))).join('  ').trimEnd();
  const context = Object.entries(report.context).map(([k, v]) => `  ${k}: ${v}`);
  return [
    report.title,
    '='.repeat(report.title.length),
    ...context,
    '',
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    ...(report.notes.length ? ['', ...report.notes.map((n) => `* ${n}`)] : []),
    '',
  ].join('\n');
}

/** Renders a report as a markdown table (for bench/RESULTS.md and the README). */
export function formatMarkdown(report: BenchReport): string {
  const row = (cells: string[]) => `| ${cells.join(' | ')} |`;
  const align = report.columns.map((c) => (report.rows.some((r) => typeof r[c.key] === 'number') ? '---:' : '---'));
  return [
    row(report.columns.map((c) => c.header)),
    row(align),
    ...report.rows.map((r) => row(report.columns.map((c) => cell(r, c)))),
    '',
  ].join('\n');
}

/** Renders a report as pretty JSON (the `--json` output). */
export function formatJson(report: BenchReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

/**
 * The note a report carries when the machine was busy as the run started: a
 * 1-minute load average (runnable processes, os.loadavg() / getloadavg(3)) of
 * at least the thread count means the benchmark's threads shared their cores.
 * @param load1 1-minute load average at the start (null: unknown, no note).
 * @param threads threads the benchmark runs (null or non-number: unknown, no note).
 * @returns the warning, or null when the load is below the thread count or unknown.
 */
export function loadWarning(load1: number | null, threads: BenchValue): string | null {
  if (load1 === null || !Number.isFinite(load1) || typeof threads !== 'number' || !(threads > 0)) return null;
  if (load1 < threads) return null;
  return `warning: load average ${load1.toFixed(1)} >= ${threads} thread${threads === 1 ? '' : 's'} at the start: other processes share the cores; figures are unreliable, compare ratios across runs`;
}

/** Median of a non-empty list of numbers. @throws Error on an empty list. */
export function median(xs: number[]): number {
  if (xs.length === 0) throw new Error('median: empty list of samples');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
