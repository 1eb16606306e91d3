/**
 * The learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural
 * Networks"; fastai's lr_find, PyTorch Lightning's Tuner.lr_find): a short run of optimizer steps
 * whose rate grows exponentially from min_lr to max_lr, on the task's own training batches; the
 * loss is smoothed (an exponential moving average with bias correction, beta 0.98 as fastai for
 * the default 100 steps, 1 - 2/num_steps for shorter runs so the average can follow), and
 * the run stops once the smoothed loss exceeds 4x its minimum (it diverged) or is not finite.
 *
 * The rule: the rate where the smoothed loss falls fastest against log(rate) (Lightning's
 * suggestion: its steepest negative slope), searched only before the smoothed minimum and after
 * the first tenth of the run (whose losses are still mostly the smoothing's start), then divided
 * by `divisor` (default 1). Before returning, every trainable weight, both AdamW moments and the
 * engine's counters are put back exactly as they were, so the run that follows starts from the
 * same state as one without the test. Deterministic: the batches come from makeBatches with the
 * seed, and dropout is keyed by the engine's counters, which are restored.
 */
import type { EventEmitter } from 'node:events';
import { makeBatches } from '../data/index.js';
import type { TrainingTask, TaskEvalResults } from '../tasks/task.js';

export interface LrFindOptions {
  /** First rate (default 1e-7). */
  min_lr?: number;
  /** Last rate (default 1). */
  max_lr?: number;
  /** Optimizer steps at most (default 100). */
  num_steps?: number;
  /** Micro-batch size (the run's per_device_train_batch_size). */
  batch_size: number;
  /** Micro-batches per step (the run's gradient_accumulation_steps; default 1), weighted as the Trainer weighs them. */
  accumulation?: number;
  /** Polled before each step: true stops the test (Ctrl-C), which then throws after restoring the model. */
  shouldStop?: () => boolean;
  seed?: number;
  group_by_length?: boolean;
  /** The chosen rate is the steepest point's divided by this (default 1). */
  divisor?: number;
  /** Called after each step (progress). */
  onStep?: (step: number, lr: number, loss: number) => void;
}

export interface LrFindResult {
  /** Rate, loss and smoothed loss of every step taken. */
  lrs: number[];
  losses: number[];
  smoothed: number[];
  /** The rate the rule picked (see the file comment). */
  learning_rate: number;
  /** Index in lrs of the steepest point. */
  steepest_index: number;
  /** The step at which the smoothed loss passed 4x its minimum (or a loss was not finite); null when it never did. */
  diverged_at: number | null;
  rule: string;
  seconds: number;
}

/**
 * What learning_rate 'auto' divides the steepest point's rate by when pretrained weights train.
 * Fine-tuning them wants far less than the rate at which a short run's loss falls fastest (that
 * rate is mostly what a new head tolerates): measured on all-MiniLM-L6-v2 + Banking77 (README),
 * the steepest point was 2.8e-3 and the best tuned rate 2e-4. A task whose only trainable weights
 * are new (LoRA adapters) sets TrainingTask.lrFindDivisor to 1.
 */
export const LR_FIND_DIVISOR = 10;

const DIVERGE = 4;

/** The curve had no rate to read (it diverged at once, or never fell); the model was restored. */
export class LrFindError extends Error {}

/**
 * Runs the range test on `task` over `train` (see the file comment).
 * @throws Error when min_lr/max_lr/num_steps are out of range, when fewer than 10 steps ran before
 *   the loss diverged (no curve to read a rate from: lower min_lr), or when no point of the curve
 *   falls (the loss never decreased: the data or model cannot be trained at any of these rates).
 */
export async function lrFind<E, R extends TaskEvalResults>(task: TrainingTask<E, R>, train: readonly E[], o: LrFindOptions): Promise<LrFindResult> {
  const minLr = o.min_lr ?? 1e-7;
  const maxLr = o.max_lr ?? 1;
  const numSteps = o.num_steps ?? 100;
  if (!(minLr > 0 && maxLr > minLr)) throw new Error(`lr-find: expected 0 < min_lr < max_lr, got ${minLr} and ${maxLr}`);
  if (!(Number.isInteger(numSteps) && numSteps >= 10)) throw new Error(`lr-find: num_steps ${numSteps}: expected an integer ≥ 10`);
  const accumulation = o.accumulation ?? 1;
  if (!(Number.isInteger(accumulation) && accumulation >= 1)) throw new Error(`lr-find: accumulation ${accumulation}: expected a positive integer`);
  const divisor = o.divisor ?? 1;
  if (!(divisor > 0 && Number.isFinite(divisor))) throw new Error(`lr-find: divisor ${divisor}: expected a finite number > 0`);
  const started = performance.now();
  const beta = Math.min(0.98, 1 - 2 / numSteps);
  const engine = task.engine;
  // Frozen parameters neither change nor have moments to restore.
  const names = task.checkpointParameters().filter((n) => engine.isTrainable(n));
  const saved = names.map((n) => ({ name: n, weight: engine.getWeight(n), state: engine.getOptimizerState(n) }));
  const counters = engine.getCounters();
  const lrs: number[] = [];
  const losses: number[] = [];
  const smoothed: number[] = [];
  let divergedAt: number | null = null;
  let empty = 0; // steps whose batches had nothing to learn (no target token)
  let stopped = false;
  try {
    const lengths = train.map((e) => task.length(e));
    let batches: number[][] = [];
    let pass = 0;
    let avg = 0;
    let best = Infinity;
    for (let k = 0; k < numSteps; k++) {
      if (o.shouldStop?.()) {
        stopped = true;
        break;
      }
      // One optimizer step of `accumulation` micro-batches, each weighted by its share (examples or targets).
      const window: E[][] = [];
      for (let m = 0; m < accumulation; m++) {
        if (batches.length === 0) batches = makeBatches(lengths, { batchSize: o.batch_size, seed: o.seed ?? 42, epoch: pass++, groupByLength: o.group_by_length ?? true });
        window.push(batches.shift()!.map((i) => train[i]));
      }
      const weights = window.map((examples) => task.lossWeight(examples));
      const total = weights.reduce((a, b) => a + b, 0);
      if (total === 0) {
        empty++;
        continue;
      }
      const lr = minLr * (maxLr / minLr) ** (k / (numSteps - 1));
      let loss = 0;
      for (let m = 0; m < window.length; m++) {
        if (weights[m] === 0) continue;
        const out = await engine.accumulate(task.collate(window[m]), { lossScale: weights[m] / total });
        loss += (out.loss * weights[m]) / total;
      }
      const { gradNorm } = await engine.step({ learningRate: lr });
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        divergedAt = k;
        break;
      }
      avg = beta * avg + (1 - beta) * loss;
      const s = avg / (1 - beta ** (lrs.length + 1));
      lrs.push(lr);
      losses.push(loss);
      smoothed.push(s);
      o.onStep?.(lrs.length, lr, loss);
      best = Math.min(best, s);
      if (s > DIVERGE * best) {
        divergedAt = k;
        break;
      }
    }
  } finally {
    for (const p of saved) {
      engine.setWeight(p.name, p.weight);
      engine.setOptimizerState(p.name, p.state);
    }
    engine.setCounters(counters);
    await engine.zeroGrad();
  }
  if (stopped) throw new Error(`learning-rate range test interrupted after ${lrs.length} steps; the model is as it was, nothing was trained or saved`);
  if (lrs.length < 10) {
    throw new LrFindError(divergedAt === null
      ? `lr-find: only ${lrs.length} of ${numSteps} steps had a token or example to learn from (${empty} batches had none), too few to read a rate from`
      : `lr-find: the loss diverged after ${lrs.length} steps, too few to read a rate from; start at a lower rate (min_lr)`);
  }
  const steepest = steepestIndex(lrs, smoothed);
  if (steepest < 0) throw new LrFindError(`lr-find: the smoothed loss never fell between ${minLr} and ${lrs.at(-1)}; the model does not train at these rates`);
  return {
    lrs, losses, smoothed, steepest_index: steepest, diverged_at: divergedAt,
    learning_rate: lrs[steepest] / divisor,
    rule: `steepest fall of the smoothed loss against log(rate), before its minimum${divisor === 1 ? '' : `, divided by ${divisor}`}`,
    seconds: (performance.now() - started) / 1000,
  };
}

/**
 * Index of the most negative slope of `smoothed` against log(lr) (central differences), between
 * the first tenth of the curve and its minimum; -1 when no slope there is negative.
 */
export function steepestIndex(lrs: readonly number[], smoothed: readonly number[]): number {
  let minAt = 0;
  for (let i = 1; i < smoothed.length; i++) if (smoothed[i] < smoothed[minAt]) minAt = i;
  const from = Math.max(1, Math.floor(smoothed.length / 10));
  let best = -1;
  let bestSlope = 0;
  for (let i = from; i < Math.min(minAt + 1, smoothed.length - 1); i++) {
    const slope = (smoothed[i + 1] - smoothed[i - 1]) / (Math.log(lrs[i + 1]) - Math.log(lrs[i - 1]));
    if (slope < bestSlope) {
      bestSlope = slope;
      best = i;
    }
  }
  return best;
}

/** One line for a person: the chosen rate, the rule, the range covered and the cost. */
export function describeLrFind(r: LrFindResult): string {
  const diverged = r.diverged_at === null ? 'no divergence' : `diverged at ${r.lrs.at(-1)!.toExponential(1)}`;
  return `learning-rate range test: ${r.learning_rate.toExponential(2)} (${r.rule}; steepest at ${r.lrs[r.steepest_index].toExponential(2)}; ` +
    `${r.lrs.length} steps from ${r.lrs[0].toExponential(0)}, ${diverged}; ${r.seconds.toFixed(1)} s)`;
}

/** An LrFindOptions.onStep that logs every 20th step of the range test. */
export function logLrFindProgress(log: (line: string) => void): (step: number, lr: number, loss: number) => void {
  return (step, lr, loss) => {
    if (step % 20 === 0) log(`learning-rate range test step ${step}: rate ${lr.toExponential(2)} loss ${loss.toFixed(4)}`);
  };
}

/** Logs a Trainer's range test (learning_rate 'auto'): every 20th step, its result, or why it fell back. */
export function logLrFind(trainer: EventEmitter, log: (line: string) => void): void {
  const progress = logLrFindProgress(log);
  trainer.on('lr_find_step', (e: { step: number; lr: number; loss: number }) => progress(e.step, e.lr, e.loss));
  trainer.on('lr_find', (r: LrFindResult) => log(describeLrFind(r)));
  trainer.on('lr_find_failed', (e: { message: string; learning_rate: number }) =>
    log(`warning: ${e.message}; training at ${e.learning_rate} (Hugging Face's default) instead; pass --learning-rate to choose`));
}
