/**
 * Tiny random Llama / Qwen2 models (HF names, torch shapes) and GGUF files of them that
 * loadCausalLM and LLM.load take: tests of the GGUF reader and of what is built on loading.
 */
import type { GgufValue } from '../../src/io/index.js';
import { hfTensorsToGguf, readGgufHeader, writeGguf } from '../../src/io/index.js';

/** A tiny random llama/qwen2 model under HF names, as torch shapes. */
export function tinyModel(opts: { bias?: boolean; lmHead?: boolean } = {}) {
  const cfg = { hidden: 64, heads: 4, kv: 2, headDim: 16, ff: 96, layers: 2, vocab: 40 };
  let seed = 1;
  const rand = (n: number) => Float32Array.from({ length: n }, () => ((seed = (seed * 16807) % 2147483647) / 2147483647) - 0.5);
  const t = new Map<string, { shape: number[]; data: Float32Array }>();
  const add = (name: string, shape: number[]) => t.set(name, { shape, data: rand(shape.reduce((a, b) => a * b, 1)) });
  add('model.embed_tokens.weight', [cfg.vocab, cfg.hidden]);
  for (let i = 0; i < cfg.layers; i++) {
    const l = `model.layers.${i}.`;
    add(`${l}input_layernorm.weight`, [cfg.hidden]);
    add(`${l}self_attn.q_proj.weight`, [cfg.heads * cfg.headDim, cfg.hidden]);
    add(`${l}self_attn.k_proj.weight`, [cfg.kv * cfg.headDim, cfg.hidden]);
    add(`${l}self_attn.v_proj.weight`, [cfg.kv * cfg.headDim, cfg.hidden]);
    if (opts.bias) {
      add(`${l}self_attn.q_proj.bias`, [cfg.heads * cfg.headDim]);
      add(`${l}self_attn.k_proj.bias`, [cfg.kv * cfg.headDim]);
      add(`${l}self_attn.v_proj.bias`, [cfg.kv * cfg.headDim]);
    }
    add(`${l}self_attn.o_proj.weight`, [cfg.hidden, cfg.heads * cfg.headDim]);
    add(`${l}post_attention_layernorm.weight`, [cfg.hidden]);
    add(`${l}mlp.gate_proj.weight`, [cfg.ff, cfg.hidden]);
    add(`${l}mlp.up_proj.weight`, [cfg.ff, cfg.hidden]);
    add(`${l}mlp.down_proj.weight`, [cfg.hidden, cfg.ff]);
  }
  add('model.norm.weight', [cfg.hidden]);
  if (opts.lmHead) add('lm_head.weight', [cfg.vocab, cfg.hidden]);
  return { cfg, tensors: t };
}

/** The GGUF metadata of a tinyModel config under `arch` (llama or qwen2), no tokenizer vocabulary. */
export function tinyMetadata(arch: string, cfg: ReturnType<typeof tinyModel>['cfg'], extra: Array<[string, GgufValue]> = []): Map<string, GgufValue> {
  const u32 = (value: number): GgufValue => ({ type: 'uint32', value });
  return new Map<string, GgufValue>([
    ['general.architecture', { type: 'string', value: arch }],
    [`${arch}.block_count`, u32(cfg.layers)],
    [`${arch}.context_length`, u32(256)],
    [`${arch}.embedding_length`, u32(cfg.hidden)],
    [`${arch}.feed_forward_length`, u32(cfg.ff)],
    [`${arch}.attention.head_count`, u32(cfg.heads)],
    [`${arch}.attention.head_count_kv`, u32(cfg.kv)],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'float32', value: 1e-6 }],
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.bos_token_id', u32(1)],
    ['tokenizer.ggml.eos_token_id', u32(2)],
    ...extra,
  ]);
}

/**
 * Writes a tiny Llama GGUF that loads as a whole model: tinyModel's layers, the small "gpt-2"
 * tokenizer fixture's metadata (test/fixtures/llm-tokenizer/small, with the SmolLM2 chat template
 * unless `chatTemplate` is false), an embedding as large as its vocabulary.
 * @param edit changes the HF tensors before they are written (a NaN, say).
 */
export async function writeTinyLlamaGguf(path: string, root: string, opts: { chatTemplate?: boolean; edit?: (tensors: Map<string, { shape: number[]; data: Float32Array }>) => void } = {}): Promise<void> {
  const { cfg, tensors } = tinyModel();
  const config = { model_type: 'llama' as const, num_attention_heads: cfg.heads, num_key_value_heads: cfg.kv, tie_word_embeddings: true };
  const tokenizer = (await readGgufHeader(`${root}/test/fixtures/llm-tokenizer/small/gpt-2.gguf`)).metadata;
  const metadata = tinyMetadata('llama', cfg);
  for (const [k, v] of tokenizer) if (k.startsWith('tokenizer.') && (opts.chatTemplate !== false || k !== 'tokenizer.chat_template')) metadata.set(k, v);
  const tokens = tokenizer.get('tokenizer.ggml.tokens')!.value as { items: unknown[] };
  tensors.set('model.embed_tokens.weight', { shape: [tokens.items.length, cfg.hidden], data: new Float32Array(tokens.items.length * cfg.hidden).fill(0.01) });
  opts.edit?.(tensors);
  await writeGguf(path, { metadata, tensors: hfTensorsToGguf(config, tensors, 'F32') });
}
