/**
 * Learning-rate schedules by name, as Hugging Face's `get_scheduler`
 * (transformers/optimization.py) defines them, plus 'inverse_time'.
 *
 * Convention (PyTorch LambdaLR as the HF Trainer drives it): the update made
 * when `step` optimizer steps have already been taken (step = 0 for the first
 * update) uses lr = learning_rate × lambda(step).
 */

export type SchedulerType = 'linear' | 'cosine' | 'constant' | 'constant_with_warmup' | 'inverse_sqrt' | 'inverse_time';

export const SCHEDULER_TYPES: readonly SchedulerType[] = [
  'linear',
  'cosine',
  'constant',
  'constant_with_warmup',
  'inverse_sqrt',
  'inverse_time',
];

export interface ScheduleOptions {
  /** lr_scheduler_type; default 'linear' (HF Trainer's default). */
  name?: SchedulerType;
  /** Peak learning rate lr_0 (HF learning_rate). */
  learningRate: number;
  /** Total optimizer steps (HF num_training_steps = ceil(batches per epoch / accumulation) × epochs). */
  numTrainingSteps: number;
  /** warmup_steps; HF semantics: a value ≥ 1 is a step count, a value in [0, 1) a ratio of numTrainingSteps. */
  warmupSteps?: number;
  /** warmup_ratio (older HF argument): warmup = ceil(ratio × numTrainingSteps). Used when warmupSteps is 0/absent. */
  warmupRatio?: number;
  /** 'cosine': number of cosine waves; HF default 0.5 (half a cosine, down to 0). */
  numCycles?: number;
  /** 'inverse_sqrt': HF timescale; default the warmup steps, or 10000 without warmup. */
  timescale?: number;
  /** 'inverse_time': decay per optimizer step after warmup (required for it). */
  decayRate?: number;
}

export interface LrSchedule {
  name: SchedulerType;
  warmupSteps: number;
  numTrainingSteps: number;
  /** Learning rate for the update after `step` optimizer steps (step ≥ 0, integer). */
  lrAt(step: number): number;
}

/**
 * Warmup length in optimizer steps, as HF TrainingArguments.get_warmup_steps:
 * warmupSteps if ≥ 1, else ceil(numTrainingSteps × ratio) with the ratio taken
 * from warmupSteps ∈ (0, 1) or warmupRatio.
 * @throws Error for negative values or a ratio ≥ 1 given as warmupRatio.
 */
export function getWarmupSteps(numTrainingSteps: number, warmupSteps = 0, warmupRatio = 0): number {
  if (!(warmupSteps >= 0)) throw new Error(`warmup_steps ${warmupSteps}; expected ≥ 0`);
  if (!(warmupRatio >= 0 && warmupRatio < 1)) throw new Error(`warmup_ratio ${warmupRatio}; expected a number in [0, 1)`);
  if (warmupSteps >= 1) return Math.floor(warmupSteps);
  const ratio = warmupSteps > 0 ? warmupSteps : warmupRatio;
  return Math.ceil(numTrainingSteps * ratio);
}

/**
 * The schedule `name` with its HF lambda:
 * - warmup (all but 'constant'): lambda = step / max(1, warmup) while step < warmup;
 * - 'linear': then max(0, (total − step) / max(1, total − warmup));
 * - 'cosine': then max(0, ½(1 + cos(π · 2 · numCycles · progress))), progress = (step − warmup) / max(1, total − warmup);
 * - 'constant': 1 (no warmup); 'constant_with_warmup': then 1;
 * - 'inverse_sqrt': then 1 / sqrt((step + timescale − warmup) / timescale);
 * - 'inverse_time' (not in HF; Keras InverseTimeDecay per step): then 1 / (1 + decayRate · (step − warmup)).
 * @throws Error for an unknown name, a negative learningRate (0 is allowed, as in HF), a non-positive numTrainingSteps,
 *   bad warmup values, or 'inverse_time' without a decayRate ≥ 0.
 */
export function getScheduler(options: ScheduleOptions): LrSchedule {
  const name = options.name ?? 'linear';
  const { learningRate: lr0, numTrainingSteps: total } = options;
  if (!SCHEDULER_TYPES.includes(name)) throw new Error(`lr_scheduler_type "${name}"; expected one of ${SCHEDULER_TYPES.join(', ')}`);
  if (!(lr0 >= 0) || !Number.isFinite(lr0)) throw new Error(`learning_rate ${lr0}; expected a finite number >= 0`);
  if (!(Number.isInteger(total) && total > 0)) throw new Error(`num_training_steps ${total}; expected a positive integer`);
  const warmup = name === 'constant' ? 0 : getWarmupSteps(total, options.warmupSteps, options.warmupRatio);
  const decay = lambdaAfterWarmup(name, warmup, total, options);
  const lambda = (step: number) => (step < warmup ? step / Math.max(1, warmup) : decay(step));
  return {
    name,
    warmupSteps: warmup,
    numTrainingSteps: total,
    lrAt: (step) => {
      if (!(Number.isInteger(step) && step >= 0)) throw new Error(`lrAt: step ${step}; expected an integer ≥ 0`);
      return lr0 * lambda(step);
    },
  };
}

function lambdaAfterWarmup(name: SchedulerType, warmup: number, total: number, o: ScheduleOptions): (step: number) => number {
  const progress = (step: number) => (step - warmup) / Math.max(1, total - warmup);
  switch (name) {
    case 'linear':
      return (step) => Math.max(0, (total - step) / Math.max(1, total - warmup));
    case 'cosine': {
      const cycles = o.numCycles ?? 0.5;
      return (step) => Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress(step))));
    }
    case 'constant':
    case 'constant_with_warmup':
      return () => 1;
    case 'inverse_sqrt': {
      const timescale = o.timescale ?? (warmup || 10_000);
      return (step) => 1 / Math.sqrt((step + timescale - warmup) / timescale);
    }
    case 'inverse_time': {
      const rate = o.decayRate;
      if (rate === undefined || !(rate >= 0)) throw new Error(`inverse_time: decay_rate ${rate}; expected a number ≥ 0`);
      return (step) => 1 / (1 + rate * (step - warmup));
    }
  }
}
