/**
 * The Llama family as nodetune sees it: Hugging Face `LlamaConfig` fields
 * (transformers models/llama/configuration_llama.py; Qwen2Config and
 * MistralConfig without sliding windows map onto the same fields), PEFT
 * `LoraConfig` options, and the PEFT adapter key names.
 *
 * One class, `LlamaForCausalLM`, covers Llama 2/3, SmolLM/SmolLM2, TinyLlama
 * and Qwen2/Qwen2.5 (biases on q/k/v): the native plan is driven by these
 * fields, never by a model name.
 */

/** rope_scaling (HF), resolved: 'default' (none) or 'llama3' (transformers' _compute_llama3_parameters). */
export type RopeScaling =
  | null
  | {
      rope_type: 'llama3';
      factor: number;
      low_freq_factor: number;
      high_freq_factor: number;
      original_max_position_embeddings: number;
    };

/** Hugging Face LlamaConfig field names, every optional field resolved. */
export interface LlamaConfig {
  model_type: 'llama' | 'qwen2' | 'mistral';
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** Grouped-query attention: query head h uses key/value head floor(h / (heads / kv_heads)). */
  num_key_value_heads: number;
  /** HF: hidden_size / num_attention_heads unless the config sets it. */
  head_dim: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: RopeScaling;
  tie_word_embeddings: boolean;
  /** Biases on q_proj, k_proj and v_proj (Llama: and o_proj; Qwen2: always, o_proj never). */
  attention_bias: boolean;
  /** Bias on o_proj (Llama's attention_bias; false for Qwen2). Not an HF field: resolved from model_type. */
  o_proj_bias: boolean;
  mlp_bias: boolean;
  hidden_act: 'silu';
  bos_token_id?: number | number[] | null;
  eos_token_id?: number | number[] | null;
  pad_token_id?: number | null;
}

export const CAUSAL_LM_MODEL_TYPES = ['llama', 'qwen2', 'mistral'] as const;

/** The linear modules LoRA can adapt, by their Hugging Face names (PEFT target_modules). */
export const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

/** PEFT LoraConfig names. */
export interface LoraConfig {
  /** Rank, a positive integer (PEFT default 8; nodetune's sft default 16). */
  r: number;
  /** Scale numerator: the adapter's output is multiplied by lora_alpha / r (or / sqrt(r) with use_rslora). */
  lora_alpha: number;
  /** Dropout on the adapter's input, in [0, 1). */
  lora_dropout?: number;
  /** Module names, or 'all-linear' (every linear layer but lm_head, as PEFT). */
  target_modules: readonly string[] | 'all-linear';
  /** rsLoRA (Kalajdzievski 2023): scale lora_alpha / sqrt(r). */
  use_rslora?: boolean;
  /** PEFT layers_to_transform: adapt only these layers (default all); backward stops at the lowest. */
  layers_to_transform?: number | readonly number[];
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

/**
 * target_modules → the adapted modules, in LORA_TARGETS order. Accepts PEFT's
 * forms: 'all-linear', a list of names, or suffixes such as 'self_attn.q_proj'.
 * @throws Error naming an unknown module (with the closest known name), an empty list, or lm_head.
 */
export function resolveLoraTargets(target_modules: readonly string[] | string): LoraTarget[] {
  if (target_modules === 'all-linear') return [...LORA_TARGETS];
  const list = typeof target_modules === 'string' ? target_modules.split(',').map((s) => s.trim()).filter(Boolean) : [...target_modules];
  if (list.length === 0) throw new Error(`lora target_modules is empty: expected 'all-linear' or some of ${LORA_TARGETS.join(', ')}`);
  const out = new Set<LoraTarget>();
  for (const raw of list) {
    if (typeof raw !== 'string') throw new Error(`lora target_modules must hold strings, got ${JSON.stringify(raw)}`);
    if (raw === 'all-linear') {
      LORA_TARGETS.forEach((t) => out.add(t));
      continue;
    }
    const name = raw.split('.').pop()!;
    if ((LORA_TARGETS as readonly string[]).includes(name)) {
      out.add(name as LoraTarget);
      continue;
    }
    if (name === 'lm_head') throw new Error(`lora target_modules: lm_head cannot be adapted (PEFT's all-linear excludes it too); expected some of ${LORA_TARGETS.join(', ')}`);
    const closest = [...LORA_TARGETS].sort((a, b) => editDistance(name, a) - editDistance(name, b))[0];
    throw new Error(`lora target_modules: unknown module '${raw}' (did you mean '${closest}'?); expected 'all-linear' or some of ${LORA_TARGETS.join(', ')}`);
  }
  return LORA_TARGETS.filter((t) => out.has(t));
}

/**
 * Checks a LoraConfig and fills PEFT's defaults (lora_dropout 0, use_rslora false).
 * @throws Error naming the field: r not a positive integer, lora_alpha not a finite
 *   number > 0, lora_dropout outside [0, 1), unknown target modules.
 */
export function resolveLoraConfig(lora: LoraConfig): Required<Omit<LoraConfig, 'target_modules' | 'layers_to_transform'>> & { target_modules: LoraTarget[]; layers_to_transform?: number[] } {
  if (!lora || typeof lora !== 'object') throw new Error('lora must be an object {r, lora_alpha, lora_dropout, target_modules, use_rslora}');
  if (!Number.isInteger(lora.r) || lora.r <= 0) throw new Error(`lora r must be a positive integer, got ${JSON.stringify(lora.r)}`);
  if (typeof lora.lora_alpha !== 'number' || !Number.isFinite(lora.lora_alpha) || lora.lora_alpha <= 0) {
    throw new Error(`lora_alpha must be a finite number > 0, got ${JSON.stringify(lora.lora_alpha)}`);
  }
  const dropout = lora.lora_dropout ?? 0;
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) throw new Error(`lora_dropout must be in [0, 1), got ${JSON.stringify(dropout)}`);
  if (lora.use_rslora !== undefined && typeof lora.use_rslora !== 'boolean') throw new Error(`use_rslora must be a boolean, got ${JSON.stringify(lora.use_rslora)}`);
  let layers: number[] | undefined;
  if (lora.layers_to_transform !== undefined && lora.layers_to_transform !== null) {
    layers = typeof lora.layers_to_transform === 'number' ? [lora.layers_to_transform] : [...lora.layers_to_transform];
    for (const l of layers) if (!Number.isInteger(l) || l < 0) throw new Error(`lora layers_to_transform must hold layer numbers >= 0, got ${JSON.stringify(l)}`);
    if (layers.length === 0) throw new Error('lora layers_to_transform is empty: omit it to adapt every layer');
  }
  return {
    r: lora.r, lora_alpha: lora.lora_alpha, lora_dropout: dropout, use_rslora: lora.use_rslora ?? false,
    target_modules: resolveLoraTargets(lora.target_modules), ...(layers ? { layers_to_transform: layers } : {}),
  };
}

/** PEFT's key of a LoRA matrix: base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight. */
export function peftKey(layer: number, target: LoraTarget, matrix: 'A' | 'B'): string {
  const module = ['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn';
  return `base_model.model.model.layers.${layer}.${module}.${target}.lora_${matrix}.weight`;
}

const INT_FIELDS = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads'] as const;

function num(json: Record<string, unknown>, key: string, path: string, fallback?: number): number {
  const v = json[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${path}: ${key} must be a number, got ${JSON.stringify(json[key])}`);
  return v;
}

function posInt(json: Record<string, unknown>, key: string, path: string, fallback?: number): number {
  const v = json[key] ?? fallback;
  if (!Number.isSafeInteger(v) || (v as number) < 1) throw new Error(`${path}: ${key} must be a positive integer, got ${JSON.stringify(json[key])}`);
  return v as number;
}

function parseRope(json: Record<string, unknown>, path: string): { rope_theta: number; rope_scaling: RopeScaling } {
  // transformers 5 writes one rope_parameters dict; older configs (and most
  // Hub checkpoints) carry rope_theta and rope_scaling.
  const params = (json.rope_parameters ?? json.rope_scaling ?? null) as Record<string, unknown> | null;
  if (params !== null && (typeof params !== 'object' || Array.isArray(params))) {
    throw new Error(`${path}: rope_scaling must be null or an object, got ${JSON.stringify(params)}`);
  }
  const theta = num({ rope_theta: json.rope_theta ?? params?.rope_theta ?? 10000 }, 'rope_theta', path);
  if (!(theta > 0)) throw new Error(`${path}: rope_theta must be > 0, got ${theta}`);
  const type = params ? (params.rope_type ?? params.type ?? 'default') : 'default';
  if (type === 'default') return { rope_theta: theta, rope_scaling: null };
  if (type !== 'llama3') {
    throw new Error(`${path}: rope_scaling type '${String(type)}' is not supported (supported: null/'default', 'llama3')`);
  }
  const p = params as Record<string, unknown>;
  const scaling = {
    rope_type: 'llama3' as const,
    factor: num(p, 'factor', `${path} rope_scaling`),
    low_freq_factor: num(p, 'low_freq_factor', `${path} rope_scaling`),
    high_freq_factor: num(p, 'high_freq_factor', `${path} rope_scaling`),
    original_max_position_embeddings: num(p, 'original_max_position_embeddings', `${path} rope_scaling`),
  };
  if (!(scaling.factor > 0 && scaling.low_freq_factor > 0 && scaling.high_freq_factor > scaling.low_freq_factor && scaling.original_max_position_embeddings > 0)) {
    throw new Error(`${path}: rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0, got ${JSON.stringify(p)}`);
  }
  return { rope_theta: theta, rope_scaling: scaling };
}

/**
 * config.json contents of a Llama-family checkpoint → LlamaConfig.
 * @param path used in error messages.
 * @throws Error naming the file and field: model_type not llama/qwen2/mistral, a
 *   size not a positive integer, heads not divisible by key-value heads, an odd
 *   head_dim, hidden_act other than silu, an unsupported rope_scaling, or a
 *   sliding window that is on (Mistral/Qwen2 use_sliding_window).
 */
export function parseLlamaConfig(json: Record<string, unknown>, path: string): LlamaConfig {
  const type = json.model_type;
  if (!(CAUSAL_LM_MODEL_TYPES as readonly unknown[]).includes(type)) {
    throw new Error(`${path}: model_type ${JSON.stringify(type)} is not a supported causal LM (supported: ${CAUSAL_LM_MODEL_TYPES.join(', ')})`);
  }
  for (const f of INT_FIELDS) posInt(json, f, path);
  const heads = json.num_attention_heads as number;
  const kv = posInt(json, 'num_key_value_heads', path, heads);
  if (heads % kv !== 0) throw new Error(`${path}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kv}`);
  const hidden = json.hidden_size as number;
  if (json.head_dim == null && hidden % heads !== 0) throw new Error(`${path}: hidden_size ${hidden} is not a multiple of num_attention_heads ${heads} and head_dim is not set`);
  const head_dim = posInt(json, 'head_dim', path, hidden / heads);
  if (head_dim % 2 !== 0) throw new Error(`${path}: head_dim ${head_dim} must be even (rotary embeddings rotate channel pairs)`);
  const act = json.hidden_act ?? 'silu';
  if (act !== 'silu') throw new Error(`${path}: hidden_act ${JSON.stringify(act)} is not supported (expected 'silu')`);
  if ((type === 'mistral' && json.sliding_window != null) || json.use_sliding_window === true) {
    throw new Error(`${path}: sliding-window attention is not supported (sliding_window ${JSON.stringify(json.sliding_window)})`);
  }
  const bool = (key: string, fallback: boolean) => {
    const v = json[key] ?? fallback;
    if (typeof v !== 'boolean') throw new Error(`${path}: ${key} must be true or false, got ${JSON.stringify(json[key])}`);
    return v;
  };
  const eps = num(json, 'rms_norm_eps', path, 1e-6);
  if (!(eps >= 0)) throw new Error(`${path}: rms_norm_eps must be >= 0, got ${eps}`);
  const qwen = type === 'qwen2';
  const attention_bias = qwen ? true : bool('attention_bias', false);
  const cfg: LlamaConfig = {
    model_type: type as LlamaConfig['model_type'],
    vocab_size: json.vocab_size as number,
    hidden_size: hidden,
    intermediate_size: json.intermediate_size as number,
    num_hidden_layers: json.num_hidden_layers as number,
    num_attention_heads: heads,
    num_key_value_heads: kv,
    head_dim,
    max_position_embeddings: posInt(json, 'max_position_embeddings', path, 2048),
    rms_norm_eps: eps,
    ...parseRope(json, path),
    tie_word_embeddings: bool('tie_word_embeddings', false),
    attention_bias,
    o_proj_bias: qwen ? false : attention_bias,
    mlp_bias: bool('mlp_bias', false),
    hidden_act: 'silu',
  };
  for (const key of ['bos_token_id', 'eos_token_id', 'pad_token_id'] as const) {
    if (json[key] !== undefined) (cfg as unknown as Record<string, unknown>)[key] = json[key];
  }
  return cfg;
}

/**
 * Names and shapes of every base-model parameter, in Hugging Face's state_dict
 * order (no lm_head.weight when the embeddings are tied).
 */
export function llamaParameterShapes(c: LlamaConfig): Array<[string, number[]]> {
  const C = c.hidden_size, I = c.intermediate_size, QO = c.num_attention_heads * c.head_dim, KVO = c.num_key_value_heads * c.head_dim;
  const out: Array<[string, number[]]> = [['model.embed_tokens.weight', [c.vocab_size, C]]];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    for (const [n, o] of [['q_proj', QO], ['k_proj', KVO], ['v_proj', KVO]] as const) {
      out.push([`${p}self_attn.${n}.weight`, [o, C]]);
      if (c.attention_bias) out.push([`${p}self_attn.${n}.bias`, [o]]);
    }
    out.push([`${p}self_attn.o_proj.weight`, [C, QO]]);
    if (c.o_proj_bias) out.push([`${p}self_attn.o_proj.bias`, [C]]);
    for (const [n, shape] of [['gate_proj', [I, C]], ['up_proj', [I, C]], ['down_proj', [C, I]]] as const) {
      out.push([`${p}mlp.${n}.weight`, [...shape]]);
      if (c.mlp_bias) out.push([`${p}mlp.${n}.bias`, [shape[0]]]);
    }
    out.push([`${p}input_layernorm.weight`, [C]], [`${p}post_attention_layernorm.weight`, [C]]);
  }
  out.push(['model.norm.weight', [C]]);
  if (!c.tie_word_embeddings) out.push(['lm_head.weight', [c.vocab_size, C]]);
  return out;
}
