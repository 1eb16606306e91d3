/**
 * Forward-only (inference) throughput: the native engine against
 * onnxruntime-node running the same model exported by `exportOnnx`, in one
 * process, same batch, same thread count. all-MiniLM-L6-v2 with a seeded
 * 77-label head; random ids, full attention mask.
 *
 *   npm run bench:inference -- [--batch 32] [--seq 32,128] [--threads 2] [--steps 10] [--markdown]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import * as ort from 'onnxruntime-node';
import { loadModel, engineWeights } from '../src/model.js';
import { exportOnnx } from '../src/onnx/export.js';
import type { Batch } from '../src/engine.js';
import { positiveInt } from '../src/cli/common.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median milliseconds of `fn` over `steps` runs after one warm-up run. */
async function time(fn: () => Promise<unknown>, steps: number): Promise<number> {
  await fn();
  const ms: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

function randomBatch(B: number, T: number, vocab: number): Batch {
  let s = 12345;
  const next = () => (s = (s * 1103515245 + 12345) % 2 ** 31);
  return { input_ids: Int32Array.from({ length: B * T }, () => 1000 + (next() % (vocab - 1000))), batchSize: B, seqLen: T };
}

async function main(): Promise<void> {
  const o = new Command('bench:inference')
    .option('--model <folder>', 'model folder', join(root, '.cache/models/all-MiniLM-L6-v2'))
    .option('--batch <n>', 'batch size', positiveInt, 32)
    .option('--seq <list>', 'comma-separated sequence lengths', (v: string) => v.split(',').map((t) => positiveInt(t.trim())), [32, 128])
    .option('--threads <n>', 'threads for both engines', positiveInt, 2)
    .option('--steps <n>', 'timed runs per engine', positiveInt, 10)
    .option('--markdown', 'print a markdown table')
    .showHelpAfterError()
    .parse()
    .opts();
  const model = await loadModel(o.model, { num_labels: 77, seed: 1, threads: o.threads, log: () => undefined });
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-bench-'));
  try {
    const onnxPath = join(dir, 'model.onnx');
    await exportOnnx({ config: model.config, weights: engineWeights(model.engine) }, onnxPath);
    const session = await ort.InferenceSession.create(onnxPath, { intraOpNumThreads: o.threads, interOpNumThreads: 1 });
    const rows: string[] = [];
    for (const T of o.seq as number[]) {
      const batch = randomBatch(o.batch, T, model.config.vocab_size);
      const i64 = (a: Int32Array) => new ort.Tensor('int64', BigInt64Array.from(a, (v) => BigInt(v)), [o.batch, T]);
      const feeds = {
        input_ids: i64(batch.input_ids),
        attention_mask: i64(new Int32Array(o.batch * T).fill(1)),
        token_type_ids: i64(new Int32Array(o.batch * T)),
      };
      const native = await time(() => model.engine.forward(batch), o.steps);
      const onnx = await time(() => session.run(feeds), o.steps);
      const line = { T, native_ms: native, onnx_ms: onnx, native_sps: (o.batch * 1000) / native, onnx_sps: (o.batch * 1000) / onnx };
      rows.push(
        o.markdown
          ? `| MiniLM-L6 | ${o.batch} | ${T} | ${line.native_sps.toFixed(1)} | ${line.onnx_sps.toFixed(1)} | ${(onnx / native).toFixed(2)} |`
          : `B=${o.batch} T=${T}: native ${line.native_sps.toFixed(1)} samples/s (${native.toFixed(1)} ms), onnxruntime ${line.onnx_sps.toFixed(1)} samples/s (${onnx.toFixed(1)} ms), native/onnxruntime ${(onnx / native).toFixed(2)}`,
      );
    }
    if (o.markdown) {
      console.log('| model | B | T | native samples/s | onnxruntime samples/s | native / onnxruntime |');
      console.log('|---|---:|---:|---:|---:|---:|');
    }
    for (const r of rows) console.log(r);
    await session.release();
  } finally {
    await model.engine.dispose();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
