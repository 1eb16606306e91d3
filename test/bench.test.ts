// The benchmark tools: `nodetune bench kernels` on tiny shapes (every kernel
// present, FLOP/byte counts checked against independent formulas, both
// ceilings measured), the roofline post-processing on hand-computed numbers,
// and bench/train.ts (the training half of `npm run bench`) for one step without torch.
// No timing asserts: only that figures exist, are positive and are consistent.
import { test } from 'node:test';
import { bf16Unsupported } from './helpers/bf16.js';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Command } from 'commander';
import { registerBench } from '../src/cli/bench.js';
import { kernelReport, parseGoogleBenchmarkJson, runKernelBench, type GoogleBenchmarkJson } from '../src/bench/kernels.js';
import { formatTable, loadWarning, type BenchReport } from '../src/bench/report.js';
import { releaseBinary, repoRoot } from '../src/bench/paths.js';
import { KERNELS, TINY, checkKernelReport, tinyParameterCount } from './helpers/kernel-suite.js';

const run = promisify(execFile);

async function cli(args: string[]): Promise<string> {
  let out = '';
  const program = new Command('nodetune').exitOverride().configureOutput({ writeErr: () => undefined });
  registerBench(program, { stdout: (t) => (out += t), stderr: () => undefined });
  await program.parseAsync(['node', 'nodetune', 'bench', ...args]);
  return out;
}

// CMake records a deliberate absence of Google Benchmark; anything else missing is a failure.
const benchmarkNotInstalled = () => {
  const cache = join(repoRoot, 'build/CMakeCache.txt');
  return existsSync(cache) && /benchmark_DIR:PATH=benchmark_DIR-NOTFOUND/.test(readFileSync(cache, 'utf8'));
};
const binary = releaseBinary('nodetune_bench_kernels');
const skipKernels = !existsSync(binary) && benchmarkNotInstalled() ? 'Google Benchmark not installed (libbenchmark-dev)' : false;

test('bench kernels --tiny --json: every kernel, positive figures, both ceilings', { skip: skipKernels }, async () => {
  const report = JSON.parse(await cli(['kernels', '--tiny', '--json', '--threads', '1', '--quiet'])) as BenchReport;
  const byName = checkKernelReport(report, KERNELS);
  const { N, C, I, B, T, NH } = TINY;
  assert.equal(report.context.device, 'cpu');
  assert.equal(report.context.precision, 'fp32');
  // Counts against independent formulas.
  assert.equal(byName.get('gemm/ffn_up/fwd')!.flop_per_iter, 2 * N * I * C);
  assert.equal(byName.get('gemm/qkv/dW')!.flop_per_iter, 2 * (3 * C) * C * N);
  assert.equal(byName.get('gemm/ffn_down/dX')!.bytes_per_iter, 4 * (N * C + C * I + N * I));
  // The AdamW arena is the whole model (checkKernelReport compares it with the TS parameter table).
  assert.equal(byName.get('adamw/arena')!.bytes_per_iter, 7 * 4 * tinyParameterCount());
  // The CPU attention saves the (B,NH,T,T) probabilities: qkv + out + probs + mask.
  assert.equal(byName.get('attention/fwd')!.bytes_per_iter, 4 * 4 * N * C + 4 * B * NH * T * T + 4 * N);
  // Calls per training step of the tiny model (2 layers): GEMMs once per layer, LayerNorm 2L+1.
  assert.equal(byName.get('gemm/qkv/fwd')!.calls_per_step, 2);
  assert.equal(byName.get('layernorm/bwd')!.calls_per_step, 5);
  assert.equal(byName.get('adamw/arena')!.calls_per_step, 1);
});

test('bench kernels rejects options of the other device before running anything', async () => {
  await assert.rejects(cli(['kernels', '--device', 'cuda', '--threads', '2', '--binary', '/nonexistent']), /threads: applies to the CPU suite only/);
  await assert.rejects(cli(['kernels', '--precision', 'bf16', '--binary', '/nonexistent']), /precision bf16: the CPU kernels are fp32 only/);
  await assert.rejects(cli(['kernels', '--gpu', '1', '--binary', '/nonexistent']), /gpu: applies to the CUDA suite only/);
});

test('bench kernels --precision fp32 runs the CPU suite (fp32 is its precision; the binary takes no --precision)', { skip: skipKernels }, async () => {
  const report = JSON.parse(await cli(['kernels', '--tiny', '--precision', 'fp32', '--filter', '^gelu/fwd/', '--threads', '1', '--quiet', '--json'])) as BenchReport;
  assert.deepEqual(report.rows.map((r) => r.kernel), ['ceiling/gemm', 'ceiling/copy', 'gelu/fwd']);
  assert.equal(report.context.precision, 'fp32');
});

/**
 * A stand-in suite binary: records its arguments, one a line, in `argsFile`
 * and writes `json` where --benchmark_out points.
 */
function fakeSuite(dir: string, json: GoogleBenchmarkJson): { binary: string; args: () => string[] } {
  const binary = join(dir, 'fake_bench');
  const argsFile = join(dir, 'args.txt');
  writeFileSync(join(dir, 'out.json'), JSON.stringify(json));
  writeFileSync(binary, [
    '#!/bin/sh',
    `printf '%s\n' "$@" > '${argsFile}'`,
    'for a in "$@"; do case "$a" in --benchmark_out=*) out="${a#--benchmark_out=}";; esac; done',
    `cat '${join(dir, 'out.json')}' > "$out"`,
  ].join('\n'));
  chmodSync(binary, 0o755);
  return { binary, args: () => readFileSync(argsFile, 'utf8').trim().split('\n') };
}

/** Median aggregates of the two ceilings and gelu/fwd, as Google Benchmark writes them. */
function suiteJson(context: Record<string, unknown>): GoogleBenchmarkJson {
  const b = (run_name: string, flop: number, bytes: number) => ({
    name: `${run_name}/manual_time_median`, run_name: `${run_name}/manual_time`, run_type: 'aggregate' as const,
    aggregate_name: 'median', real_time: 1, time_unit: 'ms' as const, label: 'x', flop_per_iter: flop, bytes_per_iter: bytes,
  });
  return { context, benchmarks: [b('ceiling/gemm', 1e9, 1e6), b('ceiling/copy', 0, 1e9), b('gelu/fwd', 1e6, 1e8)] };
}

test('bench kernels passes --precision and --gpu to the CUDA suite only, and --threads to the CPU suite only', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nodetune-bench-test-'));
  try {
    // A GPU run on a loaded host: no load warning (the suite barely uses the host cores).
    const cuda = fakeSuite(dir, suiteJson({ nt_device: 'cuda', nt_precision: 'bf16', nt_gpu: 'GPU', load_avg: [99, 1, 1] }));
    const report = JSON.parse(await cli(['kernels', '--device', 'cuda', '--precision', 'bf16', '--gpu', '1', '--binary', cuda.binary, '--json', '--quiet'])) as BenchReport;
    assert.ok(cuda.args().includes('--precision=bf16') && cuda.args().includes('--gpu=1'), cuda.args().join(' '));
    assert.equal(report.context.load_avg_1min, 99);
    assert.ok(!report.notes.some((n) => n.includes('load average')), report.notes.join('\n'));
    const cpu = fakeSuite(dir, suiteJson({ nt_device: 'cpu', nt_threads: '2', load_avg: [0, 0, 0] }));
    await cli(['kernels', '--precision', 'fp32', '--threads', '2', '--binary', cpu.binary, '--json', '--quiet']);
    assert.ok(cpu.args().includes('--threads=2'), cpu.args().join(' '));
    assert.ok(!cpu.args().some((a) => a.startsWith('--precision') || a.startsWith('--gpu')), cpu.args().join(' '));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bench kernels --filter: an invalid regular expression is named before anything runs', async () => {
  await assert.rejects(cli(['kernels', '--filter', '[', '--binary', '/nonexistent']), (err: Error) => {
    assert.match(err.message, /^--filter '\[': invalid regular expression: \S/);
    return true;
  });
  await assert.rejects(runKernelBench({ filter: 'a)', binary: '/nonexistent' }), /^Error: --filter 'a\)': invalid regular expression/);
});

test('bench kernels --filter: what only std::regex rejects shows the binary\'s stderr', { skip: skipKernels }, async () => {
  // Lookbehind is valid in JS, not in std::regex's ECMAScript grammar: the binary exits 0 with no JSON.
  await assert.rejects(cli(['kernels', '--tiny', '--filter', '(?<=a)b', '--quiet']), (err: Error) => {
    assert.match(err.message, /Google Benchmark output is not JSON \(it is empty\); its stderr ends: .*Could not compile benchmark re/);
    return true;
  });
});

test('parseGoogleBenchmarkJson: empty or broken output names the source and ends with the stderr tail', () => {
  assert.throws(() => parseGoogleBenchmarkJson('', 'bin/x', 'line 1\nbad filter'), (err: Error) => {
    assert.equal(err.message, 'bin/x: Google Benchmark output is not JSON (it is empty); its stderr ends: line 1 | bad filter');
    return true;
  });
  assert.throws(() => parseGoogleBenchmarkJson('{"context":', 'bin/x'), /^Error: bin\/x: Google Benchmark output is not JSON \([^)]+\)$/);
  assert.deepEqual(parseGoogleBenchmarkJson('{"context": {"cv": nan, "x": -inf}, "benchmarks": []}', 'bin/x').context, { cv: null, x: null });
});

test('bench kernels --filter that matches nothing fails; one naming a ceiling does not', { skip: skipKernels }, async () => {
  await assert.rejects(cli(['kernels', '--tiny', '--filter', 'nomatch', '--threads', '1', '--quiet']), /^Error: no benchmark matches --filter 'nomatch' \(/);
  const report = JSON.parse(await cli(['kernels', '--tiny', '--filter', 'ceiling/gemm', '--threads', '1', '--quiet', '--json'])) as BenchReport;
  assert.deepEqual(report.rows.map((r) => r.kernel), ['ceiling/gemm', 'ceiling/copy']);
});

test('bench kernels --min-time must be a number of seconds > 0', async () => {
  for (const v of ['-1', '0', 'abc', 'Infinity']) {
    await assert.rejects(cli(['kernels', '--min-time', v, '--binary', '/nonexistent']), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'commander.invalidArgument', err.message);
      assert.match(err.message, new RegExp(`--min-time <s>' argument '${v}' is invalid`));
      return true;
    });
  }
  await assert.rejects(runKernelBench({ minTime: 0, binary: '/nonexistent' }), /^Error: --min-time 0: expected a number of seconds > 0$/);
});

test('every bench entry point prints --help and exits 0 without running', async () => {
  // A run would take minutes (the default inference benchmark); the timeout turns that into a failure.
  const help = (script: string) => run(process.execPath, [join(repoRoot, 'dist/bench', script), '--help'], { timeout: 60_000 });
  const [index, train, kernels, inference] = await Promise.all(['index.js', 'train.js', 'kernels.js', 'inference.js'].map(help));
  assert.match(train.stdout, /^Usage: bench\/train \[options\]/m);
  assert.match(kernels.stdout, /^Usage: nodetune bench kernels \[options\]/m);
  assert.match(inference.stdout, /^Usage: bench:inference \[options\]/m);
  assert.match(index.stdout, /^npm run bench/);
  assert.ok(index.stdout.includes(train.stdout) && index.stdout.includes(inference.stdout), index.stdout);
  // What a run prints (a result line or a table header) is absent.
  for (const r of [index, train, kernels, inference]) assert.doesNotMatch(r.stdout, /samples\/s \(|native \/ onnxruntime \||^kernel +shape/m);
});

test('bench kernels names the missing binary and how to build it', async () => {
  await assert.rejects(cli(['kernels', '--tiny', '--binary', '/nonexistent/nodetune_bench_kernels']), (err: Error) => {
    assert.match(err.message, /\/nonexistent\/nodetune_bench_kernels/);
    assert.match(err.message, /libbenchmark-dev/);
    return true;
  });
});

test('kernelReport: roofline fractions from the measured ceilings', () => {
  const b = (run_name: string, ms: number, flop: number, bytes: number, extra = {}) => ({
    name: `${run_name}/real_time_median`, run_name: `${run_name}/real_time`, run_type: 'aggregate' as const,
    aggregate_name: 'median', real_time: ms, time_unit: 'ms' as const, label: 'x', flop_per_iter: flop, bytes_per_iter: bytes, ...extra,
  });
  const json: GoogleBenchmarkJson = {
    context: { nt_device: 'cpu', nt_model: 'tiny', nt_B: '2', nt_T: '16', nt_threads: '1' },
    benchmarks: [
      b('ceiling/gemm', 20, 2e9, 1e6), // median 100 GFLOP/s, but the ceiling is the fastest repetition:
      b('ceiling/gemm', 10, 2e9, 1e6, { aggregate_name: 'min' }), // 200 GFLOP/s
      b('ceiling/copy', 10, 0, 2e8), // 20 GB/s
      b('gemm/a', 10, 1e9, 1e6), // compute roof 5 ms: 50%
      b('gelu/fwd', 4, 1e6, 4e7), // memory roof 2 ms: 50%
      // Only iteration runs (--benchmark_repetitions=1 style): their median is used.
      { ...b('layernorm/fwd', 8, 0, 4e7), run_type: 'iteration' as const, aggregate_name: undefined },
      { ...b('layernorm/fwd', 1, 0, 4e7), run_type: 'iteration' as const, aggregate_name: undefined },
      { ...b('layernorm/fwd', 2, 0, 4e7), run_type: 'iteration' as const, aggregate_name: undefined },
    ],
  };
  const r = kernelReport(json);
  const row = (k: string) => r.rows.find((x) => x.kernel === k)!;
  assert.equal(r.context.gemm_ceiling_gflop_s, 200);
  assert.equal(r.context.copy_ceiling_gb_s, 20);
  assert.equal(row('gemm/a').bound, 'compute');
  assert.ok(Math.abs((row('gemm/a').roof_fraction as number) - 0.5) < 1e-12);
  assert.equal(row('gelu/fwd').bound, 'memory');
  assert.ok(Math.abs((row('gelu/fwd').roof_fraction as number) - 0.5) < 1e-12);
  assert.ok(Math.abs((row('gelu/fwd').gb_s as number) - 10) < 1e-9);
  assert.ok(Math.abs((row('layernorm/fwd').time_ms as number) - 2) < 1e-12);
  assert.ok(r.notes.includes('furthest from the roof: gemm/a 50.0%, gelu/fwd 50.0%, layernorm/fwd 100.0%'), r.notes.join('\n'));
  assert.throws(() => kernelReport({ ...json, benchmarks: json.benchmarks.filter((x) => !x.run_name.startsWith('ceiling/gemm')) }), /no ceiling\/gemm/);
  // The CUDA suite times with events (UseManualTime): run names end in /manual_time.
  const manual = kernelReport({
    context: { ...json.context, nt_device: 'cuda', nt_precision: 'bf16', nt_gpu: 'NVIDIA H200 (sm_90, 132 SMs)' },
    benchmarks: json.benchmarks.map((x) => ({ ...x, run_name: x.run_name.replace('/real_time', '/manual_time') })),
  });
  assert.deepEqual(manual.rows.map((x) => x.kernel), r.rows.map((x) => x.kernel));
  assert.equal(manual.context.gemm_ceiling_gflop_s, 200);
  assert.match(manual.title, /cuda bf16, tiny B=2 T=16, NVIDIA H200/);
  // Only the ceilings (a filter that matched nothing): no note naming kernels, none left dangling.
  const ceilings = kernelReport({ ...json, benchmarks: json.benchmarks.filter((x) => x.run_name.startsWith('ceiling/')) });
  assert.equal(ceilings.rows.length, 2);
  assert.ok(!ceilings.notes.some((n) => /furthest|add up to|:\s*$/.test(n)), ceilings.notes.join('\n'));
});

test('load warning: a 1-minute load average at or above the thread count, CPU reports only', () => {
  const warning = 'warning: load average 2.3 >= 2 threads at the start: other processes share the cores; figures are unreliable, compare ratios across runs';
  assert.equal(loadWarning(2.3, 2), warning);
  assert.equal(loadWarning(2, 2), warning.replace('2.3', '2.0'));
  assert.equal(loadWarning(1.99, 2), null);
  assert.equal(loadWarning(null, 2), null);
  assert.equal(loadWarning(5, null), null);
  const json = (context: Record<string, unknown>): GoogleBenchmarkJson => suiteJson({ nt_device: 'cpu', nt_threads: '2', ...context });
  assert.equal(kernelReport(json({ load_avg: [2.3, 1, 1] })).notes[0], warning);
  assert.ok(!kernelReport(json({ load_avg: [1.2, 3, 3] })).notes.some((n) => n.startsWith('warning')));
  assert.ok(!kernelReport(json({ nt_device: 'cuda', load_avg: [2.3, 1, 1] })).notes.some((n) => n.startsWith('warning')));
});

test('formatTable: aligned columns, percentages, and the reason for an empty cell', () => {
  const text = formatTable({
    suite: 'train', title: 't', context: { threads: 2 }, notes: ['n'],
    columns: [{ key: 'm', header: 'model' }, { key: 'f', header: 'frac', percent: true }, { key: 'x', header: 'torch', digits: 1, missing: 'why' }],
    rows: [{ m: 'a', f: 0.5, x: 12.345, why: null }, { m: 'bb', f: 1, x: null, why: 'torch not installed' }],
  });
  const lines = text.split('\n');
  assert.ok(lines.includes('model    frac                torch'), text);
  assert.ok(lines.includes('a       50.0%                 12.3'), text);
  assert.ok(lines.includes('bb     100.0%  torch not installed'), text);
});

test('bench/train.ts (the first half of npm run bench): one step of bert-tiny without torch, JSON fields', async () => {
  const { stdout } = await run(process.execPath, [
    join(repoRoot, 'dist/bench/train.js'), '--shapes', 'bert-tiny', '--seq', '16', '--batch', '4', '--steps', '1', '--threads', '1', '--no-torch', '--json',
  ]);
  const report = JSON.parse(stdout) as BenchReport;
  assert.equal(report.suite, 'train');
  assert.equal(report.rows.length, 1);
  const r = report.rows[0];
  assert.equal(r.model, 'bert-tiny');
  assert.equal(r.B, 4);
  assert.equal(r.T, 16);
  assert.equal(r.steps, 1);
  for (const f of ['step_ms', 'samples_s', 'tokens_s', 'gflop_s']) assert.ok((r[f] as number) > 0, `${f} = ${r[f]}`);
  assert.ok(Math.abs((r.tokens_s as number) - 16 * (r.samples_s as number)) < 1e-6 * (r.tokens_s as number));
  // 6 * P_tok * B * T + 6 * P_seq * B + 12 * L * B * T^2 * C for bert-tiny (C=128, I=512, L=2, 77 labels):
  // P_tok = 2 layers * (4C^2 + 4C + 2CI + I + C + 4C) + 2C (embedding LayerNorm), P_seq = C^2 + C + 77C + 77.
  const C = 128, I = 512;
  const pTok = 2 * (4 * C * C + 4 * C + 2 * C * I + I + C + 4 * C) + 2 * C;
  const pSeq = C * C + C + 77 * C + 77;
  assert.equal(r.train_flops, 6 * pTok * 4 * 16 + 6 * pSeq * 4 + 12 * 2 * 4 * 16 * 16 * C);
  assert.ok(Math.abs((r.gflop_s as number) - (r.train_flops as number) / (r.step_ms as number) / 1e6) < 1e-9);
  assert.equal(r.vs_torch, null);
  assert.equal(r.torch_status, 'not run (--no-torch)');
  // The load average at the start is recorded, and warned about at >= 1 (the thread count).
  const load = report.context.load_avg_1min as number;
  assert.ok(Number.isFinite(load) && load >= 0, `load_avg_1min = ${load}`);
  assert.deepEqual(report.notes.filter((n) => n.startsWith('warning: load average')), load >= 1 ? [loadWarning(load, 1)] : []);
});

test('bench train on a decoder shape: nodetune LoRA and full steps in child processes, tokens/s, GFLOP/s and peak memory', async () => {
  const { stdout } = await run(process.execPath, [
    join(repoRoot, 'dist/src/cli/main.js'), 'bench', 'train', '--shapes', 'smollm2-135m', '--seq', '8', '--batch', '1', '--steps', '1', '--warmup', '0',
    '--threads', '1', '--lora', '4,0', '--no-torch', '--json',
  ]);
  const report = JSON.parse(stdout) as BenchReport;
  assert.deepEqual(report.rows.map((r) => [r.model, r.mode, r.T]), [['smollm2-135m', 'LoRA r4', 8], ['smollm2-135m', 'full', 8]]);
  for (const r of report.rows) {
    for (const f of ['tokens_s', 'gflop_s', 'peak_mib']) assert.ok((r[f] as number) > 0, `${f} = ${r[f]}`);
    assert.equal(r.torch_status, 'not run (--no-torch)');
  }
  // Full fine-tuning holds gradients and two AdamW moments for all 135M parameters: far more memory.
  assert.ok((report.rows[1].peak_mib as number) > (report.rows[0].peak_mib as number) + 1000);
  await assert.rejects(run(process.execPath, [join(repoRoot, 'dist/src/cli/main.js'), 'bench', 'train', '--shapes', 'smollm2-135m,bert-tiny', '--no-torch']), /run encoder and decoder shapes separately/);
});

test('bench train --precision bf16: LoRA cases on a bf16 base (where the CPU has bf16 GEMMs), refused for full fine-tuning and encoders', async () => {
  const cli = join(repoRoot, 'dist/src/cli/main.js');
  await assert.rejects(run(process.execPath, [cli, 'bench', 'train', '--shapes', 'smollm2-135m', '--precision', 'bf16', '--lora', '0', '--no-torch']), /needs LoRA cases only/);
  await assert.rejects(run(process.execPath, [cli, 'bench', 'train', '--shapes', 'bert-tiny', '--precision', 'bf16', '--no-torch']), /--precision applies to decoder shapes only/);
  const unsupported = bf16Unsupported();
  const args = [cli, 'bench', 'train', '--shapes', 'smollm2-135m', '--seq', '8', '--batch', '1', '--steps', '1', '--warmup', '0', '--threads', '1', '--lora', '4', '--precision', 'bf16', '--no-torch', '--json'];
  if (unsupported) {
    await assert.rejects(run(process.execPath, args), (e: Error) => e.message.includes(unsupported!));
    return;
  }
  const report = JSON.parse((await run(process.execPath, args)).stdout) as BenchReport;
  assert.match(String(report.context.dtype), /^bf16 frozen base/);
  assert.ok((report.rows[0].tokens_s as number) > 0);
});
