/**
 * PEFT LoRA adapters as files (adapter_config.json + adapter_model.safetensors) and merged into
 * base weights.
 *
 * Sources: PEFT 0.21 (peft/config.py PeftConfig.save_pretrained: the config is
 * `json.dumps(asdict(config), indent=2, sort_keys=True)`; peft/utils/save_and_load.py
 * get_peft_model_state_dict: saved keys drop the adapter name, so PEFT's module
 * `...q_proj.lora_A.default.weight` is saved as `...q_proj.lora_A.weight`;
 * peft/tuners/lora/layer.py Linear.get_delta_weight / merge: W' = W + (B @ A) · scaling with
 * scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora). The fixtures in
 * test/fixtures/llm-export/ were written by PEFT itself (scripts/reference/check_llm_export.py).
 *
 * Tensors are `Map<name, {shape, data: Float32Array}>`, row-major, torch shapes: lora_A (r, in),
 * lora_B (out, r), base Linear weights (out, in).
 */
import { existsSync, statSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { writeFileAtomic } from './atomic.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { assertFiniteTensor } from './finite.js';
import { LORA_TARGETS, peftKey, resolveLoraConfig, type LlamaConfig, type LoraConfig, type LoraTarget } from '../models/llama.js';

/** Float32 tensors by name: torch shape and row-major data. */
export type NamedTensors = Map<string, { shape: number[]; data: Float32Array }>;

/** A LoraConfig with PEFT's defaults filled and target_modules resolved to module names. */
export type ResolvedLoraConfig = ReturnType<typeof resolveLoraConfig>;

/** The PEFT release whose adapter_config.json key set savePeftAdapter writes (and whose version it records as peft_version). */
export const PEFT_FORMAT_VERSION = '0.21.2';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

/**
 * The adapter's output multiplier: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
 * (PEFT LoraLayer.update_layer).
 */
export function loraScale(lora: Pick<LoraConfig, 'r' | 'lora_alpha' | 'use_rslora'>): number {
  return lora.use_rslora ? lora.lora_alpha / Math.sqrt(lora.r) : lora.lora_alpha / lora.r;
}

/** The module path of a target inside a decoder layer (PEFT key and HF weight name share it). */
function modulePath(layer: number, target: LoraTarget): string {
  const block = target === 'gate_proj' || target === 'up_proj' || target === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${target}`;
}

/** The Hugging Face name of the base weight a LoRA pair adapts: model.layers.{layer}.self_attn.q_proj.weight. */
export function loraBaseWeightName(layer: number, target: LoraTarget): string {
  return `${modulePath(layer, target)}.weight`;
}

const PEFT_KEY = /^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)\.weight$/;

/** One adapted module: its A (r, in) and B (out, r). */
export interface LoraPair {
  layer: number;
  target: LoraTarget;
  /** Base weight name (HF): model.layers.{layer}.{self_attn|mlp}.{target}.weight. */
  baseName: string;
  A: { shape: number[]; data: Float32Array };
  B: { shape: number[]; data: Float32Array };
}

function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * Check PEFT-named LoRA tensors against a resolved LoraConfig and pair them up.
 *
 * Every key must be PEFT's saved name of a lora_A / lora_B weight of a module in
 * `lora.target_modules`; A must be (r, in) and B (out, r); both of a pair present; the values
 * finite. Every layer 0..L-1 found must carry every target. With `baseShape` (HF weight name →
 * torch shape (out, in), or undefined when the base has no such weight) `in` and `out` must
 * match the base weight, and with `numLayers` every layer below it must be present.
 *
 * @param where prefix of error messages (a file or function name).
 * @returns the pairs, in layer order then LORA_TARGETS order.
 * @throws Error naming `where` and the key: unknown key, target not in target_modules, wrong
 *   rank or shape, data length not matching the shape, a non-finite value, a missing half of
 *   a pair, a missing module, no tensors at all.
 */
export function checkLoraTensors(
  tensors: NamedTensors,
  lora: ResolvedLoraConfig,
  where: string,
  baseShape?: (name: string) => readonly number[] | undefined,
  numLayers?: number,
): LoraPair[] {
  const byModule = new Map<string, Partial<LoraPair>>();
  let maxLayer = -1;
  for (const [key, t] of tensors) {
    const m = PEFT_KEY.exec(key);
    const target = m?.[3] as LoraTarget | undefined;
    if (!m || !(LORA_TARGETS as readonly string[]).includes(target!) || peftKey(Number(m[1]), target!, m[4] as 'A' | 'B') !== key) {
      throw new Error(
        `${where}: unexpected tensor '${key}': expected PEFT LoRA keys like '${peftKey(0, 'q_proj', 'A')}' ` +
          `(lora_A/lora_B of ${LORA_TARGETS.join(', ')}; embeddings, lm_head, biases and DoRA magnitudes are not supported)`,
      );
    }
    if (!lora.target_modules.includes(target!)) {
      throw new Error(`${where}: tensor '${key}' adapts ${target}, which is not in target_modules [${lora.target_modules.join(', ')}]`);
    }
    const layer = Number(m[1]);
    if (numLayers !== undefined && layer >= numLayers) throw new Error(`${where}: tensor '${key}' is for layer ${layer}, but the model has ${numLayers} layers`);
    if (!t || !(t.data instanceof Float32Array) || !Array.isArray(t.shape)) throw new Error(`${where}: tensor '${key}' must be {shape, data: Float32Array}`);
    if (t.shape.length !== 2 || !t.shape.every((d) => Number.isSafeInteger(d) && d > 0)) {
      throw new Error(`${where}: tensor '${key}' has shape ${shapeStr(t.shape)}; expected 2 positive dims`);
    }
    if (t.data.length !== t.shape[0] * t.shape[1]) throw new Error(`${where}: tensor '${key}' has ${t.data.length} values, shape ${shapeStr(t.shape)} needs ${t.shape[0] * t.shape[1]}`);
    const isA = m[4] === 'A';
    if ((isA ? t.shape[0] : t.shape[1]) !== lora.r) {
      throw new Error(`${where}: tensor '${key}' has shape ${shapeStr(t.shape)}; lora_${m[4]} must be ${isA ? '(r, in)' : '(out, r)'} with r = ${lora.r}`);
    }
    assertFiniteTensor(t.data, t.shape, where, key);
    const id = `${layer}.${target}`;
    const entry = byModule.get(id) ?? { layer, target, baseName: loraBaseWeightName(layer, target!) };
    entry[isA ? 'A' : 'B'] = t;
    byModule.set(id, entry);
    maxLayer = Math.max(maxLayer, layer);
  }
  if (byModule.size === 0) throw new Error(`${where}: no LoRA tensors`);
  const layers = numLayers ?? maxLayer + 1;
  const adapted = lora.layers_to_transform ? new Set(lora.layers_to_transform) : null;
  const pairs: LoraPair[] = [];
  for (let layer = 0; layer < layers; layer++) {
    if (adapted && !adapted.has(layer)) {
      for (const target of lora.target_modules)
        if (byModule.has(`${layer}.${target}`)) throw new Error(`${where}: tensor '${peftKey(layer, target, 'A')}' adapts layer ${layer}, which layers_to_transform [${[...adapted].join(', ')}] leaves out`);
      continue;
    }
    for (const target of lora.target_modules) {
      const e = byModule.get(`${layer}.${target}`);
      if (!e) throw new Error(`${where}: tensor '${peftKey(layer, target, 'A')}' is missing (target_modules includes ${target}; every adapted layer carries every target)`);
      if (!e.A) throw new Error(`${where}: tensor '${peftKey(layer, target, 'A')}' is missing (its lora_B is present)`);
      if (!e.B) throw new Error(`${where}: tensor '${peftKey(layer, target, 'B')}' is missing (its lora_A is present)`);
      const want = baseShape?.(e.baseName!);
      if (baseShape && !want) throw new Error(`${where}: the base model has no weight '${e.baseName}' for '${peftKey(layer, target, 'A')}'`);
      const out = e.B.shape[0];
      const inF = e.A.shape[1];
      if (want && (want.length !== 2 || want[0] !== out || want[1] !== inF)) {
        throw new Error(
          `${where}: '${peftKey(layer, target, 'A')}' ${shapeStr(e.A.shape)} and lora_B ${shapeStr(e.B.shape)} give a (${out}, ${inF}) update, ` +
            `but base weight '${e.baseName}' is ${shapeStr(want)}`,
        );
      }
      pairs.push(e as LoraPair);
    }
  }
  return pairs;
}

/** Base Linear weight shapes of a LlamaConfig (out, in) by HF name, for checkLoraTensors. */
export function llamaLinearShapes(c: Pick<LlamaConfig, 'hidden_size' | 'intermediate_size' | 'num_attention_heads' | 'num_key_value_heads' | 'head_dim'>): (name: string) => number[] | undefined {
  const C = c.hidden_size, I = c.intermediate_size, Q = c.num_attention_heads * c.head_dim, KV = c.num_key_value_heads * c.head_dim;
  const shapes: Record<LoraTarget, number[]> = {
    q_proj: [Q, C], k_proj: [KV, C], v_proj: [KV, C], o_proj: [C, Q], gate_proj: [I, C], up_proj: [I, C], down_proj: [C, I],
  };
  return (name) => {
    const m = /^model\.layers\.\d+\.(?:self_attn|mlp)\.([a-z_]+)\.weight$/.exec(name);
    return m ? shapes[m[1] as LoraTarget] : undefined;
  };
}

/** What {@link savePeftAdapter} writes. */
export interface SavePeftAdapterOptions {
  /** The adapter's LoraConfig (resolved or not; it is resolved and checked again). */
  lora: LoraConfig;
  /** PEFT saved names → lora_A (r, in) / lora_B (out, r), float32. */
  tensors: NamedTensors;
  /** base_model_name_or_path: the Hub id or folder of the base model PEFT loads the adapter onto. */
  baseModel: string;
  /** PEFT task_type (default 'CAUSAL_LM'). */
  taskType?: 'CAUSAL_LM';
  /** When given, lora_A / lora_B shapes are checked against its Linear weights and every layer must be present. */
  config?: Pick<LlamaConfig, 'hidden_size' | 'intermediate_size' | 'num_attention_heads' | 'num_key_value_heads' | 'head_dim' | 'num_hidden_layers'>;
}

/**
 * adapter_config.json contents for a LoRA adapter: PEFT 0.21's full key set (every LoraConfig
 * field, sorted, as `PeftConfig.save_pretrained` writes them), with target_modules the module
 * names in LORA_TARGETS order.
 */
export function peftAdapterConfigJson(lora: ResolvedLoraConfig, baseModel: string, taskType = 'CAUSAL_LM'): Record<string, unknown> {
  const cfg: Record<string, unknown> = {
    alora_invocation_tokens: null,
    alpha_pattern: {},
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: baseModel,
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    kasa_config: null,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: lora.layers_to_transform ?? null,
    loftq_config: {},
    lora_alpha: lora.lora_alpha,
    lora_bias: false,
    lora_dropout: lora.lora_dropout,
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    monteclora_config: null,
    peft_type: 'LORA',
    peft_version: PEFT_FORMAT_VERSION,
    qalora_group_size: 16,
    r: lora.r,
    rank_pattern: {},
    revision: null,
    target_modules: [...lora.target_modules],
    target_parameters: null,
    task_type: taskType,
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: false,
    use_qalora: false,
    use_rslora: lora.use_rslora,
    velora_config: null,
  };
  return cfg;
}

/**
 * Write a PEFT LoRA adapter folder that `PeftModel.from_pretrained(base, folder)` loads:
 * adapter_model.safetensors (float32, PEFT's saved key names, sorted, `__metadata__`
 * {format: 'pt'}) and then adapter_config.json (see {@link peftAdapterConfigJson}); each file
 * written atomically (temporary file + rename), the config last, so a folder with a config
 * has its weights.
 *
 * @param folder created when missing.
 * @throws Error naming the key when a tensor is not a LoRA weight of a target module, has the
 *   wrong shape for r (or for `config`), is non-finite or lacks its other half; naming the
 *   field for a bad LoraConfig; naming the file when a write fails.
 */
export async function savePeftAdapter(folder: string, opts: SavePeftAdapterOptions): Promise<void> {
  const where = 'savePeftAdapter';
  const lora = resolveLoraConfig(opts.lora);
  if (typeof opts.baseModel !== 'string' || opts.baseModel === '') throw new Error(`${where}: baseModel (base_model_name_or_path) must be a non-empty string`);
  const taskType = opts.taskType ?? 'CAUSAL_LM';
  if (taskType !== 'CAUSAL_LM') throw new Error(`${where}: taskType must be 'CAUSAL_LM', got ${JSON.stringify(taskType)}`);
  const c = opts.config;
  checkLoraTensors(opts.tensors, lora, where, c && llamaLinearShapes(c), c?.num_hidden_layers);
  const dir = resolve(folder);
  await mkdir(dir, { recursive: true });
  // safetensors' Python writer sorts keys; the same order keeps the two byte-comparable.
  const sorted = new Map([...opts.tensors].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  await writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), sorted, { format: 'pt' });
  await writeFileAtomic(join(dir, ADAPTER_CONFIG_FILE), `${JSON.stringify(peftAdapterConfigJson(lora, opts.baseModel, taskType), null, 2)}\n`);
}

/** Whether `path` is a folder holding a PEFT adapter. */
export function isAdapterFolder(path: string): boolean {
  return existsSync(path) && statSync(path).isDirectory() && existsSync(join(path, ADAPTER_CONFIG_FILE));
}

/**
 * The base an adapter names: base_model_name_or_path as written (an absolute path, a Hub id), or
 * a relative path resolved against the adapter folder first and the working directory second.
 * @throws Error naming adapter_config.json when it names no base.
 */
export function adapterBase(folder: string, adapter: LoadedPeftAdapter): string {
  const base = adapter.baseModel;
  if (!base) throw new Error(`${join(folder, ADAPTER_CONFIG_FILE)}: base_model_name_or_path is empty; nodetune needs it to load the base model`);
  if (isAbsolute(base)) return base;
  const inFolder = resolve(folder, base);
  return existsSync(inFolder) ? inFolder : base;
}

/** A PEFT LoRA adapter as read by {@link loadPeftAdapter}. */
export interface LoadedPeftAdapter {
  /** r, lora_alpha, lora_dropout, use_rslora from the file; target_modules = the modules the tensors adapt. */
  lora: ResolvedLoraConfig;
  /** PEFT saved names → float32 lora_A (r, in) / lora_B (out, r) (F16/BF16 files are widened). */
  tensors: NamedTensors;
  /** base_model_name_or_path, or null. */
  baseModel: string | null;
  taskType: string | null;
  /** adapter_config.json as parsed. */
  adapterConfig: Record<string, unknown>;
}

/** adapter_config.json fields whose non-default values change what the adapter computes. */
const UNSUPPORTED: Array<[string, (v: unknown) => boolean, string]> = [
  ['use_dora', (v) => v === true, 'DoRA (use_dora) adapters are not supported'],
  ['bias', (v) => v !== undefined && v !== 'none', "only bias 'none' is supported (no trained biases)"],
  ['lora_bias', (v) => v === true, 'lora_bias is not supported'],
  ['fan_in_fan_out', (v) => v === true, 'fan_in_fan_out (Conv1D / GPT-2 layout) is not supported'],
  ['rank_pattern', (v) => v != null && Object.keys(v as object).length > 0, 'per-module ranks (rank_pattern) are not supported'],
  ['alpha_pattern', (v) => v != null && Object.keys(v as object).length > 0, 'per-module alphas (alpha_pattern) are not supported'],
  ['layer_replication', (v) => v != null, 'layer_replication is not supported'],
  ['modules_to_save', (v) => v != null && (v as unknown[]).length > 0, 'modules_to_save (fully trained extra modules) is not supported'],
  ['trainable_token_indices', (v) => v != null, 'trainable_token_indices is not supported'],
  ['target_parameters', (v) => v != null && (v as unknown[]).length > 0, 'target_parameters (LoRA on raw parameters) is not supported'],
  ['alora_invocation_tokens', (v) => v != null, 'activated LoRA (alora_invocation_tokens) is not supported'],
  ['use_qalora', (v) => v === true, 'QA-LoRA (use_qalora) is not supported'],
  ['use_bdlora', (v) => v != null && v !== false, 'use_bdlora is not supported'],
];

/**
 * Read a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).
 *
 * target_modules may be 'all-linear', a list of names or suffixes (`q_proj`,
 * `model.layers.0.self_attn.q_proj`), or a regular expression string (PEFT: re.fullmatch on
 * the module's full name), which the tensors' modules must match.
 *
 * @param opts.config when given, tensor shapes are checked against its Linear weights and every layer must be present.
 * @throws Error naming the file and key: a missing or unparsable file, peft_type not 'LORA', an
 *   option that changes the computation and is not supported (DoRA, biases, rank_pattern,
 *   layers_to_transform, modules_to_save, ...), bad r / lora_alpha / lora_dropout, a tensor
 *   that is not a LoRA weight of a target module, a wrong shape or dtype, a missing half of a
 *   pair; an adapter_model.bin (pickle) is refused.
 */
export async function loadPeftAdapter(
  folder: string,
  opts: { config?: SavePeftAdapterOptions['config'] } = {},
): Promise<LoadedPeftAdapter> {
  const dir = resolve(folder);
  const cfgPath = join(dir, ADAPTER_CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(cfgPath, 'utf8');
  } catch (err) {
    throw new Error(`${cfgPath}: cannot read the PEFT adapter config (${(err as Error).message})`, { cause: err });
  }
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${cfgPath}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${cfgPath}: expected a JSON object`);
  if (json.peft_type !== 'LORA') throw new Error(`${cfgPath}: peft_type is ${JSON.stringify(json.peft_type)}; only 'LORA' adapters are supported`);
  for (const [key, bad, why] of UNSUPPORTED) {
    if (bad(json[key])) throw new Error(`${cfgPath}: ${key} ${JSON.stringify(json[key])}: ${why}`);
  }
  const weightsPath = join(dir, ADAPTER_WEIGHTS_FILE);
  if (!existsSync(weightsPath)) {
    const bin = existsSync(join(dir, 'adapter_model.bin'));
    throw new Error(`${weightsPath} is missing${bin ? ' (adapter_model.bin, a pickle, is not read: convert it to safetensors)' : ''}`);
  }
  const st = await readSafetensors(weightsPath);
  const tensors: NamedTensors = new Map();
  for (const [key, t] of st.tensors) {
    if (!(t.data instanceof Float32Array)) throw new Error(`${weightsPath}: tensor '${key}' has dtype ${t.dtype}; expected a float dtype`);
    tensors.set(key, { shape: t.shape, data: t.data });
  }
  const declared = json.target_modules;
  const found = new Set<string>();
  for (const key of tensors.keys()) {
    const m = PEFT_KEY.exec(key);
    if (m) found.add(m[3]);
  }
  let targetModules: readonly string[] | 'all-linear';
  if (typeof declared === 'string' && declared !== 'all-linear') {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${declared})$`);
    } catch (err) {
      throw new Error(`${cfgPath}: target_modules ${JSON.stringify(declared)} is neither 'all-linear' nor a regular expression JavaScript accepts (${(err as Error).message})`, { cause: err });
    }
    for (const key of tensors.keys()) {
      const mod = key.replace(/^base_model\.model\./, '').replace(/\.lora_[AB]\.weight$/, '');
      if (!re.test(mod)) throw new Error(`${weightsPath}: tensor '${key}' adapts '${mod}', which target_modules ${JSON.stringify(declared)} does not match`);
    }
    targetModules = LORA_TARGETS.filter((t) => found.has(t));
  } else if (Array.isArray(declared) || declared === 'all-linear') {
    targetModules = declared as readonly string[] | 'all-linear';
  } else {
    throw new Error(`${cfgPath}: target_modules must be a list of module names, 'all-linear' or a regular expression, got ${JSON.stringify(declared)}`);
  }
  let lora: ResolvedLoraConfig;
  try {
    lora = resolveLoraConfig({
      r: json.r as number,
      lora_alpha: json.lora_alpha as number,
      lora_dropout: (json.lora_dropout ?? 0) as number,
      use_rslora: (json.use_rslora ?? false) as boolean,
      target_modules: targetModules,
      layers_to_transform: (json.layers_to_transform ?? undefined) as number | number[] | undefined,
    });
  } catch (err) {
    throw new Error(`${cfgPath}: ${(err as Error).message}`, { cause: err });
  }
  // PEFT's 'all-linear' and lists may name modules a saved adapter has no tensors for
  // (PEFT would leave them at their initial, zero-B values): keep only the adapted ones.
  lora = { ...lora, target_modules: lora.target_modules.filter((t) => found.has(t)) };
  const c = opts.config;
  checkLoraTensors(tensors, lora, weightsPath, c && llamaLinearShapes(c), c?.num_hidden_layers);
  return {
    lora,
    tensors,
    baseModel: typeof json.base_model_name_or_path === 'string' ? json.base_model_name_or_path : null,
    taskType: typeof json.task_type === 'string' ? json.task_type : null,
    adapterConfig: json,
  };
}

/**
 * Merge a LoRA adapter into base weights: W' = W + s · (B @ A) for every adapted Linear, with
 * s = {@link loraScale}(lora) — what PEFT's merge_and_unload() computes.
 *
 * Arithmetic: each element of B @ A is accumulated in float64, scaled by s and added to W in
 * float64, then rounded once to float32 (PEFT computes B @ A, the scaling and the sum in
 * float32; the two agree within a few float32 ulps).
 *
 * @param base HF names → float32 tensors (Linear weights (out, in)); not modified.
 * @param adapter PEFT saved names → lora_A (r, in), lora_B (out, r).
 * @returns a new Map in `base`'s order: adapted weights are new arrays, every other entry is the
 *   same object as in `base` (not copied).
 * @throws Error naming the key when an adapter tensor is not a LoRA weight of a target module,
 *   its base weight is missing or of another shape, or as {@link checkLoraTensors}.
 */
export function mergeLora(base: NamedTensors, adapter: NamedTensors, lora: LoraConfig): NamedTensors {
  const resolved = resolveLoraConfig(lora);
  const pairs = checkLoraTensors(adapter, resolved, 'mergeLora', (name) => base.get(name)?.shape);
  const s = loraScale(resolved);
  const r = resolved.r;
  const merged = new Map<string, Float32Array>();
  for (const { baseName, A, B } of pairs) {
    const W = base.get(baseName)!.data;
    const [out, inF] = base.get(baseName)!.shape;
    if (W.length !== out * inF) throw new Error(`mergeLora: base weight '${baseName}' has ${W.length} values, shape ${shapeStr([out, inF])} needs ${out * inF}`);
    const res = new Float32Array(W.length);
    const row = new Float64Array(inF);
    for (let o = 0; o < out; o++) {
      row.fill(0);
      for (let k = 0; k < r; k++) {
        const b = B.data[o * r + k];
        if (b === 0) continue;
        const a = k * inF;
        for (let i = 0; i < inF; i++) row[i] += b * A.data[a + i];
      }
      const w = o * inF;
      for (let i = 0; i < inF; i++) res[w + i] = W[w + i] + s * row[i];
    }
    merged.set(baseName, res);
  }
  const out: NamedTensors = new Map();
  for (const [name, t] of base) out.set(name, merged.has(name) ? { shape: [...t.shape], data: merged.get(name)! } : t);
  return out;
}
