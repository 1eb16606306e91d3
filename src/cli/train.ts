/**
 * `nodetune train`: the main job. Flags follow Hugging Face TrainingArguments
 * names in kebab case; `--config file.json|yaml` may hold any of them (flags
 * given on the command line win).
 */
import { Command, Option } from 'commander';
import { fineTune, CLASSIFIER_DEFAULTS, type FineTuneOptions } from '../train/finetune.js';
import { applyConfigFile, dataColumns, explainPathErrors, maxLength, num, int, printTable, requireOptions, withDataColumns } from './common.js';
import { attachProgress, logLine, runTrainingCommand, stopOnInterrupt, trainingArgumentsOf, withRunFlags, withTrainingFlags } from './training.js';

export function registerTrain(program: Command): void {
  const cmd = withDataColumns(
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
    .option('--label-smoothing <f>', 'label_smoothing_factor', num, 0)
    .option('--class-weights <balanced|w1,w2,...>', "loss weights per class: 'balanced' or a comma list")
    .addOption(new Option('--freeze <part>', 'freeze a part of the model').choices(['embeddings']))
    .option('--freeze-layers <n>', 'freeze encoder layers 0..n-1', int, 0);
  withRunFlags(
    withTrainingFlags(cmd, {
      batchSize: CLASSIFIER_DEFAULTS.per_device_train_batch_size,
      evalBatchSize: 64,
      learningRate: CLASSIFIER_DEFAULTS.learning_rate,
      warmupRatio: CLASSIFIER_DEFAULTS.warmup_ratio,
      weightDecay: 0.01,
      metricForBestModel: 'accuracy',
      metricHelp: 'accuracy | macro_f1 | micro_f1 | weighted_f1 | loss',
      seedHelp: 'seed of data order, dropout and new heads',
    }).addOption(new Option('--precision <p>', 'fp32, or bf16 mixed precision (CUDA)').choices(['fp32', 'bf16']).default('fp32')),
  )
    .action(async (opts: Record<string, unknown>, command: Command) => {
      await explainPathErrors(opts, async () => {
        await applyConfigFile(command, opts);
        requireOptions(opts, ['model', 'train', 'output']);
        checkRanges(opts);
        await runTrainingCommand(opts, () => fineTune(toOptions(opts)), printResult);
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
    ...trainingArgumentsOf(o),
    model: String(o.model),
    train_file: String(o.train),
    eval_file: o.eval as string | undefined,
    ...dataColumns(o),
    validation_split: o.validationSplit as number,
    max_length: o.maxLength as number,
    label_smoothing_factor: o.labelSmoothing as number,
    class_weights: classWeights(o.classWeights),
    freeze_embeddings: o.freeze === 'embeddings',
    freeze_layers: o.freezeLayers as number,
    threads: o.threads as number | undefined,
    device: o.device as string,
    precision: o.precision as 'fp32' | 'bf16',
    overwrite_output_dir: o.overwriteOutputDir === true,
    log: logLine,
  };
  opts.onTrainer = (trainer) => {
    attachProgress(trainer, {
      name: 'train',
      rate: 'samples',
      evalLine: (e) => `accuracy ${e.accuracy.toFixed(4)} macro_f1 ${e.macro_f1.toFixed(4)} loss ${(e.loss ?? NaN).toFixed(4)}`,
    });
    stopOnInterrupt(trainer);
  };
  return opts;
}
