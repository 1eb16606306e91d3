/**
 * `nodetune lr-find`: the learning-rate range test alone, for the classifier `nodetune train`
 * would train on the same data (what `--learning-rate auto` runs before training).
 */
import { Option, type Command } from 'commander';
import { findClassifierLearningRate, CLASSIFIER_DEFAULTS } from '../train/finetune.js';
import { applyConfigFile, dataColumns, explainPathErrors, int, maxLength, num, positiveInt, printTable, requireOptions, withDataColumns } from './common.js';

export function registerLrFind(program: Command): void {
  withDataColumns(
    program
      .command('lr-find')
      .description("learning-rate range test (Smith 2015): short training with a growing rate, the model left untouched; prints the rate '--learning-rate auto' would use"),
  )
    .option('--model <folder|repo-id>', 'Hugging Face model folder or Hub repo id')
    .option('--train <file>', 'training data (.csv, .tsv, .jsonl)')
    .option('--output <folder>', 'write lr_find.json and report.html (the loss-vs-rate curve) here')
    .option('--max-length <n>', 'truncate to n tokens', maxLength, 128)
    .option('--batch-size <n>', 'per_device_train_batch_size of the run it is for', positiveInt, CLASSIFIER_DEFAULTS.per_device_train_batch_size)
    .option('--gradient-accumulation-steps <n>', 'micro-batches per optimizer step of the run it is for', positiveInt, 1)
    .addOption(new Option('--freeze <part>', 'freeze a part of the model, as the run it is for').choices(['embeddings']))
    .option('--freeze-layers <n>', 'freeze encoder layers 0..n-1, as the run it is for', int, 0)
    .option('--min-lr <lr>', 'first rate', num, 1e-7)
    .option('--max-lr <lr>', 'last rate', num, 1)
    .option('--num-steps <n>', 'optimizer steps at most (fewer when the loss diverges)', positiveInt, 100)
    .option('--weight-decay <w>', 'decoupled weight decay of the run it is for', num, 0.01)
    .option('--seed <n>', 'seed of the batches and the new head', int, 42)
    .option('--threads <n>', 'CPU threads (default: all cores)', positiveInt)
    .option('--device <device>', "'cpu', 'cuda' or 'cuda:N'", 'cpu')
    .option('--config <file>', 'JSON or YAML file holding any of these flags')
    .action(async (opts: Record<string, unknown>, command: Command) => {
      await explainPathErrors(opts, async () => {
        await applyConfigFile(command, opts);
        requireOptions(opts, ['model', 'train']);
        const r = await findClassifierLearningRate({
          model: String(opts.model),
          train_file: String(opts.train),
          ...dataColumns(opts),
          validation_split: 0,
          output_dir: opts.output as string | undefined,
          max_length: opts.maxLength as number,
          per_device_train_batch_size: opts.batchSize as number,
          gradient_accumulation_steps: opts.gradientAccumulationSteps as number,
          freeze_embeddings: opts.freeze === 'embeddings',
          freeze_layers: opts.freezeLayers as number,
          min_lr: opts.minLr as number,
          max_lr: opts.maxLr as number,
          num_steps: opts.numSteps as number,
          weight_decay: opts.weightDecay as number,
          seed: opts.seed as number,
          threads: opts.threads as number | undefined,
          device: opts.device as string,
          log: (line) => process.stderr.write(`${line}\n`),
        });
        printTable('nodetune lr-find: result', [
          ['learning rate', r.learning_rate.toExponential(2)],
          ['rule', r.rule],
          ['steepest fall at', r.lrs[r.steepest_index].toExponential(2)],
          ['steps', `${r.lrs.length} (${r.lrs[0].toExponential(0)} to ${r.lrs.at(-1)!.toExponential(1)}${r.diverged_at === null ? '' : ', diverged'})`],
          ['time', `${r.seconds.toFixed(1)} s`],
          ...(opts.output ? ([['curve', `${String(opts.output)}/report.html, lr_find.json`]] as Array<[string, string]>) : []),
        ]);
        process.stdout.write(`${r.learning_rate}\n`); // the rate alone on stdout, for scripts: lr=$(nodetune lr-find ...)
      });
    });
}
