/**
 * What the training sub-commands (train, sft, pretrain) share: the Hugging Face
 * TrainingArguments flags in kebab case, their mapping back to TrainingArguments names,
 * Ctrl-C handling and the progress display. Each command adds its task's own flags.
 */
import { Option, type Command } from 'commander';
import cliProgress from 'cli-progress';
import type { Trainer, LogEntry, EvalEntry, TrainingArguments, TaskEvalResults } from '../train/trainer.js';
import { SCHEDULER_TYPES } from '../train/schedule.js';
import { spawn } from 'node:child_process';
import { availableParallelism, constants as osConstants } from 'node:os';
import { int, learningRate, num, positiveInt } from './common.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DDP_TIMEOUT, checkTimeout, isMainProcess, launchedWorldSize } from '../train/distributed.js';

/** The defaults and help texts that differ between the training commands. */
export interface TrainingFlagDefaults {
  batchSize: number;
  evalBatchSize: number;
  /** Undefined: the command picks one (sft: by LoRA or full); 'auto': the range test. */
  learningRate?: number | 'auto';
  learningRateHelp?: string;
  weightDecay: number;
  weightDecayHelp?: string;
  /** Default 0. */
  warmupRatio?: number;
  gradientAccumulationHelp?: string;
  evalStrategyHelp?: string;
  metricForBestModel: string;
  metricHelp: string;
  seedHelp: string;
}

/** Adds the TrainingArguments flags (epochs through --config) to a training command. */
export function withTrainingFlags(cmd: Command, d: TrainingFlagDefaults): Command {
  return cmd
    .option('--epochs <n>', 'num_train_epochs', num, 3)
    .option('--max-steps <n>', 'total optimizer steps (overrides --epochs)', int, -1)
    .option('--batch-size <n>', 'per_device_train_batch_size (with --nproc: the global batch, split among the ranks)', positiveInt, d.batchSize)
    .option('--eval-batch-size <n>', 'per_device_eval_batch_size', positiveInt, d.evalBatchSize)
    .option('--gradient-accumulation-steps <n>', d.gradientAccumulationHelp ?? 'micro-batches per optimizer step', positiveInt, 1)
    .option('--learning-rate <lr|auto>', d.learningRateHelp ?? "peak learning rate, or 'auto': a learning-rate range test picks it (see lr-find)", learningRate, d.learningRate)
    .addOption(new Option('--lr-scheduler-type <name>', 'schedule').choices(SCHEDULER_TYPES as string[]).default('linear'))
    .option('--warmup-steps <n>', 'warmup optimizer steps', num, 0)
    .option('--warmup-ratio <r>', 'warmup as a fraction of all steps', num, d.warmupRatio ?? 0)
    .option('--decay-rate <r>', "'inverse_time' schedule: lr / (1 + rate × t)", num)
    .option('--weight-decay <w>', d.weightDecayHelp ?? 'decoupled weight decay (not on biases and LayerNorm)', num, d.weightDecay)
    .option('--adam-beta1 <b>', 'AdamW beta1', num, 0.9)
    .option('--adam-beta2 <b>', 'AdamW beta2', num, 0.999)
    .option('--adam-epsilon <e>', 'AdamW epsilon', num, 1e-8)
    .option('--max-grad-norm <n>', 'global gradient-norm clipping (0 = off)', num, 1.0)
    .addOption(new Option('--eval-strategy <when>', d.evalStrategyHelp ?? 'when to evaluate').choices(['epoch', 'steps', 'no']).default('epoch'))
    .option('--eval-steps <n>', 'evaluate every n optimizer steps (--eval-strategy steps)', positiveInt, 500)
    .option('--save-steps <n>', 'save the resumable checkpoint every n steps', positiveInt, 500)
    .option('--metric-for-best-model <name>', d.metricHelp, d.metricForBestModel)
    .option('--early-stopping-patience <n>', 'stop after n evaluations without improvement (0 = off)', int, 0)
    .option('--logging-steps <n>', 'log every n optimizer steps', positiveInt, 10)
    .option('--seed <n>', d.seedHelp, int, 42)
    .option('--threads <n>', 'CPU threads (default: all cores; with --nproc, per rank, default cores / n)', positiveInt)
    .option('--device <device>', "'cpu', 'cuda' or 'cuda:N' (with --nproc, 'cuda' is each rank's own GPU)", 'cpu')
    .option('--nproc <n>', 'data parallel: run n ranks on this machine (launches mpirun); --batch-size stays the global batch', positiveInt)
    .option('--ddp-timeout <seconds>', 'data parallel: how long a rank waits for the others before it stops with an error naming the missing rank', num, DDP_TIMEOUT);
}

/** Adds --resume, --overwrite-output-dir and --config (the last flags of every training command). */
export function withRunFlags(cmd: Command): Command {
  return cmd
    .option('--resume', 'resume from <output>/checkpoint-last')
    .option('--overwrite-output-dir', "delete a previous run's outputs in --output first")
    .option('--config <file>', 'JSON or YAML file holding any of these flags');
}

/** The TrainingArguments of withTrainingFlags' and withRunFlags' parsed values (undefined where a flag has no value). */
export function trainingArgumentsOf(o: Record<string, unknown>): TrainingArguments {
  if (o.lrSchedulerType === 'inverse_time' && o.decayRate === undefined) throw new Error('--decay-rate is required for --lr-scheduler-type inverse_time');
  return {
    output_dir: String(o.output),
    num_train_epochs: o.epochs as number,
    max_steps: o.maxSteps as number,
    per_device_train_batch_size: o.batchSize as number,
    per_device_eval_batch_size: o.evalBatchSize as number,
    gradient_accumulation_steps: o.gradientAccumulationSteps as number,
    learning_rate: o.learningRate as number | 'auto' | undefined,
    lr_scheduler_type: o.lrSchedulerType as TrainingArguments['lr_scheduler_type'],
    warmup_steps: o.warmupSteps as number,
    warmup_ratio: o.warmupRatio as number,
    decay_rate: o.decayRate as number | undefined,
    weight_decay: o.weightDecay as number,
    adam_beta1: o.adamBeta1 as number,
    adam_beta2: o.adamBeta2 as number,
    adam_epsilon: o.adamEpsilon as number,
    max_grad_norm: o.maxGradNorm as number,
    eval_strategy: o.evalStrategy as TrainingArguments['eval_strategy'],
    eval_steps: o.evalSteps as number,
    save_steps: o.saveSteps as number,
    metric_for_best_model: o.metricForBestModel as string,
    early_stopping_patience: o.earlyStoppingPatience as number,
    logging_steps: o.loggingSteps as number,
    seed: o.seed as number,
    resume_from_checkpoint: o.resume === true,
    ddp_timeout: o.ddpTimeout as number | undefined,
  };
}

/** A log line on stderr, from rank 0 only (data parallel: N ranks would print it N times). */
export function logLine(line: string): void {
  if (isMainProcess()) process.stderr.write(`${line}\n`);
}

/**
 * A training command's action: with --nproc N (N > 1, not already under an MPI launcher) it runs
 * the same command line as N ranks under mpirun and ends with mpirun's exit code; otherwise it
 * runs the job and, on rank 0, prints its result (or how to resume an interrupted run).
 */
export async function runTrainingCommand<R extends { interrupted: boolean; global_step: number }>(
  opts: Record<string, unknown>,
  run: () => Promise<R>,
  print: (result: R) => void,
): Promise<void> {
  const nproc = opts.nproc as number | undefined;
  if (nproc !== undefined && nproc > 1 && launchedWorldSize() === 1) checkBeforeLaunch(opts);
  const launched = await launchRanks(nproc, opts.threads as number | undefined);
  if (launched === null && launchedWorldSize() > 1) {
    // A rank: the launcher turns Ctrl-C into SIGUSR2, which mpirun forwards to every rank (SIGUSR1 would start Node's inspector).
    process.on('SIGUSR2', () => (process.listenerCount('SIGINT') > 0 ? process.emit('SIGINT') : process.exit(130)));
  }
  if (launched !== null) {
    if (launched !== 0 && launched !== 130) { // 130: interrupted, and rank 0 said how to resume
      const last = join(String(opts.output), 'checkpoint-last');
      const resume = existsSync(join(last, 'trainer_state.json'))
        ? `; ${last} holds the last saved step: continue with the same command and --resume` : '';
      process.stderr.write(`nodetune: the ${nproc} ranks stopped (mpirun exit code ${launched}; the messages above say why)${resume}\n`);
    }
    process.exitCode = launched;
    return;
  }
  const result = await run();
  if (!isMainProcess()) return;
  if (result.interrupted) {
    process.stderr.write(`interrupted at step ${result.global_step}: resume with --resume\n`);
    // As one of several ranks, a clean exit: mpirun would report a non-zero one as a failed rank; the launcher exits 130.
    if (launchedWorldSize() === 1) process.exitCode = 130;
    return;
  }
  print(result);
}

/**
 * What every rank would check at once, checked once before mpirun starts them (N copies of an
 * error, in Open MPI's abort text, help nobody): --ddp-timeout, and that --train / --eval exist.
 * @throws Error naming the flag.
 */
function checkBeforeLaunch(opts: Record<string, unknown>): void {
  if (opts.ddpTimeout !== undefined) checkTimeout(opts.ddpTimeout as number, '--ddp-timeout');
  for (const flag of ['train', 'eval']) {
    const path = opts[flag];
    if (typeof path === 'string' && !existsSync(path)) throw new Error(`--${flag} ${path}: no such file`);
  }
}

/**
 * `--nproc N`: runs this process's command line again as N ranks of one MPI job on this machine
 * (`mpirun -n N --bind-to none node <this script> <the same arguments>`; NODETUNE_MPIRUN names
 * another launcher), each rank with --threads or else cores / N OpenMP threads.
 * @returns mpirun's exit code, or null when there is nothing to launch (no --nproc, N = 1, or this
 *   process is already a rank).
 * @throws Error when mpirun is not installed.
 */
export async function launchRanks(nproc: number | undefined, threads: number | undefined): Promise<number | null> {
  if (nproc === undefined || nproc <= 1 || launchedWorldSize() > 1) return null;
  const args: string[] = [];
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--nproc') i++;
    else if (!argv[i].startsWith('--nproc=')) args.push(argv[i]);
  }
  const perRank = threads ?? Math.max(1, Math.floor(availableParallelism() / nproc));
  const mpirun = process.env.NODETUNE_MPIRUN || 'mpirun';
  // Open MPI refuses root without these; containers often run as root.
  const env = { ...process.env, OMP_NUM_THREADS: String(perRank), OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' };
  // Its own process group, so a Ctrl-C reaches only this launcher: mpirun would end the job at
  // once. The first Ctrl-C becomes SIGUSR2, which mpirun forwards to the ranks (each saves
  // checkpoint-last after the step they agree on); a second ends the job (SIGTERM), as do a
  // SIGTERM or SIGHUP of this launcher (`timeout`, a closed terminal). A SIGKILL of the launcher
  // cannot be passed on: kill mpirun then.
  const child = spawn(mpirun, ['-n', String(nproc), '--bind-to', 'none', '-x', 'OMP_NUM_THREADS', process.execPath, process.argv[1], ...args], { stdio: 'inherit', env, detached: true });
  let interrupts = 0;
  let ended = false;
  const onInterrupt = () => child.kill(++interrupts === 1 ? 'SIGUSR2' : 'SIGTERM');
  const onEnd = () => {
    ended = true;
    child.kill('SIGTERM');
  };
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onEnd);
  process.on('SIGHUP', onEnd);
  return new Promise((resolve, reject) => {
    child.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'ENOENT' || err.code === 'EACCES'
        ? new Error(`--nproc ${nproc} needs ${mpirun}${process.env.NODETUNE_MPIRUN ? ' (NODETUNE_MPIRUN)' : ''}, an MPI launcher (Open MPI's mpirun), which ${err.code === 'ENOENT' ? 'is not installed' : 'cannot be run'}: apt-get install openmpi-bin libopenmpi-dev, or run \`bash scripts/setup.sh\``)
        : err),
    );
    child.once('exit', (code, signal) => {
      process.off('SIGINT', onInterrupt);
      process.off('SIGTERM', onEnd);
      process.off('SIGHUP', onEnd);
      if (ended) resolve(143);
      else if (interrupts > 1 || (interrupts === 1 && code === 0)) resolve(130);
      else resolve(code ?? (signal ? 128 + (osConstants.signals[signal] ?? 1) : 1));
    });
  });
}

/** Ctrl-C: finish the current step, save checkpoint-last (for --resume), exit; a second Ctrl-C exits at once. */
export function stopOnInterrupt<E, R extends TaskEvalResults>(trainer: Trainer<E, R>): void {
  process.once('SIGINT', () => {
    if (trainer.writes) process.stderr.write('\ninterrupted: saving checkpoint-last after this step (Ctrl-C again to quit now)\n');
    trainer.stop();
    process.once('SIGINT', () => process.exit(130));
  });
}

export interface ProgressOptions<R extends TaskEvalResults> {
  /** The bar's first word: the command's name. */
  name: string;
  /** What the rate counts: examples ('samples') or real tokens. */
  rate: 'samples' | 'tokens';
  /** The line printed for an evaluation, after "eval at step S (epoch E): ". */
  evalLine: (e: EvalEntry<R>) => string;
}

/**
 * A progress bar with loss, rate and ETA on a terminal; plain log lines (with an ETA from this
 * process's own steps: a resumed run starts part way) otherwise (CI, pipes).
 */
export function attachProgress<E, R extends TaskEvalResults>(trainer: Trainer<E, R>, p: ProgressOptions<R>): void {
  if (!trainer.writes) return; // data parallel: rank 0 shows the run
  const tty = process.stderr.isTTY;
  const unit = p.rate === 'tokens' ? 'tokens/s' : 'samples/s';
  const rateOf = (e: LogEntry) => (p.rate === 'tokens' ? (e.tokens_per_second ?? 0).toFixed(0) : e.samples_per_second.toFixed(1));
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${p.name} |{bar}| {value}/{total} steps | epoch {epoch} | loss {loss} | lr {lr} | {rate} ${unit} | ETA {eta_formatted}`,
      hideCursor: true,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let first: { step: number; at: number } | undefined;
  trainer.on('step', (e: LogEntry) => {
    first ??= { step: e.step, at: performance.now() };
    if (!tty) return;
    const payload = { epoch: e.epoch.toFixed(2), loss: e.loss.toFixed(4), lr: e.learning_rate.toExponential(2), rate: rateOf(e) };
    if (!started) {
      bar.start(trainer.totalSteps, e.step - 1, payload);
      started = true;
    }
    bar.update(e.step, payload);
  });
  trainer.on('log', (e: LogEntry) => {
    if (tty || !first) return;
    const perStep = (performance.now() - first.at) / 1000 / (e.step - first.step);
    const eta = e.step > first.step ? `${(perStep * (trainer.totalSteps - e.step)).toFixed(0)} s` : '?';
    process.stderr.write(
      `step ${e.step}/${trainer.totalSteps} epoch ${e.epoch.toFixed(2)} loss ${e.loss.toFixed(4)} lr ${e.learning_rate.toExponential(2)} grad_norm ${e.grad_norm.toFixed(3)} ${rateOf(e)} ${unit} ETA ${eta}\n`,
    );
  });
  trainer.on('evaluate', (e: EvalEntry<R>) => {
    if (tty && started) bar.stop();
    started = false;
    process.stderr.write(`eval at step ${e.step} (epoch ${e.epoch}): ${p.evalLine(e)}\n`);
  });
  trainer.on('done', () => {
    if (tty && started) bar.stop();
  });
}
