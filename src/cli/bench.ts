/**
 * `nodetune bench train`, `nodetune bench kernels` and `nodetune bench generate`: throughput of a whole
 * training step against PyTorch, and of each kernel against the machine's own
 * GEMM and memory ceilings. Both print one format (src/bench/report.ts): a
 * table by default, `--json` for tools, `--markdown` for the README.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { formatJson, formatMarkdown, formatTable, type BenchReport } from '../bench/report.js';
import { KERNEL_MODELS, runKernelBench, type KernelModel } from '../bench/kernels.js';
import { TRAIN_SHAPES, runTrainBench, type TrainBenchOptions } from '../bench/train.js';
import { DEFAULT_GENERATE_MODEL, runGenerateBench } from '../bench/generate.js';
import { LLM_SHAPES, runLlmTrainBench } from '../bench/train-llm.js';
import { int, num } from './common.js';

/** Where the commands write: stdout gets the report, stderr progress. */
export interface BenchIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const processIO: BenchIO = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

function positive(value: string): number {
  const x = int(value);
  if (x < 1) throw new InvalidArgumentError(`'${value}' must be a positive integer.`);
  return x;
}

function deviceIndex(value: string): number {
  const x = int(value);
  if (x < 0) throw new InvalidArgumentError(`'${value}' must be a CUDA device index >= 0.`);
  return x;
}

/** Google Benchmark's --benchmark_min_time: seconds, finite and > 0. */
function seconds(value: string): number {
  const x = num(value);
  if (!(x > 0)) throw new InvalidArgumentError(`'${value}' must be a number of seconds > 0.`);
  return x;
}

const list = (value: string) => value.split(',').map((s) => s.trim()).filter(Boolean);

function render(report: BenchReport, opts: Record<string, unknown>): string {
  if (opts.json) return formatJson(report);
  if (opts.markdown) return formatMarkdown(report);
  return formatTable(report);
}

/** Adds the `bench train` flags to a command (shared with bench/train.ts, `npm run bench`). */
export function addTrainOptions(cmd: Command): Command {
  return cmd
    .option('--shapes <list>', `comma-separated shapes: encoders (${TRAIN_SHAPES.map((s) => s.name).join(', ')}) or a decoder (${Object.keys(LLM_SHAPES).join(', ')})`, list)
    .option('--seq <list>', 'comma-separated sequence lengths T (default 32,128; decoders 128,512)', (v) => list(v).map(positive))
    .option('--batch <n>', 'batch size B (default 32; decoders 8)', positive)
    .option('--lora <list>', 'decoders: LoRA ranks to measure, 0 = full fine-tuning (default: r 16 at every T and full at the first)', (v) => list(v).map(int))
    .option('--threads <n>', 'threads for nodetune and torch', positive, 2)
    .option('--steps <n>', 'timed steps (default: ~3 s worth, 3 to 20)', positive)
    .option('--warmup <n>', 'untimed warm-up steps (both sides)', int, 2)
    .option('--no-torch', 'skip the PyTorch peer (scripts/reference/bench_torch.py)')
    .option('--python <path>', 'Python interpreter for the peer (default $PYTHON or python3)')
    .addOption(new Option('--torch-attn <impl>', 'HF attention implementation of the peer').choices(['sdpa', 'eager']).default('sdpa'))
    .addOption(new Option('--precision <p>', "decoders with LoRA: the frozen base's weights in fp32 or bf16, both sides (default fp32)").choices(['fp32', 'bf16']))
    .option('--json', 'print the report as JSON')
    .option('--markdown', 'print the table as markdown');
}

/** Runs `bench train` from parsed options and writes the report. */
export async function trainAction(opts: Record<string, unknown>, io: BenchIO = processIO): Promise<BenchReport> {
  const shapes = opts.shapes as string[] | undefined;
  const decoders = (shapes ?? []).filter((s) => s in LLM_SHAPES);
  if (decoders.length && decoders.length !== shapes!.length) throw new InvalidArgumentError('--shapes: run encoder and decoder shapes separately (their batch, sequence lengths and peers differ)');
  if (!decoders.length && opts.lora !== undefined) throw new InvalidArgumentError('--lora applies to decoder shapes only');
  if (!decoders.length && opts.precision !== undefined) throw new InvalidArgumentError('--precision applies to decoder shapes only (the encoder CPU engine is fp32)');
  if (decoders.length) {
    const report = await runLlmTrainBench({
      shapes: decoders,
      modes: opts.lora as number[] | undefined,
      seqs: opts.seq as number[] | undefined,
      batch: opts.batch as number | undefined,
      threads: opts.threads as number,
      steps: opts.steps as number | undefined,
      warmup: opts.warmup as number | undefined,
      torch: opts.torch as boolean,
      python: opts.python as string | undefined,
      precision: opts.precision as 'fp32' | 'bf16' | undefined,
      onProgress: (line) => io.stderr(`${line}\n`),
    });
    io.stdout(render(report, opts));
    return report;
  }
  const report = await runTrainBench({
    shapes: opts.shapes as string[] | undefined,
    seqs: opts.seq as number[],
    batch: opts.batch as number,
    threads: opts.threads as number,
    steps: opts.steps as number | undefined,
    warmup: opts.warmup as number,
    torch: opts.torch as boolean,
    python: opts.python as string | undefined,
    torchAttn: opts.torchAttn as TrainBenchOptions['torchAttn'],
    onProgress: (line) => io.stderr(`${line}\n`),
  });
  io.stdout(render(report, opts));
  return report;
}

/**
 * Registers `bench train` and `bench kernels` on the program. `io` redirects
 * output (tests); by default stdout gets the report and stderr the progress.
 */
export function registerBench(program: Command, io: BenchIO = processIO): void {
  const bench = program.command('bench').description('measure training-step, kernel and generation throughput');

  addTrainOptions(
    bench
      .command('train')
      .description('training-step throughput (samples/s, tokens/s, GFLOP/s) beside PyTorch eager fp32 on the same model, batch and threads'),
  ).action(async (opts: Record<string, unknown>) => {
    await trainAction(opts, io);
  });

  bench
    .command('kernels')
    .description("each kernel's GFLOP/s or GB/s as a fraction of this machine's GEMM and memory-copy ceilings (Google Benchmark)")
    .option('--tiny', 'tiny shapes and short runs (a smoke test)')
    .addOption(new Option('--model <name>', 'layer shapes of this model').choices([...KERNEL_MODELS]).default('minilm-l6'))
    .option('--batch <n>', 'batch size B', positive, 32)
    .option('--seq <n>', 'sequence length T', positive, 128)
    .option('--threads <n>', 'CPU: OpenMP/OpenBLAS threads (default: all cores)', positive)
    .addOption(new Option('--precision <p>', 'activation/weight precision: cuda bf16 (default) or fp32; the CPU suite is fp32 only').choices(['bf16', 'fp32']))
    .option('--gpu <n>', 'cuda: device index (default 0)', deviceIndex)
    .option('--repetitions <n>', 'repetitions the median is taken over (default 5; tiny 3)', positive)
    .option('--min-time <s>', 'minimum seconds per repetition (default 0.2 on the CPU, 0.1 on CUDA; tiny 0.01)', seconds)
    .option('--filter <regex>', 'only benchmarks whose full name (e.g. gemm/qkv/fwd/real_time; CUDA: .../manual_time) matches this regular expression; ceilings always run')
    .addOption(new Option('--device <device>', 'cpu: build/Release/nodetune_bench_kernels; cuda: build/Release/nodetune_bench_cuda').choices(['cpu', 'cuda']).default('cpu'))
    .option('--binary <path>', 'benchmark binary to run instead of the default')
    .option('--quiet', "hide Google Benchmark's progress on stderr")
    .option('--json', 'print the report as JSON')
    .option('--markdown', 'print the table as markdown')
    .action(async (opts: Record<string, unknown>) => {
      const report = await runKernelBench({
        tiny: opts.tiny as boolean | undefined,
        model: opts.model as KernelModel,
        batch: opts.tiny ? undefined : (opts.batch as number),
        seq: opts.tiny ? undefined : (opts.seq as number),
        threads: opts.threads as number | undefined,
        precision: opts.precision as 'bf16' | 'fp32' | undefined,
        gpu: opts.gpu as number | undefined,
        repetitions: opts.repetitions as number | undefined,
        minTime: opts.minTime as number | undefined,
        filter: opts.filter as string | undefined,
        device: opts.device as 'cpu' | 'cuda',
        binary: opts.binary as string | undefined,
        onProgress: opts.quiet ? undefined : io.stderr,
      });
      io.stdout(render(report, opts));
    });

  bench
    .command('generate')
    .description('generation throughput (prefill and decode tokens/s at batch 1 and 16) beside llama.cpp (node-llama-cpp) on the same GGUF, threads and prompt')
    .option('--model <gguf>', 'GGUF file', DEFAULT_GENERATE_MODEL)
    .option('--prompt <text>', 'prompt text (raw, no chat template; default: a fixed ~60-token paragraph)')
    .option('--new-tokens <n>', 'new tokens per sequence, end-of-sequence suppressed (at least 2)', positive, 64)
    .option('--batch <list>', 'comma-separated batch sizes', (v) => list(v).map(positive), [1, 16])
    .option('--threads <n>', 'threads for nodetune and llama.cpp', positive, 2)
    .option('--no-llama-cpp', 'skip the llama.cpp peer')
    .addOption(new Option('--precision <p>', "nodetune's weights: fp32, bf16 (oneDNN's bf16 matmul; CPUs with AMX-BF16 or AVX512_BF16) or q8_0 (the GGUF requantized to Q8_0, an int8 kernel)").choices(['fp32', 'bf16', 'q8_0']).default('fp32'))
    .option('--json', 'print the report as JSON')
    .option('--markdown', 'print the table as markdown')
    .action(async (opts: Record<string, unknown>) => {
      const report = await runGenerateBench({
        precision: opts.precision as 'fp32' | 'bf16' | 'q8_0',
        model: opts.model as string,
        prompt: opts.prompt as string | undefined,
        newTokens: opts.newTokens as number,
        batches: opts.batch as number[],
        threads: opts.threads as number,
        llamaCpp: opts.llamaCpp as boolean,
        onProgress: (line) => io.stderr(`${line}\n`),
      });
      io.stdout(render(report, opts));
    });
}
