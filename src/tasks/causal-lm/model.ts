/**
 * A causal LM from what `nodetune sft` starts from or leaves: a base model (GGUF file, Hugging Face
 * folder, Hub id), a run folder holding a PEFT adapter (adapter_config.json +
 * adapter_model.safetensors, its base named by base_model_name_or_path), or a full fine-tune's
 * Hugging Face folder — and the merged exports of a run (Hugging Face folder, GGUF F16/Q8_0).
 */
import { loadCausalLM, useRunChatTemplate, type CausalLM, type LoadCausalLMOptions } from '../../llm/load.js';
import { adapterBase, isAdapterFolder, loadPeftAdapter, mergeLora, type LoadedPeftAdapter } from '../../io/peft.js';
import { saveHfCausalLM, writeMergedGguf } from '../../io/llm-export.js';
import { engineTensors, tokenizerFolderFiles } from './task.js';

/** A loaded model and, for a run folder, the adapter on it. */
export interface LoadedSftModel extends CausalLM {
  /** The adapter applied (a LoRA run folder), else undefined. */
  adapter?: LoadedPeftAdapter;
  /** The base model's path or id (the adapter's base_model_name_or_path, or `model` itself). */
  base: string;
}

/**
 * Loads a base model, or a run folder's base with its LoRA adapter on it (the engine built with
 * the adapter's LoraConfig, its lora_A / lora_B set from adapter_model.safetensors, and the chat
 * template the run was trained with unless opts.chatTemplateFile gives one).
 * @throws Error naming the file as loadCausalLM and loadPeftAdapter do; naming the adapter when
 *   its tensors do not fit the base.
 */
export async function loadSftModel(model: string, opts: LoadCausalLMOptions = {}): Promise<LoadedSftModel> {
  if (!isAdapterFolder(model)) {
    const lm = await loadCausalLM(model, opts);
    return { ...lm, base: model };
  }
  const probe = await loadPeftAdapter(model);
  const base = adapterBase(model, probe);
  // An engine with adapters has a frozen base already: `trainable` is for the adapter-less one.
  const { trainable: _, ...withAdapter } = opts;
  const lm = await loadCausalLM(base, { ...withAdapter, lora: probe.lora });
  try {
    if (opts.chatTemplateFile === undefined) await useRunChatTemplate(lm.tokenizer, model);
    const adapter = await loadPeftAdapter(model, { config: lm.config });
    for (const [name, t] of adapter.tensors) lm.engine.setWeight(name, t.data);
    return { ...lm, adapter, base };
  } catch (err) {
    await lm.engine.dispose();
    throw err;
  }
}

/** What exportCausalLM writes. */
export interface ExportCausalLMOptions {
  /** 'hf' (a transformers folder) or 'gguf' (llama.cpp). */
  format: 'hf' | 'gguf';
  /** GGUF storage type of 2-D tensors (default 'F16'). */
  type?: 'F16' | 'Q8_0';
  /** Where to write: a folder for 'hf', a .gguf file for 'gguf'. */
  output: string;
  threads?: number;
}

/**
 * Merges a run folder's adapter into its base (PEFT merge_and_unload) and writes the merged model:
 * a Hugging Face folder (model.safetensors, config.json, tokenizer files, chat template) or a GGUF
 * file over the base GGUF's metadata. A folder without an adapter (a full fine-tune, or any
 * model) is written as it is.
 * @returns the files written.
 * @throws Error when 'gguf' is asked for a model whose base is not a GGUF file (its metadata is
 *   what the file is written over); as the loaders and writers do.
 */
export async function exportCausalLM(model: string, o: ExportCausalLMOptions): Promise<string[]> {
  const lm = await loadSftModel(model, { threads: o.threads, trainable: false });
  try {
    const baseNames = lm.engine.parameterNames().filter((n) => !n.includes('.lora_'));
    let tensors = engineTensors(lm, baseNames);
    if (lm.adapter) tensors = mergeLora(tensors, lm.adapter.tensors, lm.adapter.lora);
    if (o.format === 'hf') {
      return await saveHfCausalLM(o.output, { config: lm.config, tensors, tokenizerFiles: tokenizerFolderFiles(lm), chatTemplate: lm.tokenizer.chatTemplate });
    }
    if (lm.source.kind !== 'gguf') {
      throw new Error(`--format gguf writes over the base model's GGUF metadata, but ${lm.base} is a ${lm.source.kind}; export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py`);
    }
    await writeMergedGguf(o.output, { baseGguf: lm.source.path, tensors, type: o.type ?? 'F16' });
    return [o.output];
  } finally {
    await lm.engine.dispose();
  }
}
