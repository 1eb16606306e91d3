/**
 * `nodetune bench train --shapes smollm2-135m`: training-step throughput and
 * peak memory of the native decoder engine, side by side with PyTorch eager +
 * PEFT (scripts/reference/bench_torch_llama.py) on the same model shape,
 * batch, sequence length, LoRA settings and thread count.
 *
 * A step: forward of LlamaForCausalLM on (B, T) random ids with labels =
 * input_ids (every token a target), shifted cross-entropy, backward,
 * clip_grad_norm(1.0), AdamW (lr 1e-4, weight_decay 0.01) over what trains.
 * LoRA: r 16, alpha 32, dropout 0.05, all-linear, frozen base; full: every
 * parameter trains. Each side runs in its own process, so its peak resident
 * memory (getrusage maxrss: weights, optimizer, activations, runtime) is its
 * own; timing is the median of the timed steps after warm-up on both sides.
 *
 * FLOPs per step (for GFLOP/s): forward 2 P + attention 4 L T^2 H per
 * sequence token-pair; backward 2 P (input gradients) + (full only) 2 P
 * (weight gradients) + attention 8 L T^2 H; P = non-embedding parameters +
 * the lm_head once (tied or not). With a frozen base that is DESIGN.md's
 * "4 x parameters per token".
 */
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './paths.js';
import { runJsonLine } from './train.js';
import { loadWarning, type BenchReport, type BenchValue } from './report.js';
import type { LlamaConfig } from '../models/llama.js';

/** Decoder shapes by Hugging Face config fields (random weights). */
export const LLM_SHAPES: Record<string, Omit<LlamaConfig, 'model_type' | 'hidden_act'>> = {
  'smollm2-135m': {
    vocab_size: 49152, hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, num_attention_heads: 9,
    num_key_value_heads: 3, head_dim: 64, max_position_embeddings: 8192, rms_norm_eps: 1e-5, rope_theta: 100000,
    rope_scaling: null, tie_word_embeddings: true, attention_bias: false, o_proj_bias: false, mlp_bias: false,
  },
};

export interface LlmCase {
  shape: string;
  /** LoRA rank (alpha 2r, dropout 0.05, all-linear), or 0 for full fine-tuning. */
  lora: number;
  B: number;
  T: number;
  threads: number;
  steps: number;
  warmup: number;
  seed: number;
  /** The frozen base's weights: 'fp32', or 'bf16' (LoRA only; EngineOptions.precision). */
  precision?: 'fp32' | 'bf16';
}

export interface LlmCaseResult {
  tokens_per_s?: number;
  step_ms_median?: number;
  peak_rss_mib?: number;
  torch?: string;
  transformers?: string;
  peft?: string | null;
  status?: string;
}

/** The LlamaConfig of a shape. @throws Error for an unknown shape. */
export function llmShapeConfig(name: string): LlamaConfig {
  const s = LLM_SHAPES[name];
  if (!s) throw new Error(`unknown decoder shape '${name}' (expected ${Object.keys(LLM_SHAPES).join(', ')})`);
  return { ...s, model_type: 'llama', hidden_act: 'silu' };
}

/** Training FLOPs of one step (see the module comment). */
export function llmTrainingFlops(c: LlamaConfig, B: number, T: number, full: boolean): number {
  const C = c.hidden_size, I = c.intermediate_size, HS = c.head_dim;
  const perLayer = C * (c.num_attention_heads + 2 * c.num_key_value_heads) * HS + c.num_attention_heads * HS * C + 3 * C * I;
  const P = c.num_hidden_layers * perLayer + c.vocab_size * C;
  const attn = 4 * c.num_hidden_layers * T * c.num_attention_heads * HS; // per token: QK^T and PV, forward
  const perToken = (full ? 6 : 4) * P + 3 * attn;
  return perToken * B * T;
}

export interface LlmTrainBenchOptions {
  shapes?: string[];
  /** LoRA ranks to measure; 0 = full fine-tuning (default [16] and full at the first T). */
  modes?: number[];
  seqs?: number[];
  batch?: number;
  threads?: number;
  steps?: number;
  warmup?: number;
  torch?: boolean;
  python?: string;
  seed?: number;
  /** 'bf16': the frozen base in bf16 on both sides (LoRA cases only; default 'fp32'). */
  precision?: 'fp32' | 'bf16';
  onProgress?: (text: string) => void;
}

/**
 * Measures every (shape, mode, T) case, nodetune and (unless torch is false)
 * PyTorch + PEFT, each in a child process.
 */
export async function runLlmTrainBench(opts: LlmTrainBenchOptions = {}): Promise<BenchReport> {
  const shapes = opts.shapes ?? ['smollm2-135m'];
  shapes.forEach(llmShapeConfig);
  const seqs = opts.seqs ?? [128, 512];
  const B = opts.batch ?? 8;
  const threads = opts.threads ?? 2;
  const warmup = opts.warmup ?? 1;
  const steps = opts.steps ?? 3;
  const seed = opts.seed ?? 0;
  const precision = opts.precision ?? 'fp32';
  const load1 = Number(loadavg()[0].toFixed(2));
  const python = opts.python ?? process.env.PYTHON ?? 'python3';
  let torchDown: string | undefined = opts.torch === false ? 'not run (--no-torch)' : undefined;
  let peer: BenchValue = null;
  const cases: Array<{ shape: string; lora: number; T: number }> = [];
  for (const shape of shapes) {
    for (const T of seqs) cases.push({ shape, lora: 16, T });
    // bf16 is a frozen base's: full fine-tuning has none
    if (!opts.modes && opts.precision !== 'bf16') cases.push({ shape, lora: 0, T: seqs[0] });
  }
  if (opts.modes) {
    cases.length = 0;
    for (const shape of shapes) for (const lora of opts.modes) for (const T of seqs) cases.push({ shape, lora, T });
  }
  if (precision === 'bf16' && cases.some((c) => c.lora === 0))
    throw new Error('bench: --precision bf16 holds a frozen base in bf16, so it needs LoRA cases only (--lora 16)');
  const rows: Array<Record<string, BenchValue>> = [];
  const env = { ...process.env, OMP_NUM_THREADS: String(threads) };
  for (const c of cases) {
    const spec: LlmCase = { ...c, B, threads, steps, warmup, seed, precision };
    const ours = await runJsonLine<LlmCaseResult>(process.execPath, [join(repoRoot, 'dist/src/bench/train-llm-case.js'), JSON.stringify(spec)], env);
    if (!ours.tokens_per_s) throw new Error(`bench: nodetune ${c.shape} ${c.lora ? `LoRA r${c.lora}` : 'full'} T=${c.T}: ${ours.status}`);
    const config = llmShapeConfig(c.shape);
    const flops = llmTrainingFlops(config, B, c.T, c.lora === 0);
    const row: Record<string, BenchValue> = {
      model: c.shape, mode: c.lora ? `LoRA r${c.lora}` : 'full', B, T: c.T, steps,
      tokens_s: ours.tokens_per_s, gflop_s: (flops * ours.tokens_per_s) / (B * c.T) / 1e9, peak_mib: ours.peak_rss_mib ?? null,
      torch_tokens_s: null, torch_peak_mib: null, vs_torch: null, mem_vs_torch: null, torch_status: torchDown ?? null,
    };
    if (!torchDown) {
      const s = LLM_SHAPES[c.shape];
      const args = [
        '--layers', s.num_hidden_layers, '--hidden', s.hidden_size, '--heads', s.num_attention_heads, '--kv-heads', s.num_key_value_heads,
        '--intermediate', s.intermediate_size, '--vocab', s.vocab_size, '--tied', s.tie_word_embeddings ? 1 : 0, '--lora', c.lora,
        '--batch', B, '--seq', c.T, '--threads', threads, '--steps', steps, '--warmup', warmup, '--seed', seed,
        '--dtype', precision,
      ].map(String);
      const t = await runJsonLine<LlmCaseResult>(python, [join(repoRoot, 'scripts/reference/bench_torch_llama.py'), ...args], env);
      if (t.tokens_per_s) {
        peer = `torch ${t.torch}, transformers ${t.transformers}, peft ${t.peft ?? '-'}`;
        Object.assign(row, {
          torch_tokens_s: t.tokens_per_s, torch_peak_mib: t.peak_rss_mib ?? null,
          vs_torch: ours.tokens_per_s / t.tokens_per_s,
          mem_vs_torch: ours.peak_rss_mib && t.peak_rss_mib ? ours.peak_rss_mib / t.peak_rss_mib : null,
        });
      } else {
        row.torch_status = t.status ?? 'torch failed';
        if (/not (installed|found)/.test(row.torch_status as string)) torchDown = row.torch_status as string;
      }
    }
    rows.push(row);
    opts.onProgress?.(`${c.shape} ${row.mode} B=${B} T=${c.T}: ${ours.tokens_per_s.toFixed(1)} tokens/s, ${ours.peak_rss_mib?.toFixed(0)} MiB` +
      (row.torch_tokens_s ? `; torch ${(row.torch_tokens_s as number).toFixed(1)} tokens/s, ${(row.torch_peak_mib as number).toFixed(0)} MiB (x${(row.vs_torch as number).toFixed(2)})` : `; torch: ${row.torch_status}`));
  }
  return {
    suite: 'train',
    title: `nodetune causal-LM training-step throughput and peak memory (cpu, ${precision === 'bf16' ? 'bf16 frozen base' : 'fp32'}, ${threads} threads, B=${B})`,
    context: {
      device: 'cpu', cpu: (cpus()[0]?.model ?? 'unknown').trim(), threads, batch: B, warmup, steps,
      dtype: precision === 'bf16' ? 'bf16 frozen base (both sides), fp32 adapters and optimizer' : 'fp32',
      node: process.version, peer: peer ?? torchDown ?? null,
      step: 'forward + shifted CE over every token + backward + clip(1.0) + AdamW(1e-4, wd 0.01); LoRA r 16 alpha 32 dropout 0.05 all-linear',
      flops: 'per token (4 frozen | 6 full) x (non-embedding params + lm_head) + 12 L T H (attention) (src/bench/train-llm.ts)',
      load_avg_1min: load1,
    },
    columns: [
      { key: 'model', header: 'model' },
      { key: 'mode', header: 'mode' },
      { key: 'T', header: 'T' },
      { key: 'tokens_s', header: 'tokens/s', digits: 1 },
      { key: 'gflop_s', header: 'GFLOP/s', digits: 1 },
      { key: 'peak_mib', header: 'peak MiB', digits: 0 },
      { key: 'torch_tokens_s', header: 'torch tokens/s', digits: 1, missing: 'torch_status' },
      { key: 'torch_peak_mib', header: 'torch peak MiB', digits: 0, missing: 'torch_status' },
      { key: 'vs_torch', header: 'speed vs torch', digits: 2, missing: 'torch_status' },
      { key: 'mem_vs_torch', header: 'memory vs torch', digits: 2, missing: 'torch_status' },
    ],
    rows,
    notes: [
      ...[loadWarning(load1, threads)].filter((n): n is string => n !== null),
      'each side in its own process; peak = getrusage maxrss of that process (weights, optimizer, activations, runtime)',
    ],
  };
}
