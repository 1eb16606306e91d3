/**
 * `npm run bench:ddp`: data-parallel scaling on this machine. nodetune fine-tunes
 * all-MiniLM-L6-v2 on Banking77 (`nodetune train`, global batch 32, max length 64, dropout on)
 * as 1 rank × 1 thread, then `--nproc 2` (2 ranks × 1 thread), and for reference 1 rank × 2
 * threads (the same two cores used by OpenMP inside one process); beside it the peer, PyTorch
 * DistributedDataParallel (gloo) with the same model, data, batch split and thread counts
 * (bench/ddp_torch.py). Per configuration: the median step time after 3 warm-up steps, samples/s,
 * speed-up over 1 rank × 1 thread and scaling efficiency (speed-up / ranks); then nodetune / torch.
 * Options: --steps N (default 20), --batch B (32), --max-length T (64), --no-torch.
 * About 3 minutes on a 2-core machine. Needs Open MPI (bash scripts/setup.sh).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = join(root, 'dist/src/cli/main.js');
const MODEL = join(root, '.cache/models/all-MiniLM-L6-v2');
const TRAIN = join(root, 'data/banking77/train.csv');

interface Result {
  ranks: number;
  threads: number;
  stepSeconds: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** One `nodetune train` run; its per-step times from training_log.jsonl (logging_steps 1). */
function nodetune(ranks: number, threads: number, o: { steps: number; batch: number; maxLength: number }): Result {
  const out = mkdtempSync(join(tmpdir(), 'nodetune-bench-ddp-'));
  try {
    const args = [CLI, 'train', '--model', MODEL, '--train', TRAIN, '--label-column', 'category', '--output', out, '--overwrite-output-dir',
      '--max-steps', String(o.steps), '--batch-size', String(o.batch), '--max-length', String(o.maxLength), '--learning-rate', '5e-5',
      '--warmup-ratio', '0', '--eval-strategy', 'no', '--logging-steps', '1', '--save-steps', '100000', '--threads', String(threads),
      ...(ranks > 1 ? ['--nproc', String(ranks)] : [])];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`nodetune train (${ranks} ranks × ${threads} threads) failed:\n${r.stderr.slice(-2000)}`);
    const log = readFileSync(join(out, 'training_log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { samples_per_second: number });
    return { ranks, threads, stepSeconds: median(log.slice(3).map((e) => o.batch / e.samples_per_second)) };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/** The PyTorch DDP peer, or null when torch/transformers are not installed. */
function torch(ranks: number, o: { steps: number; batch: number; maxLength: number }): Result | null {
  const r = spawnSync('python3', [join(root, 'bench/ddp_torch.py'), '--model', MODEL, '--train', TRAIN, '--nproc', String(ranks),
    '--batch', String(o.batch), '--steps', String(o.steps), '--max-length', String(o.maxLength)], { encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`PyTorch DDP peer skipped (${ranks} ranks): ${r.stderr.trim().split('\n').at(-1)}\n`);
    return null;
  }
  const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { step_seconds: number };
  return { ranks, threads: 1, stepSeconds: j.step_seconds };
}

const program = new Command('bench/ddp')
  .description('data-parallel scaling: 2 ranks × 1 thread vs 1 rank × 1 thread, beside PyTorch DDP (gloo)')
  .option('--steps <n>', 'optimizer steps per run', (v) => Number(v), 20)
  .option('--batch <n>', 'global batch', (v) => Number(v), 32)
  .option('--max-length <n>', 'tokens per text at most', (v) => Number(v), 64)
  .option('--no-torch', 'skip the PyTorch DDP peer')
  .action((opts: { steps: number; batch: number; maxLength: number; torch: boolean }) => {
    const base = nodetune(1, 1, opts);
    const runs = [base, nodetune(2, 1, opts), nodetune(1, 2, opts)];
    const peer = opts.torch ? [torch(1, opts), torch(2, opts)] : [null, null];
    const sps = (r: Result) => opts.batch / r.stepSeconds;
    const lines = [
      `all-MiniLM-L6-v2 on Banking77, global batch ${opts.batch}, max length ${opts.maxLength}, ${opts.steps} steps (median after 3)`,
      '',
      '| engine | ranks × threads | step ms | samples/s | speed-up vs 1 × 1 | efficiency |',
      '| --- | --- | ---: | ---: | ---: | ---: |',
      ...runs.map((r) => `| nodetune | ${r.ranks} × ${r.threads} | ${(1000 * r.stepSeconds).toFixed(0)} | ${sps(r).toFixed(1)} | ${(base.stepSeconds / r.stepSeconds).toFixed(2)} | ${((base.stepSeconds / r.stepSeconds / (r.ranks * r.threads)) * 100).toFixed(0)}% |`),
    ];
    const [t1, t2] = peer;
    if (t1 && t2) {
      for (const r of [t1, t2]) lines.push(`| PyTorch DDP (gloo) | ${r.ranks} × 1 | ${(1000 * r.stepSeconds).toFixed(0)} | ${sps(r).toFixed(1)} | ${(t1.stepSeconds / r.stepSeconds).toFixed(2)} | ${((t1.stepSeconds / r.stepSeconds / r.ranks) * 100).toFixed(0)}% |`);
      lines.push('', `nodetune / PyTorch samples/s: 1 × 1 ${(t1.stepSeconds / base.stepSeconds).toFixed(2)}, 2 ranks × 1 ${(t2.stepSeconds / runs[1].stepSeconds).toFixed(2)}`);
    }
    process.stdout.write(lines.join('\n') + '\n');
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`bench/ddp: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
