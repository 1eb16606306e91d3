/**
 * A Llama-family causal LM from what people hold: a GGUF file (llama.cpp,
 * node-llama-cpp, Ollama), a Hugging Face folder (config.json,
 * model.safetensors or a sharded model.safetensors.index.json, tokenizer.json,
 * tokenizer_config.json, generation_config.json), or a Hub repo id pulled into
 * the cache. The weights end up in a native {@link Engine} under Hugging Face names
 * (GGUF tensors dequantized to float32, llama.cpp's q/k row order undone; the engine then
 * holds them as its `precision` says: fp32, a bf16 copy, or Q8_0).
 */
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { Engine, firstNonFinite, type EngineOptions } from '../engine.js';
import { openGgufModel } from '../io/gguf-llama.js';
import { resolveModel } from '../io/hub.js';
import { readSafetensors } from '../io/safetensors.js';
import { assertFiniteTensor } from '../io/finite.js';
import { assertModelFolder, parseJsonText } from '../io/model-folder.js';
import { llamaParameterShapes, parseLlamaConfig, type LlamaConfig } from '../models/llama.js';
import { LlmTokenizer } from '../tokenizer/bpe.js';

export interface LoadCausalLMOptions extends EngineOptions {
  /** Hub revision when `model` is a repo id. */
  revision?: string;
  /**
   * A Jinja chat template file that replaces the model's (`--chat-template-file`): for a base model
   * that has none, or to train and serve with another. A run folder saves it with its tokenizer
   * files, and loading the run uses it again (useRunChatTemplate).
   */
  chatTemplateFile?: string;
}

/** A loaded causal LM: its config, tokenizer, native engine, and where it came from. */
export interface CausalLM {
  config: LlamaConfig;
  tokenizer: LlmTokenizer;
  engine: Engine;
  /** The GGUF file or the model folder. */
  source: { kind: 'gguf' | 'folder'; path: string };
  /** generation_config.json (a folder's), or {} */
  generationConfig: Record<string, unknown>;
}

/**
 * Replaces the tokenizer's chat template with a Jinja file's.
 * @throws Error naming the file: missing (ENOENT-coded), or a template that does not parse.
 */
async function useChatTemplateFile(tokenizer: LlmTokenizer, file: string): Promise<void> {
  const path = resolve(file);
  if (!existsSync(path) || !statSync(path).isFile()) throw Object.assign(new Error(`chat template file ${path} does not exist`), { code: 'ENOENT', path: file });
  tokenizer.setChatTemplate(await readFile(path, 'utf8'), path);
  // An empty file, or one whose output is nothing, would fail every conversation later and far
  // from the cause ("prompt is empty", "no target token"). A template that raises for this probe
  // (one that needs a system message, say) is left to the conversations it is given.
  let rendered: string | undefined;
  try {
    rendered = tokenizer.applyChatTemplate([{ role: 'user', content: 'Hello' }], { add_generation_prompt: true });
  } catch {
    rendered = undefined;
  }
  if (rendered !== undefined && !rendered.includes('Hello')) {
    throw new Error(`chat template file ${path} renders the conversation [{ role: 'user', content: 'Hello' }] to ${JSON.stringify(rendered.slice(0, 80))}: expected the messages' text in it`);
  }
}

/**
 * Sets the chat template a run folder was trained with (its tokenizer_config.json chat_template)
 * on the base model's tokenizer, so the run answers as it was trained even when its base holds
 * another template or none (a run trained with --chat-template-file). Nothing without one.
 * @throws Error naming the file when its chat_template is not a template (or a list of them).
 */
export async function useRunChatTemplate(tokenizer: LlmTokenizer, runFolder: string): Promise<void> {
  const path = join(runFolder, 'tokenizer_config.json');
  if (!existsSync(path)) return;
  const chat = (await readJson(path)).chat_template;
  if (chat !== undefined && chat !== null) tokenizer.setChatTemplate(chat as string, path);
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  const value = parseJsonText(await readFile(path, 'utf8'), path);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${path}: expected a JSON object`);
  return value as Record<string, unknown>;
}

/** model.safetensors, or every shard model.safetensors.index.json names: tensors by name (float32). */
async function readFolderWeights(folder: string): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const single = join(folder, 'model.safetensors');
  const index = join(folder, 'model.safetensors.index.json');
  let files: string[];
  if (existsSync(single)) files = [single];
  else if (existsSync(index)) {
    const map = (await readJson(index)).weight_map;
    if (typeof map !== 'object' || map === null) throw new Error(`${index}: weight_map must be an object of tensor name → shard file`);
    const shards = [...new Set(Object.values(map as Record<string, unknown>))];
    for (const s of shards) {
      if (typeof s !== 'string' || basename(s) !== s) throw new Error(`${index}: weight_map names a shard ${JSON.stringify(s)}: expected a file name in the folder`);
    }
    files = (shards as string[]).map((s) => join(folder, s));
  } else {
    throw new Error(`${folder} has neither model.safetensors nor model.safetensors.index.json`);
  }
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const file of files) {
    for (const [name, t] of (await readSafetensors(file)).tensors) {
      if (!(t.data instanceof Float32Array)) throw new Error(`${file}: tensor '${name}' is ${t.dtype}; expected a floating-point tensor`);
      out.set(name, { shape: t.shape, data: t.data });
    }
  }
  return out;
}

/**
 * Copies tensors into the engine by Hugging Face name, reading each only when it is copied, so a
 * GGUF's dequantized tensors never exist all at once beside the engine's weights (about half the
 * peak memory of a load).
 * @throws Error naming a missing tensor, a shape that differs from the config's, or a non-finite value.
 */
async function loadWeights(engine: Engine, config: LlamaConfig, tensors: Map<string, { shape: number[]; read(): Promise<Float32Array> }>, where: string): Promise<void> {
  for (const [name, shape] of llamaParameterShapes(config)) {
    const t = tensors.get(name);
    if (!t) throw new Error(`${where}: tensor '${name}' is missing (expected shape [${shape.join(', ')}])`);
    if (t.shape.join(',') !== shape.join(',')) throw new Error(`${where}: tensor '${name}' has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] from the config`);
    const data = await t.read();
    assertFiniteTensor(data, shape, where, name, firstNonFinite);
    engine.setWeight(name, data);
  }
}

/**
 * Loads a causal LM into a native engine.
 * @param model a .gguf file, a Hugging Face model folder, or a Hub repo id.
 * @param opts engine options (threads, seed, lora, gradient_checkpointing, ...).
 * @throws Error naming the file: not a supported architecture, a missing or
 *   misshapen tensor, an unsupported tokenizer; ENOENT-coded for a missing path.
 */
export async function loadCausalLM(model: string, opts: LoadCausalLMOptions = {}): Promise<CausalLM> {
  const { revision, chatTemplateFile, ...engineOptions } = opts;
  if (model.endsWith('.gguf') || (existsSync(model) && statSync(model).isFile())) {
    if (!existsSync(model)) throw Object.assign(new Error(`model file ${resolve(model)} does not exist`), { code: 'ENOENT', path: model });
    const gguf = await openGgufModel(model);
    try {
      const config = parseLlamaConfig(gguf.config as unknown as Record<string, unknown>, `${model} (GGUF metadata)`);
      const tokenizer = LlmTokenizer.fromGgufMetadata(gguf.metadata);
      if (chatTemplateFile !== undefined) await useChatTemplateFile(tokenizer, chatTemplateFile);
      const engine = new Engine({ config, ...engineOptions });
      try {
        await loadWeights(engine, config, gguf.tensors, model);
      } catch (err) {
        await engine.dispose();
        throw err;
      }
      return { config, tokenizer, engine, source: { kind: 'gguf', path: resolve(model) }, generationConfig: {} };
    } finally {
      await gguf.close();
    }
  }
  const folder = await resolveModel(model, { revision });
  assertModelFolder(folder);
  const configPath = join(folder, 'config.json');
  const config = parseLlamaConfig(await readJson(configPath), configPath);
  const tokenizer = await LlmTokenizer.fromTokenizerJson(folder);
  if (chatTemplateFile !== undefined) await useChatTemplateFile(tokenizer, chatTemplateFile);
  const genPath = join(folder, 'generation_config.json');
  const generationConfig = existsSync(genPath) ? await readJson(genPath) : {};
  const tensors = await readFolderWeights(folder);
  const engine = new Engine({ config, ...engineOptions });
  try {
    await loadWeights(engine, config, new Map([...tensors].map(([n, t]) => [n, { shape: t.shape, read: async () => t.data }])), folder);
  } catch (err) {
    await engine.dispose();
    throw err;
  }
  return { config, tokenizer, engine, source: { kind: 'folder', path: folder }, generationConfig };
}
