/**
 * One case of the decoder training benchmark, run in its own process by
 * src/bench/train-llm.ts so that its peak resident memory is its own:
 * `node dist/src/bench/train-llm-case.js '<LlmCase JSON>'` prints one JSON
 * line {tokens_per_s, step_ms_median, peak_rss_mib}.
 */
import { performance } from 'node:perf_hooks';
import { Engine, type Batch } from '../engine.js';
import { mulberry32 } from '../data/rng.js';
import { llmShapeConfig, type LlmCase } from './train-llm.js';
import { median } from './report.js';

async function main(): Promise<void> {
  const c = JSON.parse(process.argv[2] ?? '') as LlmCase;
  const config = llmShapeConfig(c.shape);
  const lora = c.lora > 0 ? { r: c.lora, lora_alpha: 2 * c.lora, lora_dropout: 0.05, target_modules: 'all-linear' as const } : undefined;
  const engine = new Engine({ config, lora, threads: c.threads, seed: c.seed, weight_decay: 0.01, max_grad_norm: 1, precision: c.precision });
  // HF LlamaPreTrainedModel._init_weights: normal(0, 0.02), RMSNorm weights 1.
  const u = mulberry32(c.seed + 1);
  // One buffer for every tensor: fresh arrays would leave ~0.5 GB of garbage
  // for the collector, counted in the peak below though the engine never held it.
  const sizes = engine.parameterNames().map((n) => engine.parameterShape(n).reduce((a, b) => a * b, 1));
  const buffer = new Float32Array(Math.max(...sizes));
  for (const name of engine.parameterNames()) {
    if (name.includes('.lora_')) continue;
    const w = buffer.subarray(0, engine.parameterShape(name).reduce((a, b) => a * b, 1));
    if (name.endsWith('norm.weight')) w.fill(1);
    else for (let i = 0; i < w.length; i++) w[i] = 0.02 * Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
    engine.setWeight(name, w);
  }
  const n = c.B * c.T;
  const ids = Int32Array.from({ length: n }, () => Math.floor(u() * config.vocab_size));
  const batch: Batch = { input_ids: ids, attention_mask: new Int32Array(n).fill(1), labels: ids, batchSize: c.B, seqLen: c.T };
  const times: number[] = [];
  for (let i = 0; i < c.warmup + c.steps; i++) {
    const t0 = performance.now();
    const { loss } = await engine.trainStep(batch, { learningRate: 1e-4 });
    if (!Number.isFinite(loss)) throw new Error(`loss is ${loss}`);
    if (i >= c.warmup) times.push(performance.now() - t0);
  }
  const ms = median(times);
  console.log(JSON.stringify({ tokens_per_s: (n * 1e3) / ms, step_ms_median: ms, peak_rss_mib: process.resourceUsage().maxRSS / 1024 }));
  await engine.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
