/**
 * The fine-tuning loop: batches, gradient accumulation, learning-rate
 * schedule, evaluation, best/last checkpoints, early stopping and exact resume.
 * Argument names follow Hugging Face TrainingArguments; the loop follows
 * transformers' Trainer (an optimizer step every gradient_accumulation_steps
 * micro-batches, a final partial window still steps; the scheduler counts
 * optimizer steps). What differs between tasks — encoding, collation, the
 * loss normalisation of accumulated micro-batches, metrics, what a checkpoint
 * holds — is a {@link TrainingTask} (src/tasks): the sequence classifier
 * (src/tasks/classification.ts) and the causal LM (src/tasks/causal-lm) share
 * this one loop. Under an MPI launcher the same loop is data parallel
 * (src/train/distributed.ts): each rank runs its rows of every micro-batch and
 * the step sums the gradients over ranks; rank 0 alone writes.
 */
import { EventEmitter } from 'node:events';
import { mkdir, readdir, readFile, rm, rename, appendFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Model } from '../model.js';
import { loadAddon } from '../engine.js';
import { makeBatches } from '../data/index.js';
import { getScheduler, type SchedulerType, type LrSchedule } from './schedule.js';
import type { EvalResults } from '../metrics/index.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { ClassificationTask, CLASSIFICATION_METRICS, type EncodedExample } from '../tasks/classification.js';
import type { TaskEvalResults, TaskSetting, TrainingTask } from '../tasks/task.js';
import { lrFind, LrFindError, LR_FIND_DIVISOR, type LrFindResult } from './lr-find.js';
import { allReduceSum, joinWorld, shardBatch, shardRange, type World } from './distributed.js';

export { collate, encodeExamples, evaluateExamples, predictExamples, type EncodedExample } from '../tasks/classification.js';
export type { TaskEvalResults, TaskSetting, TrainingTask } from '../tasks/task.js';

export interface TrainingArguments {
  output_dir: string;
  num_train_epochs?: number;
  /** > 0 overrides num_train_epochs (HF). */
  max_steps?: number;
  per_device_train_batch_size?: number;
  per_device_eval_batch_size?: number;
  gradient_accumulation_steps?: number;
  /**
   * Peak rate, or 'auto': the learning-rate range test (src/train/lr-find.ts) picks it before the
   * first step (a resumed run takes the rate its checkpoint recorded); see Trainer.lrFound.
   */
  learning_rate?: number | 'auto';
  lr_scheduler_type?: SchedulerType;
  warmup_steps?: number;
  warmup_ratio?: number;
  /** 'inverse_time' decay per optimizer step. */
  decay_rate?: number;
  weight_decay?: number;
  adam_beta1?: number;
  adam_beta2?: number;
  adam_epsilon?: number;
  max_grad_norm?: number;
  /** 'epoch' (default), 'steps' (every eval_steps) or 'no'. */
  eval_strategy?: 'epoch' | 'steps' | 'no';
  eval_steps?: number;
  /** Save the resumable last checkpoint every save_steps optimizer steps (and every evaluation). */
  save_steps?: number;
  metric_for_best_model?: string;
  greater_is_better?: boolean;
  early_stopping_patience?: number;
  logging_steps?: number;
  seed?: number;
  group_by_length?: boolean;
  /** Resume from output_dir/checkpoint-last. */
  resume_from_checkpoint?: boolean;
  /**
   * Data parallel (several MPI ranks, src/train/distributed.ts): seconds a rank waits for the others
   * at a collective before it stops with an error naming the missing rank. Default 1800 (HF).
   */
  ddp_timeout?: number;
}

export interface LogEntry {
  step: number;
  epoch: number;
  loss: number;
  learning_rate: number;
  grad_norm: number;
  /** Examples (rows, when packed) per second since the last log line. */
  samples_per_second: number;
  /** Real (unpadded) tokens per second since the last log line; tasks that count tokens only (the causal LM). */
  tokens_per_second?: number;
}

/** One evaluation: the task's results (classifier: {@link EvalResults}) at an optimizer step. */
export type EvalEntry<R extends TaskEvalResults = EvalResults> = R & {
  step: number;
  epoch: number;
};

interface TrainerState {
  global_step: number;
  /** epoch index and batch position of the next micro-batch to run. */
  epoch: number;
  batch_in_epoch: number;
  best_metric: number | null;
  best_step: number | null;
  patience_used: number;
  log_history: LogEntry[];
  eval_history: Array<EvalEntry<TaskEvalResults>>;
  engine_counters: { optimizerStep: number; microStep: number };
  num_training_steps: number;
  /** Losses of the steps since the last log line, so a resumed run logs the same means. */
  log_window?: { loss: number; steps: number };
  /** What fixed the data order and schedule; a resumed run must match it. */
  settings?: ResumeSettings;
}

/**
 * The settings that decide data order, schedule and head shape: a resumed run must use the same.
 * A task adds its own (a classifier num_labels; a causal LM max_length, packing, the LoRA shape).
 */
export interface ResumeSettings {
  train_examples: number;
  num_labels?: number;
  per_device_train_batch_size: number;
  gradient_accumulation_steps: number;
  num_train_epochs: number;
  max_steps: number;
  learning_rate: number | 'auto';
  lr_scheduler_type: string;
  warmup_steps: number;
  warmup_ratio: number;
  seed: number;
  group_by_length: boolean;
  [task: string]: string | number | boolean | undefined;
}

/** Every TrainingArguments key (`satisfies` keeps the list complete and exact). */
export const TRAINING_ARGUMENT_KEYS = Object.keys({
  output_dir: 1, num_train_epochs: 1, max_steps: 1, per_device_train_batch_size: 1, per_device_eval_batch_size: 1,
  gradient_accumulation_steps: 1, learning_rate: 1, lr_scheduler_type: 1, warmup_steps: 1, warmup_ratio: 1,
  decay_rate: 1, weight_decay: 1, adam_beta1: 1, adam_beta2: 1, adam_epsilon: 1, max_grad_norm: 1,
  eval_strategy: 1, eval_steps: 1, save_steps: 1, metric_for_best_model: 1, greater_is_better: 1,
  early_stopping_patience: 1, logging_steps: 1, seed: 1, group_by_length: 1, resume_from_checkpoint: 1, ddp_timeout: 1,
} satisfies Record<keyof TrainingArguments, 1>) as Array<keyof TrainingArguments>;

/**
 * The TrainingArguments of a pipeline's options: each key from `o`, else from `defaults` (the
 * pipeline's own), then `overrides`; keys left undefined are dropped (the Trainer's defaults apply).
 */
export function pickTrainingArguments(o: TrainingArguments, defaults: Partial<TrainingArguments> = {}, overrides: Partial<TrainingArguments> = {}): TrainingArguments {
  const picked: Record<string, unknown> = {};
  for (const k of TRAINING_ARGUMENT_KEYS) picked[k] = overrides[k] ?? o[k] ?? defaults[k];
  return Object.fromEntries(Object.entries(picked).filter(([, v]) => v !== undefined)) as unknown as TrainingArguments;
}

/**
 * Rejects option keys a pipeline does not know, as Hugging Face TrainingArguments rejects unknown
 * keyword arguments: from JavaScript a typo (`learningrate`) would otherwise train silently with
 * the default. `own` are the pipeline's keys besides TrainingArguments'.
 * @throws Error "<fn>: unknown option 'k' (did you mean ...?)".
 */
export function checkOptionKeys(fn: string, o: object, own: readonly string[]): void {
  const known = [...TRAINING_ARGUMENT_KEYS, ...own];
  const squash = (k: string) => k.toLowerCase().replace(/[_-]/g, '');
  for (const key of Object.keys(o)) {
    if (known.includes(key)) continue;
    const near = known.filter((k) => squash(k) === squash(key) || squash(k).includes(squash(key)) || squash(key).includes(squash(k)));
    throw new Error(`${fn}: unknown option '${key}'${near.length ? ` (did you mean ${near.join(' or ')}?)` : ''}`);
  }
}

/** CLI flag of each setting, so a mismatch names what the user typed. */
const SETTING_FLAGS: Record<string, string> = {
  train_examples: 'training examples',
  num_labels: 'num_labels',
  per_device_train_batch_size: '--batch-size',
  gradient_accumulation_steps: '--gradient-accumulation-steps',
  num_train_epochs: '--epochs',
  max_steps: '--max-steps',
  learning_rate: '--learning-rate',
  lr_scheduler_type: '--lr-scheduler-type',
  warmup_steps: '--warmup-steps',
  warmup_ratio: '--warmup-ratio',
  seed: '--seed',
  group_by_length: 'group_by_length',
};

/** The ResumeSettings of `args` (defaults filled in) for a training set of `trainExamples` and `numLabels` classes. */
export function resumeSettings(args: TrainingArguments, trainExamples: number, numLabels: number): ResumeSettings {
  return taskResumeSettings(args, trainExamples, { num_labels: { value: numLabels, flag: 'num_labels' } });
}

/** The ResumeSettings of `args` for `trainExamples` training examples (rows) plus a task's own settings. */
export function taskResumeSettings(args: TrainingArguments, trainExamples: number, task: Record<string, TaskSetting>): ResumeSettings {
  const a = withDefaults(args);
  const extra = Object.fromEntries(Object.entries(task).map(([k, s]) => [k, s.value]));
  return {
    train_examples: trainExamples,
    ...extra,
    per_device_train_batch_size: a.per_device_train_batch_size,
    gradient_accumulation_steps: a.gradient_accumulation_steps,
    num_train_epochs: a.num_train_epochs,
    max_steps: a.max_steps,
    learning_rate: a.learning_rate,
    lr_scheduler_type: a.lr_scheduler_type,
    warmup_steps: a.warmup_steps,
    warmup_ratio: a.warmup_ratio,
    seed: a.seed,
    group_by_length: a.group_by_length,
  };
}

/**
 * Cleans up after a process killed while it saved checkpoint-last or checkpoint-best (the Trainer
 * writes `<name>.tmp-<pid>`, renames the old folder to `<name>.old-<pid>`, renames the new one in,
 * then deletes the old): where the folder itself is missing, the old one (complete) is put back;
 * every `.tmp-` and `.old-` folder left is deleted. Call it only while holding the output folder
 * (its lock), so that no live save owns them.
 */
export async function recoverUnfinishedSaves(outputDir: string): Promise<void> {
  if (!existsSync(outputDir)) return;
  const entries = await readdir(outputDir);
  for (const name of ['checkpoint-last', 'checkpoint-best']) {
    const old = entries.filter((f) => f.startsWith(`${name}.old-`) && /-\d+$/.test(f));
    if (!existsSync(join(outputDir, name)) && old.length > 0) await rename(join(outputDir, old[0]), join(outputDir, name));
    for (const f of entries.filter((e) => /^checkpoint-(last|best)\.(tmp|old)-\d+$/.test(e) && e.startsWith(`${name}.`))) {
      await rm(join(outputDir, f), { recursive: true, force: true });
    }
  }
}

/**
 * Parses a JSON file. @throws Error naming the file when it is empty or not valid JSON
 * (the raw SyntaxError does not say which file).
 */
export async function readJsonFile(path: string): Promise<unknown> {
  const text = await readFile(path, 'utf8');
  try {
    if (text.trim() === '') throw new Error('the file is empty');
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message}); the file is corrupt, expected a JSON object`);
  }
}

/**
 * Compares the settings saved in `statePath` (a checkpoint's trainer_state.json) with `now`.
 * @param flags the flag of each task setting (a task's resumeSettings()), for the message.
 * @throws Error naming the file and listing every mismatch ("--batch-size: checkpoint 16, now 32"),
 *   or naming a corrupt file; a checkpoint without saved settings (older runs) passes.
 */
export async function checkResumeSettings(statePath: string, now: ResumeSettings, flags: Record<string, string> = {}): Promise<void> {
  const state = (await readJsonFile(statePath)) as Partial<TrainerState> | null;
  if (state === null || typeof state !== 'object' || typeof state.global_step !== 'number') {
    throw new Error(`${statePath}: not a trainer state (no global_step); the checkpoint is corrupt`);
  }
  const saved = state.settings;
  if (!saved) return;
  if (saved.num_labels !== undefined && saved.num_labels !== now.num_labels) {
    throw new Error(`cannot resume from ${statePath}: the checkpoint has ${saved.num_labels} labels, the data ${now.num_labels}`);
  }
  const names = { ...SETTING_FLAGS, ...flags };
  // 'auto' resumes with the rate the checkpoint's range test chose.
  const diffs = [...new Set([...Object.keys(SETTING_FLAGS), ...Object.keys(now)])]
    .filter((k) => saved[k] !== undefined && saved[k] !== now[k] && !(k === 'learning_rate' && now[k] === 'auto'))
    .map((k) => `${names[k] ?? k}: checkpoint ${saved[k]}, now ${now[k]}`);
  if (diffs.length > 0) {
    throw new Error(`cannot resume from ${statePath}: settings differ from the checkpoint (use the same ones, or train afresh with --overwrite-output-dir):\n  ${diffs.join('\n  ')}`);
  }
}

const DEFAULTS = {
  num_train_epochs: 3,
  max_steps: -1,
  per_device_train_batch_size: 32,
  per_device_eval_batch_size: 64,
  gradient_accumulation_steps: 1,
  learning_rate: 5e-5,
  lr_scheduler_type: 'linear' as SchedulerType,
  warmup_steps: 0,
  warmup_ratio: 0,
  eval_strategy: 'epoch' as const,
  eval_steps: 500,
  save_steps: 500,
  metric_for_best_model: 'accuracy',
  early_stopping_patience: 0,
  logging_steps: 10,
  seed: 42,
  group_by_length: true,
};


/**
 * [argument, test, expected] for the optimizer and seed arguments (checked when given). The native
 * engine checks these too, but only once the model is loaded; max_grad_norm 0 disables clipping there
 * (native/engine/engine.cpp), as in HF. learning_rate is left to getScheduler (finite, ≥ 0, 0 allowed as in HF).
 */
const ARGUMENT_RANGES: ReadonlyArray<[keyof TrainingArguments, (x: number) => boolean, string]> = [
  ['weight_decay', (x) => Number.isFinite(x) && x >= 0, 'a finite number ≥ 0'],
  ['adam_beta1', (x) => x >= 0 && x < 1, 'a number in [0, 1)'],
  ['adam_beta2', (x) => x >= 0 && x < 1, 'a number in [0, 1)'],
  ['adam_epsilon', (x) => Number.isFinite(x) && x > 0, 'a finite number > 0'],
  ['max_grad_norm', (x) => Number.isFinite(x) && x >= 0, 'a finite number ≥ 0 (0 = no clipping)'],
  ['seed', (x) => Number.isSafeInteger(x), 'an integer (a safe integer, |seed| ≤ 2^53 − 1)'],
];

/** @throws Error "adam_beta2 1.5: expected a number in [0, 1)" for the first ARGUMENT_RANGES entry `a` breaks. */
function checkRanges(a: TrainingArguments): void {
  for (const [key, ok, expected] of ARGUMENT_RANGES) {
    const v = a[key];
    if (v === undefined || (typeof v === 'number' && ok(v))) continue;
    throw new Error(`${key} ${typeof v === 'number' ? v : JSON.stringify(v)}: expected ${expected}`);
  }
}

/** The arguments with DEFAULTS filled in; a key given as undefined keeps its default. */
function withDefaults(args: TrainingArguments): Trainer['args'] {
  const given = Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined));
  return { ...DEFAULTS, ...given } as Trainer['args'];
}

/**
 * Checks TrainingArguments before any model is loaded or step is taken, so a
 * typo does not surface after an epoch of training (or never: a step count
 * of 0 would silently disable logging, saving or accumulation; an adam_beta2
 * of 1.5 would only fail once the model is loaded).
 * @param metrics what metric_for_best_model may name (default: the classifier's metrics).
 * @throws Error naming the argument, its value and what was expected.
 */
export function validateTrainingArguments(args: TrainingArguments, metrics: readonly string[] = CLASSIFICATION_METRICS): void {
  const a = withDefaults(args);
  const positiveInts = ['per_device_train_batch_size', 'per_device_eval_batch_size', 'gradient_accumulation_steps', 'logging_steps', 'save_steps', 'eval_steps'] as const;
  for (const key of positiveInts) {
    if (!Number.isInteger(a[key]) || a[key] < 1) throw new Error(`${key} ${a[key]}: expected a positive integer`);
  }
  if (!Number.isInteger(a.max_steps)) throw new Error(`max_steps ${a.max_steps}: expected an integer (> 0 overrides num_train_epochs)`);
  if (a.max_steps <= 0 && !(a.num_train_epochs > 0)) throw new Error(`num_train_epochs ${a.num_train_epochs}: expected a number > 0 (or max_steps > 0)`);
  if (!Number.isInteger(a.early_stopping_patience) || a.early_stopping_patience < 0) {
    throw new Error(`early_stopping_patience ${a.early_stopping_patience}: expected an integer ≥ 0 (0 = off)`);
  }
  if (a.early_stopping_patience > 0 && a.eval_strategy === 'no') {
    throw new Error(`early_stopping_patience ${a.early_stopping_patience} needs evaluations; eval_strategy is 'no' (expected 'epoch' or 'steps')`);
  }
  if (!metrics.includes(a.metric_for_best_model.replace(/^eval_/, ''))) {
    throw new Error(`metric_for_best_model '${a.metric_for_best_model}' is not one of: ${metrics.join(', ')}`);
  }
  checkRanges(a);
  // The schedule's own checks (name, learning_rate, warmup, decay_rate) do not depend on the step count.
  if (typeof a.learning_rate !== 'number' && a.learning_rate !== 'auto') throw new Error(`learning_rate ${JSON.stringify(a.learning_rate)}: expected a number or 'auto'`);
  getScheduler({ name: a.lr_scheduler_type, learningRate: a.learning_rate === 'auto' ? 1 : a.learning_rate, numTrainingSteps: 1, warmupSteps: a.warmup_steps, warmupRatio: a.warmup_ratio, decayRate: a.decay_rate });
}

/** A classifier Model (which the loop wraps in a ClassificationTask) rather than a task. */
function isTask<E, R extends TaskEvalResults>(x: Model | TrainingTask<E, R>): x is TrainingTask<E, R> {
  return typeof (x as TrainingTask<E, R>).collate === 'function';
}

/**
 * The one training loop. Give it a {@link TrainingTask} (the causal LM's, or any other), or a
 * classifier {@link Model}, which it runs as a {@link ClassificationTask}.
 *
 * Events: 'step' (LogEntry, every optimizer step), 'log' (LogEntry, every
 * logging_steps), 'evaluate' (EvalEntry), 'checkpoint' ({dir, kind: 'last' | 'best'}),
 * 'done' (after the final save); with learning_rate 'auto', 'lr_find_step' ({ step, lr, loss }
 * each step of the range test), then 'lr_find' (LrFindResult) or 'lr_find_failed'
 * ({ message, learning_rate }) before the first step.
 * @typeParam E the task's encoded example; R its evaluation results.
 */
export class Trainer<E = EncodedExample, R extends TaskEvalResults = EvalResults> extends EventEmitter {
  readonly args: Required<Omit<TrainingArguments, 'decay_rate' | 'weight_decay' | 'adam_beta1' | 'adam_beta2' | 'adam_epsilon' | 'max_grad_norm' | 'greater_is_better' | 'resume_from_checkpoint' | 'ddp_timeout'>> &
    TrainingArguments;
  readonly task: TrainingTask<E, R>;
  private stopRequested = false;
  /** Data parallel: a stop every rank has agreed on (at the last optimizer step's all-reduce). */
  private stopAgreed = false;
  /** Steps since the last log line. */
  private window = { loss: 0, steps: 0, samples: 0, tokens: 0, start: 0 };
  private lastEntry: LogEntry | null = null;
  private state!: TrainerState;
  private schedule!: LrSchedule;
  /** The range test's result when learning_rate was 'auto' and the run did not resume; else null. */
  lrFound: LrFindResult | null = null;
  /** Every step ran: a stop() that came after the last one (a late Ctrl-C) interrupts nothing. */
  private completed = false;
  /** The data-parallel world (one process: rank 0 of 1); only rank 0 writes files. */
  readonly world: World;

  /**
   * @throws Error naming a bad TrainingArguments value (metric_for_best_model checked against the
   *   task's metrics), or for an empty training set.
   */
  constructor(
    modelOrTask: Model | TrainingTask<E, R>,
    readonly train: E[],
    readonly evalSet: E[] | null,
    args: TrainingArguments,
  ) {
    super();
    this.task = isTask(modelOrTask) ? modelOrTask : (new ClassificationTask(modelOrTask) as unknown as TrainingTask<E, R>);
    const withMetric = { ...args, metric_for_best_model: args.metric_for_best_model ?? this.task.defaultMetric };
    validateTrainingArguments(withMetric, this.task.metricNames);
    this.args = withDefaults(withMetric);
    if (train.length === 0) throw new Error('Trainer: the training set is empty');
    this.world = joinWorld(args.ddp_timeout);
    // On the CUDA engine the gradients are summed on the device by NCCL (one GPU per rank), which the addon has
    // only when it was built with the CUDA engine, MPI and NCCL together.
    if (this.world.size > 1 && this.task.engine.device() !== 'cpu' && !loadAddon().ncclCompiled) {
      throw new Error(`data-parallel training over ${this.world.size} ranks on the CUDA engine (${this.task.engine.device()}) needs NCCL, which this build of the addon does not have (build it with CUDA, MPI and NCCL: bash scripts/cuda-toolkit.sh, source .cache/cuda/env.sh, npx cmake-js compile --CDNODETUNE_CUDA=ON); or run one process per GPU job, or --device cpu`);
    }
  }

  /** The classifier's Model when the task is a {@link ClassificationTask} (what the constructor got). */
  get model(): Model {
    const model = (this.task as { model?: Model }).model;
    if (!model) throw new Error('Trainer.model: this trainer runs a task without a classifier Model; use trainer.task');
    return model;
  }

  /** True once stop() was called (Ctrl-C): the run ended before its last step. */
  get interrupted(): boolean {
    return this.stopping && !this.completed;
  }

  /** Optimizer steps taken so far. */
  get globalStep(): number {
    return this.state?.global_step ?? 0;
  }

  /** Optimizer steps the run will take (known once trainLoop has started). */
  get totalSteps(): number {
    return this.schedule?.numTrainingSteps ?? 0;
  }

  /** Asks the loop to stop after the current optimizer step, saving checkpoint-last. */
  stop(): void {
    this.stopRequested = true;
  }

  /** The loop stops after this step: stop() was called (data parallel: on some rank, agreed by all at the step). */
  private get stopping(): boolean {
    return this.world.size === 1 ? this.stopRequested : this.stopAgreed;
  }

  /** Whether this process writes files: rank 0 of a data-parallel world, or the only process. */
  get writes(): boolean {
    return this.world.rank === 0;
  }

  get lastDir(): string {
    return join(this.args.output_dir, 'checkpoint-last');
  }
  get bestDir(): string {
    return join(this.args.output_dir, 'checkpoint-best');
  }

  /** Runs training to the end (or stop()); returns the state's histories. */
  async trainLoop(): Promise<{ log: LogEntry[]; evals: Array<EvalEntry<R>>; stoppedEarly: boolean; bestStep: number | null }> {
    const a = this.args;
    if (this.writes) {
      await mkdir(a.output_dir, { recursive: true });
      await recoverUnfinishedSaves(a.output_dir);
    }
    if (a.learning_rate === 'auto') await this.chooseLearningRate();
    const batchesPerEpoch = Math.ceil(this.train.length / a.per_device_train_batch_size);
    const stepsPerEpoch = Math.ceil(batchesPerEpoch / a.gradient_accumulation_steps);
    // HF: a fractional num_train_epochs trains ceil(epochs × steps per epoch) steps.
    const total = a.max_steps > 0 ? a.max_steps : Math.ceil(stepsPerEpoch * a.num_train_epochs);
    this.schedule = getScheduler({
      name: a.lr_scheduler_type,
      learningRate: a.learning_rate as number, // 'auto' was resolved above
      numTrainingSteps: total,
      warmupSteps: a.warmup_steps,
      warmupRatio: a.warmup_ratio,
      decayRate: a.decay_rate,
    });
    this.state = a.resume_from_checkpoint ? await this.loadCheckpoint() : this.freshState(total);
    // The log file holds exactly the checkpointed history, so a resumed run does not repeat lines.
    if (this.writes) await writeFile(join(a.output_dir, 'training_log.jsonl'), this.state.log_history.map((e) => JSON.stringify(e) + '\n').join(''));
    const lengths = this.train.map((e) => this.task.length(e));
    let stoppedEarly = false;
    const pending = this.state.log_window ?? { loss: 0, steps: 0 };
    this.window = { ...pending, samples: 0, tokens: 0, start: performance.now() };
    while (this.state.global_step < total && !this.stopping && !stoppedEarly) {
      const epoch = this.state.epoch;
      this.task.setEpoch?.(epoch);
      const batches = makeBatches(lengths, {
        batchSize: a.per_device_train_batch_size,
        seed: a.seed,
        epoch,
        groupByLength: a.group_by_length,
      });
      while (this.state.batch_in_epoch < batches.length && this.state.global_step < total) {
        const start = this.state.batch_in_epoch;
        const window = batches.slice(start, Math.min(start + a.gradient_accumulation_steps, batches.length));
        const { loss, gradNorm, tokens } = await this.optimizerStep(window);
        this.state.batch_in_epoch += window.length;
        this.window.loss += loss;
        this.window.steps += 1;
        this.window.samples += window.reduce((n, b) => n + b.length, 0);
        this.window.tokens += tokens;
        const ms = Math.max(1e-9, performance.now() - this.window.start);
        const entry: LogEntry = {
          step: this.state.global_step,
          epoch: epoch + this.state.batch_in_epoch / batches.length,
          loss,
          learning_rate: this.schedule.lrAt(this.state.global_step - 1),
          grad_norm: gradNorm,
          samples_per_second: (this.window.samples * 1000) / ms,
        };
        if (this.task.tokenCount) entry.tokens_per_second = (this.window.tokens * 1000) / ms;
        this.emit('step', entry);
        this.lastEntry = entry;
        if (this.state.global_step % a.logging_steps === 0) await this.flushLog(entry);
        if (a.eval_strategy === 'steps' && this.state.global_step % a.eval_steps === 0) {
          stoppedEarly = await this.evaluateAndSave();
        } else if (this.state.global_step % a.save_steps === 0) {
          await this.saveLast();
        }
        if (this.stopping || stoppedEarly) break;
      }
      if (this.state.batch_in_epoch >= batches.length) {
        this.state.epoch += 1;
        this.state.batch_in_epoch = 0;
        if (a.eval_strategy === 'epoch') stoppedEarly = await this.evaluateAndSave();
      }
    }
    this.completed = this.state.global_step >= total;
    const interrupted = this.interrupted;
    if (this.lastEntry && this.window.steps > 0 && !interrupted) await this.flushLog(this.lastEntry);
    // A run cut short by max_steps (not by stop()) still gets its final evaluation (HF evaluates at epoch end).
    const lastEval = this.state.eval_history.at(-1)?.step;
    if (a.eval_strategy !== 'no' && !stoppedEarly && !interrupted && lastEval !== this.state.global_step) {
      stoppedEarly = await this.evaluateAndSave();
    }
    await this.saveLast();
    this.emit('done');
    return { log: this.state.log_history, evals: this.state.eval_history as Array<EvalEntry<R>>, stoppedEarly, bestStep: this.state.best_step };
  }

  /** Logs the mean loss over the steps since the last log line (HF logging_steps). */
  private async flushLog(entry: LogEntry): Promise<void> {
    const logged = { ...entry, loss: this.window.loss / this.window.steps };
    this.state.log_history.push(logged);
    if (this.writes) await appendFile(join(this.args.output_dir, 'training_log.jsonl'), JSON.stringify(logged) + '\n');
    this.emit('log', logged);
    this.window = { loss: 0, steps: 0, samples: 0, tokens: 0, start: performance.now() };
  }

  /** checkpoint-last's folder for an error message, or that there is none yet. */
  private lastCheckpoint(): string {
    return existsSync(this.lastDir) ? this.lastDir : '(none saved yet)';
  }

  /**
   * Accumulates the micro-batches of one window, each scaled by its share of the window's
   * lossWeight (examples, or target tokens), then one AdamW step: the step's gradient is that
   * of the window's mean loss, as if it were one batch.
   */
  private async optimizerStep(window: number[][]): Promise<{ loss: number; gradNorm: number; tokens: number }> {
    const engine = this.task.engine;
    const { rank, size } = this.world;
    const micro = window.map((idx) => idx.map((i) => this.train[i]));
    const weights = micro.map((ex) => this.task.lossWeight(ex));
    const total = weights.reduce((n, w) => n + w, 0);
    let loss = 0;
    let tokens = 0;
    for (let m = 0; m < micro.length; m++) {
      // A micro-batch with nothing to learn (weight 0) would only add zero gradients.
      if (weights[m] === 0) continue;
      tokens += this.task.tokenCount?.(micro[m]) ?? 0;
      // This rank's rows of the global micro-batch (all of it on one process) and their share of the step's loss.
      const [lo, hi] = shardRange(micro[m].length, rank, size);
      const weight = size === 1 ? weights[m] : hi > lo ? this.task.lossWeight(micro[m].slice(lo, hi)) : 0;
      if (weight === 0) {
        // The one-process run takes a forward here: keep the dropout stream in step with it.
        const c = engine.getCounters();
        engine.setCounters({ ...c, microStep: c.microStep + 1 });
        continue;
      }
      // Collated whole, so a shard is padded as the global micro-batch is.
      const whole = this.task.collate(micro[m]);
      const batch = size === 1 ? whole : shardBatch(whole, lo, hi);
      const share = weight / total;
      const out = await engine.accumulate(batch, { lossScale: share });
      loss += out.loss * share;
    }
    if (size > 1) {
      // The global batch's loss, and a stop (Ctrl-C) on any rank stops every rank after this step.
      const sums = await allReduceSum(new Float64Array([loss, this.stopRequested ? 1 : 0]), `the loss all-reduce of optimizer step ${this.state.global_step + 1}`);
      loss = sums[0];
      if (sums[1] > 0) this.stopAgreed = true;
    }
    if (!Number.isFinite(loss)) {
      await engine.zeroGrad();
      throw new Error(
        `training stopped: the loss became ${loss} at optimizer step ${this.state.global_step + 1} (epoch ${this.state.epoch + 1}); ` +
          `no update was applied. The last good checkpoint is ${this.lastCheckpoint()}. ` +
          'Try a lower --learning-rate or a --max-grad-norm.',
      );
    }
    const lr = this.schedule.lrAt(this.state.global_step);
    const { gradNorm } = await engine.step({ learningRate: lr, allReduce: size > 1 });
    if (!Number.isFinite(gradNorm)) {
      throw new Error(
        `training stopped: the gradient norm became ${gradNorm} at optimizer step ${this.state.global_step + 1} (epoch ${this.state.epoch + 1}) ` +
          `although the loss was finite (${loss}); no update was applied. The last good checkpoint is ` +
          `${this.lastCheckpoint()}. Try a lower --learning-rate.`,
      );
    }
    this.state.global_step += 1;
    return { loss, gradNorm, tokens };
  }

  /**
   * The task's evaluation. Data parallel, for a task with evaluationSums: each rank evaluates its
   * shard and the sums are added over ranks, so every rank gets the same results.
   */
  private async evaluate(examples: E[]): Promise<R> {
    const { rank, size } = this.world;
    const bs = this.args.per_device_eval_batch_size;
    if (size === 1 || !this.task.evaluationSums || !this.task.evaluationResults) return this.task.evaluate(examples, bs);
    const [lo, hi] = shardRange(examples.length, rank, size);
    const sums = await this.task.evaluationSums(examples.slice(lo, hi), bs);
    return this.task.evaluationResults(await allReduceSum(sums, `the evaluation all-reduce at optimizer step ${this.state.global_step}`));
  }

  /** Evaluates, keeps the best checkpoint, saves the last; returns true to stop early. */
  private async evaluateAndSave(): Promise<boolean> {
    const a = this.args;
    if (!this.evalSet || this.evalSet.length === 0) {
      await this.saveLast();
      return false;
    }
    const results = await this.evaluate(this.evalSet);
    const entry: EvalEntry<R> = { ...results, step: this.state.global_step, epoch: this.state.epoch };
    this.state.eval_history.push(entry);
    this.emit('evaluate', entry);
    const metric = (results as unknown as Record<string, number>)[a.metric_for_best_model.replace(/^eval_/, '')];
    if (typeof metric !== 'number') throw new Error(`metric_for_best_model '${a.metric_for_best_model}' is not one of: ${this.task.metricNames.join(', ')}`);
    const greater = a.greater_is_better ?? a.metric_for_best_model.replace(/^eval_/, '') !== 'loss';
    const best = this.state.best_metric;
    // A non-finite metric (an evaluation with nothing to score) is never the best model.
    const improved = Number.isFinite(metric) && (best === null || (greater ? metric > best : metric < best));
    if (improved) {
      this.state.best_metric = metric;
      this.state.best_step = this.state.global_step;
      this.state.patience_used = 0;
      await this.saveModelTo(this.bestDir);
      this.emit('checkpoint', { dir: this.bestDir, kind: 'best' });
    } else {
      this.state.patience_used += 1;
    }
    await this.saveLast();
    return a.early_stopping_patience > 0 && this.state.patience_used >= a.early_stopping_patience;
  }

  /**
   * learning_rate 'auto': the range test (lr-find.ts, the steepest fall of the smoothed loss divided
   * by the task's lrFindDivisor, LR_FIND_DIVISOR by default) on the training set with this run's batch size and seed, its curve written
   * to lr_find.json and emitted as 'lr_find'; a resumed run takes the rate its checkpoint recorded.
   * Either way args.learning_rate becomes that number. A curve without a rate to read
   * (LrFindError) falls back to 5e-5, emitting 'lr_find_failed' ({ message, learning_rate }).
   */
  private async chooseLearningRate(): Promise<void> {
    const a = this.args;
    let rate: number;
    if (a.resume_from_checkpoint) {
      const statePath = join(this.lastDir, 'trainer_state.json');
      const saved = existsSync(statePath) ? ((await readJsonFile(statePath)) as Partial<TrainerState> | null)?.settings?.learning_rate : undefined;
      if (typeof saved !== 'number') throw new Error(`cannot resume with learning_rate 'auto': ${statePath} records no learning rate; pass the run's --learning-rate`);
      rate = saved;
    } else {
      try {
        this.lrFound = await lrFind(this.task, this.train, {
          batch_size: a.per_device_train_batch_size, accumulation: a.gradient_accumulation_steps, seed: a.seed, group_by_length: a.group_by_length,
          divisor: this.task.lrFindDivisor ?? LR_FIND_DIVISOR, shouldStop: () => this.stopRequested,
          onStep: (step, lr, loss) => this.emit('lr_find_step', { step, lr, loss }),
        });
        rate = this.lrFound.learning_rate;
        if (this.writes) await writeFile(join(a.output_dir, 'lr_find.json'), JSON.stringify(this.lrFound));
        this.emit('lr_find', this.lrFound);
      } catch (err) {
        // No rate to read off the curve (a model or data that does not train at any rate in the
        // sweep): train at Hugging Face's default and say so, rather than fail a run that gave no rate.
        if (!(err instanceof LrFindError)) throw err;
        rate = DEFAULTS.learning_rate;
        this.emit('lr_find_failed', { message: err.message, learning_rate: rate });
      }
    }
    (this.args as TrainingArguments).learning_rate = rate;
  }

  private freshState(total: number): TrainerState {
    return {
      global_step: 0,
      epoch: 0,
      batch_in_epoch: 0,
      best_metric: null,
      best_step: null,
      patience_used: 0,
      log_history: [],
      eval_history: [],
      engine_counters: { optimizerStep: 0, microStep: 0 },
      num_training_steps: total,
      settings: this.settings(),
    };
  }

  private settings(): ResumeSettings {
    return taskResumeSettings(this.args, this.train.length, this.task.resumeSettings());
  }

  /** Writes a model folder next to its final place, then swaps it in. */
  private async saveModelTo(dir: string, extra?: (tmp: string) => Promise<void>): Promise<void> {
    if (!this.writes) return;
    const tmp = `${dir}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await this.task.saveModel(tmp);
    if (extra) await extra(tmp);
    const old = `${dir}.old-${process.pid}`;
    if (existsSync(dir)) await rename(dir, old);
    await rename(tmp, dir);
    await rm(old, { recursive: true, force: true });
  }

  /** checkpoint-last: model, AdamW moments of what trains, counters, data position and histories. */
  private async saveLast(): Promise<void> {
    const engine = this.task.engine;
    this.state.engine_counters = engine.getCounters();
    this.state.log_window = { loss: this.window.loss, steps: this.window.steps };
    if (!this.writes) return;
    await this.saveModelTo(this.lastDir, async (tmp) => {
      const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
      for (const name of this.task.checkpointParameters()) {
        const s = engine.getOptimizerState(name);
        const shape = engine.parameterShape(name);
        tensors.set(`${name}.exp_avg`, { shape, data: s.exp_avg });
        tensors.set(`${name}.exp_avg_sq`, { shape, data: s.exp_avg_sq });
      }
      await writeSafetensors(join(tmp, 'optimizer.safetensors'), tensors, { format: 'nodetune-adamw' });
      await writeFile(join(tmp, 'trainer_state.json'), JSON.stringify(this.state, null, 1));
    });
    this.emit('checkpoint', { dir: this.lastDir, kind: 'last' });
  }

  private async loadCheckpoint(): Promise<TrainerState> {
    const dir = this.lastDir;
    const statePath = join(dir, 'trainer_state.json');
    if (!existsSync(statePath)) {
      throw new Error(`cannot resume: ${statePath} does not exist (no checkpoint-last in ${this.args.output_dir})`);
    }
    const flags = Object.fromEntries(Object.entries(this.task.resumeSettings()).map(([k, s]) => [k, s.flag]));
    await checkResumeSettings(statePath, this.settings(), flags);
    const state = (await readJsonFile(statePath)) as TrainerState;
    const engine = this.task.engine;
    const weights = await this.task.readSavedWeights(dir);
    const moments = (await readSafetensors(join(dir, 'optimizer.safetensors'))).tensors;
    for (const name of this.task.checkpointParameters()) {
      const w = weights.get(name);
      const m = moments.get(`${name}.exp_avg`);
      const v = moments.get(`${name}.exp_avg_sq`);
      if (!(w instanceof Float32Array) || !(m?.data instanceof Float32Array) || !(v?.data instanceof Float32Array)) {
        throw new Error(`cannot resume from ${dir}: tensor '${name}' (or its AdamW moments) is missing`);
      }
      engine.setWeight(name, w);
      engine.setOptimizerState(name, { exp_avg: m.data, exp_avg_sq: v.data });
    }
    engine.setCounters(state.engine_counters);
    return state;
  }
}
