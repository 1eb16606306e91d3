/** Evaluation of a saved, fine-tuned model folder on a labelled data file. */
import { join } from 'node:path';
import { readDataset, labelMapFromNames, encodeLabels } from '../data/index.js';
import { loadModel } from '../model.js';
import type { EvalResults } from '../metrics/index.js';
import { encodeExamples, evaluateExamples } from './trainer.js';
import { readModelConfigJson } from '../io/model-folder.js';

export interface EvaluateFileOptions {
  model: string;
  data: string;
  text_column?: string;
  text_pair_column?: string;
  label_column?: string;
  max_length?: number;
  batch_size?: number;
  threads?: number;
}

/**
 * Loads `model` (a folder whose config.json has id2label), reads `data`, maps
 * its labels through the model's labels (case-insensitively) and evaluates.
 * @throws Error when `model` is not a model folder (code and path as fs errors),
 *   when it has no labels, or naming file and line of a label it does not know.
 */
export async function evaluateFile(o: EvaluateFileOptions): Promise<EvalResults> {
  const config = (await readModelConfigJson(o.model)) as { id2label?: Record<string, string> };
  const id2label = config.id2label;
  if (!id2label || Object.keys(id2label).length === 0) {
    throw new Error(`${join(o.model, 'config.json')} has no id2label: evaluate a model fine-tuned by \`nodetune train\``);
  }
  const names = Object.keys(id2label).sort((a, b) => Number(a) - Number(b)).map((k) => id2label[k]);
  const labels = labelMapFromNames(names, true);
  const ds = readDataset(o.data, { textColumn: o.text_column ?? 'text', textPairColumn: o.text_pair_column, labelColumn: o.label_column ?? 'label' });
  const ids = encodeLabels(ds, labels);
  const model = await loadModel(o.model, { threads: o.threads, log: () => undefined });
  try {
    const maxLength = Math.min(o.max_length ?? 128, model.config.max_position_embeddings);
    return await evaluateExamples(model, encodeExamples(model.tokenizer, ds.examples, ids, maxLength), o.batch_size ?? 64);
  } finally {
    await model.engine.dispose();
  }
}
