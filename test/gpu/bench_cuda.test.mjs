// The CUDA kernel benchmarks (bench/kernels_cuda.cpp) at --tiny through
// runKernelBench (what `nodetune bench kernels --device cuda` runs): the CPU suite's kernels plus the
// fused residual LayerNorm, bf16 byte counts, flash-attention counts, both
// GPU ceilings, and the report's context. Figures are not judged (no timing
// asserts), so it runs both on a GPU (test/gpu/run.sh, the real binary) and
// on the CPU emulator (test/gpu/emulate.sh --bench, which CI runs).
//
// Plain ESM outside dist/test (`npm test` has no CUDA binary to run). Needs
// the compiled TypeScript (dist/) and the binary:
//   NODETUNE_BENCH_CUDA=build/Release/nodetune_bench_cuda node --test test/gpu/bench_cuda.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
// Only dist/ modules without npm dependencies: a GPU machine gets dist/ but not node_modules.
const { runKernelBench } = await import(join(root, 'dist/src/bench/kernels.js'));
const { KERNELS, TINY, checkKernelReport, tinyParameterCount } = await import(join(root, 'dist/test/helpers/kernel-suite.js'));

const binary = process.env.NODETUNE_BENCH_CUDA;
const benchKernels = (options = {}) => runKernelBench({ device: 'cuda', binary, tiny: true, ...options });

test('NODETUNE_BENCH_CUDA names a nodetune_bench_cuda binary', () => {
  assert.ok(binary && existsSync(binary), `NODETUNE_BENCH_CUDA=${binary}: expected the path of a nodetune_bench_cuda binary`);
});

test('bf16: every kernel of the CPU suite and the fused residual LayerNorm; bf16 and flash-attention counts', async () => {
  const report = await benchKernels();
  const byName = checkKernelReport(report, [...KERNELS, 'layernorm/residual_fwd']);
  assert.equal(report.context.device, 'cuda');
  assert.equal(report.context.precision, 'bf16');
  assert.match(report.title, /cuda bf16, tiny B=2 T=16/);
  assert.match(String(report.context.gemm_ceiling_shape), /^bf16 cuBLASLt M=256 N=256 K=256$/);
  const { N, C, I, B, T, NH } = TINY;
  const bytes = (k) => byName.get(k).bytes_per_iter;
  // bf16 operands (2 bytes); the weight gradient accumulates in fp32 (read + written).
  assert.equal(bytes('gemm/ffn_down/dX'), 2 * (N * C + C * I + N * I));
  assert.equal(bytes('gemm/qkv/dW'), 2 * (N * 3 * C + N * C) + 4 * 2 * 3 * C * C);
  // Flash attention saves the (B,NH,T) logsumexp, not the probabilities, and
  // its backward recomputes Q K^T: 10 T^2 HS per head instead of 8.
  const BH = B * NH, TT = T * T, HS = C / NH;
  assert.equal(bytes('attention/fwd'), 2 * 4 * N * C + 4 * BH * T + 4 * N);
  assert.equal(byName.get('attention/bwd').flop_per_iter, BH * (10 * TT * HS + 5 * TT));
  // Mixed-precision AdamW: fp32 weights, gradients, moments and the bf16 copy.
  assert.equal(bytes('adamw/arena'), 30 * tinyParameterCount());
  // The engine runs the residual form twice per layer and the plain one once.
  assert.equal(byName.get('layernorm/residual_fwd').calls_per_step, 2 * TINY.layers);
  assert.equal(byName.get('layernorm/fwd').calls_per_step, 1);
});

test('fp32: the same kernels with 4-byte operands; the GEMM ceiling in fp32', async () => {
  const report = await benchKernels({ precision: 'fp32' });
  const byName = checkKernelReport(report, [...KERNELS, 'layernorm/residual_fwd']);
  assert.equal(report.context.precision, 'fp32');
  assert.match(String(report.context.gemm_ceiling_shape), /^fp32 cuBLASLt/);
  const { N, C, I } = TINY;
  assert.equal(byName.get('gemm/ffn_down/dX').bytes_per_iter, 4 * (N * C + C * I + N * I));
  assert.equal(byName.get('adamw/arena').bytes_per_iter, 28 * tinyParameterCount());
});

test('bad options are errors naming the flag', async () => {
  await assert.rejects(benchKernels({ gpu: 4096 }), /--gpu=4096: expected a CUDA device index/);
  await assert.rejects(benchKernels({ threads: 2 }), /threads: applies to the CPU suite only/);
});
