/**
 * Writing a fine-tuned Llama-family model for the tools people run it with:
 *
 * - {@link saveHfCausalLM}: a Hugging Face folder (config.json, model.safetensors,
 *   generation_config.json, tokenizer files, chat template) for transformers /
 *   transformers.js / llama.cpp's convert_hf_to_gguf.py;
 * - {@link writeLoraGguf}: a llama.cpp LoRA adapter GGUF for the user's original GGUF
 *   (llama.cpp, node-llama-cpp `createContext({ lora })`, Ollama `ADAPTER`);
 * - {@link writeMergedGguf}: the base GGUF with merged weights, as F16 or Q8_0.
 *
 * PEFT adapter folders and the merge itself are in peft.ts. Tensors are
 * `Map<HF or PEFT name, {shape, data: Float32Array}>`, row-major, torch shapes.
 *
 * Sources: transformers 5 configuration_llama.py / configuration_qwen2.py (config.json fields;
 * it reads rope_theta + rope_scaling as well as rope_parameters), llama.cpp
 * convert_lora_to_gguf.py and src/llama-adapter.cpp (adapter metadata, tensor names, shapes
 * and the checks llama.cpp makes when it loads an adapter), convert_hf_to_gguf.py
 * (LlamaModel.permute of q/k rows; file types).
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from './atomic.js';
import { writeSafetensors } from './safetensors.js';
import { readGgufHeader, writeGguf, type GgufRawTensorToWrite, type GgufTensorToWrite, type GgufValue } from './gguf.js';
import { ggufLlamaConfig, ggufPermutesQK, hfTensorsToGguf, hfToGgufName, openGgufModel, permuteQK, type HfLlamaConfig } from './gguf-llama.js';
import { checkLoraTensors, loraScale, type NamedTensors } from './peft.js';
import { llamaParameterShapes, resolveLoraConfig, type LlamaConfig, type LoraConfig } from '../models/llama.js';

/** A config as the engine takes it (LlamaConfig) or as read from a GGUF (HfLlamaConfig). */
export type CausalLMConfig = LlamaConfig | HfLlamaConfig;

const ARCHITECTURE: Record<string, string> = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', mistral: 'MistralForCausalLM' };

/** Tokenizer and template files {@link saveHfCausalLM} copies from a folder when present. */
export const HF_TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'tokenizer.model',
  'chat_template.jinja',
  'chat_template.json',
] as const;

const MODEL_FILES = new Set(['config.json', 'model.safetensors', 'model.safetensors.index.json', 'generation_config.json']);

function isHfConfig(c: CausalLMConfig): c is HfLlamaConfig {
  return Array.isArray((c as HfLlamaConfig).architectures);
}

/** The fields llamaParameterShapes needs, from either config kind. */
function shapeConfig(c: CausalLMConfig): LlamaConfig {
  if (!isHfConfig(c)) return c;
  return { ...c, rope_scaling: null, o_proj_bias: c.model_type === 'llama' && c.attention_bias, mlp_bias: false } as LlamaConfig;
}

/**
 * config.json for a LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM, keys sorted as
 * transformers writes them. RoPE is written both ways: rope_theta + rope_scaling (transformers
 * 4, llama.cpp's convert_hf_to_gguf.py) and rope_parameters (transformers 5); transformers 5
 * reads either. dtype and torch_dtype are 'float32' (the weights written).
 *
 * @throws Error naming the field for a model_type other than llama/qwen2/mistral, or a
 *   Mistral config with attention biases (HF Mistral has none).
 */
export function hfCausalLMConfigJson(config: CausalLMConfig): Record<string, unknown> {
  const type = config.model_type;
  if (!ARCHITECTURE[type]) throw new Error(`config.model_type ${JSON.stringify(type)} is not llama, qwen2 or mistral`);
  if (type === 'mistral' && config.attention_bias) throw new Error('config.attention_bias: Mistral has no attention biases (transformers MistralConfig)');
  const scaling = config.rope_scaling as Record<string, unknown> | null;
  const ropeScaling = scaling ? { ...scaling } : null;
  const json: Record<string, unknown> = {
    architectures: [ARCHITECTURE[type]],
    model_type: type,
    vocab_size: config.vocab_size,
    hidden_size: config.hidden_size,
    intermediate_size: config.intermediate_size,
    num_hidden_layers: config.num_hidden_layers,
    num_attention_heads: config.num_attention_heads,
    num_key_value_heads: config.num_key_value_heads,
    head_dim: config.head_dim,
    hidden_act: 'silu',
    max_position_embeddings: config.max_position_embeddings,
    rms_norm_eps: config.rms_norm_eps,
    rope_theta: config.rope_theta,
    rope_scaling: ropeScaling,
    rope_parameters: { rope_theta: config.rope_theta, rope_type: 'default', ...(ropeScaling ?? {}) },
    tie_word_embeddings: config.tie_word_embeddings,
    dtype: 'float32',
    torch_dtype: 'float32',
  };
  if (type === 'llama') {
    json.attention_bias = config.attention_bias;
    json.mlp_bias = config.mlp_bias;
  }
  // Without these, Qwen2/Mistral configs default to a sliding window nodetune never trained with.
  if (type === 'qwen2') json.use_sliding_window = false;
  if (type === 'qwen2' || type === 'mistral') json.sliding_window = null;
  for (const key of ['bos_token_id', 'eos_token_id', 'pad_token_id'] as const) {
    const v = (config as unknown as Record<string, unknown>)[key];
    if (v !== undefined && v !== null) json[key] = v;
  }
  return Object.fromEntries(Object.keys(json).sort().map((k) => [k, json[k]]));
}

/**
 * With tied embeddings the file holds no lm_head.weight (transformers ties it on load); a given
 * one must equal embed_tokens.
 */
function withoutTiedHead(tensors: NamedTensors, tied: boolean, where: string): NamedTensors {
  const head = tensors.get('lm_head.weight');
  if (!tied || !head) return tensors;
  const embed = tensors.get('model.embed_tokens.weight');
  if (embed && embed.data !== head.data) {
    const same = embed.data.length === head.data.length && embed.data.every((v, i) => Object.is(v, head.data[i]));
    if (!same) {
      throw new Error(`${where}: tie_word_embeddings is true but 'lm_head.weight' differs from 'model.embed_tokens.weight'; untie the config or drop lm_head.weight`);
    }
  }
  return new Map([...tensors].filter(([k]) => k !== 'lm_head.weight'));
}

/** Every parameter of `config` present with its shape, nothing else; returned in state_dict order. */
function checkModelTensors(config: CausalLMConfig, tensors: NamedTensors, where: string): NamedTensors {
  const shapes = llamaParameterShapes(shapeConfig(config));
  const known = new Map(shapes);
  for (const key of tensors.keys()) {
    if (!known.has(key)) throw new Error(`${where}: unexpected tensor '${key}' (not a ${ARCHITECTURE[config.model_type] ?? config.model_type} parameter of this config)`);
  }
  const ordered: NamedTensors = new Map();
  for (const [key, shape] of shapes) {
    const t = tensors.get(key);
    if (!t) throw new Error(`${where}: tensor '${key}' is missing`);
    if (!(t.data instanceof Float32Array)) throw new Error(`${where}: tensor '${key}' must hold a Float32Array`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`${where}: tensor '${key}' has shape [${t.shape.join(', ')}]; the config implies [${shape.join(', ')}]`);
    }
    const n = shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== n) throw new Error(`${where}: tensor '${key}' has ${t.data.length} values; shape [${shape.join(', ')}] needs ${n}`);
    ordered.set(key, t);
  }
  return ordered;
}

/** A file to write into the folder: its text or bytes, or a file to copy. */
export type FileSource = string | Uint8Array | { path: string };

/** What {@link saveHfCausalLM} writes. */
export interface SaveHfCausalLMOptions {
  config: CausalLMConfig;
  /** Every parameter of the config by HF name, float32 (lm_head.weight may be left out, or equal the embedding, when tied). */
  tensors: NamedTensors;
  /**
   * Tokenizer files: a folder to copy HF_TOKENIZER_FILES from (those present; at least one), or
   * file name → contents / `{ path }` (tokenizer.json, tokenizer_config.json, ...).
   */
  tokenizerFiles?: string | Record<string, FileSource>;
  /**
   * Jinja chat template: written to chat_template.jinja (transformers ≥ 4.43 reads it) and, when
   * tokenizer_config.json is among the tokenizer files, into its chat_template field
   * (transformers.js and older transformers read that).
   */
  chatTemplate?: string;
  /** generation_config.json fields; merged over bos/eos/pad_token_id from the config. */
  generationConfig?: Record<string, unknown>;
}

async function sourceBytes(src: FileSource, name: string): Promise<Uint8Array | string> {
  if (typeof src === 'string' || src instanceof Uint8Array) return src;
  if (src && typeof src === 'object' && typeof src.path === 'string') return readFile(src.path);
  throw new Error(`saveHfCausalLM: tokenizerFiles['${name}'] must be a string, a Uint8Array or { path }`);
}

/**
 * Write a Hugging Face causal-LM folder that `AutoModelForCausalLM.from_pretrained(folder)`
 * loads: model.safetensors (float32, state_dict order, `__metadata__` {format: 'pt'}; no
 * lm_head.weight when tie_word_embeddings), generation_config.json, the tokenizer files,
 * chat_template.jinja, and config.json (see {@link hfCausalLMConfigJson}) last. Every file is
 * written atomically (temporary file in the folder, fsync, rename), so a reader never sees a
 * half-written file and a folder with config.json has its weights.
 *
 * @param folder created when missing; files of the same names are replaced.
 * @returns the names of the files written, in order.
 * @throws Error naming the tensor (missing, unexpected, wrong shape, untied lm_head with a tied
 *   config), the tokenizer file (bad name, unreadable, tokenizer_config.json not JSON, a folder
 *   with none of HF_TOKENIZER_FILES) or the file whose write failed.
 */
export async function saveHfCausalLM(folder: string, opts: SaveHfCausalLMOptions): Promise<string[]> {
  const where = 'saveHfCausalLM';
  const { config } = opts;
  const configJson = hfCausalLMConfigJson(config);
  const tensors = checkModelTensors(config, withoutTiedHead(opts.tensors, config.tie_word_embeddings, where), where);
  const files = new Map<string, Uint8Array | string>();
  const tf = opts.tokenizerFiles;
  if (typeof tf === 'string') {
    const src = resolve(tf);
    const present = HF_TOKENIZER_FILES.filter((f) => existsSync(join(src, f)));
    if (present.length === 0) throw new Error(`${where}: tokenizerFiles folder ${src} has none of ${HF_TOKENIZER_FILES.join(', ')}`);
    for (const f of present) files.set(f, await readFile(join(src, f)));
  } else if (tf) {
    for (const [name, src] of Object.entries(tf)) {
      if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(name) || MODEL_FILES.has(name)) {
        throw new Error(`${where}: tokenizerFiles name '${name}' must be a plain file name other than ${[...MODEL_FILES].join(', ')}`);
      }
      try {
        files.set(name, await sourceBytes(src, name));
      } catch (err) {
        throw new Error(`${where}: tokenizerFiles['${name}']: ${(err as Error).message}`, { cause: err });
      }
    }
  }
  if (opts.chatTemplate !== undefined) {
    if (typeof opts.chatTemplate !== 'string' || opts.chatTemplate === '') throw new Error(`${where}: chatTemplate must be a non-empty string`);
    files.set('chat_template.jinja', opts.chatTemplate);
    const tc = files.get('tokenizer_config.json');
    if (tc !== undefined) {
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(typeof tc === 'string' ? tc : Buffer.from(tc).toString('utf8'));
      } catch (err) {
        throw new Error(`${where}: tokenizer_config.json is not valid JSON (${(err as Error).message})`, { cause: err });
      }
      parsed.chat_template = opts.chatTemplate;
      files.set('tokenizer_config.json', `${JSON.stringify(parsed, null, 2)}\n`);
    }
  }
  const generation: Record<string, unknown> = {};
  for (const key of ['bos_token_id', 'eos_token_id', 'pad_token_id'] as const) if (configJson[key] !== undefined) generation[key] = configJson[key];
  Object.assign(generation, opts.generationConfig ?? {});

  const dir = resolve(folder);
  await mkdir(dir, { recursive: true });
  const written: string[] = [];
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  written.push('model.safetensors');
  await writeFileAtomic(join(dir, 'generation_config.json'), `${JSON.stringify(generation, null, 2)}\n`);
  written.push('generation_config.json');
  for (const [name, bytes] of files) {
    await writeFileAtomic(join(dir, name), bytes);
    written.push(name);
  }
  await writeFileAtomic(join(dir, 'config.json'), `${JSON.stringify(configJson, null, 2)}\n`);
  written.push('config.json');
  return written;
}

/** What {@link writeLoraGguf} writes. */
export interface WriteLoraGgufOptions {
  /** The user's original GGUF (llama or qwen2): its architecture and tensor shapes are what llama.cpp checks the adapter against. */
  baseGguf: string;
  /** PEFT saved names → lora_A (r, in), lora_B (out, r), float32. */
  tensors: NamedTensors;
  lora: LoraConfig;
  /** Storage type of lora_a / lora_b (default 'F32'; 'F16' rounds to nearest even, as convert_lora_to_gguf.py --outtype f16). */
  type?: 'F32' | 'F16';
  /** general.name, when given. */
  name?: string;
}

/**
 * Write a llama.cpp LoRA adapter GGUF for `baseGguf`, as llama.cpp's convert_lora_to_gguf.py
 * does from a PEFT folder and as src/llama-adapter.cpp loads it:
 *
 * - metadata: general.architecture (the base's), general.type = "adapter", adapter.type =
 *   "lora", general.name (optional), adapter.lora.alpha (float32), general.quantization_version 2;
 * - per adapted Linear `<base GGUF tensor name>.lora_a` (torch shape (r, in), GGUF ne [in, r])
 *   and `.lora_b` ((out, r), ne [r, out]) — llama.cpp requires a.ne[0] = base.ne[0],
 *   b.ne[1] = base.ne[1] and a.ne[1] = b.ne[0];
 * - for architecture llama, the rows of attn_q's and attn_k's lora_b permuted as llama.cpp
 *   permutes those weights (permuteQK with num_attention_heads for q, num_key_value_heads
 *   for k): permute(W + s·B·A) = permute(W) + s·permute(B)·A, so A is left as it is.
 *   qwen2 weights are not permuted.
 *
 * Scale: llama.cpp multiplies by alpha / r (r = lora_b's ne[0]); alpha is written as
 * s · r with s = {@link loraScale}, which is lora_alpha itself without rsLoRA and
 * lora_alpha · sqrt(r) with it (convert_lora_to_gguf.py writes lora_alpha either way, so
 * it gets rsLoRA adapters' scale wrong).
 *
 * @throws Error naming the file and key/tensor: the base is not a llama/qwen2 GGUF, an adapter
 *   tensor is not a LoRA weight of a target module, the base has no such tensor or another
 *   shape, a layer or target is missing; or naming `path` when the write fails (an existing
 *   file is left as it was).
 */
export async function writeLoraGguf(path: string, opts: WriteLoraGgufOptions): Promise<void> {
  const where = `writeLoraGguf ${path}`;
  const header = await readGgufHeader(opts.baseGguf);
  const config = ggufLlamaConfig(header);
  const lora = resolveLoraConfig(opts.lora);
  const type = opts.type ?? 'F32';
  if (type !== 'F32' && type !== 'F16') throw new Error(`${where}: type must be 'F32' or 'F16', got ${JSON.stringify(type)}`);
  const baseInfo = new Map(header.tensors.map((t) => [t.name, t]));
  const pairs = checkLoraTensors(
    opts.tensors,
    lora,
    where,
    (hfName) => {
      const g = hfToGgufName(hfName);
      return g ? baseInfo.get(g)?.shape : undefined;
    },
    config.num_hidden_layers,
  );
  const permute = ggufPermutesQK(config.model_type);
  const tensors: GgufTensorToWrite[] = [];
  for (const { baseName, target, A, B } of pairs) {
    const g = hfToGgufName(baseName)!;
    let b = B.data;
    if (permute && (target === 'q_proj' || target === 'k_proj')) {
      b = permuteQK(b, B.shape[0], target === 'q_proj' ? config.num_attention_heads : config.num_key_value_heads);
    }
    tensors.push({ name: `${g}.lora_a`, shape: [...A.shape], type, data: A.data });
    tensors.push({ name: `${g}.lora_b`, shape: [...B.shape], type, data: b });
  }
  const metadata: Array<[string, GgufValue]> = [
    ['general.architecture', { type: 'string', value: config.model_type }],
    ['general.type', { type: 'string', value: 'adapter' }],
    ['adapter.type', { type: 'string', value: 'lora' }],
  ];
  if (opts.name !== undefined) metadata.push(['general.name', { type: 'string', value: opts.name }]);
  metadata.push(['adapter.lora.alpha', { type: 'float32', value: Math.fround(loraScale(lora) * lora.r) }]);
  metadata.push(['general.quantization_version', { type: 'uint32', value: 2 }]);
  await writeGguf(path, { metadata, tensors });
}

/** llama.cpp's llama_ftype of a file whose 2-D tensors are all F16 / Q8_0 (LLAMA_FTYPE_MOSTLY_F16, _MOSTLY_Q8_0). */
export const GGUF_FILE_TYPE = { F16: 1, Q8_0: 7 } as const;

/** What {@link writeMergedGguf} writes. */
export interface WriteMergedGgufOptions {
  /** The user's original GGUF: its metadata (tokenizer, chat template, architecture keys) is copied. */
  baseGguf: string;
  /** Every tensor of the base by HF name, float32, merged (e.g. {@link mergeLora}'s result); lm_head.weight may be left out when tied. */
  tensors: NamedTensors;
  /** Defaults to the base's; when given, it must describe the same model. */
  config?: CausalLMConfig;
  type: 'F16' | 'Q8_0';
}

/**
 * Write `baseGguf` with its weights replaced by `tensors`: the base's metadata in its order
 * with general.file_type set to the written type (1 F16, 7 Q8_0), tensors in the base's order,
 * written by hfTensorsToGguf (q/k rows permuted for llama; norms and biases F32; 2-D tensors as
 * `type`, except that a Q8_0 tensor whose rows are not a multiple of 32 values is written F16,
 * as convert_hf_to_gguf.py falls back). Tensors with no Hugging Face counterpart
 * (rope_freqs.weight) are copied byte for byte.
 *
 * @throws Error naming the file and tensor: a base tensor missing from `tensors` or of another
 *   shape, an extra tensor, a config that disagrees with the base; or naming `path` when the
 *   write fails (an existing file is left as it was).
 */
export async function writeMergedGguf(path: string, opts: WriteMergedGgufOptions): Promise<void> {
  const where = `writeMergedGguf ${path}`;
  if (opts.type !== 'F16' && opts.type !== 'Q8_0') throw new Error(`${where}: type must be 'F16' or 'Q8_0', got ${JSON.stringify(opts.type)}`);
  const model = await openGgufModel(opts.baseGguf);
  let metadata: Array<[string, GgufValue]>;
  let tensors: Array<GgufTensorToWrite | GgufRawTensorToWrite>;
  try {
    const base = model.config;
    const config = opts.config ?? base;
    for (const key of ['model_type', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'head_dim', 'tie_word_embeddings'] as const) {
      if (config[key] !== base[key]) throw new Error(`${where}: config.${key} is ${JSON.stringify(config[key])} but the base GGUF ${opts.baseGguf} has ${JSON.stringify(base[key])}`);
    }
    const given = withoutTiedHead(opts.tensors, base.tie_word_embeddings, where);
    for (const key of given.keys()) {
      if (!model.tensors.has(key)) throw new Error(`${where}: tensor '${key}' is not in the base GGUF ${opts.baseGguf}`);
    }
    for (const [key, t] of model.tensors) {
      const g = given.get(key);
      if (!g) throw new Error(`${where}: tensor '${key}' (${t.ggufName} in ${opts.baseGguf}) is missing`);
      if (g.shape.length !== t.shape.length || g.shape.some((d, i) => d !== t.shape[i])) {
        throw new Error(`${where}: tensor '${key}' has shape [${g.shape.join(', ')}]; the base's is [${t.shape.join(', ')}]`);
      }
    }
    const converted = new Map(hfTensorsToGguf(base, given, opts.type).map((t) => [t.name, t]));
    tensors = [];
    for (const info of model.file.tensors) {
      const c = converted.get(info.name);
      if (c) {
        if (c.type === 'Q8_0' && c.shape[c.shape.length - 1] % 32 !== 0) c.type = 'F16';
        tensors.push(c);
      } else {
        tensors.push({ name: info.name, shape: info.shape, type: info.type, bytes: await model.file.readTensorBytes(info) });
      }
    }
    metadata = [...model.metadata];
    const ft: [string, GgufValue] = ['general.file_type', { type: 'uint32', value: GGUF_FILE_TYPE[opts.type] }];
    const at = metadata.findIndex(([k]) => k === 'general.file_type');
    if (at >= 0) metadata[at] = ft;
    else metadata.push(ft);
  } finally {
    await model.close();
  }
  await writeGguf(path, { metadata, tensors });
}
