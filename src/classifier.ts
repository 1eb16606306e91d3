/**
 * Text classification with a fine-tuned model folder: tokenize, run the model
 * (onnxruntime-node on onnx/model.onnx, or the native engine on
 * model.safetensors), softmax, top-k labels — what the Hugging Face
 * `text-classification` pipeline returns, for many concurrent callers.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { BertConfig } from './config.js';
import type { Batch } from './engine.js';
import { loadModelFolder, parseBertConfig, readModelConfigJson } from './io/model-folder.js';
import { BertTokenizer, type Encoding } from './tokenizer/index.js';

/** One label with its softmax probability in [0, 1]. */
export interface Prediction {
  label: string;
  score: number;
}

export type ClassifierBackend = 'native' | 'onnx';

export interface ClassifierOptions {
  /** 'onnx' (default): onnx/model.onnx via onnxruntime-node; 'native': the C++ engine on model.safetensors. */
  backend?: ClassifierBackend;
  /**
   * Tokens per text including [CLS]/[SEP]; longer texts are truncated. Default: max_position_embeddings,
   * at most 512. A larger value is capped at max_position_embeddings (`Classifier.maxLength` reports the cap).
   */
  maxLength?: number;
  /** Texts per forward pass; queued texts of concurrent callers share batches. Default 32. */
  batchSize?: number;
  /** Intra-op threads for the backend, a positive integer; default: the backend's own default (all cores). */
  threads?: number;
}

export interface ClassifyOptions {
  /** Labels returned per text, best first; clamped to num_labels. Default 1. */
  topK?: number;
}

/** Runs one padded batch to logits (B, num_labels) float32. */
interface Backend {
  run(batch: Batch): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/**
 * An onnx/model.onnx exported before a re-training can have another label set: its logits
 * width must equal config.json's num_labels, checked with one (1, 2) forward pass.
 * @throws Error naming both files and advising `nodetune export`.
 */
async function checkOnnxWidth(backend: Backend, folder: string, numLabels: number): Promise<void> {
  const ids = Int32Array.from([0, 0]);
  const logits = await backend.run({ input_ids: ids, attention_mask: Int32Array.from([1, 1]), token_type_ids: Int32Array.from([0, 0]), batchSize: 1, seqLen: 2 });
  if (logits.length !== numLabels) {
    await backend.dispose();
    throw new Error(
      `${join(folder, 'onnx', 'model.onnx')} gives ${logits.length} logits but ${join(folder, 'config.json')} has num_labels ${numLabels}: ` +
        `the ONNX file is stale; re-run \`nodetune export --model ${folder}\``,
    );
  }
}

async function onnxBackend(folder: string, threads?: number): Promise<Backend> {
  const path = join(folder, 'onnx', 'model.onnx');
  if (!existsSync(path)) {
    throw new Error(`${path} not found: run \`nodetune export --model ${folder}\` first, or use backend 'native'`);
  }
  const ort = await import('onnxruntime-node');
  const session = await ort.InferenceSession.create(path, threads ? { intraOpNumThreads: threads } : {});
  const int64 = (data: Int32Array, dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(data, (v) => BigInt(v)), dims);
  return {
    async run(batch) {
      const dims = [batch.batchSize, batch.seqLen];
      const out = await session.run({
        input_ids: int64(batch.input_ids, dims),
        attention_mask: int64(batch.attention_mask!, dims),
        token_type_ids: int64(batch.token_type_ids!, dims),
      });
      return out.logits.data as Float32Array;
    },
    dispose: () => session.release(),
  };
}

async function nativeBackend(folder: string, threads?: number): Promise<Backend> {
  const { Engine } = await import('./engine.js');
  const { config, weights, newlyInitialized } = await loadModelFolder(folder);
  if (newlyInitialized.length > 0) {
    throw new Error(`${folder} has no trained weights for ${newlyInitialized.join(', ')}: fine-tune the model first`);
  }
  const engine = new Engine({ config, threads });
  for (const [name, data] of weights) engine.setWeight(name, data);
  return {
    run: async (batch) => (await engine.forward(batch)).logits,
    dispose: () => engine.dispose(),
  };
}

/**
 * config.json of `folder` as a BertConfig.
 * @throws Error when `folder` is not a model folder (readModelConfigJson's errors, which carry
 *   code and path like fs errors), or naming file, line and column when it is not valid JSON.
 */
async function readModelConfig(folder: string): Promise<BertConfig> {
  return parseBertConfig(await readModelConfigJson(folder), join(folder, 'config.json'));
}

/** What a value is, for error messages: 'null', 'undefined', 'number', 'Set', 'object', ... */
function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' && name !== 'Object' ? name : 'object';
}

/**
 * `input` as a list of texts.
 * @throws Error when `input` is neither a string nor an array, or naming the index of an element that is not a string.
 */
function textList(input: unknown): readonly string[] {
  if (typeof input === 'string') return [input];
  if (!Array.isArray(input)) throw new Error(`classify: texts must be a string or an array of strings, got ${describe(input)}`);
  input.forEach((t: unknown, i) => {
    if (typeof t !== 'string') throw new Error(`classify: texts[${i}] is ${describe(t)}, expected a string`);
  });
  return input as string[];
}

/** softmax(row) in float64, then the topK (label, score) pairs by descending score. */
function topPredictions(logits: Float32Array, labels: readonly string[], topK: number): Prediction[] {
  const max = logits.reduce((m, v) => Math.max(m, v), -Infinity);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps
    .map((e, i) => ({ label: labels[i], score: e / sum }))
    .sort((a, b) => b.score - a.score)
    .slice(0, topK);
}

/** Longest stretch of tokenizing in drain() before it lets the event loop run. */
const YIELD_AFTER_MS = 10;

interface Pending {
  text: string;
  resolve: (logits: Float32Array) => void;
  reject: (err: unknown) => void;
}

interface Tokenized extends Pending {
  enc: Encoding;
}

/**
 * Sort by token count and cut into batches of at most `batchSize`, starting a
 * new batch when padding would make up more than half of it — mixed-length
 * traffic then costs about its real tokens, not B × the longest text.
 */
function groupByLength(items: Tokenized[], batchSize: number): Tokenized[][] {
  const sorted = [...items].sort((a, b) => a.enc.input_ids.length - b.enc.input_ids.length);
  const groups: Tokenized[][] = [];
  let group: Tokenized[] = [];
  let real = 0;
  for (const item of sorted) {
    const len = item.enc.input_ids.length;
    if (group.length > 0 && (group.length === batchSize || (group.length + 1) * len > 2 * (real + len))) {
      groups.push(group);
      group = [];
      real = 0;
    }
    group.push(item);
    real += len;
  }
  if (group.length > 0) groups.push(group);
  return groups;
}

/** Right-pad encodings to the longest: (B, T) Int32Arrays, padding with padId / mask 0 / type 0. */
function padBatch(encs: Encoding[], padId: number): Batch {
  const B = encs.length;
  const T = Math.max(...encs.map((e) => e.input_ids.length));
  const batch = { input_ids: new Int32Array(B * T).fill(padId), attention_mask: new Int32Array(B * T), token_type_ids: new Int32Array(B * T), batchSize: B, seqLen: T };
  encs.forEach((e, b) => {
    batch.input_ids.set(e.input_ids, b * T);
    batch.attention_mask.set(e.attention_mask, b * T);
    batch.token_type_ids.set(e.token_type_ids, b * T);
  });
  return batch;
}

/**
 * A loaded text classifier. `classify` may be called concurrently: texts go
 * into one FIFO queue that a single worker drains in length-sorted batches of
 * at most `batchSize`, so the session/engine never runs two batches at once
 * and concurrent callers share forward passes.
 */
export class Classifier {
  /** id2label as a list: labels[i] names logit i. */
  readonly labels: readonly string[];
  private readonly queue: Pending[] = [];
  private draining: Promise<void> | null = null;
  private disposed = false;

  private constructor(
    /** The model folder this classifier was loaded from. */
    readonly folder: string,
    readonly config: BertConfig,
    private readonly tokenizer: BertTokenizer,
    private readonly runner: Backend,
    /** Which backend runs the model. */
    readonly backend: ClassifierBackend,
    /**
     * Tokens per text incl. [CLS]/[SEP] actually used: the requested maxLength (default
     * max_position_embeddings, at most 512) capped at max_position_embeddings.
     */
    readonly maxLength: number,
    readonly batchSize: number,
  ) {
    this.labels = Array.from({ length: config.num_labels }, (_, i) => config.id2label?.[String(i)] ?? `LABEL_${i}`);
  }

  /**
   * Load a model folder (config.json, tokenizer files, and onnx/model.onnx or
   * model.safetensors).
   * A maxLength above the model's max_position_embeddings is capped there, silently;
   * `maxLength` on the result reports the value used.
   * @throws Error naming the missing file (for 'onnx': run `nodetune export`),
   *   an invalid option (backend, batchSize, maxLength, threads), or a folder
   *   whose classifier head is untrained.
   */
  static async load(folder: string, options: ClassifierOptions = {}): Promise<Classifier> {
    const backendName = options.backend ?? 'onnx';
    if (backendName !== 'onnx' && backendName !== 'native') {
      throw new Error(`Classifier.load: backend '${String(backendName)}' is unknown (expected 'onnx' or 'native')`);
    }
    const batchSize = options.batchSize ?? 32;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`Classifier.load: batchSize ${batchSize} must be a positive integer`);
    const threads = options.threads;
    if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) {
      throw new Error(`Classifier.load: threads ${threads} must be a positive integer`);
    }
    const config = await readModelConfig(folder);
    const requested = options.maxLength ?? Math.min(512, config.max_position_embeddings);
    if (!Number.isInteger(requested) || requested < 2) throw new Error(`Classifier.load: maxLength ${requested} must be an integer ≥ 2`);
    // The tokenizer truncates at max_position_embeddings anyway; report what is used.
    const maxLength = Math.min(requested, config.max_position_embeddings);
    const tokenizer = await BertTokenizer.fromFolder(folder, { maxPositionEmbeddings: config.max_position_embeddings });
    const runner = backendName === 'onnx' ? await onnxBackend(folder, threads) : await nativeBackend(folder, threads);
    if (backendName === 'onnx') await checkOnnxWidth(runner, folder, config.num_labels);
    return new Classifier(folder, config, tokenizer, runner, backendName, maxLength, batchSize);
  }

  /**
   * Classify one text or a list of texts.
   * @returns per text, its topK predictions sorted by descending score
   *   (softmax over the logits; labels from id2label). A single string gives
   *   one list, an array gives one list per text.
   * @throws Error when the input is neither a string nor an array of strings
   *   (naming the index of a non-string element), a topK that is not a
   *   positive integer, or after dispose().
   */
  classify(text: string, options?: ClassifyOptions): Promise<Prediction[]>;
  classify(texts: readonly string[], options?: ClassifyOptions): Promise<Prediction[][]>;
  async classify(input: string | readonly string[], options: ClassifyOptions = {}): Promise<Prediction[] | Prediction[][]> {
    const topK = options.topK ?? 1;
    if (!Number.isInteger(topK) || topK < 1) throw new Error(`classify: topK ${topK} must be a positive integer`);
    const texts = textList(input);
    const logits = await Promise.all(texts.map((t) => this.enqueue(t)));
    const preds = logits.map((row) => topPredictions(row, this.labels, Math.min(topK, this.labels.length)));
    return typeof input === 'string' ? preds[0] : preds;
  }

  /** Waits for queued work, then frees the session/engine; later classify calls throw. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.draining;
    await this.runner.dispose();
  }

  private enqueue(text: string): Promise<Float32Array> {
    if (this.disposed) return Promise.reject(new Error('classify: the Classifier has been disposed'));
    const done = new Promise<Float32Array>((resolve, reject) => this.queue.push({ text, resolve, reject }));
    this.draining ??= this.drain();
    return done;
  }

  /**
   * The single worker. Each round takes up to 4 batches' worth of queued
   * texts, tokenizes them, and runs them as length-sorted batches; it clears
   * `draining` in the same tick it sees an empty queue, so no text is stranded.
   */
  private async drain(): Promise<void> {
    // Yield once so that texts queued in the same tick share the first round.
    await Promise.resolve();
    for (;;) {
      const taken = this.queue.splice(0, this.batchSize * 4);
      if (taken.length === 0) {
        this.draining = null;
        return;
      }
      const items: Tokenized[] = [];
      let since = performance.now();
      for (const p of taken) {
        try {
          items.push({ ...p, enc: this.tokenizer.encode(p.text, null, { maxLength: this.maxLength }) });
        } catch (err) {
          p.reject(err);
        }
        // Tokenizing is bounded per text (encode reads a prefix sized by maxLength),
        // but a round holds up to 4 batches of texts: let other requests' I/O in.
        if (performance.now() - since > YIELD_AFTER_MS) {
          await new Promise((resolve) => setImmediate(resolve));
          since = performance.now();
        }
      }
      for (const group of groupByLength(items, this.batchSize)) await this.runGroup(group);
    }
  }

  private async runGroup(group: Tokenized[]): Promise<void> {
    try {
      const logits = await this.runner.run(padBatch(group.map((g) => g.enc), this.tokenizer.padTokenId));
      const L = this.labels.length;
      group.forEach((p, b) => p.resolve(logits.slice(b * L, (b + 1) * L)));
    } catch (err) {
      group.forEach((p) => p.reject(err));
    }
  }
}
