/**
 * A sequence classifier ready to train or run: the Hugging Face model folder
 * (config, weights, tokenizer) loaded into a native Engine.
 */
import type { BertConfig } from './config.js';
import { Engine, type EngineOptions } from './engine.js';
import { loadModelFolder, saveModelFolder, resolveModel, formatNewlyInitializedMessage } from './io/index.js';
import type { BertTokenizer } from './tokenizer/index.js';

export interface LoadModelOptions extends EngineOptions {
  /** Number of classes of a new classification head. */
  num_labels?: number;
  id2label?: Record<string, string>;
  label2id?: Record<string, number>;
  /** Hub revision when `model` is a repo id. */
  revision?: string;
  /** Log line sink for the newly-initialised-weights report (default: console.warn). */
  log?: (line: string) => void;
}

export interface Model {
  /** The folder the model was read from (after a Hub download, the cache folder). */
  source: string;
  config: BertConfig;
  tokenizer: BertTokenizer;
  engine: Engine;
  /** Weights the checkpoint lacked, initialised normal(0, initializer_range). */
  newlyInitialized: string[];
  /** Checkpoint tensors the model does not use (pre-training heads, buffers). */
  unused: string[];
}

/**
 * Loads a BertForSequenceClassification from a local Hugging Face folder or a
 * Hub repo id (downloaded into the cache by `pull`).
 * @throws Error naming the file/key when the folder is not a loadable BERT model.
 */
export async function loadModel(model: string, opts: LoadModelOptions = {}): Promise<Model> {
  const { num_labels, id2label, label2id, revision, log, ...engineOptions } = opts;
  const folder = await resolveModel(model, { revision });
  const loaded = await loadModelFolder(folder, { num_labels, id2label, label2id, seed: opts.seed });
  if (loaded.newlyInitialized.length > 0) (log ?? console.warn)(formatNewlyInitializedMessage(folder, loaded.newlyInitialized));
  const engine = new Engine({ config: loaded.config, ...engineOptions });
  for (const name of engine.parameterNames()) {
    const w = loaded.weights.get(name);
    if (!w) throw new Error(`model folder ${folder}: no weights for '${name}' after loading (internal key mapping error)`);
    engine.setWeight(name, w);
  }
  const tokenizer = loaded.tokenizer;
  return {
    source: folder,
    config: loaded.config,
    tokenizer,
    engine,
    newlyInitialized: loaded.newlyInitialized,
    unused: loaded.unused,
  };
}

/** Copies every parameter out of the engine (float32, HF keys). */
export function engineWeights(engine: Engine): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const name of engine.parameterNames()) out.set(name, engine.getWeight(name));
  return out;
}

/**
 * Writes a Hugging Face model folder (config.json, model.safetensors, the
 * tokenizer files of the source folder), each file atomically.
 */
export async function saveModel(model: Model, folder: string, config: BertConfig = model.config): Promise<void> {
  await saveModelFolder(folder, { config, weights: engineWeights(model.engine), tokenizerFrom: model.source });
}
