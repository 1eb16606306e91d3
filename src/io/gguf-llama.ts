/**
 * Llama-family GGUF files as Hugging Face models: the config (LlamaConfig / Qwen2Config field
 * names) from the `<arch>.*` and `tokenizer.ggml.*` metadata, the tensor names GGUF ↔ HF,
 * GGUF dims ↔ torch shapes, and llama.cpp's rotary row permutation of attn_q / attn_k.
 *
 * Sources: llama.cpp convert_hf_to_gguf.py (LlamaModel.permute for `llama`; Qwen2Model, a
 * plain TextModel, does not permute), gguf-py tensor_mapping.py (names), and transformers'
 * GGUF loader (integrations/ggml.py, modeling_gguf_pytorch_utils.py: which metadata key is
 * which config field, tie_word_embeddings when output.weight is absent), whose result on the
 * real SmolLM2 file is the test reference.
 */
import { ggufFloat, ggufInteger, ggufString, openGguf, type GgufFile, type GgufTensorInfo, type GgufTensorToWrite, type GgufValue } from './gguf.js';

/** The architectures this module maps (general.architecture). */
export const GGUF_LLAMA_ARCHITECTURES = ['llama', 'qwen2'] as const;
export type GgufLlamaArchitecture = (typeof GGUF_LLAMA_ARCHITECTURES)[number];

/** Hugging Face rope_scaling as the metadata describes it. */
export interface HfRopeScaling {
  rope_type: 'linear' | 'yarn';
  factor: number;
  original_max_position_embeddings?: number;
}

/** A Hugging Face LlamaConfig / Qwen2Config (config.json field names) read from GGUF metadata. */
export interface HfLlamaConfig {
  architectures: ['LlamaForCausalLM'] | ['Qwen2ForCausalLM'];
  model_type: GgufLlamaArchitecture;
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  hidden_act: 'silu';
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: HfRopeScaling | null;
  tie_word_embeddings: boolean;
  attention_bias: boolean;
  mlp_bias: false;
  bos_token_id?: number;
  eos_token_id?: number;
  pad_token_id?: number;
  unk_token_id?: number;
}

const LAYER_MAP: ReadonlyArray<[string, string]> = [
  ['attn_norm', 'input_layernorm'],
  ['attn_q', 'self_attn.q_proj'],
  ['attn_k', 'self_attn.k_proj'],
  ['attn_v', 'self_attn.v_proj'],
  ['attn_output', 'self_attn.o_proj'],
  ['ffn_norm', 'post_attention_layernorm'],
  ['ffn_gate', 'mlp.gate_proj'],
  ['ffn_up', 'mlp.up_proj'],
  ['ffn_down', 'mlp.down_proj'],
];
const GLOBAL_MAP: ReadonlyArray<[string, string]> = [
  ['token_embd', 'model.embed_tokens'],
  ['output_norm', 'model.norm'],
  ['output', 'lm_head'],
];
const G2H = new Map(LAYER_MAP);
const H2G = new Map(LAYER_MAP.map(([g, h]) => [h, g]));
const G2H_GLOBAL = new Map(GLOBAL_MAP);
const H2G_GLOBAL = new Map(GLOBAL_MAP.map(([g, h]) => [h, g]));

/**
 * The Hugging Face name of a GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`),
 * or undefined for a tensor with no HF counterpart (e.g. `rope_freqs.weight`).
 */
export function ggufToHfName(name: string): string | undefined {
  const m = /^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$/.exec(name);
  if (m) {
    const h = G2H.get(m[2]);
    return h && `model.layers.${Number(m[1])}.${h}.${m[3]}`;
  }
  const g = /^([a-z_]+)\.(weight|bias)$/.exec(name);
  const h = g && G2H_GLOBAL.get(g[1]);
  return h ? `${h}.${g![2]}` : undefined;
}

/** The GGUF name of a Hugging Face tensor (inverse of {@link ggufToHfName}), or undefined. */
export function hfToGgufName(name: string): string | undefined {
  const m = /^model\.layers\.(\d+)\.([a-z_.]+)\.(weight|bias)$/.exec(name);
  if (m) {
    const g = H2G.get(m[2]);
    return g && `blk.${Number(m[1])}.${g}.${m[3]}`;
  }
  const g = /^([a-z_.]+)\.(weight|bias)$/.exec(name);
  const base = g && H2G_GLOBAL.get(g[1]);
  return base ? `${base}.${g![2]}` : undefined;
}

/** Whether llama.cpp stores this architecture's attn_q / attn_k rows permuted (convert_hf_to_gguf.py: LlamaModel does, Qwen2Model does not). */
export function ggufPermutesQK(arch: string): boolean {
  return arch === 'llama';
}

function checkPermuteArgs(data: Float32Array, rows: number, nHead: number): number {
  if (!Number.isInteger(nHead) || nHead < 1 || rows % nHead !== 0 || (rows / nHead) % 2 !== 0) {
    throw new Error(`rotary permutation: ${rows} rows do not split into ${nHead} heads of an even size`);
  }
  if (data.length % rows !== 0) throw new Error(`rotary permutation: ${data.length} values are not ${rows} whole rows`);
  return data.length / rows;
}

/**
 * Undo llama.cpp's rotary row permutation of a q or k projection (weight (rows, cols) or bias
 * (rows)): within each head of `rows / nHead` rows, GGUF row 2j + i holds HF row i·half + j
 * (half = head size / 2). convert_hf_to_gguf.py LlamaModel.permute is
 * `w.reshape(n_head, 2, half, ...).swapaxes(1, 2)`; this is its inverse (transformers'
 * reverse_permute_weights).
 *
 * @param data row-major values, `rows` rows.
 * @param nHead attention heads for q, key-value heads for k.
 * @returns a new Float32Array in HF row order.
 * @throws Error when rows do not split into nHead heads of even size.
 */
export function unpermuteQK(data: Float32Array, rows: number, nHead: number): Float32Array {
  const cols = checkPermuteArgs(data, rows, nHead);
  const headRows = rows / nHead;
  const half = headRows / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) {
        const src = (h * headRows + 2 * j + i) * cols;
        out.set(data.subarray(src, src + cols), (h * headRows + i * half + j) * cols);
      }
    }
  }
  return out;
}

/**
 * Apply llama.cpp's rotary row permutation (HF → GGUF order; inverse of {@link unpermuteQK}).
 * @throws as unpermuteQK.
 */
export function permuteQK(data: Float32Array, rows: number, nHead: number): Float32Array {
  const cols = checkPermuteArgs(data, rows, nHead);
  const headRows = rows / nHead;
  const half = headRows / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) {
        const src = (h * headRows + i * half + j) * cols;
        out.set(data.subarray(src, src + cols), (h * headRows + 2 * j + i) * cols);
      }
    }
  }
  return out;
}

type Header = Pick<GgufFile, 'path' | 'metadata' | 'tensors'>;

function positive(h: Header, key: string, fallback?: number): number {
  const v = ggufInteger(h, key, fallback);
  if (v < 1) throw new Error(`${h.path}: metadata key '${key}' must be at least 1, got ${v}`);
  return v;
}

function optionalId(h: Header, key: string): number | undefined {
  return h.metadata.has(key) ? ggufInteger(h, key) : undefined;
}

function ropeScaling(h: Header, arch: string): HfRopeScaling | null {
  const type = ggufString(h, `${arch}.rope.scaling.type`, '');
  const factorKey = `${arch}.rope.scaling.factor`;
  if (type === '' || type === 'none') {
    // Older converters wrote only <arch>.rope.scale_linear.
    const linear = ggufFloat(h, `${arch}.rope.scale_linear`, 1);
    return linear !== 1 ? { rope_type: 'linear', factor: linear } : null;
  }
  if (type === 'linear') return { rope_type: 'linear', factor: ggufFloat(h, factorKey) };
  if (type === 'yarn') {
    return {
      rope_type: 'yarn',
      factor: ggufFloat(h, factorKey),
      original_max_position_embeddings: positive(h, `${arch}.rope.scaling.original_context_length`),
    };
  }
  throw new Error(`${h.path}: metadata key '${arch}.rope.scaling.type' is '${type}'; supported: none, linear, yarn`);
}

/**
 * The Hugging Face config of a llama or qwen2 GGUF.
 *
 * Fields: vocab_size = rows of token_embd.weight (checked against `<arch>.vocab_size` and the
 * token list when present); hidden_size = embedding_length; intermediate_size =
 * feed_forward_length; num_hidden_layers = block_count; num_attention_heads /
 * num_key_value_heads = attention.head_count / head_count_kv (default: head_count);
 * head_dim = attention.key_length, else (llama) rope.dimension_count, else hidden/heads;
 * rms_norm_eps = attention.layer_norm_rms_epsilon; rope_theta = rope.freq_base (default
 * 10000); max_position_embeddings = context_length; rope_scaling from rope.scaling.* (linear,
 * yarn); tie_word_embeddings = no output.weight tensor; attention_bias = blk.0.attn_q.bias
 * exists; bos/eos/pad/unk ids from tokenizer.ggml.*_token_id.
 *
 * Llama 3 frequency scaling is stored by llama.cpp as a `rope_freqs.weight` tensor, not as
 * metadata; it is not turned into rope_scaling (transformers' GGUF loader ignores it too).
 *
 * @throws Error naming the file and key when general.architecture is not llama/qwen2, a
 *   required key is missing or mistyped, the numbers are inconsistent (heads not dividing,
 *   vocab sizes disagreeing), or a tensor's dims contradict the config.
 */
export function ggufLlamaConfig(h: Header): HfLlamaConfig {
  const arch = ggufString(h, 'general.architecture');
  if (!(GGUF_LLAMA_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new Error(`${h.path}: general.architecture is '${arch}'; supported: ${GGUF_LLAMA_ARCHITECTURES.join(', ')}`);
  }
  const a = arch as GgufLlamaArchitecture;
  const hidden = positive(h, `${a}.embedding_length`);
  const heads = positive(h, `${a}.attention.head_count`);
  const kvHeads = positive(h, `${a}.attention.head_count_kv`, heads);
  if (heads % kvHeads !== 0) throw new Error(`${h.path}: ${a}.attention.head_count ${heads} is not a multiple of head_count_kv ${kvHeads}`);
  let headDim: number;
  if (h.metadata.has(`${a}.attention.key_length`)) headDim = positive(h, `${a}.attention.key_length`);
  else if (a === 'llama' && h.metadata.has('llama.rope.dimension_count')) headDim = positive(h, 'llama.rope.dimension_count');
  else {
    if (hidden % heads !== 0) throw new Error(`${h.path}: ${a}.embedding_length ${hidden} is not a multiple of head_count ${heads}`);
    headDim = hidden / heads;
  }
  const byName = new Map(h.tensors.map((t) => [t.name, t]));
  const embd = byName.get('token_embd.weight');
  if (!embd) throw new Error(`${h.path}: tensor 'token_embd.weight' is missing`);
  if (embd.ne.length !== 2 || embd.ne[0] !== hidden) {
    throw new Error(`${h.path}: tensor 'token_embd.weight' has dims [${embd.ne.join(', ')}]; expected [${hidden}, vocab_size]`);
  }
  const vocab = embd.ne[1];
  if (h.metadata.has(`${a}.vocab_size`) && ggufInteger(h, `${a}.vocab_size`) !== vocab) {
    throw new Error(`${h.path}: ${a}.vocab_size ${ggufInteger(h, `${a}.vocab_size`)} differs from the ${vocab} rows of token_embd.weight`);
  }
  const tokens = h.metadata.get('tokenizer.ggml.tokens');
  if (tokens?.type === 'array' && tokens.value.items.length > vocab) {
    throw new Error(`${h.path}: tokenizer.ggml.tokens has ${tokens.value.items.length} tokens, more than the ${vocab} rows of token_embd.weight`);
  }
  const eps = ggufFloat(h, `${a}.attention.layer_norm_rms_epsilon`);
  if (!(eps > 0)) throw new Error(`${h.path}: ${a}.attention.layer_norm_rms_epsilon must be positive, got ${eps}`);
  const theta = ggufFloat(h, `${a}.rope.freq_base`, 10000);
  if (!(theta > 0) || !Number.isFinite(theta)) throw new Error(`${h.path}: ${a}.rope.freq_base must be positive, got ${theta}`);
  const config: HfLlamaConfig = {
    architectures: a === 'llama' ? ['LlamaForCausalLM'] : ['Qwen2ForCausalLM'],
    model_type: a,
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: positive(h, `${a}.feed_forward_length`),
    num_hidden_layers: positive(h, `${a}.block_count`),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    hidden_act: 'silu',
    max_position_embeddings: positive(h, `${a}.context_length`),
    rms_norm_eps: eps,
    rope_theta: theta,
    rope_scaling: ropeScaling(h, a),
    tie_word_embeddings: !byName.has('output.weight'),
    attention_bias: byName.has('blk.0.attn_q.bias'),
    mlp_bias: false,
  };
  for (const [field, key] of [
    ['bos_token_id', 'tokenizer.ggml.bos_token_id'],
    ['eos_token_id', 'tokenizer.ggml.eos_token_id'],
    ['pad_token_id', 'tokenizer.ggml.padding_token_id'],
    ['unk_token_id', 'tokenizer.ggml.unknown_token_id'],
  ] as const) {
    const id = optionalId(h, key);
    if (id !== undefined) config[field] = id;
  }
  checkTensorDims(h, config);
  return config;
}

/** Expected GGUF dims (ne, fastest first) of every tensor name the config implies. */
function expectedDims(c: HfLlamaConfig): Map<string, number[]> {
  const q = c.num_attention_heads * c.head_dim;
  const kv = c.num_key_value_heads * c.head_dim;
  const m = new Map<string, number[]>([
    ['token_embd.weight', [c.hidden_size, c.vocab_size]],
    ['output_norm.weight', [c.hidden_size]],
    ['output.weight', [c.hidden_size, c.vocab_size]],
  ]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const b = `blk.${i}.`;
    m.set(`${b}attn_norm.weight`, [c.hidden_size]);
    m.set(`${b}attn_q.weight`, [c.hidden_size, q]);
    m.set(`${b}attn_k.weight`, [c.hidden_size, kv]);
    m.set(`${b}attn_v.weight`, [c.hidden_size, kv]);
    m.set(`${b}attn_q.bias`, [q]);
    m.set(`${b}attn_k.bias`, [kv]);
    m.set(`${b}attn_v.bias`, [kv]);
    m.set(`${b}attn_output.weight`, [q, c.hidden_size]);
    m.set(`${b}ffn_norm.weight`, [c.hidden_size]);
    m.set(`${b}ffn_gate.weight`, [c.hidden_size, c.intermediate_size]);
    m.set(`${b}ffn_up.weight`, [c.hidden_size, c.intermediate_size]);
    m.set(`${b}ffn_down.weight`, [c.intermediate_size, c.hidden_size]);
  }
  return m;
}

const REQUIRED_PER_LAYER = ['attn_norm.weight', 'attn_q.weight', 'attn_k.weight', 'attn_v.weight', 'attn_output.weight', 'ffn_norm.weight', 'ffn_gate.weight', 'ffn_up.weight', 'ffn_down.weight'];

function checkTensorDims(h: Header, c: HfLlamaConfig): void {
  const expected = expectedDims(c);
  for (const t of h.tensors) {
    const want = expected.get(t.name);
    if (want && (want.length !== t.ne.length || want.some((d, i) => d !== t.ne[i]))) {
      throw new Error(`${h.path}: tensor '${t.name}' has dims [${t.ne.join(', ')}]; the config implies [${want.join(', ')}]`);
    }
    const layer = /^blk\.(\d+)\./.exec(t.name);
    if (layer && Number(layer[1]) >= c.num_hidden_layers) {
      throw new Error(`${h.path}: tensor '${t.name}' is for layer ${layer[1]}, but block_count is ${c.num_hidden_layers}`);
    }
  }
  const names = new Set(h.tensors.map((t) => t.name));
  for (const n of ['output_norm.weight', ...Array.from({ length: c.num_hidden_layers }, (_, i) => REQUIRED_PER_LAYER.map((s) => `blk.${i}.${s}`)).flat()]) {
    if (!names.has(n)) throw new Error(`${h.path}: tensor '${n}' is missing`);
  }
}

/** One tensor of a GGUF model under its Hugging Face name, read on demand. */
export interface GgufModelTensor {
  /** Hugging Face name (`model.layers.0.self_attn.q_proj.weight`). */
  name: string;
  /** Name in the GGUF file (`blk.0.attn_q.weight`). */
  ggufName: string;
  /** ggml type of the stored data. */
  type: string;
  /** torch shape (GGUF dims reversed): (out_features, in_features) for a Linear weight. */
  shape: number[];
  /** Dequantized float32 values, row-major over `shape`, q/k rows in HF order. */
  read(): Promise<Float32Array>;
}

/** A llama/qwen2 GGUF opened as a Hugging Face model; close() it when done. */
export interface GgufModel {
  path: string;
  config: HfLlamaConfig;
  /** Tensors by Hugging Face name, in file order (no lm_head when tie_word_embeddings). */
  tensors: Map<string, GgufModelTensor>;
  /** Tensors with no Hugging Face counterpart (e.g. rope_freqs.weight), by GGUF name. */
  unmappedTensors: GgufTensorInfo[];
  /** All metadata, in file order. */
  metadata: Map<string, GgufValue>;
  /** The tokenizer.* keys (tokenizer.ggml.tokens, .merges, .chat_template, ...). */
  tokenizerMetadata: Map<string, GgufValue>;
  /** The underlying file (raw bytes, GGUF names). */
  file: GgufFile;
  close(): Promise<void>;
}

/**
 * Open a llama or qwen2 GGUF as a Hugging Face model; tensor data is read and dequantized
 * lazily, per tensor, with llama.cpp's q/k row permutation undone for `llama`.
 *
 * @throws as {@link openGguf} and {@link ggufLlamaConfig}; the file is closed on error.
 */
export async function openGgufModel(path: string): Promise<GgufModel> {
  const file = await openGguf(path);
  try {
    const config = ggufLlamaConfig(file);
    const permute = ggufPermutesQK(config.model_type);
    const tensors = new Map<string, GgufModelTensor>();
    const unmappedTensors: GgufTensorInfo[] = [];
    for (const info of file.tensors) {
      const name = ggufToHfName(info.name);
      if (!name) {
        unmappedTensors.push(info);
        continue;
      }
      const q = /\.attn_q\.(weight|bias)$/.test(info.name);
      const k = /\.attn_k\.(weight|bias)$/.test(info.name);
      const nHead = q ? config.num_attention_heads : config.num_key_value_heads;
      const rows = info.shape[0];
      tensors.set(name, {
        name,
        ggufName: info.name,
        type: info.type,
        shape: info.shape,
        read: async () => {
          const data = await file.readTensor(info);
          return permute && (q || k) ? unpermuteQK(data, rows, nHead) : data;
        },
      });
    }
    const tokenizerMetadata = new Map([...file.metadata].filter(([k]) => k.startsWith('tokenizer.')));
    return { path, config, tensors, unmappedTensors, metadata: file.metadata, tokenizerMetadata, file, close: () => file.close() };
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** A GGUF model read whole: every tensor dequantized to float32 under its HF name. */
export interface LoadedGgufModel {
  config: HfLlamaConfig;
  /** Tensors by Hugging Face name: torch shape and float32 data (q/k rows in HF order). */
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
  unmappedTensors: GgufTensorInfo[];
  metadata: Map<string, GgufValue>;
  tokenizerMetadata: Map<string, GgufValue>;
}

/**
 * Read a llama or qwen2 GGUF whole (see {@link openGgufModel}); about 4 bytes of memory per
 * parameter (SmolLM2-135M: ~540 MB).
 *
 * @throws as openGgufModel, or naming the tensor and type when a tensor's type cannot be dequantized.
 */
export async function readGgufModel(path: string): Promise<LoadedGgufModel> {
  const model = await openGgufModel(path);
  try {
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const t of model.tensors.values()) tensors.set(t.name, { shape: t.shape, data: await t.read() });
    const { config, unmappedTensors, metadata, tokenizerMetadata } = model;
    return { config, tensors, unmappedTensors, metadata, tokenizerMetadata };
  } finally {
    await model.close();
  }
}

/**
 * Hugging Face tensors → tensors for {@link writeGguf}: GGUF names, torch shapes (writeGguf
 * reverses them to GGUF dims), and for `llama` the q/k rows permuted into llama.cpp's order.
 * Norms and biases (1-D) are always written F32, as llama.cpp's converter does; other
 * tensors get `type`. lm_head.weight is skipped when config.tie_word_embeddings.
 *
 * @param tensors by HF name: torch shape and row-major float32 data.
 * @throws Error naming a tensor with no GGUF name, or whose rows do not split into heads.
 */
export function hfTensorsToGguf(
  config: Pick<HfLlamaConfig, 'model_type' | 'num_attention_heads' | 'num_key_value_heads' | 'tie_word_embeddings'>,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  type: 'F32' | 'F16' | 'Q8_0',
): GgufTensorToWrite[] {
  const permute = ggufPermutesQK(config.model_type);
  const out: GgufTensorToWrite[] = [];
  for (const [name, t] of tensors) {
    if (name === 'lm_head.weight' && config.tie_word_embeddings) continue;
    const ggufName = hfToGgufName(name);
    if (!ggufName) throw new Error(`tensor '${name}' has no GGUF name`);
    const q = name.includes('.self_attn.q_proj.');
    const k = name.includes('.self_attn.k_proj.');
    const nHead = q ? config.num_attention_heads : config.num_key_value_heads;
    const data = permute && (q || k) ? permuteQK(t.data, t.shape[0], nHead) : t.data;
    out.push({ name: ggufName, shape: t.shape, type: t.shape.length === 1 ? 'F32' : type, data });
  }
  return out;
}
