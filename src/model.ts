/**
 * A BERT model ready to train or run — a sequence classifier, or a masked LM
 * for domain-adaptive pre-training: the Hugging Face model folder (config,
 * weights, tokenizer) loaded into a native Engine.
 */
import type { BertArchitecture, BertConfig } from './config.js';
import { Engine, type EngineOptions } from './engine.js';
import { loadModelFolder, saveModelFolder, resolveModel, formatNewlyInitializedMessage, type CarriedTensors } from './io/index.js';
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
  /** The head: BertForSequenceClassification, or BertForMaskedLM when loaded with that architecture. */
  architecture: BertArchitecture;
  config: BertConfig;
  tokenizer: BertTokenizer;
  engine: Engine;
  /** Weights the checkpoint lacked, initialised normal(0, initializer_range). */
  newlyInitialized: string[];
  /** Checkpoint tensors the model does not use (pre-training heads, buffers). */
  unused: string[];
  /** A masked LM's checkpoint pooler, written back unchanged by saveModel (see LoadedModel.carried). */
  carried: CarriedTensors;
}

/**
 * Loads a BertForSequenceClassification (or, with `architecture: 'BertForMaskedLM'`,
 * a masked LM) from a local Hugging Face folder or a Hub repo id (downloaded into
 * the cache by `pull`).
 * @throws Error naming the file/key when the folder is not a loadable BERT model.
 */
export async function loadModel(model: string, opts: LoadModelOptions = {}): Promise<Model> {
  const { num_labels, id2label, label2id, revision, log, ...engineOptions } = opts;
  const folder = await resolveModel(model, { revision });
  const architecture = opts.architecture ?? 'BertForSequenceClassification';
  const loaded = await loadModelFolder(folder, { num_labels, id2label, label2id, seed: opts.seed, architecture });
  const engine = new Engine({ config: loaded.config, ...engineOptions });
  // After the engine: a load that fails on its options must not first tell the user to train.
  if (loaded.newlyInitialized.length > 0) (log ?? console.warn)(formatNewlyInitializedMessage(folder, loaded.newlyInitialized, architecture));
  for (const name of engine.parameterNames()) {
    const w = loaded.weights.get(name);
    if (!w) throw new Error(`model folder ${folder}: no weights for '${name}' after loading (internal key mapping error)`);
    engine.setWeight(name, w);
  }
  const tokenizer = loaded.tokenizer;
  return {
    source: folder,
    architecture,
    config: loaded.config,
    tokenizer,
    engine,
    newlyInitialized: loaded.newlyInitialized,
    unused: loaded.unused,
    carried: loaded.carried,
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
  await saveModelFolder(folder, {
    config, architecture: model.architecture, weights: engineWeights(model.engine), carried: model.carried, tokenizerFrom: model.source,
  });
}
