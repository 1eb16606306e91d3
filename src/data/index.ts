/** Datasets: reading, labels, splits, batching, and the seeded PRNG behind them. */
export { readDataset, readTexts, formatFromPath } from './read.js';
export type { Dataset, DatasetFormat, Example, ReadDatasetOptions, ReadTextsOptions, TextRecord } from './read.js';
export { buildLabelMap, encodeLabels, labelMapFromNames, lookupLabel, sortedLabels } from './labels.js';
export type { LabelMap, LabelSource } from './labels.js';
export { stratifiedSplit } from './split.js';
export type { SplitOptions } from './split.js';
export { makeBatches } from './batches.js';
export type { BatchOptions } from './batches.js';
export { mulberry32, deriveSeed, randomInt, shuffleInPlace } from './rng.js';
export type { Rng } from './rng.js';
export { decodeUtf8, firstInvalidUtf8Offset } from './text.js';
