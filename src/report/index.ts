/** The self-contained HTML/SVG training report (report.html). */
export { renderReport, writeReport } from './report.js';
export type { EvalHistoryEntry, GenerationSampleRow, ReportData, TrainLogEntry } from './report.js';
export { confusionHeatmap, escapeXml, formatNumber, lineChart } from './svg.js';
export type { ChartOptions, Series } from './svg.js';
