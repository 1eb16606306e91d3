/**
 * `nodetune train`: the main job. Flags follow Hugging Face TrainingArguments
 * names in kebab case; `--config file.json|yaml` may hold any of them (flags
 * given on the command line win).
 */
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { fineTune, type FineTuneOptions } from '../train/finetune.js';
import type { LogEntry, EvalEntry } from '../train/trainer.js';
import { SCHEDULER_TYPES } from '../train/schedule.js';
import { applyConfigFile, dataColumns, explainPathErrors, maxLength, num, int, positiveInt, printTable, requireOptions, withDataColumns } from './common.js';

export function registerTrain(program: Command): void {
  withDataColumns(
    program
      .command('train')
      .description('fine-tune a pretrained BERT-family model as a sequence classifier, evaluate it, keep the best checkpoint'),
  )
    .option('--model <folder|repo-id>', 'Hugging Face model folder or Hub repo id')
    .option('--train <file>', 'training data (.csv, .tsv, .jsonl)')
    .option('--eval <file>', 'evaluation data; default: a stratified split of --train')
    .option('--output <folder>', 'output folder (model, eval_results.json, training_log.jsonl, report.html)')
    .option('--validation-split <fraction>', 'held-out fraction when --eval is absent', num, 0.1)
    .option('--max-length <n>', 'truncate to n tokens', maxLength, 128)
    .option('--epochs <n>', 'num_train_epochs', num, 3)
    .option('--max-steps <n>', 'total optimizer steps (overrides --epochs)', int, -1)
    .option('--batch-size <n>', 'per_device_train_batch_size', positiveInt, 32)
    .option('--eval-batch-size <n>', 'per_device_eval_batch_size', positiveInt, 64)
    .option('--gradient-accumulation-steps <n>', 'micro-batches per optimizer step', positiveInt, 1)
    .option('--learning-rate <lr>', 'peak learning rate', num, 5e-5)
    .addOption(new Option('--lr-scheduler-type <name>', 'schedule').choices(SCHEDULER_TYPES as string[]).default('linear'))
    .option('--warmup-steps <n>', 'warmup optimizer steps', num, 0)
    .option('--warmup-ratio <r>', 'warmup as a fraction of all steps', num, 0)
    .option('--decay-rate <r>', "'inverse_time' schedule: lr / (1 + rate × t)", num)
    .option('--weight-decay <w>', 'decoupled weight decay (not on biases and LayerNorm)', num, 0.01)
    .option('--adam-beta1 <b>', 'AdamW beta1', num, 0.9)
    .option('--adam-beta2 <b>', 'AdamW beta2', num, 0.999)
    .option('--adam-epsilon <e>', 'AdamW epsilon', num, 1e-8)
    .option('--max-grad-norm <n>', 'global gradient-norm clipping (0 = off)', num, 1.0)
    .option('--label-smoothing <f>', 'label_smoothing_factor', num, 0)
    .option('--class-weights <balanced|w1,w2,...>', "loss weights per class: 'balanced' or a comma list")
    .addOption(new Option('--freeze <part>', 'freeze a part of the model').choices(['embeddings']))
    .option('--freeze-layers <n>', 'freeze encoder layers 0..n-1', int, 0)
    .addOption(new Option('--eval-strategy <when>', 'when to evaluate').choices(['epoch', 'steps', 'no']).default('epoch'))
    .option('--eval-steps <n>', 'evaluate every n optimizer steps (--eval-strategy steps)', positiveInt, 500)
    .option('--save-steps <n>', 'save the resumable checkpoint every n steps', positiveInt, 500)
    .option('--metric-for-best-model <name>', 'accuracy | macro_f1 | micro_f1 | weighted_f1 | loss', 'accuracy')
    .option('--early-stopping-patience <n>', 'stop after n evaluations without improvement (0 = off)', int, 0)
    .option('--logging-steps <n>', 'log every n optimizer steps', positiveInt, 10)
    .option('--seed <n>', 'seed of data order, dropout and new heads', int, 42)
    .option('--threads <n>', 'CPU threads (default: all cores)', positiveInt)
    .option('--device <device>', "'cpu', 'cuda' or 'cuda:N'", 'cpu')
    .addOption(new Option('--precision <p>', 'fp32, or bf16 mixed precision (CUDA)').choices(['fp32', 'bf16']).default('fp32'))
    .option('--resume', 'resume from <output>/checkpoint-last')
    .option('--overwrite-output-dir', "delete a previous run's outputs in --output first")
    .option('--config <file>', 'JSON or YAML file holding any of these flags')
    .action(async (opts: Record<string, unknown>, cmd: Command) => {
      await explainPathErrors(opts, async () => {
        await applyConfigFile(cmd, opts);
        requireOptions(opts, ['model', 'train', 'output']);
        checkRanges(opts);
        const result = await fineTune(toOptions(opts));
        if (result.interrupted) {
          process.stderr.write(`interrupted at step ${result.global_step}: resume with --resume\n`);
          process.exitCode = 130;
          return;
        }
        printResult(result);
      });
    });
}

function printResult(result: Awaited<ReturnType<typeof fineTune>>): void {
  const metrics: Array<[string, string]> = result.eval
    ? [
        ['accuracy', result.eval.accuracy.toFixed(4)],
        ['macro F1', result.eval.macro_f1.toFixed(4)],
        ['weighted F1', result.eval.weighted_f1.toFixed(4)],
        ['eval loss', (result.eval.loss ?? NaN).toFixed(4)],
        ['best step', String(result.best_step)],
        ['stopped early', String(result.stopped_early)],
      ]
    : [['eval', 'none (no --eval and --validation-split 0)']];
  printTable('nodetune train: result', [
    ['output', result.output_dir],
    ['train / eval examples', `${result.train_examples} / ${result.eval_examples}`],
    ['steps', String(result.global_step)],
    ...metrics,
    ['wall time', `${result.seconds.toFixed(0)} s`],
  ]);
}

/** [flag, attribute, test, expected]: ranges checked before anything is loaded. */
const RANGES: Array<[string, string, (x: number) => boolean, string]> = [
  ['--adam-beta1', 'adamBeta1', (x) => x >= 0 && x < 1, 'a number in [0, 1)'],
  ['--adam-beta2', 'adamBeta2', (x) => x >= 0 && x < 1, 'a number in [0, 1)'],
  ['--adam-epsilon', 'adamEpsilon', (x) => x > 0, 'a number > 0'],
  ['--weight-decay', 'weightDecay', (x) => x >= 0, 'a number ≥ 0'],
  ['--max-grad-norm', 'maxGradNorm', (x) => x >= 0, 'a number ≥ 0 (0 = off)'],
  ['--label-smoothing', 'labelSmoothing', (x) => x >= 0 && x <= 1, 'a number in [0, 1]'],
  ['--validation-split', 'validationSplit', (x) => x >= 0 && x < 1, 'a number in (0, 1), or 0 for no split'],
  ['--max-steps', 'maxSteps', (x) => x === -1 || x > 0, '-1 (use --epochs) or an integer > 0'],
  ['--seed', 'seed', (x) => Number.isSafeInteger(x), 'a safe integer'],
];

/** @throws Error naming the flag, its value and the accepted range. */
function checkRanges(o: Record<string, unknown>): void {
  for (const [flag, key, ok, expected] of RANGES) {
    const v = o[key];
    if (v !== undefined && !(typeof v === 'number' && ok(v))) throw new Error(`${flag} ${String(v)}: expected ${expected}`);
  }
  if (o.lrSchedulerType === 'inverse_time' && o.decayRate === undefined) throw new Error('--decay-rate is required for --lr-scheduler-type inverse_time');
}

function classWeights(v: unknown): FineTuneOptions['class_weights'] {
  if (v === undefined) return undefined;
  if (v === 'balanced') return 'balanced';
  const parts = String(v).split(',').map(Number);
  if (parts.some((x) => !Number.isFinite(x) || x < 0)) throw new Error(`--class-weights '${v}': expected 'balanced' or comma-separated non-negative numbers`);
  return parts;
}

function toOptions(o: Record<string, unknown>): FineTuneOptions {
  const opts: FineTuneOptions = {
    model: String(o.model),
    train_file: String(o.train),
    eval_file: o.eval as string | undefined,
    output_dir: String(o.output),
    ...dataColumns(o),
    validation_split: o.validationSplit as number,
    max_length: o.maxLength as number,
    num_train_epochs: o.epochs as number,
    max_steps: o.maxSteps as number,
    per_device_train_batch_size: o.batchSize as number,
    per_device_eval_batch_size: o.evalBatchSize as number,
    gradient_accumulation_steps: o.gradientAccumulationSteps as number,
    learning_rate: o.learningRate as number,
    lr_scheduler_type: o.lrSchedulerType as FineTuneOptions['lr_scheduler_type'],
    warmup_steps: o.warmupSteps as number,
    warmup_ratio: o.warmupRatio as number,
    decay_rate: o.decayRate as number | undefined,
    weight_decay: o.weightDecay as number,
    adam_beta1: o.adamBeta1 as number,
    adam_beta2: o.adamBeta2 as number,
    adam_epsilon: o.adamEpsilon as number,
    max_grad_norm: o.maxGradNorm as number,
    label_smoothing_factor: o.labelSmoothing as number,
    class_weights: classWeights(o.classWeights),
    freeze_embeddings: o.freeze === 'embeddings',
    freeze_layers: o.freezeLayers as number,
    eval_strategy: o.evalStrategy as FineTuneOptions['eval_strategy'],
    eval_steps: o.evalSteps as number,
    save_steps: o.saveSteps as number,
    metric_for_best_model: o.metricForBestModel as string,
    early_stopping_patience: o.earlyStoppingPatience as number,
    logging_steps: o.loggingSteps as number,
    seed: o.seed as number,
    threads: o.threads as number | undefined,
    device: o.device as string,
    precision: o.precision as 'fp32' | 'bf16',
    resume_from_checkpoint: o.resume === true,
    overwrite_output_dir: o.overwriteOutputDir === true,
    log: (line) => process.stderr.write(`${line}\n`),
  };
  opts.onTrainer = (trainer) => {
    attachProgress(trainer);
    stopOnInterrupt(trainer);
  };
  return opts;
}

/** Ctrl-C: finish the current step, save checkpoint-last (for --resume), exit; a second Ctrl-C exits at once. */
function stopOnInterrupt(trainer: import('../train/trainer.js').Trainer): void {
  process.once('SIGINT', () => {
    process.stderr.write('\ninterrupted: saving checkpoint-last after this step (Ctrl-C again to quit now)\n');
    trainer.stop();
    process.once('SIGINT', () => process.exit(130));
  });
}

/** A progress bar on a terminal; plain log lines otherwise (CI, pipes). */
function attachProgress(trainer: import('../train/trainer.js').Trainer): void {
  const tty = process.stderr.isTTY;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: 'train |{bar}| {value}/{total} steps | epoch {epoch} | loss {loss} | lr {lr} | {sps} samples/s | ETA {eta_formatted}',
      hideCursor: true,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  trainer.on('step', (e: LogEntry) => {
    const payload = { epoch: e.epoch.toFixed(2), loss: e.loss.toFixed(4), lr: e.learning_rate.toExponential(2), sps: e.samples_per_second.toFixed(1) };
    if (!tty) return;
    if (!started) {
      bar.start(trainer.totalSteps, e.step - 1, payload);
      started = true;
    }
    bar.update(e.step, payload);
  });
  trainer.on('log', (e: LogEntry) => {
    if (!tty) {
      process.stderr.write(
        `step ${e.step}/${trainer.totalSteps} epoch ${e.epoch.toFixed(2)} loss ${e.loss.toFixed(4)} lr ${e.learning_rate.toExponential(2)} grad_norm ${e.grad_norm.toFixed(3)} ${e.samples_per_second.toFixed(1)} samples/s\n`,
      );
    }
  });
  trainer.on('evaluate', (e: EvalEntry) => {
    const line = `eval at step ${e.step} (epoch ${e.epoch}): accuracy ${e.accuracy.toFixed(4)} macro_f1 ${e.macro_f1.toFixed(4)} loss ${(e.loss ?? NaN).toFixed(4)}`;
    if (tty && started) bar.stop();
    started = false;
    process.stderr.write(`${line}\n`);
  });
  trainer.on('done', () => {
    if (tty && started) bar.stop();
  });
}
