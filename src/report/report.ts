/**
 * report.html: a self-contained training report (inline CSS and SVG, no
 * scripts, fonts or other external resources), viewable offline.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EvalResults } from '../metrics/index.js';
import { confusionHeatmap, escapeXml, formatNumber, lineChart } from './svg.js';

/** One logged optimizer step (the HF Trainer's log_history names). */
export interface TrainLogEntry {
  step: number;
  epoch: number;
  /** Training loss (mean cross-entropy, nats) of the logged step(s). */
  loss: number;
  learning_rate: number;
  grad_norm?: number;
  samples_per_second?: number;
}

/** One evaluation, usually at the end of an epoch. */
export interface EvalHistoryEntry {
  epoch: number;
  step: number;
  accuracy: number;
  macro_f1: number;
  loss?: number;
}

export interface ReportData {
  title: string;
  trainLog: TrainLogEntry[];
  evalHistory: EvalHistoryEntry[];
  /** The final evaluation (eval_results.json); its confusion matrix is drawn. */
  finalEval?: EvalResults;
  /** Training configuration shown as JSON (hyperparameters, model, data paths). */
  config?: Record<string, unknown>;
}

const CSS = `body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.scroll{overflow:auto;max-height:900px;border:1px solid #ddd}pre{background:#f7f7f7;padding:8px;overflow:auto}
.empty{color:#888}.summary{font-size:16px}`;

/**
 * Writes `outputDir/report.html` (creating the folder) and returns its path.
 * Sections (element ids): summary, loss, learning-rate, eval-history,
 * confusion-matrix, per-class, config.
 * @throws Error from the file system (unwritable folder).
 */
export function writeReport(outputDir: string, data: ReportData): string {
  mkdirSync(outputDir, { recursive: true });
  const path = join(outputDir, 'report.html');
  writeFileSync(path, renderReport(data));
  return path;
}

/** The report page as a string (see writeReport). */
export function renderReport(data: ReportData): string {
  const title = escapeXml(data.title);
  const sections = [
    section('summary', 'Summary', summary(data)),
    section('loss', 'Loss', lossChart(data)),
    section('learning-rate', 'Learning rate', lrChart(data)),
    section('eval-history', 'Evaluation per epoch', evalTable(data.evalHistory)),
    section('confusion-matrix', 'Confusion matrix', confusion(data.finalEval)),
    section('per-class', 'Per-class scores', perClassTable(data.finalEval)),
    section('config', 'Configuration', `<pre>${escapeXml(JSON.stringify(data.config ?? {}, null, 2))}</pre>`),
  ];
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>${title}</title><style>${CSS}</style></head>
<body><h1>${title}</h1>
${sections.join('\n')}
</body></html>
`;
}

function section(id: string, heading: string, body: string): string {
  return `<section id="${id}"><h2>${heading}</h2>${body}</section>`;
}

function summary({ finalEval, trainLog }: ReportData): string {
  const last = trainLog.at(-1);
  const items = [
    finalEval && `accuracy <b>${pct(finalEval.accuracy)}</b>, macro-F1 <b>${pct(finalEval.macro_f1)}</b>`,
    finalEval?.loss !== undefined && `eval loss ${formatNumber(finalEval.loss)}`,
    last && `${last.step} optimizer steps, ${formatNumber(last.epoch)} epochs`,
  ].filter(Boolean);
  return `<p class="summary">${items.length ? items.join(' · ') : 'No results.'}</p>`;
}

function lossChart({ trainLog, evalHistory }: ReportData): string {
  return lineChart(
    [
      { name: 'train loss', color: '#1f77b4', style: 'line', points: trainLog.map((e) => [e.step, e.loss]) },
      { name: 'eval loss', color: '#d62728', style: 'dots', points: evalHistory.map((e) => [e.step, e.loss ?? NaN]) },
    ],
    { xLabel: 'optimizer step', yLabel: 'cross-entropy loss' },
  );
}

function lrChart({ trainLog }: ReportData): string {
  return lineChart([{ name: 'learning rate', color: '#2ca02c', style: 'line', points: trainLog.map((e) => [e.step, e.learning_rate]) }], {
    xLabel: 'optimizer step',
    yLabel: 'learning rate',
    height: 200,
  });
}

function evalTable(history: EvalHistoryEntry[]): string {
  if (history.length === 0) return '<p class="empty">No evaluations.</p>';
  const rows = history.map(
    (e) => `<tr><td>${formatNumber(e.epoch)}</td><td>${e.step}</td><td>${pct(e.accuracy)}</td><td>${pct(e.macro_f1)}</td><td>${e.loss === undefined ? '' : e.loss.toFixed(4)}</td></tr>`,
  );
  return `<table><tr><th>epoch</th><th>step</th><th>accuracy</th><th>macro-F1</th><th>eval loss</th></tr>${rows.join('')}</table>`;
}

function confusion(finalEval: EvalResults | undefined): string {
  if (!finalEval) return '<p class="empty">No final evaluation.</p>';
  const note = '<p>Rows: true label; columns: predicted label. Colour: share of the true label’s examples (square-root scale); hover a cell for its count.</p>';
  return `${note}<div class="scroll">${confusionHeatmap(finalEval.confusion_matrix, finalEval.labels)}</div>`;
}

function perClassTable(finalEval: EvalResults | undefined): string {
  if (!finalEval) return '<p class="empty">No final evaluation.</p>';
  const rows = finalEval.labels.map((l) => {
    const s = finalEval.per_class[l];
    return `<tr><td>${escapeXml(l)}</td><td>${s.precision.toFixed(3)}</td><td>${s.recall.toFixed(3)}</td><td>${s.f1.toFixed(3)}</td><td>${s.support}</td></tr>`;
  });
  return `<div class="scroll"><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>${rows.join('')}</table></div>`;
}

function pct(x: number): string {
  return `${(100 * x).toFixed(2)}%`;
}
