/**
 * Hugging Face model folders (config.json + model.safetensors + tokenizer
 * files) in and out, as BertForSequenceClassification (or BertForMaskedLM,
 * when asked) sees them: checkpoint
 * keys are mapped the way transformers' `from_pretrained` maps them, weights
 * the checkpoint lacks are initialised like `BertPreTrainedModel._init_weights`,
 * and both are reported in transformers' words.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { BERT_DEFAULTS, parameterShapes, type BertArchitecture, type BertConfig } from '../config.js';
import { BertTokenizer } from '../tokenizer/index.js';
import { copyFileAtomic, writeFileAtomic } from './atomic.js';
import { SeededRng } from './rng.js';
import { readSafetensors, writeSafetensors, type Tensor } from './safetensors.js';
import { assertFiniteTensor } from './finite.js';

export const MODEL_CLASS = 'BertForSequenceClassification';
export const SUPPORTED_MODEL_TYPES = ['bert'] as const;
/** Tokenizer files copied by saveModelFolder when the source folder has them. */
export const TOKENIZER_FILES = ['tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json'] as const;
/** Default seed for newly initialised weights. */
export const DEFAULT_INIT_SEED = 42;

export interface LoadModelOptions {
  /** Number of classes; overrides config.json (and its id2label, unless that has exactly this many labels). */
  num_labels?: number;
  /** Class names by id ("0".. or 0..); implies num_labels. */
  id2label?: Record<string | number, string>;
  /** Class ids by name; implies id2label when that is not given. */
  label2id?: Record<string, number>;
  /** Seed for weights missing from the checkpoint (default 42). */
  seed?: number;
  /** The model class to load the checkpoint as (default BertForSequenceClassification). */
  architecture?: BertArchitecture;
}

/** Checkpoint tensors kept as they were, for a later save (see LoadedModel.carried). */
export type CarriedTensors = Map<string, { shape: number[]; data: Float32Array }>;

/** The BERT pooler: BertForMaskedLM has none, but a classifier fine-tuned later uses it. */
const POOLER_KEYS = ['bert.pooler.dense.weight', 'bert.pooler.dense.bias'];

export interface LoadedModel {
  /** Absolute folder path. */
  folder: string;
  config: BertConfig;
  /** HF keys of the architecture → row-major float32 data, in state_dict order (parameterShapes). */
  weights: Map<string, Float32Array>;
  /**
   * BertForMaskedLM only: the checkpoint's pooler (reported in `unused`, as transformers does),
   * kept so that saving the masked LM writes it back unchanged and a classifier fine-tuned from
   * that folder starts from the original pooler instead of a newly initialised one.
   */
  carried: CarriedTensors;
  /** Keys initialised here because the checkpoint lacks them, sorted. */
  newlyInitialized: string[];
  /** Checkpoint keys not used (e.g. `cls.*` heads, `embeddings.position_ids`), as named in the file, sorted. */
  unused: string[];
  tokenizer: BertTokenizer;
}

export interface SaveModelOptions {
  config: BertConfig;
  /** The model class written into config.json (default BertForSequenceClassification). */
  architecture?: BertArchitecture;
  /** Every key of parameterShapes(config, architecture), with exactly that many elements. */
  weights: Map<string, Float32Array>;
  /** Tensors written after the weights as they are (a masked LM's carried pooler); none may repeat a weight. */
  carried?: CarriedTensors;
  /** Folder whose tokenizer files (TOKENIZER_FILES) are copied (it must have tokenizer.json or vocab.txt); may be `folder` itself. */
  tokenizerFrom: string;
}

const REQUIRED_FIELDS = ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size'] as const;
const INT_FIELDS = [...REQUIRED_FIELDS, 'max_position_embeddings', 'type_vocab_size'] as const;
/**
 * The largest sizes a config.json may give, checked before anything is built
 * from them (a label list of num_labels entries, a parameter table of
 * num_hidden_layers layers): the native engine's BertConfigLimits
 * (native/engine/engine.h, which the addon exports as configLimits), far above
 * any released BERT. A folder is read without loading the addon (the ONNX
 * backend needs none), hence this copy; test/hostile.test.ts checks the two agree.
 */
export const CONFIG_LIMITS = {
  vocab_size: 2 ** 24,
  hidden_size: 2 ** 16,
  num_hidden_layers: 1024,
  num_attention_heads: 2 ** 16,
  intermediate_size: 2 ** 18,
  max_position_embeddings: 2 ** 20,
  type_vocab_size: 2 ** 16,
  num_labels: 2 ** 20,
} as const;

/** A positive integer no larger than CONFIG_LIMITS[field]. @throws Error "<where>: <field> ..." naming the value. */
function checkSize(value: unknown, field: keyof typeof CONFIG_LIMITS, where: string): number {
  if (!Number.isInteger(value) || (value as number) < 1) throw new Error(`${where}: ${field} must be a positive integer, got ${JSON.stringify(value)}`);
  if ((value as number) > CONFIG_LIMITS[field]) throw new Error(`${where}: ${field} ${value} is too large (at most ${CONFIG_LIMITS[field]})`);
  return value as number;
}

const FLOAT_FIELDS = ['layer_norm_eps', 'hidden_dropout_prob', 'attention_probs_dropout_prob', 'initializer_range'] as const;

/** Python repr of a list of strings, as transformers prints key lists. */
export function pythonListRepr(items: readonly string[]): string {
  const repr = (s: string) => (s.includes("'") && !s.includes('"') ? `"${s}"` : `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`);
  return `[${items.map(repr).join(', ')}]`;
}

/**
 * transformers' (4.x `_load_pretrained_model`) warning for weights missing from
 * the checkpoint, e.g. "Some weights of BertForSequenceClassification were not
 * initialized from the model checkpoint at <path> and are newly initialized:
 * ['classifier.bias', 'classifier.weight']" followed by its TRAIN advice line.
 */
export function formatNewlyInitializedMessage(path: string, keys: readonly string[], modelClass = MODEL_CLASS): string {
  return (
    `Some weights of ${modelClass} were not initialized from the model checkpoint at ${path} and are newly initialized: ` +
    `${pythonListRepr([...keys].sort())}\nYou should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference.`
  );
}

/** transformers' first line for checkpoint weights that were not used. */
export function formatUnusedWeightsMessage(path: string, keys: readonly string[], modelClass = MODEL_CLASS): string {
  return `Some weights of the model checkpoint at ${path} were not used when initializing ${modelClass}: ${pythonListRepr([...keys].sort())}`;
}

/** What a model folder holds, in the words of the "not a model folder" error. */
const MODEL_FOLDER_FILES = 'expected a Hugging Face model folder: config.json, model.safetensors, tokenizer files';

/** An Error carrying `code` and `path` as fs errors do, so the CLI can name the flag that held the path. */
function pathError(message: string, code: string, path: string): Error {
  return Object.assign(new Error(message), { code, path });
}

/**
 * Where a JSON.parse SyntaxError points in `text`: V8 says "at position N" for
 * most errors, nothing for an unexpected token; there the shortest prefix of
 * `text` that fails before its own end ends just past the culprit.
 * @returns 1-based line and column (UTF-16 units), and V8's reason without the position.
 */
function locateJsonError(text: string, err: Error): { line: number; column: number; reason: string } {
  const at = / at position (\d+)/.exec(err.message);
  const reason = err.message.replace(/ at position \d+.*$/s, '').replace(/ in JSON$/, '').replace(/, (?:\.\.\.)?".*is not valid JSON$/s, '');
  let pos = at ? Number(at[1]) : text.length;
  if (!at && !/end of JSON input/.test(err.message)) {
    let [lo, hi] = [1, text.length];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (failsBeforeEnd(text.slice(0, mid))) hi = mid;
      else lo = mid + 1;
    }
    pos = lo - 1;
  }
  const before = text.slice(0, pos).split('\n');
  return { line: before.length, column: before[before.length - 1].length + 1, reason };
}

/** True when `prefix` is invalid JSON for a reason other than ending too early. */
function failsBeforeEnd(prefix: string): boolean {
  try {
    JSON.parse(prefix);
    return false;
  } catch (err) {
    const m = /at position (\d+)/.exec((err as Error).message);
    return !/end of JSON input/.test((err as Error).message) && (!m || Number(m[1]) < prefix.trimEnd().length);
  }
}

/**
 * JSON.parse naming the file, line and column of a syntax error.
 * @throws Error "<path>:<line>:<column>: invalid JSON: <reason>".
 */
export function parseJsonText(text: string, path: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    const { line, column, reason } = locateJsonError(text, err as Error);
    throw new Error(`${path}:${line}:${column}: invalid JSON: ${reason}`, { cause: err });
  }
}

async function readJsonFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  const value = parseJsonText(text, path);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${path}: expected a JSON object`);
  return value as Record<string, unknown>;
}

/** Subfolders of `folder` that hold a config.json (at most 3), for "did you mean". */
function modelSubfolders(folder: string): string[] {
  try {
    return readdirSync(folder, { withFileTypes: true })
      .filter((d) => d.isDirectory() && existsSync(join(folder, d.name, 'config.json')))
      .slice(0, 3)
      .map((d) => join(folder, d.name));
  } catch {
    return [];
  }
}

/**
 * Checks that `folder` is a model folder: an existing folder with a config.json.
 * Errors carry `code` and `path` (= `folder` as given) like fs errors, and
 * their message starts with that path (except for a missing folder).
 * @throws Error "model folder <abs> does not exist" (ENOENT), "<folder> is a
 *   file, expected a model folder" (ENOTDIR), or "<folder> is not a model
 *   folder: config.json is missing (expected ...)" (ENOENT), naming subfolders
 *   that do hold a config.json, or, for a PEFT LoRA adapter folder
 *   (adapter_config.json), how to load it on its base model.
 */
export function assertModelFolder(folder: string): void {
  const st = statSync(folder, { throwIfNoEntry: false });
  if (!st) throw pathError(`model folder ${resolve(folder)} does not exist`, 'ENOENT', folder);
  if (!st.isDirectory()) throw pathError(`${folder} is a file, expected a model folder`, 'ENOTDIR', folder);
  if (existsSync(join(folder, 'config.json'))) return;
  const subs = modelSubfolders(folder);
  const hint = adapterHint(folder) ?? (subs.length ? `; did you mean ${subs.join(' or ')}?` : '');
  throw pathError(`${folder} is not a model folder: config.json is missing (${MODEL_FOLDER_FILES})${hint}`, 'ENOENT', folder);
}

/** For a PEFT adapter folder (an sft run's output): load the base model with the adapter on it. */
function adapterHint(folder: string): string | undefined {
  const path = join(folder, 'adapter_config.json');
  if (!existsSync(path)) return undefined;
  let base: unknown;
  try {
    base = (JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>).base_model_name_or_path;
  } catch {
    base = undefined; // an unreadable adapter_config.json is reported when it is loaded as the adapter
  }
  const model = typeof base === 'string' && base !== '' ? base : '<base model>';
  return `; it is a PEFT LoRA adapter (adapter_config.json): load its base model ${model} with this folder as the LoRA adapter (nodetune generate --model ${model} --lora ${folder})`;
}

/**
 * `<folder>/config.json` as a JSON object, after assertModelFolder.
 * @throws Error as assertModelFolder, or naming the file (and line:column of a
 *   syntax error) when config.json is unreadable, not JSON, or not an object.
 */
export async function readModelConfigJson(folder: string): Promise<Record<string, unknown>> {
  assertModelFolder(folder);
  return readJsonFile(join(folder, 'config.json'));
}

function invertLabels(id2label: Record<string, string>, where: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [id, name] of Object.entries(id2label)) {
    if (name in out) throw new Error(`${where}: label '${name}' appears twice in id2label (ids ${out[name]} and ${id})`);
    out[name] = Number(id);
  }
  return out;
}

/** id2label with string keys "0".."n-1", checked to be exactly that range. */
function normalizeId2label(raw: Record<string | number, unknown>, where: string): Record<string, string> {
  const entries = Object.entries(raw);
  if (entries.length > CONFIG_LIMITS.num_labels) throw new Error(`${where}: id2label has ${entries.length} labels, too many (at most ${CONFIG_LIMITS.num_labels})`);
  const out: Record<string, string> = {};
  for (let i = 0; i < entries.length; i++) {
    const name = raw[String(i)];
    if (typeof name !== 'string') throw new Error(`${where}: id2label must map every id 0..${entries.length - 1} to a string; id ${i} is ${JSON.stringify(name)}`);
    out[String(i)] = name;
  }
  return out;
}

/** The label fields, resolved from options first, then config.json, then transformers' LABEL_i defaults. */
function resolveLabels(json: Record<string, unknown>, opts: LoadModelOptions, where: string): Pick<BertConfig, 'num_labels' | 'id2label' | 'label2id'> {
  let id2label: Record<string, string> | undefined;
  if (opts.id2label) id2label = normalizeId2label(opts.id2label, 'options');
  else if (opts.label2id) id2label = normalizeId2label(Object.fromEntries(Object.entries(opts.label2id).map(([k, v]) => [v, k])), 'options (label2id)');
  const cfgLabels = json.id2label && typeof json.id2label === 'object' ? normalizeId2label(json.id2label as Record<string, unknown>, where) : undefined;
  if (opts.num_labels !== undefined) {
    if (!Number.isInteger(opts.num_labels) || opts.num_labels < 1) throw new Error(`num_labels must be a positive integer, got ${opts.num_labels}`);
    if (opts.num_labels > CONFIG_LIMITS.num_labels) throw new Error(`num_labels ${opts.num_labels} is too large (at most ${CONFIG_LIMITS.num_labels})`);
    if (id2label && Object.keys(id2label).length !== opts.num_labels) {
      throw new Error(`num_labels ${opts.num_labels} disagrees with the ${Object.keys(id2label).length} labels given in id2label/label2id`);
    }
  }
  if (!id2label && cfgLabels && (opts.num_labels === undefined || Object.keys(cfgLabels).length === opts.num_labels)) id2label = cfgLabels;
  // Checked before the LABEL_i defaults below are made from it.
  const cfgNum = json.num_labels === undefined || json.num_labels === null ? undefined : checkSize(json.num_labels, 'num_labels', where);
  const n = opts.num_labels ?? (id2label ? Object.keys(id2label).length : cfgNum ?? 2);
  id2label ??= Object.fromEntries(Array.from({ length: n }, (_, i) => [String(i), `LABEL_${i}`]));
  const label2id = invertLabels(id2label, where);
  if (opts.label2id) {
    for (const [name, id] of Object.entries(opts.label2id)) {
      if (label2id[name] !== id) throw new Error(`label2id['${name}'] = ${id} disagrees with id2label (${label2id[name] ?? 'absent'})`);
    }
  }
  return { num_labels: n, id2label, label2id };
}

/**
 * config.json contents → BertConfig (Hugging Face field names; BERT_DEFAULTS
 * for optional fields).
 *
 * @param path used in error messages.
 * @throws Error naming the file when model_type is not 'bert', a required
 *   field (vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
 *   intermediate_size) is missing, a size is not a positive integer, or
 *   hidden_size is not divisible by num_attention_heads.
 */
export function parseBertConfig(json: Record<string, unknown>, path: string, opts: LoadModelOptions = {}): BertConfig {
  const type = json.model_type;
  if (type === undefined) throw new Error(`${path} has no model_type (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  if (!(SUPPORTED_MODEL_TYPES as readonly unknown[]).includes(type)) {
    throw new Error(`model_type '${String(type)}' in ${path} is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  const missing = REQUIRED_FIELDS.filter((f) => json[f] === undefined);
  if (missing.length) throw new Error(`${path} is missing required field(s): ${missing.join(', ')}`);
  const cfg = { ...BERT_DEFAULTS } as Record<string, unknown>;
  for (const key of Object.keys(BERT_DEFAULTS)) if (json[key] !== undefined) cfg[key] = json[key];
  for (const f of INT_FIELDS) checkSize(cfg[f], f, path);
  for (const f of FLOAT_FIELDS) {
    if (typeof cfg[f] !== 'number' || !Number.isFinite(cfg[f])) throw new Error(`${path}: ${f} must be a number, got ${JSON.stringify(cfg[f])}`);
  }
  if ((cfg.hidden_size as number) % (cfg.num_attention_heads as number) !== 0) {
    throw new Error(`${path}: hidden_size ${cfg.hidden_size} is not a multiple of num_attention_heads ${cfg.num_attention_heads}`);
  }
  const out = { ...(cfg as unknown as BertConfig), ...resolveLabels(json, opts, path) };
  if (typeof json.pad_token_id === 'number') out.pad_token_id = json.pad_token_id;
  if (typeof json.problem_type === 'string') out.problem_type = json.problem_type;
  return out;
}

/** Checkpoint key → the model's key (BertForSequenceClassification or BertForMaskedLM), or null when the model has no such weight. */
export function mapCheckpointKey(key: string, expected: ReadonlySet<string>): string | null {
  // TF-era checkpoints name LayerNorm parameters gamma/beta; transformers renames them on load.
  const k = key.replace(/\.gamma$/, '.weight').replace(/\.beta$/, '.bias');
  if (expected.has(k)) return k;
  if (expected.has(`bert.${k}`)) return `bert.${k}`; // bare BertModel checkpoints (sentence-transformers)
  return null;
}

/** Read model.safetensors, or the shards listed by model.safetensors.index.json. */
async function readCheckpoint(folder: string): Promise<Array<{ file: string; key: string; tensor: Tensor }>> {
  const single = join(folder, 'model.safetensors');
  const index = join(folder, 'model.safetensors.index.json');
  let files: string[];
  if (existsSync(single)) files = [single];
  else if (existsSync(index)) {
    const map = (await readJsonFile(index)).weight_map;
    if (!map || typeof map !== 'object') throw new Error(`${index}: no weight_map`);
    files = [...new Set(Object.values(map as Record<string, string>))].map((f) => join(folder, f));
  } else {
    const other = ['pytorch_model.bin', 'model.bin', 'tf_model.h5', 'flax_model.msgpack', 'model.ckpt.index'].filter((f) => existsSync(join(folder, f)));
    const found = other.length ? `it has ${other.join(', ')}, but ` : '';
    throw new Error(`${folder}: no model.safetensors; ${found}nodetune reads only safetensors weights (convert with transformers: model.save_pretrained(dir, safe_serialization=True))`);
  }
  const out: Array<{ file: string; key: string; tensor: Tensor }> = [];
  for (const file of files) {
    for (const [key, tensor] of (await readSafetensors(file)).tensors) out.push({ file, key, tensor });
  }
  return out;
}

/** transformers' BertPreTrainedModel._init_weights for one parameter, drawing from `rng`. */
function initWeight(key: string, shape: number[], config: BertConfig, rng: SeededRng): Float32Array {
  const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
  if (key.endsWith('LayerNorm.weight')) return out.fill(1);
  if (key.endsWith('.bias')) return out;
  rng.fillNormal(out, 0, config.initializer_range);
  if (key.endsWith('word_embeddings.weight')) {
    const pad = config.pad_token_id ?? 0; // nn.Embedding(padding_idx) row is zeroed
    out.fill(0, pad * shape[1], (pad + 1) * shape[1]);
  }
  return out;
}

/**
 * Load a Hugging Face BERT model folder for sequence classification.
 *
 * Checkpoint keys with or without the `bert.` prefix are accepted (a bare
 * BertModel such as sentence-transformers/all-MiniLM-L6-v2 has none), legacy
 * LayerNorm gamma/beta become weight/bias; everything else (`cls.*`
 * pre-training heads, `embeddings.position_ids` buffers) lands in `unused`.
 * Weights the checkpoint lacks (pooler, classifier) are drawn in state_dict
 * order from SeededRng(seed): Linear/Embedding weights N(0, initializer_range²),
 * biases 0, LayerNorm weights 1 — see formatNewlyInitializedMessage.
 *
 * @returns config, weights (float32, shapes of parameterShapes(config)), the
 *   key reports, and the folder's tokenizer.
 * @throws Error naming the file for: missing folder or config.json (see
 *   assertModelFolder), config.json not valid JSON (line:column), model_type
 *   other than bert, missing config fields, no model.safetensors (e.g. only
 *   pytorch_model.bin), malformed safetensors, a checkpoint tensor whose shape
 *   disagrees with the config (key and both shapes), integer dtype for a
 *   weight, a non-finite value in a weight (tensor, index, [row, column]), the same
 *   weight twice, or no tokenizer.
 */
export async function loadModelFolder(folder: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const dir = resolve(folder);
  const configPath = join(dir, 'config.json');
  const config = parseBertConfig(await readModelConfigJson(folder), configPath, opts);
  const maskedLM = opts.architecture === 'BertForMaskedLM';
  const shapes = new Map(parameterShapes(config, opts.architecture));
  const expected = new Set(shapes.keys());
  const loaded = new Map<string, Float32Array>();
  const source = new Map<string, string>();
  const unused: string[] = [];
  const carried: CarriedTensors = new Map();
  let decoderBias: Float32Array | undefined;
  for (const { file, key, tensor } of await readCheckpoint(dir)) {
    // BertForMaskedLM ties cls.predictions.decoder to the word embeddings and to cls.predictions.bias:
    // transformers neither loads nor reports those keys (an old checkpoint may hold the bias only there).
    if (maskedLM && /^cls\.predictions\.decoder\.(weight|bias)$/.test(key)) {
      if (key.endsWith('bias') && tensor.data instanceof Float32Array) decoderBias = tensor.data;
      continue;
    }
    const name = mapCheckpointKey(key, expected);
    if (name === null) {
      unused.push(key);
      const pooler = maskedLM ? mapCheckpointKey(key, new Set(POOLER_KEYS)) : null;
      if (pooler && tensor.data instanceof Float32Array) carried.set(pooler, { shape: tensor.shape, data: tensor.data });
      continue;
    }
    if (source.has(name)) throw new Error(`${file}: checkpoint has both '${source.get(name)}' and '${key}' for ${name}`);
    const want = shapes.get(name)!;
    if (tensor.shape.length !== want.length || tensor.shape.some((d, i) => d !== want[i])) {
      const hint = name.startsWith('classifier.') ? ' (pass num_labels matching the checkpoint)' : '';
      throw new Error(`${file}: tensor '${key}'${key === name ? '' : ` (${name})`} has shape [${tensor.shape.join(', ')}] but the config needs [${want.join(', ')}]${hint}`);
    }
    if (!(tensor.data instanceof Float32Array)) throw new Error(`${file}: tensor '${key}' has integer dtype ${tensor.dtype}; weights must be floating point`);
    assertFiniteTensor(tensor.data, tensor.shape, file, key);
    loaded.set(name, tensor.data);
    source.set(name, key);
  }
  if (maskedLM && !loaded.has('cls.predictions.bias') && decoderBias?.length === config.vocab_size) loaded.set('cls.predictions.bias', decoderBias);
  const rng = new SeededRng(opts.seed ?? DEFAULT_INIT_SEED);
  const weights = new Map<string, Float32Array>();
  const newlyInitialized: string[] = [];
  for (const [name, shape] of shapes) {
    let w = loaded.get(name);
    if (!w) {
      w = initWeight(name, shape, config, rng);
      newlyInitialized.push(name);
    }
    weights.set(name, w);
  }
  const tokenizer = await BertTokenizer.fromFolder(dir, { maxPositionEmbeddings: config.max_position_embeddings });
  return { folder: dir, config, weights, carried, newlyInitialized: newlyInitialized.sort(), unused: unused.sort(), tokenizer };
}

/**
 * config.json for `architecture`, keys sorted as transformers writes them. A masked LM's has no
 * label fields (transformers omits its default two labels).
 */
export function configToJson(config: BertConfig, architecture: BertArchitecture = MODEL_CLASS): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(BERT_DEFAULTS)) out[key] = (config as unknown as Record<string, unknown>)[key] ?? (BERT_DEFAULTS as Record<string, unknown>)[key];
  Object.assign(out, { architectures: [architecture], model_type: 'bert', pad_token_id: config.pad_token_id ?? 0 });
  if (architecture === MODEL_CLASS) Object.assign(out, classifierLabelFields(config));
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** A classifier config's id2label (string keys; LABEL_i when absent), label2id and problem_type. @throws Error when num_labels disagrees with id2label. */
function classifierLabelFields(config: BertConfig): Record<string, unknown> {
  const id2label = config.id2label
    ? normalizeId2label(config.id2label, 'config')
    : Object.fromEntries(Array.from({ length: config.num_labels }, (_, i) => [String(i), `LABEL_${i}`]));
  if (Object.keys(id2label).length !== config.num_labels) {
    throw new Error(`config.num_labels ${config.num_labels} disagrees with its ${Object.keys(id2label).length} id2label entries`);
  }
  return { id2label, label2id: invertLabels(id2label, 'config'), problem_type: 'single_label_classification' };
}

/**
 * Write a Hugging Face model folder that transformers, transformers.js and
 * nodetune load: model.safetensors (HF keys, `bert.` prefix, metadata
 * {format: 'pt'}), the tokenizer files of `tokenizerFrom`, then config.json
 * (architectures BertForSequenceClassification, id2label with string keys,
 * label2id, problem_type single_label_classification). Each file is written
 * atomically and config.json last, so an interrupted save never leaves a
 * folder that looks complete but is not.
 *
 * @throws Error naming the key when a weight is missing, unexpected, or has the
 *   wrong number of elements for parameterShapes(config); when tokenizerFrom
 *   has no tokenizer; or naming the file when a write fails.
 */
export async function saveModelFolder(folder: string, opts: SaveModelOptions): Promise<void> {
  const dir = resolve(folder);
  const architecture = opts.architecture ?? MODEL_CLASS;
  const configJson = configToJson(opts.config, architecture);
  const shapes = parameterShapes(opts.config, architecture);
  const known = new Set(shapes.map(([k]) => k));
  for (const key of opts.weights.keys()) if (!known.has(key)) throw new Error(`saveModelFolder: unexpected weight '${key}' (not a ${architecture} parameter)`);
  for (const key of opts.carried?.keys() ?? []) if (known.has(key)) throw new Error(`saveModelFolder: carried tensor '${key}' is also a ${architecture} parameter`);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [key, shape] of shapes) {
    const data = opts.weights.get(key);
    if (!data) throw new Error(`saveModelFolder: weight '${key}' is missing`);
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) throw new Error(`saveModelFolder: weight '${key}' has ${data.length} elements, shape [${shape.join(', ')}] needs ${n}`);
    tensors.set(key, { shape, data });
  }
  for (const [key, t] of opts.carried ?? []) tensors.set(key, t);
  const src = resolve(opts.tokenizerFrom);
  if (!existsSync(join(src, 'tokenizer.json')) && !existsSync(join(src, 'vocab.txt'))) {
    throw new Error(`saveModelFolder: tokenizerFrom ${src} has no tokenizer.json or vocab.txt`);
  }
  await mkdir(dir, { recursive: true });
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  if ((await realpath(src)) !== (await realpath(dir))) {
    for (const f of TOKENIZER_FILES) if (existsSync(join(src, f))) await copyFileAtomic(join(src, f), join(dir, f));
  }
  await writeFileAtomic(join(dir, 'config.json'), `${JSON.stringify(configJson, null, 2)}\n`);
}
