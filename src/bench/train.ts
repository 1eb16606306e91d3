/**
 * `nodetune bench train` / `npm run bench`: training-step throughput of the
 * native engine on BertForSequenceClassification shapes, side by side with
 * PyTorch eager fp32 (scripts/reference/bench_torch.py) on the same model,
 * batch, sequence length and thread count.
 *
 * A step is what Trainer does per batch: forward, fused softmax-cross-entropy,
 * backward, global-norm clipping (1.0) and AdamW (weight_decay 0.01), with
 * dropout on (train mode), random weights (HF init: normal(0, 0.02), LayerNorm
 * 1/0, biases 0), random input_ids in [1, vocab_size), no padding, 77 labels.
 * Timing: `warmup` untimed steps, then the median of `steps` timed ones: the
 * same protocol bench_torch.py uses, so the ratio compares like with like.
 */
import { spawn } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BERT_DEFAULTS, parameterShapes, type BertConfig } from '../config.js';
import { Engine, type Batch } from '../engine.js';
import { mulberry32 } from '../data/rng.js';
import { repoRoot } from './paths.js';
import { loadWarning, median, type BenchReport, type BenchValue } from './report.js';

/** A model shape by its Hugging Face config fields. */
export interface TrainShape {
  name: string;
  num_hidden_layers: number;
  hidden_size: number;
  num_attention_heads: number;
  intermediate_size: number;
}

/** prajjwal1/bert-tiny, sentence-transformers/all-MiniLM-L6-v2, bert-base-uncased. */
export const TRAIN_SHAPES: TrainShape[] = [
  { name: 'bert-tiny', num_hidden_layers: 2, hidden_size: 128, num_attention_heads: 2, intermediate_size: 512 },
  { name: 'minilm-l6', num_hidden_layers: 6, hidden_size: 384, num_attention_heads: 12, intermediate_size: 1536 },
  { name: 'bert-base', num_hidden_layers: 12, hidden_size: 768, num_attention_heads: 12, intermediate_size: 3072 },
];

export const NUM_LABELS = 77; // Banking77

export interface TrainBenchOptions {
  /** Shape names from TRAIN_SHAPES (default: all three). */
  shapes?: string[];
  /** Sequence lengths T (default [32, 128]). */
  seqs?: number[];
  /** Batch size B (default 32). */
  batch?: number;
  /** Threads for both nodetune and torch (default 2). */
  threads?: number;
  /** Timed steps; default: as many as fit in about 3 s after warm-up, between 3 and 20. */
  steps?: number;
  /** Untimed warm-up steps (default 2: PyTorch is still warming up oneDNN and its allocator on the first two). */
  warmup?: number;
  /** Run the PyTorch peer (default true). */
  torch?: boolean;
  /** Python interpreter for the peer (default: $PYTHON or python3). */
  python?: string;
  /** HF attention implementation of the peer (default sdpa, what transformers picks). */
  torchAttn?: 'sdpa' | 'eager';
  seed?: number;
  /** Called with a line of progress per measured case. */
  onProgress?: (text: string) => void;
}

/** The BertConfig of a shape (bert-base-uncased defaults otherwise). */
export function shapeConfig(s: TrainShape): BertConfig {
  return { ...BERT_DEFAULTS, ...s, num_labels: NUM_LABELS, model_type: 'bert' };
}

const EMBEDDING_TABLES = /^bert\.embeddings\.(word|position|token_type)_embeddings\./;
const HEAD = /^(bert\.pooler\.|classifier\.)/;

/**
 * Training FLOPs of one step on a (B, T) batch, following Kaplan et al. 2020
 * (6 FLOPs per parameter per token: 2 forward, 4 backward) plus attention:
 *
 *   FLOPs = 6 * P_tok * B * T  +  6 * P_seq * B  +  12 * L * B * T^2 * C
 *
 *   P_tok: parameters applied to every token: all encoder layers and the
 *          embedding LayerNorm (the non-embedding parameters, less the head);
 *   P_seq: pooler + classifier, applied once per sequence ([CLS] only);
 *   12 L B T^2 C: per layer, Q K^T and P V are 2 B T^2 C FLOPs each forward,
 *          twice that backward; L = num_hidden_layers, C = hidden_size.
 * The embedding tables (gathers and scatter-adds), softmax, GELU, LayerNorm
 * arithmetic and AdamW are not counted.
 */
export function trainingFlops(config: BertConfig, B: number, T: number): number {
  let perToken = 0;
  let perSequence = 0;
  for (const [name, shape] of parameterShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (EMBEDDING_TABLES.test(name)) continue;
    if (HEAD.test(name)) perSequence += n;
    else perToken += n;
  }
  const L = config.num_hidden_layers;
  const C = config.hidden_size;
  return 6 * perToken * B * T + 6 * perSequence * B + 12 * L * B * T * T * C;
}

/** Hugging Face BertPreTrainedModel._init_weights: normal(0, 0.02), LayerNorm 1/0, biases 0. */
function initWeights(engine: Engine, seed: number): void {
  const u = mulberry32(seed);
  for (const name of engine.parameterNames()) {
    const n = engine.parameterShape(name).reduce((a, b) => a * b, 1);
    const w = new Float32Array(n);
    if (name.endsWith('LayerNorm.weight')) w.fill(1);
    else if (!name.endsWith('.bias')) {
      for (let i = 0; i < n; i += 2) {
        // Box-Muller: two normals from two uniforms.
        const r = 0.02 * Math.sqrt(-2 * Math.log(1 - u()));
        const th = 2 * Math.PI * u();
        w[i] = r * Math.cos(th);
        if (i + 1 < n) w[i + 1] = r * Math.sin(th);
      }
    }
    engine.setWeight(name, w);
  }
}

function randomBatch(config: BertConfig, B: number, T: number, seed: number): Batch {
  const u = mulberry32(seed);
  const input_ids = Int32Array.from({ length: B * T }, () => 1 + Math.floor(u() * (config.vocab_size - 1)));
  const labels = Int32Array.from({ length: B }, () => Math.floor(u() * NUM_LABELS));
  return {
    input_ids,
    attention_mask: new Int32Array(B * T).fill(1),
    token_type_ids: new Int32Array(B * T),
    labels,
    batchSize: B,
    seqLen: T,
  };
}

/** Step times in ms: `warmup` untimed steps, then `steps` timed (or auto: ~3 s worth, 3..20). */
async function timeSteps(engine: Engine, batch: Batch, warmup: number, steps: number | undefined): Promise<number[]> {
  const step = async () => {
    const t0 = performance.now();
    const { loss } = await engine.trainStep(batch, { learningRate: 5e-5 });
    if (!Number.isFinite(loss)) throw new Error(`bench: training loss is ${loss} (B=${batch.batchSize}, T=${batch.seqLen})`);
    return performance.now() - t0;
  };
  let last = 0;
  for (let i = 0; i < warmup; i++) last = await step();
  const n = steps ?? Math.min(20, Math.max(3, Math.ceil(3000 / Math.max(last, 1))));
  const times: number[] = [];
  for (let i = 0; i < n; i++) times.push(await step());
  return times;
}

interface TorchResult {
  samples_per_s?: number;
  step_ms_median?: number;
  torch?: string;
  transformers?: string;
  attn?: string;
  /** Why there is no figure ("torch not installed", ...). */
  status?: string;
}

/**
 * Runs a command whose last stdout line is one JSON object (a peer script, or a
 * nodetune case in its own process); never throws: a failure becomes
 * `{ status }` ("torch not installed", "python3 not found", the last stderr line).
 */
export function runJsonLine<T extends { status?: string }>(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<T> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e: NodeJS.ErrnoException) =>
      resolve({ status: e.code === 'ENOENT' ? `${cmd} not found` : `failed: ${e.message}` } as T),
    );
    child.on('close', (code) => {
      const missing = /No module named '(torch|transformers|peft)'/.exec(err);
      if (missing) return resolve({ status: `${missing[1]} not installed` } as T);
      const line = out.trim().split('\n').pop() ?? '';
      try {
        if (code === 0) return resolve(JSON.parse(line) as T);
      } catch {
        /* falls through to the failure status */
      }
      resolve({ status: `failed: ${err.trim().split('\n').pop() ?? `exit ${code}`}` } as T);
    });
  });
}

/** Runs scripts/reference/bench_torch.py with its thread count in OMP_NUM_THREADS. */
function runTorch(python: string, args: string[]): Promise<TorchResult> {
  return runJsonLine<TorchResult>(python, [join(repoRoot, 'scripts/reference/bench_torch.py'), ...args], {
    ...process.env,
    OMP_NUM_THREADS: args[args.indexOf('--threads') + 1],
  });
}

function pickShapes(names: string[] | undefined): TrainShape[] {
  if (!names) return TRAIN_SHAPES;
  return names.map((n) => {
    const s = TRAIN_SHAPES.find((x) => x.name === n);
    if (!s) throw new Error(`--shapes: unknown shape '${n}' (expected ${TRAIN_SHAPES.map((x) => x.name).join(', ')})`);
    return s;
  });
}

/**
 * Measures every (shape, T) case and returns the report: samples/s, tokens/s,
 * GFLOP/s (see {@link trainingFlops}) for nodetune and, unless torch is false,
 * PyTorch's samples/s and the ratio nodetune/torch.
 * @throws Error for an unknown shape, a non-positive size, or a native failure.
 */
export async function runTrainBench(opts: TrainBenchOptions = {}): Promise<BenchReport> {
  const shapes = pickShapes(opts.shapes);
  const seqs = opts.seqs ?? [32, 128];
  const B = opts.batch ?? 32;
  const threads = opts.threads ?? 2;
  const warmup = opts.warmup ?? 2;
  const seed = opts.seed ?? 0;
  for (const [k, v] of Object.entries({ batch: B, threads, ...Object.fromEntries(seqs.map((t, i) => [`seq[${i}]`, t])) })) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`--${k}: expected a positive integer, got ${v}`);
  }
  if (seqs.some((t) => t > BERT_DEFAULTS.max_position_embeddings)) throw new Error(`--seq: at most ${BERT_DEFAULTS.max_position_embeddings} (max_position_embeddings)`);
  // Before the first engine starts: the load of other processes, not of this run.
  const load1 = Number(loadavg()[0].toFixed(2));
  const python = opts.python ?? process.env.PYTHON ?? 'python3';
  const attn = opts.torchAttn ?? 'sdpa';
  let torchDown: string | undefined = opts.torch === false ? 'not run (--no-torch)' : undefined;
  let torchVersion: BenchValue = null;
  const rows: Array<Record<string, BenchValue>> = [];

  for (const shape of shapes) {
    const config = shapeConfig(shape);
    const engine = new Engine({ config, threads, seed, weight_decay: 0.01, max_grad_norm: 1 });
    try {
      initWeights(engine, seed + 1);
      for (const T of seqs) {
        const batch = randomBatch(config, B, T, seed + T);
        const times = await timeSteps(engine, batch, warmup, opts.steps);
        const ms = median(times);
        const flops = trainingFlops(config, B, T);
        const row: Record<string, BenchValue> = {
          model: shape.name, B, T, steps: times.length, step_ms: ms,
          samples_s: (B * 1e3) / ms, tokens_s: (B * T * 1e3) / ms, gflop_s: flops / ms / 1e6,
          torch_step_ms: null, torch_samples_s: null, torch_gflop_s: null, vs_torch: null, torch_status: torchDown ?? null,
          train_flops: flops,
        };
        if (!torchDown) {
          const args = [
            '--layers', shape.num_hidden_layers, '--hidden', shape.hidden_size, '--heads', shape.num_attention_heads,
            '--intermediate', shape.intermediate_size, '--vocab', config.vocab_size, '--batch', B, '--seq', T,
            '--threads', threads, '--steps', times.length, '--warmup', warmup, '--dtype', 'fp32', '--attn', attn, '--seed', seed,
          ].map(String);
          const t = await runTorch(python, args);
          if (t.samples_per_s && t.step_ms_median) {
            torchVersion = `torch ${t.torch}, transformers ${t.transformers}, attn ${t.attn}`;
            Object.assign(row, {
              torch_step_ms: t.step_ms_median, torch_samples_s: t.samples_per_s,
              torch_gflop_s: flops / t.step_ms_median / 1e6, vs_torch: (row.samples_s as number) / t.samples_per_s,
            });
          } else {
            row.torch_status = t.status ?? 'torch failed';
            // A missing interpreter or package will not appear for the next shape.
            if (/not (installed|found)/.test(row.torch_status as string)) torchDown = row.torch_status as string;
          }
        }
        rows.push(row);
        opts.onProgress?.(`${shape.name} B=${B} T=${T}: ${(row.samples_s as number).toFixed(1)} samples/s` +
          (row.torch_samples_s ? `, torch ${(row.torch_samples_s as number).toFixed(1)} (x${(row.vs_torch as number).toFixed(2)})` : `, torch: ${row.torch_status}`));
      }
    } finally {
      await engine.dispose();
    }
  }

  return {
    suite: 'train',
    title: `nodetune training-step throughput (cpu, fp32, ${threads} threads, B=${B})`,
    context: {
      device: 'cpu',
      cpu: (cpus()[0]?.model ?? 'unknown').trim(),
      threads,
      batch: B,
      warmup,
      steps: opts.steps ?? 'auto (3..20, ~3 s)',
      dtype: 'fp32',
      node: process.version,
      peer: torchVersion ?? torchDown ?? null,
      flops: '6*P_tok*B*T + 6*P_seq*B + 12*L*B*T^2*C (src/bench/train.ts)',
      load_avg_1min: load1,
    },
    columns: [
      { key: 'model', header: 'model' },
      { key: 'T', header: 'T' },
      { key: 'steps', header: 'steps' },
      { key: 'step_ms', header: 'step ms', digits: 1 },
      { key: 'samples_s', header: 'samples/s', digits: 1 },
      { key: 'tokens_s', header: 'tokens/s', digits: 0 },
      { key: 'gflop_s', header: 'GFLOP/s', digits: 1 },
      { key: 'torch_samples_s', header: 'torch samples/s', digits: 1, missing: 'torch_status' },
      { key: 'torch_gflop_s', header: 'torch GFLOP/s', digits: 1, missing: 'torch_status' },
      { key: 'vs_torch', header: 'nodetune/torch', digits: 2, missing: 'torch_status' },
    ],
    rows,
    notes: [
      ...[loadWarning(load1, threads)].filter((n): n is string => n !== null),
      'one step = forward + cross-entropy + backward + clip_grad_norm(1.0) + AdamW, dropout on; median of the timed steps after warm-up, torch with the same steps and warm-up',
    ],
  };
}
