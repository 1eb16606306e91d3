/**
 * Writing what other tools load (src/io/peft.ts, src/io/llm-export.ts).
 *
 * References (test/fixtures/llm-export, made by scripts/reference/check_llm_export.py fixtures):
 * PEFT 0.21's own save_pretrained output and merge_and_unload() on the tiny Llama / Qwen2 models
 * with their lora_init adapters, and LoRA GGUFs written from those PEFT folders by llama.cpp's
 * own convert_lora_to_gguf.py (the llama.cpp node-llama-cpp 3.21.1 bundles). llama.cpp itself
 * (node-llama-cpp, CPU prebuilt binary) loads adapters and merged files written here onto the real
 * SmolLM2-135M-Instruct Q4_1 GGUF.
 *
 * LLM_EXPORT_OUT=<folder> keeps what the tiny-model tests write there, for
 * `python3 scripts/reference/check_llm_export.py check <folder>` (transformers + PEFT, gguf-py).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ggufLlamaConfig,
  hfTensorsToGguf,
  hfCausalLMConfigJson,
  loadPeftAdapter,
  loraScale,
  mergeLora,
  openGguf,
  permuteQK,
  readGgufHeader,
  readGgufModel,
  readSafetensors,
  saveHfCausalLM,
  savePeftAdapter,
  SeededRng,
  unpermuteQK,
  writeGguf,
  writeLoraGguf,
  writeMergedGguf,
  type GgufValue,
  type NamedTensors,
} from '../src/io/index.js';
import { argmax, llamaCppGreedy, llamaCppMissing, totalVariation, type LlamaCppRun } from './helpers/llama-cpp.js';
import { LORA_TARGETS, llamaParameterShapes, parseLlamaConfig, peftKey, type LlamaConfig, type LoraConfig } from '../src/models/llama.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIXTURES = join(ROOT, 'test/fixtures');
const FIX = join(FIXTURES, 'llm-export');
const SMOLLM2 = join(ROOT, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');

/** The tiny models' adapters as check_llm_export.py gives them to PEFT (r 4, alpha 8, the 7 linear modules). */
const TINY = {
  'tiny-llama': { fixture: 'tiny-llama', lora: { r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: [...LORA_TARGETS], use_rslora: false } },
  'tiny-qwen2-rslora': { fixture: 'tiny-qwen2', lora: { r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: [...LORA_TARGETS], use_rslora: true } },
} as const;
type TinyName = keyof typeof TINY;

let tmp = '';
/** Where the tiny-model outputs go: LLM_EXPORT_OUT (kept) or the temporary folder. */
let out = '';
test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-llm-export-'));
  out = process.env.LLM_EXPORT_OUT ? resolve(process.env.LLM_EXPORT_OUT) : join(tmp, 'out');
  await mkdir(out, { recursive: true });
});
test.after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function tensorsOf(path: string): Promise<NamedTensors> {
  const st = await readSafetensors(path);
  const m: NamedTensors = new Map();
  for (const [k, t] of st.tensors) m.set(k, { shape: t.shape, data: t.data as Float32Array });
  return m;
}

interface Tiny {
  config: LlamaConfig;
  base: NamedTensors;
  adapter: NamedTensors;
  lora: LoraConfig;
}
const tinyCache = new Map<TinyName, Promise<Tiny>>();
function tiny(name: TinyName): Promise<Tiny> {
  if (!tinyCache.has(name)) {
    tinyCache.set(name, (async () => {
      const dir = join(FIXTURES, TINY[name].fixture);
      const configPath = join(dir, 'config.json');
      return {
        config: parseLlamaConfig(JSON.parse(await readFile(configPath, 'utf8')), configPath),
        base: await tensorsOf(join(dir, 'model.safetensors')),
        adapter: await tensorsOf(join(dir, 'lora_init.safetensors')),
        lora: TINY[name].lora,
      };
    })());
  }
  return tinyCache.get(name)!;
}

/** max |a - b| / max |b| (0 when both are all zeros). */
function relMax(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return m === 0 ? d : d / m;
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** llama.cpp's rope_freqs for llama3 scaling (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors): one factor per frequency. */
function llama3RopeFactors(c: LlamaConfig): Float32Array {
  const s = c.rope_scaling!;
  const half = c.head_dim / 2;
  const out = new Float32Array(half);
  const lowWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / (1 / c.rope_theta ** ((2 * i) / c.head_dim));
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = s.factor;
    else {
      const smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      out[i] = 1 / ((1 - smooth) / s.factor + smooth);
    }
  }
  return out;
}

/**
 * A float32 GGUF of a tiny fixture model with the `<arch>.*` keys convert_hf_to_gguf.py writes
 * (no tokenizer), standing in for "the user's original GGUF"; llama3 scaling as rope_freqs.weight.
 */
async function writeTinyBaseGguf(name: TinyName, path: string): Promise<void> {
  const { config: c, base } = await tiny(name);
  const a = c.model_type;
  const u32 = (value: number): GgufValue => ({ type: 'uint32', value });
  const f32 = (value: number): GgufValue => ({ type: 'float32', value: Math.fround(value) });
  const metadata: Array<[string, GgufValue]> = [
    ['general.architecture', { type: 'string', value: a }],
    ['general.type', { type: 'string', value: 'model' }],
    ['general.name', { type: 'string', value: name }],
    [`${a}.block_count`, u32(c.num_hidden_layers)],
    [`${a}.context_length`, u32(c.max_position_embeddings)],
    [`${a}.embedding_length`, u32(c.hidden_size)],
    [`${a}.feed_forward_length`, u32(c.intermediate_size)],
    [`${a}.attention.head_count`, u32(c.num_attention_heads)],
    [`${a}.attention.head_count_kv`, u32(c.num_key_value_heads)],
    [`${a}.rope.freq_base`, f32(c.rope_theta)],
    [`${a}.attention.layer_norm_rms_epsilon`, f32(c.rms_norm_eps)],
    [`${a}.vocab_size`, u32(c.vocab_size)],
    [`${a}.rope.dimension_count`, u32(c.head_dim)],
    ['general.file_type', u32(0)],
    ['general.quantization_version', u32(2)],
  ];
  const tensors: Parameters<typeof writeGguf>[1]['tensors'] = hfTensorsToGguf(c as Parameters<typeof hfTensorsToGguf>[0], base, 'F32');
  if (c.rope_scaling) tensors.unshift({ name: 'rope_freqs.weight', shape: [c.head_dim / 2], type: 'F32', data: llama3RopeFactors(c) });
  await writeGguf(path, { metadata, tensors });
}

const baseGgufs = new Map<TinyName, Promise<string>>();
function tinyBaseGguf(name: TinyName): Promise<string> {
  if (!baseGgufs.has(name)) {
    const path = join(out, `base-${name}.gguf`);
    baseGgufs.set(name, writeTinyBaseGguf(name, path).then(() => path));
  }
  return baseGgufs.get(name)!;
}

// ------------------------------------------------------------------------------------------
// PEFT adapter folders

test('savePeftAdapter: adapter_config.json equals the one PEFT 0.21 writes, adapter_model.safetensors holds PEFT\'s keys and values', async () => {
  for (const name of Object.keys(TINY) as TinyName[]) {
    const { adapter, lora, config } = await tiny(name);
    const folder = join(out, `peft-${name}`);
    await savePeftAdapter(folder, { lora, tensors: adapter, baseModel: `test/fixtures/${TINY[name].fixture}`, taskType: 'CAUSAL_LM', config });
    assert.deepEqual((await readdir(folder)).sort(), ['adapter_config.json', 'adapter_model.safetensors']);
    const ours = JSON.parse(await readFile(join(folder, 'adapter_config.json'), 'utf8'));
    const peft = JSON.parse(await readFile(join(FIX, `peft-${name}`, 'adapter_config.json'), 'utf8'));
    assert.deepEqual(Object.keys(ours), Object.keys(peft), 'the same keys, in the same (sorted) order');
    // PEFT keeps target_modules in a set: the same names, in set order.
    assert.deepEqual([...ours.target_modules].sort(), [...peft.target_modules].sort());
    assert.deepEqual({ ...ours, target_modules: null }, { ...peft, target_modules: null });
    // The safetensors file: PEFT's names (no adapter name 'default'), values, dtype.
    const mine = await readSafetensors(join(folder, 'adapter_model.safetensors'));
    const theirs = await readSafetensors(join(FIX, `peft-${name}`, 'adapter_model.safetensors'));
    assert.deepEqual([...mine.tensors.keys()], [...theirs.tensors.keys()]);
    assert.ok([...mine.tensors.keys()].includes('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'));
    assert.deepEqual(mine.metadata, theirs.metadata);
    for (const [k, t] of theirs.tensors) {
      const m = mine.tensors.get(k)!;
      assert.equal(m.dtype, t.dtype);
      assert.deepEqual(m.shape, t.shape);
      assert.ok(bitsEqual(m.data as Float32Array, t.data as Float32Array), k);
    }
    const bytesOurs = await readFile(join(folder, 'adapter_model.safetensors'));
    const bytesPeft = await readFile(join(FIX, `peft-${name}`, 'adapter_model.safetensors'));
    assert.ok(bytesOurs.equals(bytesPeft), 'byte-identical to the file PEFT wrote');
  }
});

test('loadPeftAdapter reads PEFT-written folders (LoRA and rsLoRA) and what savePeftAdapter wrote', async () => {
  for (const name of Object.keys(TINY) as TinyName[]) {
    const { adapter, config } = await tiny(name);
    for (const folder of [join(FIX, `peft-${name}`), join(out, `peft-${name}`)]) {
      if (!existsSync(folder)) continue;
      const got = await loadPeftAdapter(folder, { config });
      assert.deepEqual(got.lora, { r: 4, lora_alpha: 8, lora_dropout: 0, use_rslora: name.includes('rslora'), target_modules: [...LORA_TARGETS] });
      assert.equal(got.baseModel, `test/fixtures/${TINY[name].fixture}`);
      assert.equal(got.taskType, 'CAUSAL_LM');
      assert.deepEqual([...got.tensors.keys()].sort(), [...adapter.keys()].sort());
      for (const [k, t] of adapter) {
        assert.deepEqual(got.tensors.get(k)!.shape, t.shape);
        assert.ok(bitsEqual(got.tensors.get(k)!.data, t.data), k);
      }
    }
  }
  assert.equal(loraScale({ r: 4, lora_alpha: 8 }), 2);
  assert.equal(loraScale({ r: 4, lora_alpha: 8, use_rslora: true }), 4);
});

test('loadPeftAdapter: target_modules as all-linear, full module paths or a regular expression', async () => {
  for (const [target_modules, want] of [
    ['all-linear', [...LORA_TARGETS]],
    [['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], [...LORA_TARGETS]],
    ['.*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)', [...LORA_TARGETS]],
  ] as const) {
    const folder = join(tmp, `targets-${typeof target_modules === 'string' ? target_modules.length : 'list'}`);
    await cp(join(FIX, 'peft-tiny-llama'), folder, { recursive: true });
    const cfg = JSON.parse(await readFile(join(folder, 'adapter_config.json'), 'utf8'));
    await writeFile(join(folder, 'adapter_config.json'), JSON.stringify({ ...cfg, target_modules }));
    assert.deepEqual((await loadPeftAdapter(folder)).lora.target_modules, want);
  }
});

test('loadPeftAdapter errors name the file and the key', async () => {
  const { config } = await tiny('tiny-llama');
  let n = 0;
  async function variant(edit: { config?: Record<string, unknown>; tensors?: (t: NamedTensors) => NamedTensors; drop?: string }): Promise<string> {
    const folder = join(tmp, `bad-${n++}`);
    await cp(join(FIX, 'peft-tiny-llama'), folder, { recursive: true });
    if (edit.config) {
      const cfg = JSON.parse(await readFile(join(folder, 'adapter_config.json'), 'utf8'));
      await writeFile(join(folder, 'adapter_config.json'), JSON.stringify({ ...cfg, ...edit.config }));
    }
    if (edit.tensors) {
      const { adapter } = await tiny('tiny-llama');
      const { writeSafetensors } = await import('../src/io/safetensors.js');
      await writeSafetensors(join(folder, 'adapter_model.safetensors'), edit.tensors(new Map(adapter)), { format: 'pt' });
    }
    if (edit.drop) await rm(join(folder, edit.drop));
    return folder;
  }
  const qA = peftKey(0, 'q_proj', 'A');
  const qB = peftKey(0, 'q_proj', 'B');
  const cases: Array<[Parameters<typeof variant>[0], RegExp]> = [
    [{ config: { peft_type: 'IA3' } }, /adapter_config\.json: peft_type is "IA3"; only 'LORA'/],
    [{ config: { use_dora: true } }, /adapter_config\.json: use_dora true: DoRA/],
    [{ config: { bias: 'all' } }, /adapter_config\.json: bias "all": only bias 'none'/],
    [{ config: { rank_pattern: { q_proj: 8 } } }, /adapter_config\.json: rank_pattern .*per-module ranks/],
    [{ config: { modules_to_save: ['lm_head'] } }, /adapter_config\.json: modules_to_save/],
    [{ config: { r: 0 } }, /adapter_config\.json: lora r must be a positive integer, got 0/],
    [{ config: { r: 8 } }, /adapter_model\.safetensors: tensor '[^']*\.lora_A\.weight' has shape \[4, \d+\]; lora_A must be \(r, in\) with r = 8/],
    [{ config: { target_modules: ['q_proj'] } }, /adapter_model\.safetensors: tensor '[^']*\.lora_A\.weight' adapts [a-z]+_proj, which is not in target_modules \[q_proj\]/],
    [{ config: { target_modules: 42 } }, /adapter_config\.json: target_modules must be a list/],
    [{ config: { target_modules: ['qproj'] } }, /adapter_config\.json: lora target_modules: unknown module 'qproj' \(did you mean 'q_proj'\?\)/],
    [{ tensors: (t) => t.set('base_model.model.lm_head.lora_A.weight', t.get(qA)!) }, /adapter_model\.safetensors: unexpected tensor 'base_model\.model\.lm_head\.lora_A\.weight'/],
    [{ tensors: (t) => t.set(qA.replace('lora_A', 'lora_A.default'), t.get(qA)!) }, /unexpected tensor '.*q_proj\.lora_A\.default\.weight'/],
    [{ tensors: (t) => (t.delete(qB), t) }, new RegExp(`tensor '${qB.replace(/\./g, '\\.')}' is missing \\(its lora_A is present\\)`)],
    [{ tensors: (t) => t.set(qA, { shape: [4, 32], data: new Float32Array(128) }) }, /lora_A\.weight' \[4, 32\] and lora_B \[64, 4\] give a \(64, 32\) update, but base weight 'model\.layers\.0\.self_attn\.q_proj\.weight' is \[64, 64\]/],
    [{ tensors: (t) => t.set(qB, { shape: [64, 4], data: new Float32Array(256).fill(NaN) }) }, /holds a non-finite value \(NaN\) at index 0/],
    [{ drop: 'adapter_model.safetensors' }, /adapter_model\.safetensors is missing/],
    [{ drop: 'adapter_config.json' }, /adapter_config\.json: cannot read the PEFT adapter config/],
  ];
  for (const [edit, re] of cases) {
    const folder = await variant(edit);
    await assert.rejects(loadPeftAdapter(folder, { config }), (err: Error) => {
      assert.match(err.message, re);
      assert.ok(err.message.includes(folder), `names the file: ${err.message}`);
      return true;
    });
  }
  const notJson = await variant({});
  await writeFile(join(notJson, 'adapter_config.json'), '{"r": 4,');
  await assert.rejects(loadPeftAdapter(notJson), /adapter_config\.json: not valid JSON/);
  const bin = await variant({ drop: 'adapter_model.safetensors' });
  await writeFile(join(bin, 'adapter_model.bin'), 'pickle');
  await assert.rejects(loadPeftAdapter(bin), /adapter_model\.bin, a pickle, is not read/);
});

test('savePeftAdapter refuses tensors that do not fit the LoraConfig', async () => {
  const { adapter, config } = await tiny('tiny-llama');
  const lora = TINY['tiny-llama'].lora;
  const save = (tensors: NamedTensors, l: LoraConfig = lora) => savePeftAdapter(join(tmp, 'refused'), { lora: l, tensors, baseModel: 'x', config });
  await assert.rejects(save(adapter, { ...lora, target_modules: ['q_proj', 'v_proj'] }), /savePeftAdapter: tensor '[^']*\.lora_A\.weight' adapts [a-z]+_proj, which is not in target_modules \[q_proj, v_proj\]/);
  await assert.rejects(save(adapter, { ...lora, r: 8 }), /has shape \[4, \d+\]; lora_A must be \(r, in\) with r = 8/);
  await assert.rejects(save(new Map([...adapter].filter(([k]) => !k.includes('layers.1.mlp.down_proj')))), /tensor 'base_model\.model\.model\.layers\.1\.mlp\.down_proj\.lora_A\.weight' is missing/);
  await assert.rejects(save(new Map([['model.layers.0.self_attn.q_proj.weight', adapter.get(peftKey(0, 'q_proj', 'A'))!]])), /unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.weight'/);
  await assert.rejects(save(adapter, { ...lora, lora_alpha: -1 }), /lora_alpha must be a finite number > 0/);
  await assert.rejects(savePeftAdapter(join(tmp, 'refused'), { lora, tensors: adapter, baseModel: '' }), /baseModel/);
  assert.equal(existsSync(join(tmp, 'refused')), false, 'nothing written');
});

// ------------------------------------------------------------------------------------------
// Merging

test('mergeLora equals PEFT merge_and_unload() (LoRA s = 2, rsLoRA s = 4) within 1e-6 of each weight\'s largest value', async () => {
  const ref = await tensorsOf(join(FIX, 'merged.safetensors'));
  for (const name of Object.keys(TINY) as TinyName[]) {
    const { base, adapter, lora } = await tiny(name);
    const merged = mergeLora(base, adapter, lora);
    assert.deepEqual([...merged.keys()], [...base.keys()], 'base order');
    let adapted = 0;
    for (const [k, t] of merged) {
      const want = ref.get(`${name}.${k}`);
      if (!want) {
        assert.equal(t, base.get(k), `${k} is not adapted: the same object`);
        continue;
      }
      adapted++;
      assert.deepEqual(t.shape, want.shape);
      const err = relMax(t.data, want.data);
      assert.ok(err <= 1e-6, `${name} ${k}: ${err}`);
      assert.ok(relMax(base.get(k)!.data, want.data) > 1e-3, `${k}: the merge changes the weight`);
    }
    assert.equal(adapted, 14);
  }
  const { base, adapter, lora } = await tiny('tiny-llama');
  assert.throws(() => mergeLora(new Map([...base].filter(([k]) => !k.includes('layers.1.mlp.up_proj'))), adapter, lora), /mergeLora: the base model has no weight 'model\.layers\.1\.mlp\.up_proj\.weight'/);
});

// ------------------------------------------------------------------------------------------
// Hugging Face folders

test('saveHfCausalLM writes a transformers folder: config.json fields, state_dict keys and values, no lm_head when tied', async () => {
  for (const name of Object.keys(TINY) as TinyName[]) {
    const { config, base, adapter, lora } = await tiny(name);
    const merged = mergeLora(base, adapter, lora);
    const folder = join(out, `hf-${name}-merged`);
    const files = await saveHfCausalLM(folder, { config, tensors: merged });
    assert.deepEqual(files, ['model.safetensors', 'generation_config.json', 'config.json']);
    const json = JSON.parse(await readFile(join(folder, 'config.json'), 'utf8'));
    const fixtureJson = JSON.parse(await readFile(join(FIXTURES, TINY[name].fixture, 'config.json'), 'utf8'));
    for (const k of ['architectures', 'model_type', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'head_dim', 'hidden_act', 'max_position_embeddings', 'rms_norm_eps', 'tie_word_embeddings', 'bos_token_id', 'eos_token_id', 'pad_token_id', 'dtype']) {
      assert.deepEqual(json[k], fixtureJson[k], `${name} config.json ${k}`);
    }
    assert.deepEqual(json.rope_parameters, fixtureJson.rope_parameters, 'transformers 5 form');
    assert.equal(json.rope_theta, fixtureJson.rope_parameters.rope_theta, 'transformers 4 form');
    assert.equal(json.torch_dtype, 'float32');
    assert.deepEqual(Object.keys(json), Object.keys(json).sort());
    assert.deepEqual(parseLlamaConfig(json, 'config.json'), config, 'reads back as the same config');
    if (name === 'tiny-llama') {
      assert.deepEqual(json.rope_scaling, { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 });
    } else {
      assert.equal(json.rope_scaling, null);
      assert.equal(json.use_sliding_window, false);
      assert.equal(json.sliding_window, null);
    }
    const st = await readSafetensors(join(folder, 'model.safetensors'));
    assert.deepEqual(st.metadata, { format: 'pt' });
    assert.deepEqual([...st.tensors.keys()], llamaParameterShapes(config).map(([k]) => k));
    assert.equal(st.tensors.has('lm_head.weight'), !config.tie_word_embeddings);
    for (const [k, t] of st.tensors) assert.ok(bitsEqual(t.data as Float32Array, merged.get(k)!.data), k);
    assert.deepEqual(JSON.parse(await readFile(join(folder, 'generation_config.json'), 'utf8')), { bos_token_id: 1, eos_token_id: 2, pad_token_id: 0 });
  }
});

test('saveHfCausalLM: tokenizer files from a folder or given contents, chat template in chat_template.jinja and tokenizer_config.json', async () => {
  const { config, base } = await tiny('tiny-llama');
  const tokDir = join(tmp, 'tok');
  await mkdir(tokDir, { recursive: true });
  await writeFile(join(tokDir, 'tokenizer.json'), '{"version": "1.0"}');
  await writeFile(join(tokDir, 'tokenizer_config.json'), '{"bos_token": "<s>", "chat_template": "old"}');
  await writeFile(join(tokDir, 'unrelated.txt'), 'x');
  const template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";
  const a = join(tmp, 'hf-tok-a');
  const files = await saveHfCausalLM(a, { config, tensors: base, tokenizerFiles: tokDir, chatTemplate: template, generationConfig: { max_new_tokens: 32, eos_token_id: [2, 3] } });
  assert.deepEqual(files, ['model.safetensors', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja', 'config.json']);
  assert.equal(await readFile(join(a, 'tokenizer.json'), 'utf8'), '{"version": "1.0"}');
  assert.deepEqual(JSON.parse(await readFile(join(a, 'tokenizer_config.json'), 'utf8')), { bos_token: '<s>', chat_template: template });
  assert.equal(await readFile(join(a, 'chat_template.jinja'), 'utf8'), template);
  assert.deepEqual(JSON.parse(await readFile(join(a, 'generation_config.json'), 'utf8')), { bos_token_id: 1, eos_token_id: [2, 3], pad_token_id: 0, max_new_tokens: 32 });
  assert.equal(existsSync(join(a, 'unrelated.txt')), false);

  const b = join(tmp, 'hf-tok-b');
  await saveHfCausalLM(b, { config, tensors: base, tokenizerFiles: { 'tokenizer.json': new TextEncoder().encode('{}'), 'special_tokens_map.json': { path: join(tokDir, 'tokenizer_config.json') } } });
  assert.equal(await readFile(join(b, 'tokenizer.json'), 'utf8'), '{}');
  assert.equal(await readFile(join(b, 'special_tokens_map.json'), 'utf8'), '{"bos_token": "<s>", "chat_template": "old"}');
  assert.equal(existsSync(join(b, 'chat_template.jinja')), false);
});

test('saveHfCausalLM refuses missing, unexpected and misshapen tensors, an untied lm_head under a tied config, and unsafe file names', async () => {
  const { config, base } = await tiny('tiny-llama');
  const folder = join(tmp, 'hf-refused');
  const without = (k: string) => new Map([...base].filter(([n]) => n !== k));
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: without('model.norm.weight') }), /saveHfCausalLM: tensor 'model\.norm\.weight' is missing/);
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: new Map([...base, ['model.rotary.inv_freq', { shape: [8], data: new Float32Array(8) }]]) }), /unexpected tensor 'model\.rotary\.inv_freq'/);
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: new Map([...base, ['model.norm.weight', { shape: [32], data: new Float32Array(32) }]]) }), /tensor 'model\.norm\.weight' has shape \[32\]; the config implies \[64\]/);
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: new Map([...base, ['lm_head.weight', { shape: [256, 64], data: new Float32Array(256 * 64) }]]) }), /tie_word_embeddings is true but 'lm_head\.weight' differs/);
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: base, tokenizerFiles: { '../evil.json': '{}' } }), /tokenizerFiles name '\.\.\/evil\.json' must be a plain file name/);
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: base, tokenizerFiles: { 'config.json': '{}' } }), /tokenizerFiles name 'config\.json'/);
  await assert.rejects(saveHfCausalLM(folder, { config, tensors: base, tokenizerFiles: join(tmp, 'no-such-folder') }), /has none of tokenizer\.json/);
  assert.equal(existsSync(folder), false, 'nothing written');
  // A tied lm_head equal to the embedding is accepted and left out.
  const embed = base.get('model.embed_tokens.weight')!;
  await saveHfCausalLM(folder, { config, tensors: new Map([...base, ['lm_head.weight', { shape: embed.shape, data: embed.data.slice() }]]) });
  assert.equal((await readSafetensors(join(folder, 'model.safetensors'))).tensors.has('lm_head.weight'), false);
});

test('hfCausalLMConfigJson from a GGUF-derived HfLlamaConfig (rope_scaling linear/yarn)', async () => {
  const header = await readGgufHeader(await tinyBaseGguf('tiny-qwen2-rslora'));
  const hf = ggufLlamaConfig(header);
  const json = hfCausalLMConfigJson({ ...hf, rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32 } });
  assert.deepEqual(json.architectures, ['Qwen2ForCausalLM']);
  assert.deepEqual(json.rope_scaling, { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32 });
  assert.deepEqual(json.rope_parameters, { rope_theta: 1000000, rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32 });
  assert.equal(json.attention_bias, undefined, 'Qwen2 has q/k/v biases by architecture');
  const { base } = await tiny('tiny-qwen2-rslora');
  const files = await saveHfCausalLM(join(tmp, 'hf-from-gguf-config'), { config: hf, tensors: base });
  assert.ok(files.includes('config.json'));
});

// ------------------------------------------------------------------------------------------
// llama.cpp LoRA adapters

test('writeLoraGguf equals llama.cpp convert_lora_to_gguf.py: metadata, names, GGUF dims, F32/F16 bits (q/k lora_b rows permuted for llama only)', async () => {
  for (const name of Object.keys(TINY) as TinyName[]) {
    const { adapter, lora } = await tiny(name);
    const type = name === 'tiny-llama' ? 'F32' : 'F16';
    const path = join(out, `lora-${name}.gguf`);
    await writeLoraGguf(path, { baseGguf: await tinyBaseGguf(name), tensors: adapter, lora, type });
    const ours = await openGguf(path);
    const ref = await openGguf(join(FIX, `lora-${name}.gguf`));
    try {
      for (const k of ['general.architecture', 'general.type', 'adapter.type']) assert.deepEqual(ours.metadata.get(k), ref.metadata.get(k), k);
      const alpha = ours.metadata.get('adapter.lora.alpha');
      assert.equal(alpha?.type, 'float32');
      // llama.cpp scales by alpha / r; convert_lora_to_gguf.py writes lora_alpha even for rsLoRA.
      assert.equal((alpha!.value as number) / lora.r, loraScale(lora));
      assert.deepEqual(ref.metadata.get('adapter.lora.alpha'), { type: 'float32', value: 8 });
      assert.deepEqual(ours.tensors.map((t) => t.name).sort(), ref.tensors.map((t) => t.name).sort());
      for (const t of ref.tensors) {
        const o = ours.tensor(t.name)!;
        assert.equal(o.type, t.type, t.name);
        assert.deepEqual(o.ne, t.ne, t.name);
        assert.ok(Buffer.from(await ours.readTensorBytes(o)).equals(Buffer.from(await ref.readTensorBytes(t))), `${t.name}: same bytes`);
      }
    } finally {
      await ours.close();
      await ref.close();
    }
  }
});

test('writeLoraGguf permutes lora_b of attn_q/attn_k so that permute(W + s·B·A) = permute(W) + s·permute(B)·A (llama)', async () => {
  const { config, base, adapter, lora } = await tiny('tiny-llama');
  const merged = mergeLora(base, adapter, lora);
  const s = loraScale(lora);
  const f = await openGguf(join(out, 'lora-tiny-llama.gguf'));
  try {
    for (let layer = 0; layer < config.num_hidden_layers; layer++) {
      for (const [target, g, nHead] of [['q_proj', 'attn_q', config.num_attention_heads], ['k_proj', 'attn_k', config.num_key_value_heads]] as const) {
        const W = base.get(`model.layers.${layer}.self_attn.${target}.weight`)!;
        const [outF, inF] = W.shape;
        const A = await f.readTensor(`blk.${layer}.${g}.weight.lora_a`);
        const B = await f.readTensor(`blk.${layer}.${g}.weight.lora_b`);
        assert.ok(bitsEqual(unpermuteQK(B, outF, nHead), adapter.get(peftKey(layer, target, 'B'))!.data), 'B rows permuted, nothing else');
        assert.ok(bitsEqual(A, adapter.get(peftKey(layer, target, 'A'))!.data), 'A as it is');
        const pW = permuteQK(W.data, outF, nHead);
        const viaAdapter = new Float32Array(pW.length);
        for (let o = 0; o < outF; o++) {
          for (let i = 0; i < inF; i++) {
            let acc = 0;
            for (let k = 0; k < lora.r; k++) acc += B[o * lora.r + k] * A[k * inF + i];
            viaAdapter[o * inF + i] = pW[o * inF + i] + s * acc;
          }
        }
        const want = permuteQK(merged.get(`model.layers.${layer}.self_attn.${target}.weight`)!.data, outF, nHead);
        const err = relMax(viaAdapter, want);
        assert.ok(err < 1e-6, `layer ${layer} ${target}: ${err}`);
        // The identity is not vacuous: an unpermuted B gives another matrix.
        const wrong = pW.map((w, idx) => {
          const o = Math.floor(idx / inF), i = idx % inF;
          let acc = 0;
          for (let k = 0; k < lora.r; k++) acc += adapter.get(peftKey(layer, target, 'B'))!.data[o * lora.r + k] * A[k * inF + i];
          return w + s * acc;
        });
        assert.ok(relMax(wrong, want) > 1e-2);
      }
    }
  } finally {
    await f.close();
  }
});

test('writeLoraGguf refuses adapters that do not fit the base GGUF', async () => {
  const { adapter, lora } = await tiny('tiny-llama');
  const baseGguf = await tinyBaseGguf('tiny-llama');
  const path = join(tmp, 'refused.gguf');
  const extra = new Map(adapter);
  extra.set(peftKey(2, 'q_proj', 'A'), adapter.get(peftKey(0, 'q_proj', 'A'))!);
  await assert.rejects(writeLoraGguf(path, { baseGguf, tensors: extra, lora }), /tensor '.*layers\.2\.self_attn\.q_proj\.lora_A\.weight' is for layer 2, but the model has 2 layers/);
  const { adapter: wide } = { adapter: new Map(adapter) };
  wide.set(peftKey(1, 'up_proj', 'B'), { shape: [64, 4], data: new Float32Array(256) });
  await assert.rejects(writeLoraGguf(path, { baseGguf, tensors: wide, lora }), /give a \(64, 64\) update, but base weight 'model\.layers\.1\.mlp\.up_proj\.weight' is \[128, 64\]/);
  await assert.rejects(writeLoraGguf(path, { baseGguf: join(FIX, 'lora-tiny-llama.gguf'), tensors: adapter, lora }), /metadata key 'llama\.embedding_length' is missing/);
  await assert.rejects(writeLoraGguf(path, { baseGguf, tensors: adapter, lora, type: 'Q8_0' as 'F16' }), /type must be 'F32' or 'F16'/);
  assert.equal(existsSync(path), false);
});

// ------------------------------------------------------------------------------------------
// Merged GGUF

test('writeMergedGguf: the base metadata with general.file_type, merged tensors as F16 / Q8_0 (norms F32), rope_freqs copied', async () => {
  const { config, base, adapter, lora } = await tiny('tiny-llama');
  const merged = mergeLora(base, adapter, lora);
  const baseGguf = await tinyBaseGguf('tiny-llama');
  const baseHeader = await readGgufHeader(baseGguf);
  for (const [type, fileType, tol] of [['F16', 1, 1e-3], ['Q8_0', 7, 1e-2]] as const) {
    const path = join(out, `merged-tiny-llama-${type.toLowerCase()}.gguf`);
    await writeMergedGguf(path, { baseGguf, tensors: merged, config, type });
    const h = await readGgufHeader(path);
    assert.deepEqual([...h.metadata.keys()], [...baseHeader.metadata.keys()]);
    for (const [k, v] of baseHeader.metadata) {
      assert.deepEqual(h.metadata.get(k), k === 'general.file_type' ? { type: 'uint32', value: fileType } : v, k);
    }
    assert.deepEqual(h.tensors.map((t) => t.name), baseHeader.tensors.map((t) => t.name), 'base tensor order');
    for (const t of h.tensors) assert.equal(t.type, t.ne.length === 1 ? 'F32' : type, t.name);
    const back = await readGgufModel(path);
    for (const [k, t] of merged) {
      const err = relMax(back.tensors.get(k)!.data, t.data);
      assert.ok(err <= (t.shape.length === 1 ? 0 : tol), `${type} ${k}: ${err}`);
    }
    const f = await openGguf(path);
    const fb = await openGguf(baseGguf);
    assert.ok(Buffer.from(await f.readTensorBytes('rope_freqs.weight')).equals(Buffer.from(await fb.readTensorBytes('rope_freqs.weight'))));
    await f.close();
    await fb.close();
  }
  await writeMergedGguf(join(out, 'merged-tiny-qwen2-rslora-f16.gguf'), {
    baseGguf: await tinyBaseGguf('tiny-qwen2-rslora'),
    tensors: mergeLora((await tiny('tiny-qwen2-rslora')).base, (await tiny('tiny-qwen2-rslora')).adapter, TINY['tiny-qwen2-rslora'].lora),
    type: 'F16',
  });
});

test('writeMergedGguf refuses tensors that do not match the base', async () => {
  const { base } = await tiny('tiny-llama');
  const baseGguf = await tinyBaseGguf('tiny-llama');
  const path = join(tmp, 'refused-merged.gguf');
  await assert.rejects(writeMergedGguf(path, { baseGguf, tensors: new Map([...base].filter(([k]) => k !== 'model.layers.1.mlp.up_proj.weight')), type: 'Q8_0' }), /tensor 'model\.layers\.1\.mlp\.up_proj\.weight' \(blk\.1\.ffn_up\.weight in .*\) is missing/);
  await assert.rejects(writeMergedGguf(path, { baseGguf, tensors: new Map([...base, ['model.norm.weight', { shape: [65], data: new Float32Array(65) }]]), type: 'F16' }), /tensor 'model\.norm\.weight' has shape \[65\]; the base's is \[64\]/);
  await assert.rejects(writeMergedGguf(path, { baseGguf, tensors: new Map([...base, ['lm_head.weight', { shape: [256, 64], data: new Float32Array(256 * 64) }]]), type: 'F16' }), /tie_word_embeddings is true but 'lm_head\.weight' differs/);
  const { config: qwen } = await tiny('tiny-qwen2-rslora');
  await assert.rejects(writeMergedGguf(path, { baseGguf, tensors: base, config: qwen, type: 'F16' }), /config\.model_type is "qwen2" but the base GGUF .* has "llama"/);
  assert.equal(existsSync(path), false);
});

// ------------------------------------------------------------------------------------------
// llama.cpp (node-llama-cpp, CPU prebuilt binary) on the real SmolLM2-135M-Instruct Q4_1 GGUF

const skipLlamaCpp = !existsSync(SMOLLM2) ? `${SMOLLM2} is absent: run bash scripts/fetch-llm.sh` : llamaCppMissing;

/** A LoRA adapter on a GGUF model's shapes: A, B ~ N(0, std²) (B = 0 with zeroB), PEFT names. */
function randomAdapter(c: { hidden_size: number; intermediate_size: number; num_attention_heads: number; num_key_value_heads: number; head_dim: number; num_hidden_layers: number }, opts: { r: number; targets: readonly (typeof LORA_TARGETS)[number][]; seed: number; std: number; zeroB?: boolean }): NamedTensors {
  const rng = new SeededRng(opts.seed);
  const q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim, C = c.hidden_size, I = c.intermediate_size;
  const dims = { q_proj: [q, C], k_proj: [kv, C], v_proj: [kv, C], o_proj: [C, q], gate_proj: [I, C], up_proj: [I, C], down_proj: [C, I] } as const;
  const m: NamedTensors = new Map();
  for (let layer = 0; layer < c.num_hidden_layers; layer++) {
    for (const t of opts.targets) {
      const [o, i] = dims[t];
      m.set(peftKey(layer, t, 'A'), { shape: [opts.r, i], data: rng.fillNormal(new Float32Array(opts.r * i), 0, opts.std) });
      const B = new Float32Array(o * opts.r);
      if (!opts.zeroB) rng.fillNormal(B, 0, opts.std);
      m.set(peftKey(layer, t, 'B'), { shape: [o, opts.r], data: B });
    }
  }
  return m;
}

const PROMPTS = ['The capital of France is', 'def fibonacci(n):', 'Once upon a time'];

test('llama.cpp applies nodetune LoRA GGUFs to SmolLM2 Q4_1: a random adapter changes every greedy completion, a zero-B adapter changes nothing; the merged Q8_0 GGUF loads and starts like the base', { skip: skipLlamaCpp }, async (t) => {
  const model = await readGgufModel(SMOLLM2);
  const c = model.config;
  const base = await llamaCppGreedy(SMOLLM2, PROMPTS);
  assert.match(base[0].text, /^ Paris/);

  // r 8, all-linear, N(0, 0.02²), s = 256 / 8 = 32: large enough to see in 8 tokens.
  const lora: LoraConfig = { r: 8, lora_alpha: 256, target_modules: 'all-linear' };
  const randomPath = join(tmp, 'smollm2-random-lora.gguf');
  await writeLoraGguf(randomPath, { baseGguf: SMOLLM2, tensors: randomAdapter(c, { r: 8, targets: LORA_TARGETS, seed: 1, std: 0.02 }), lora, name: 'random test adapter' });
  const random = await llamaCppGreedy(SMOLLM2, PROMPTS, { lora: randomPath });

  const zero = randomAdapter(c, { r: 8, targets: LORA_TARGETS, seed: 2, std: 0.02, zeroB: true });
  const zeroPath = join(tmp, 'smollm2-zero-lora.gguf');
  await writeLoraGguf(zeroPath, { baseGguf: SMOLLM2, tensors: zero, lora });
  const same = await llamaCppGreedy(SMOLLM2, PROMPTS, { lora: zeroPath });

  const mergedPath = join(tmp, 'smollm2-merged-q8_0.gguf');
  await writeMergedGguf(mergedPath, { baseGguf: SMOLLM2, tensors: mergeLora(model.tensors, zero, lora), type: 'Q8_0' });
  const merged = await llamaCppGreedy(mergedPath, PROMPTS);
  await rm(mergedPath);

  for (let i = 0; i < PROMPTS.length; i++) {
    const tv = (r: LlamaCppRun) => totalVariation(base[i].probabilities[0], r.probabilities[0]).toFixed(4);
    t.diagnostic(`${JSON.stringify(PROMPTS[i])}: base ${JSON.stringify(base[i].text)} | random adapter ${JSON.stringify(random[i].text)} (first-token TV ${tv(random[i])}) | zero-B adapter ${JSON.stringify(same[i].text)} (TV ${tv(same[i])}) | merged Q8_0 ${JSON.stringify(merged[i].text)} (TV ${tv(merged[i])})`);
    assert.notDeepEqual(random[i].ids, base[i].ids, `the random adapter changes ${JSON.stringify(PROMPTS[i])}`);
    assert.ok(totalVariation(base[i].probabilities[0], random[i].probabilities[0]) > 0.2);
    assert.deepEqual(same[i].ids, base[i].ids, 'a zero-B adapter is a no-op: names and shapes were accepted, nothing changed');
    assert.ok(totalVariation(base[i].probabilities[0], same[i].probabilities[0]) < 1e-5);
    assert.equal(merged[i].ids[0], base[i].ids[0], 'Q8_0 of the merged weights: the same first token');
    assert.ok(totalVariation(base[i].probabilities[0], merged[i].probabilities[0]) < 0.2, 'and nearly the same distribution (Q8_0 rounding only)');
  }
});

test('llama.cpp: base + nodetune LoRA GGUF equals nodetune\'s merged GGUF (F16 base, q/k-only adapter, so the rotary row permutation of lora_b decides)', { skip: skipLlamaCpp }, async (t) => {
  const model = await readGgufModel(SMOLLM2);
  const c = model.config;
  // An F16 base, so both sides use the same weight format and only the adapter differs.
  const baseF16 = join(tmp, 'smollm2-f16.gguf');
  await writeMergedGguf(baseF16, { baseGguf: SMOLLM2, tensors: model.tensors, type: 'F16' });
  const lora: LoraConfig = { r: 8, lora_alpha: 1024, target_modules: ['q_proj', 'k_proj'] };
  const adapter = randomAdapter(c, { r: 8, targets: ['q_proj', 'k_proj'], seed: 3, std: 0.02 });
  const loraPath = join(tmp, 'smollm2-qk-lora.gguf');
  await writeLoraGguf(loraPath, { baseGguf: baseF16, tensors: adapter, lora });
  // Negative control: B handed over pre-unpermuted, so the file holds PEFT's row order.
  const unpermuted = new Map(adapter);
  for (let layer = 0; layer < c.num_hidden_layers; layer++) {
    for (const [target, heads] of [['q_proj', c.num_attention_heads], ['k_proj', c.num_key_value_heads]] as const) {
      const B = adapter.get(peftKey(layer, target, 'B'))!;
      unpermuted.set(peftKey(layer, target, 'B'), { shape: B.shape, data: unpermuteQK(B.data, B.shape[0], heads) });
    }
  }
  const wrongPath = join(tmp, 'smollm2-qk-lora-unpermuted.gguf');
  await writeLoraGguf(wrongPath, { baseGguf: baseF16, tensors: unpermuted, lora });
  const mergedF16 = join(tmp, 'smollm2-qk-merged-f16.gguf');
  await writeMergedGguf(mergedF16, { baseGguf: baseF16, tensors: mergeLora(model.tensors, adapter, lora), type: 'F16' });

  const base = await llamaCppGreedy(baseF16, PROMPTS, { maxTokens: 1 });
  const viaLora = await llamaCppGreedy(baseF16, PROMPTS, { lora: loraPath, maxTokens: 1 });
  const wrong = await llamaCppGreedy(baseF16, PROMPTS, { lora: wrongPath, maxTokens: 1 });
  const merged = await llamaCppGreedy(mergedF16, PROMPTS, { maxTokens: 1 });
  await Promise.all([baseF16, mergedF16].map((p) => rm(p)));
  for (let i = 0; i < PROMPTS.length; i++) {
    const p = (r: LlamaCppRun) => r.probabilities[0];
    const tvMerged = totalVariation(p(viaLora[i]), p(merged[i]));
    const tvBase = totalVariation(p(base[i]), p(viaLora[i]));
    const tvWrong = totalVariation(p(wrong[i]), p(merged[i]));
    t.diagnostic(`${JSON.stringify(PROMPTS[i])}: first-token TV adapter vs merged ${tvMerged.toFixed(4)}, base vs adapter ${tvBase.toFixed(4)}, unpermuted adapter vs merged ${tvWrong.toFixed(4)}; argmax base ${argmax(p(base[i]))} adapter ${argmax(p(viaLora[i]))} merged ${argmax(p(merged[i]))} unpermuted ${argmax(p(wrong[i]))}`);
    assert.equal(viaLora[i].ids[0], merged[i].ids[0], 'the same first token');
    assert.ok(tvMerged < 0.03, `adapter and merged model agree: TV ${tvMerged}`);
    assert.ok(tvWrong > 10 * tvMerged && tvWrong > 0.05, `an unpermuted lora_b would be caught: TV ${tvWrong}`);
  }
  assert.ok(Math.max(...PROMPTS.map((_, i) => totalVariation(base[i].probabilities[0], viaLora[i].probabilities[0]))) > 0.5, 'the adapter matters');
});

test('layers_to_transform round-trips through adapter_config.json; an adapter on a left-out layer is refused', async () => {
  const { adapter, config } = await tiny('tiny-llama' as TinyName);
  const top: NamedTensors = new Map([...adapter].filter(([k]) => k.includes('.layers.1.')));
  const folder = join(out, 'peft-layers');
  const lora = { r: 4, lora_alpha: 8, target_modules: 'all-linear' as const, layers_to_transform: [1] };
  await savePeftAdapter(folder, { lora, tensors: top, baseModel: 'tiny', config });
  const json = JSON.parse(await readFile(join(folder, 'adapter_config.json'), 'utf8'));
  assert.deepEqual(json.layers_to_transform, [1]);
  const got = await loadPeftAdapter(folder, { config });
  assert.deepEqual(got.lora.layers_to_transform, [1]);
  await assert.rejects(savePeftAdapter(join(out, 'peft-layers-bad'), { lora, tensors: adapter, baseModel: 'tiny', config }), /adapts layer 0, which layers_to_transform \[1\] leaves out/);
});
