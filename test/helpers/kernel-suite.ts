// What both kernel benchmark suites (bench/kernels.cpp on the CPU,
// bench/kernels_cuda.cpp on CUDA) must report, shared by test/bench.test.ts
// and test/gpu/bench_cuda.test.mjs: every kernel with positive figures, both
// ceilings, and the tiny shape's sizes for counting FLOPs and bytes by hand.
import assert from 'node:assert/strict';
import type { BenchReport, BenchValue } from '../../src/bench/report.js';
import { BERT_DEFAULTS, parameterShapes } from '../../src/config.js';

/** The kernels of bench/kernels.cpp; the CUDA suite adds layernorm/residual_fwd. */
export const KERNELS = [
  ...['qkv', 'attn_out', 'ffn_up', 'ffn_down'].flatMap((g) => ['fwd', 'dX', 'dW'].map((p) => `gemm/${g}/${p}`)),
  'layernorm/fwd', 'layernorm/bwd', 'gelu/fwd', 'gelu/bwd', 'attention/fwd', 'attention/bwd',
  'crossentropy/fwd_bwd', 'adamw/arena', 'embedding/fwd', 'embedding/bwd',
];

/** The --tiny shape: B=2 T=16 C=64 NH=2 I=128, 2 layers, 7 labels, vocab 1000, 64 positions. */
export const TINY = { B: 2, T: 16, N: 32, C: 64, NH: 2, I: 128, layers: 2 } as const;

/** Parameters of the tiny model, from the TypeScript parameter table (the AdamW arena). */
export function tinyParameterCount(): number {
  return parameterShapes({
    ...BERT_DEFAULTS, vocab_size: 1000, hidden_size: TINY.C, num_hidden_layers: TINY.layers, num_attention_heads: TINY.NH,
    intermediate_size: TINY.I, max_position_embeddings: 64, type_vocab_size: 2, num_labels: 7,
  }).reduce((s, [, shape]) => s + shape.reduce((a, b) => a * b, 1), 0);
}

/**
 * Asserts a kernel report has every kernel in `kernels` and both ceilings, each
 * with positive finite time, GB/s, roof fraction and bytes (GFLOP/s too, except
 * the copy), a compute-bound GEMM ceiling and a memory-bound copy ceiling, and
 * the three kernels furthest from the roof named. Returns the rows by kernel.
 */
export function checkKernelReport(report: BenchReport, kernels: readonly string[]): Map<string, Record<string, BenchValue>> {
  assert.equal(report.suite, 'kernels');
  const byName = new Map(report.rows.map((r) => [r.kernel as string, r]));
  for (const k of [...kernels, 'ceiling/gemm', 'ceiling/copy']) {
    const r = byName.get(k);
    assert.ok(r, `kernel ${k} missing from the report`);
    for (const f of ['time_ms', 'gb_s', 'roof_fraction', 'bytes_per_iter']) {
      assert.ok(typeof r[f] === 'number' && r[f] > 0 && Number.isFinite(r[f]), `${k}.${f} = ${r[f]}`);
    }
    if (k !== 'ceiling/copy') assert.ok((r.gflop_s as number) > 0, `${k}.gflop_s = ${r.gflop_s}`);
    assert.match(String(r.bound), /^(compute|memory)$/);
  }
  const c = report.context;
  assert.ok((c.gemm_ceiling_gflop_s as number) > 0 && (c.copy_ceiling_gb_s as number) > 0);
  assert.equal(byName.get('ceiling/gemm')!.bound, 'compute');
  assert.equal(byName.get('ceiling/copy')!.bound, 'memory');
  assert.equal(byName.get('ceiling/gemm')!.calls_per_step, null);
  assert.equal(c.parameters, tinyParameterCount());
  assert.match(report.notes.join('\n'), /furthest from the roof: \S+ [\d.]+%, \S+ [\d.]+%, \S+ [\d.]+%/);
  return byName;
}
