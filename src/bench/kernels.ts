/**
 * `nodetune bench kernels`: runs the Google Benchmark suite bench/kernels.cpp
 * (built by CMake as build/Release/nodetune_bench_kernels; on CUDA
 * bench/kernels_cuda.cpp, nodetune_bench_cuda) and turns its JSON
 * into a {@link BenchReport}: per kernel the median time, GFLOP/s, GB/s and the
 * fraction of the machine's own roof measured in the same run.
 *
 * Roofline (Williams, Waterman & Patterson 2009): a kernel doing F FLOPs and
 * moving at least M bytes cannot take less than max(F / P, M / BW) seconds,
 * P = the GEMM ceiling (GFLOP/s), BW = the copy ceiling (GB/s). Its fraction
 * of the roof is that bound over the measured time; `bound` says which term
 * is larger. The copy ceiling is DRAM bandwidth at 1:1 read:write, so a
 * memory-bound kernel whose working set stays in cache, or that mostly
 * reads (AdamW: 4 reads per 3 writes), can exceed 100%.
 *
 * Both suites keep the contract written at the top of bench/suite.h (counters
 * flop_per_iter, bytes_per_iter and calls_per_step, ceilings named
 * ceiling/gemm and ceiling/copy, nt_* context). `device: 'cuda'` runs
 * build/Release/nodetune_bench_cuda (bench/kernels_cuda.cpp, built with the
 * CUDA kernels and Google Benchmark), timed with CUDA events, whose ceilings
 * are a cuBLASLt GEMM in the suite's precision and a device-to-device copy.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { releaseBinary } from './paths.js';
import { loadWarning, type BenchReport, type BenchValue } from './report.js';

export const KERNEL_MODELS = ['minilm-l6', 'bert-tiny', 'bert-base'] as const;
export type KernelModel = (typeof KERNEL_MODELS)[number];

export interface KernelBenchOptions {
  /** Tiny shapes and short runs (tests): B=2 T=16 C=64, ceilings 256^3 GEMM and 8 MiB copy. */
  tiny?: boolean;
  /** Model whose layer shapes are measured (default minilm-l6). Ignored with tiny. */
  model?: KernelModel;
  /** Batch size B (default 32) and sequence length T (default 128). */
  batch?: number;
  seq?: number;
  /** CPU suite: OpenMP/OpenBLAS threads (default: OpenMP's default, all cores). */
  threads?: number;
  /** Activation/weight precision: CUDA bf16 (default) or fp32; the CPU suite is fp32 only and accepts 'fp32'. */
  precision?: 'bf16' | 'fp32';
  /** CUDA suite: device index (default 0). */
  gpu?: number;
  /** Repetitions the median is taken over (default 5; tiny 3). */
  repetitions?: number;
  /** Minimum seconds per repetition (default 0.2 on the CPU, 0.1 on CUDA; tiny 0.01). */
  minTime?: number;
  /** Regular expression (std::regex ECMAScript) selecting benchmarks; the two ceilings always run. */
  filter?: string;
  device?: 'cpu' | 'cuda';
  /** Path of the benchmark binary (default build/Release/nodetune_bench_{kernels,cuda}). */
  binary?: string;
  /** Receives Google Benchmark's console output while it runs (progress). */
  onProgress?: (text: string) => void;
}

/** The parts of Google Benchmark's JSON output (--benchmark_out_format=json) used here. */
export interface GoogleBenchmarkJson {
  context: Record<string, unknown>;
  benchmarks: Array<{
    name: string;
    run_name: string;
    run_type: 'iteration' | 'aggregate';
    aggregate_name?: string;
    real_time: number;
    time_unit: 'ns' | 'us' | 'ms' | 's';
    label?: string;
    flop_per_iter?: number;
    bytes_per_iter?: number;
    calls_per_step?: number;
    error_occurred?: boolean;
    error_message?: string;
  }>;
}

const UNIT_S = { ns: 1e-9, us: 1e-6, ms: 1e-3, s: 1 } as const;

function missingBinaryMessage(path: string, device: 'cpu' | 'cuda'): string {
  if (device === 'cuda') {
    return `CUDA kernel benchmarks not found at ${path}: they are built with the CUDA kernels (native/cuda) on a machine with the CUDA toolkit; run \`nodetune bench kernels\` without --device cuda for the CPU suite`;
  }
  return `kernel benchmark binary not found at ${path}: CMake builds it when Google Benchmark is installed (Debian/Ubuntu: apt-get install libbenchmark-dev; macOS: brew install google-benchmark), then rebuild with \`npm run build:native\``;
}

/** The last lines of a tool's stderr, on one line (where Google Benchmark and the suite say what went wrong). */
const stderrTail = (stderr: string) => stderr.trim().split('\n').slice(-5).join(' | ');

/** Command-line arguments of the suite binary; --precision and --gpu exist only in the CUDA one. */
function binaryArgs(o: KernelBenchOptions, device: 'cpu' | 'cuda', outFile: string): string[] {
  const args = [`--benchmark_out=${outFile}`, '--benchmark_out_format=json'];
  if (o.tiny) args.push('--tiny');
  if (o.model) args.push(`--model=${o.model}`);
  if (o.batch !== undefined) args.push(`--batch=${o.batch}`);
  if (o.seq !== undefined) args.push(`--seq=${o.seq}`);
  if (o.threads !== undefined) args.push(`--threads=${o.threads}`);
  if (device === 'cuda' && o.precision !== undefined) args.push(`--precision=${o.precision}`);
  if (device === 'cuda' && o.gpu !== undefined) args.push(`--gpu=${o.gpu}`);
  if (o.repetitions !== undefined) args.push(`--benchmark_repetitions=${o.repetitions}`);
  if (o.minTime !== undefined) args.push(`--benchmark_min_time=${o.minTime}`);
  if (o.filter) args.push(`--benchmark_filter=^ceiling/|${o.filter}`);
  return args;
}

/** Runs the suite; resolves with its stderr (Google Benchmark reports a bad filter there and still exits 0). */
function runBinary(path: string, args: string[], onProgress?: (t: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => onProgress?.(d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      onProgress?.(d.toString());
    });
    child.on('error', (err) => reject(new Error(`cannot run ${path}: ${err.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) resolve(stderr);
      else reject(new Error(`${path} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderrTail(stderr)}`));
    });
  });
}

/**
 * The filter as a JS RegExp. Google Benchmark compiles it with std::regex
 * (ECMAScript grammar), which rejects what JS rejects and a little more (e.g.
 * lookbehind); those show in the binary's stderr.
 */
function filterRegExp(filter: string): RegExp {
  try {
    return new RegExp(filter);
  } catch (err) {
    const why = (err as Error).message.replace(/^Invalid regular expression: \/.*\/[a-z]*: /s, '');
    throw new Error(`--filter '${filter}': invalid regular expression: ${why}`);
  }
}

/** Options the binary would reject less clearly (or not at all), checked before it runs. */
function checkOptions(o: KernelBenchOptions, device: 'cpu' | 'cuda'): void {
  if (o.minTime !== undefined && !(Number.isFinite(o.minTime) && o.minTime > 0)) {
    throw new Error(`--min-time ${o.minTime}: expected a number of seconds > 0`);
  }
  if (o.filter) filterRegExp(o.filter);
  if (device === 'cuda' && o.threads !== undefined) throw new Error('threads: applies to the CPU suite only (the CUDA suite runs on one GPU)');
  if (device === 'cpu' && o.gpu !== undefined) throw new Error('gpu: applies to the CUDA suite only (use device: \'cuda\')');
  if (device === 'cpu' && o.precision !== undefined && o.precision !== 'fp32') {
    throw new Error(`precision ${o.precision}: the CPU kernels are fp32 only (bf16 is a CUDA precision)`);
  }
}

/**
 * --filter selected nothing when only the ceilings (which always run) came
 * back, unless the filter itself names a ceiling.
 */
function checkFilterMatched(report: BenchReport, filter: string, binary: string): void {
  const re = filterRegExp(filter);
  const names = report.rows.map((r) => String(r.kernel));
  if (names.some((n) => !n.startsWith('ceiling/') || re.test(n))) return;
  throw new Error(`no benchmark matches --filter '${filter}' (\`${binary} --benchmark_list_tests\` lists the names)`);
}

/**
 * Runs the kernel suite and post-processes its JSON.
 * @throws Error naming the option for a bad --min-time or --filter, an option of the
 *   other device, or a filter that matches no benchmark; naming the binary when it
 *   is missing (and how to build it), fails, or writes no JSON (with its stderr's tail).
 */
export async function runKernelBench(opts: KernelBenchOptions = {}): Promise<BenchReport> {
  const device = opts.device ?? 'cpu';
  checkOptions(opts, device);
  const binary = opts.binary ?? releaseBinary(device === 'cuda' ? 'nodetune_bench_cuda' : 'nodetune_bench_kernels');
  if (!existsSync(binary)) throw new Error(missingBinaryMessage(binary, device));
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-bench-'));
  try {
    const out = join(dir, 'kernels.json');
    const stderr = await runBinary(binary, binaryArgs(opts, device, out), opts.onProgress);
    const text = await readFile(out, 'utf8').catch(() => '');
    const report = kernelReport(parseGoogleBenchmarkJson(text, binary, stderr));
    if (opts.filter) checkFilterMatched(report, opts.filter, binary);
    return report;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Parses Google Benchmark's JSON, which writes NaN and inf bare (e.g. the
 * coefficient of variation of a counter that is 0 in every repetition); those
 * become null. @throws Error naming the source when the text is empty or not
 * JSON, ending with the tail of `stderr` (the binary's) when given.
 */
export function parseGoogleBenchmarkJson(text: string, source: string, stderr = ''): GoogleBenchmarkJson {
  const clean = text.replace(/:\s*-?(nan|NaN|inf|Infinity)\b/g, ': null');
  try {
    return JSON.parse(clean) as GoogleBenchmarkJson;
  } catch (err) {
    const why = text.trim() === '' ? 'it is empty' : (err as Error).message;
    const tail = stderr.trim() ? `; its stderr ends: ${stderrTail(stderr)}` : '';
    throw new Error(`${source}: Google Benchmark output is not JSON (${why})${tail}`);
  }
}

interface Measured {
  name: string;
  shape: string;
  seconds: number;
  flop: number;
  bytes: number;
  calls: number | null;
}

/**
 * Real time per benchmark: the "median" aggregate (the "min" one for the
 * ceilings), else the median (fastest) of the iteration runs.
 */
function medians(json: GoogleBenchmarkJson): Measured[] {
  const runs = new Map<string, { aggs: Record<string, number>; iters: number[]; label: string; flop: number; bytes: number; calls: number | null }>();
  for (const b of json.benchmarks) {
    const name = b.run_name.replace(/\/(real_time|manual_time|repeats:\d+)/g, '');
    if (b.error_occurred) throw new Error(`kernel benchmark ${name} failed: ${b.error_message ?? 'unknown error'}`);
    if (b.flop_per_iter === undefined || b.bytes_per_iter === undefined) {
      throw new Error(`kernel benchmark ${name}: counters flop_per_iter and bytes_per_iter are missing (see the contract in bench/suite.h)`);
    }
    const r = runs.get(name) ?? { aggs: {}, iters: [], label: b.label ?? '', flop: b.flop_per_iter, bytes: b.bytes_per_iter, calls: b.calls_per_step || null };
    const seconds = b.real_time * UNIT_S[b.time_unit];
    if (b.run_type === 'aggregate' && b.aggregate_name) r.aggs[b.aggregate_name] = seconds;
    if (b.run_type === 'iteration') r.iters.push(seconds);
    runs.set(name, r);
  }
  return [...runs].map(([name, r]) => {
    // Ceilings: the fastest repetition (what the machine can do); kernels: the median.
    const ceiling = name.startsWith('ceiling/');
    const sorted = [...r.iters].sort((a, b) => a - b);
    const fromIters = ceiling ? sorted[0] : sorted[(sorted.length - 1) >> 1];
    const seconds = (ceiling ? r.aggs.min : undefined) ?? r.aggs.median ?? fromIters;
    if (seconds === undefined) throw new Error(`kernel benchmark ${name}: no median aggregate and no iteration runs`);
    return { name, shape: r.label, seconds, flop: r.flop, bytes: r.bytes, calls: r.calls };
  });
}

/** The context without the keys the other device's suite fills (threads and blas on a GPU, cuda on a CPU). */
const dropNulls = (o: Record<string, BenchValue>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null));

const ctx = (json: GoogleBenchmarkJson, key: string): BenchValue => {
  const v = json.context[key];
  if (v === undefined || v === null) return null;
  return typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : (v as BenchValue);
};

/**
 * Post-processes Google Benchmark JSON from bench/kernels.cpp or bench/kernels_cuda.cpp
 * (the contract in bench/suite.h) into a report. Pure: no I/O.
 * @throws Error when a ceiling (ceiling/gemm, ceiling/copy) or a counter is missing.
 */
export function kernelReport(json: GoogleBenchmarkJson): BenchReport {
  const all = medians(json);
  const find = (n: string) => {
    const m = all.find((x) => x.name === n);
    if (!m) throw new Error(`kernel benchmark output has no ${n}: the ceilings must run in the same suite`);
    return m;
  };
  const gemm = find('ceiling/gemm');
  const copy = find('ceiling/copy');
  const peakFlops = gemm.flop / gemm.seconds;
  const peakBytes = copy.bytes / copy.seconds;
  const rows = all.map((m) => {
    const tFlop = m.flop / peakFlops;
    const tBytes = m.bytes / peakBytes;
    return {
      kernel: m.name,
      shape: m.shape,
      time_ms: m.seconds * 1e3,
      gflop_s: m.flop / m.seconds / 1e9,
      gb_s: m.bytes / m.seconds / 1e9,
      bound: tFlop >= tBytes ? 'compute' : 'memory',
      roof_fraction: Math.max(tFlop, tBytes) / m.seconds,
      calls_per_step: m.calls,
      ms_per_step: m.calls === null ? null : m.seconds * 1e3 * m.calls,
      flop_per_iter: m.flop,
      bytes_per_iter: m.bytes,
    };
  });
  const kernels = rows.filter((r) => !r.kernel.startsWith('ceiling/'));
  const worst = [...kernels].sort((a, b) => a.roof_fraction - b.roof_fraction).slice(0, 3);
  const weighed = kernels.filter((r) => r.ms_per_step !== null) as Array<(typeof kernels)[number] & { ms_per_step: number }>;
  const stepMs = weighed.reduce((s, r) => s + r.ms_per_step, 0);
  const heaviest = [...weighed].sort((a, b) => b.ms_per_step - a.ms_per_step).slice(0, 3);
  const pct = (r: { roof_fraction: number }) => `${(r.roof_fraction * 100).toFixed(1)}%`;
  const device = String(ctx(json, 'nt_device') ?? 'cpu');
  const precision = String(ctx(json, 'nt_precision') ?? 'fp32');
  const model = ctx(json, 'nt_model');
  const where = device === 'cuda' ? `${ctx(json, 'nt_gpu')}` : `${ctx(json, 'nt_threads')} threads`;
  const load1 = Array.isArray(json.context.load_avg) ? Number(json.context.load_avg[0]) : null;
  // A GPU suite barely uses the host cores, so their load is no warning there.
  const busy = device === 'cpu' ? loadWarning(load1, ctx(json, 'nt_threads')) : null;
  return {
    suite: 'kernels',
    title: `nodetune kernel benchmarks (${device} ${precision}, ${model} B=${ctx(json, 'nt_B')} T=${ctx(json, 'nt_T')}, ${where})`,
    context: dropNulls({
      device,
      precision,
      processor: device === 'cpu' ? (cpus()[0]?.model ?? 'unknown').trim() : (ctx(json, 'nt_gpu') ?? null),
      model,
      B: ctx(json, 'nt_B'),
      T: ctx(json, 'nt_T'),
      hidden_size: ctx(json, 'nt_C'),
      num_attention_heads: ctx(json, 'nt_NH'),
      intermediate_size: ctx(json, 'nt_I'),
      num_labels: ctx(json, 'nt_L'),
      parameters: ctx(json, 'nt_params'),
      threads: ctx(json, 'nt_threads'),
      blas: ctx(json, 'nt_blas'),
      cuda: ctx(json, 'nt_cuda'),
      gemm_ceiling_gflop_s: Number((peakFlops / 1e9).toFixed(2)),
      gemm_ceiling_shape: gemm.shape,
      copy_ceiling_gb_s: Number((peakBytes / 1e9).toFixed(2)),
      copy_ceiling_shape: copy.shape,
      load_avg_1min: load1,
      date: String(json.context.date ?? ''),
    }),
    columns: [
      { key: 'kernel', header: 'kernel' },
      { key: 'shape', header: 'shape' },
      { key: 'time_ms', header: 'median ms', digits: 3 },
      { key: 'gflop_s', header: 'GFLOP/s', digits: 1 },
      { key: 'gb_s', header: 'GB/s', digits: 1 },
      { key: 'bound', header: 'bound' },
      { key: 'roof_fraction', header: 'of roof', percent: true },
      { key: 'calls_per_step', header: 'calls/step' },
      { key: 'ms_per_step', header: 'ms/step', digits: 1 },
    ],
    rows,
    notes: [
      ...(busy ? [busy] : []),
      `roof = min(${precision} GEMM ceiling ${(peakFlops / 1e9).toFixed(1)} GFLOP/s, arithmetic intensity x copy ceiling ${(peakBytes / 1e9).toFixed(1)} GB/s), both measured in this run (fastest repetition); "of roof" = roof-bound time / median time`,
      'a memory-bound kernel above 100% kept its working set in cache (the copy ceiling is DRAM) or reads more than it writes (the copy is 1:1; reads are cheaper than writes on many machines)',
      ...(worst.length ? [`furthest from the roof: ${worst.map((r) => `${r.kernel} ${pct(r)}`).join(', ')}`] : []),
      ...(weighed.length
        ? [`these kernels add up to ${stepMs.toFixed(1)} ms of one training step (median x calls per step; pooler/classifier GEMMs, dropout, residual adds and the gradient norm are not in the suite); largest shares: ${heaviest.map((r) => `${r.kernel} ${r.ms_per_step.toFixed(1)} ms at ${pct(r)} of roof`).join(', ')}`]
        : []),
    ],
  };
}
