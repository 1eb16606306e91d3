/** `nodetune eval`: the evaluation report of a fine-tuned model folder on a labelled file. */
import { Command } from 'commander';
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { evaluateFile } from '../train/evaluate.js';
import { formatClassificationReport } from '../metrics/index.js';
import { writeReport } from '../report/index.js';
import { applyConfigFile, dataColumns, explainPathErrors, maxLength, positiveInt, printTable, requireOptions, withDataColumns } from './common.js';

export function registerEval(program: Command): void {
  withDataColumns(
    program
      .command('eval')
      .description('evaluate a fine-tuned model folder on a labelled file: accuracy, F1s, per-class report, confusion matrix'),
  )
    .option('--model <folder>', 'fine-tuned model folder (config.json with id2label)')
    .option('--data <file>', 'labelled data (.csv, .tsv, .jsonl)')
    .option('--max-length <n>', 'truncate to n tokens', maxLength, 128)
    .option('--batch-size <n>', 'examples per forward pass', positiveInt, 64)
    .option('--threads <n>', 'CPU threads (default: all cores)', positiveInt)
    .option('--output <folder>', 'also write eval_results.json and report.html here')
    .option('--config <file>', 'JSON or YAML file holding any of these flags')
    .action((opts: Record<string, unknown>, cmd: Command) => explainPathErrors(opts, () => runEval(cmd, opts), ['model']));
}

async function runEval(cmd: Command, opts: Record<string, unknown>): Promise<void> {
  await applyConfigFile(cmd, opts);
  requireOptions(opts, ['model', 'data']);
  const results = await evaluateFile({
    model: String(opts.model),
    data: String(opts.data),
    ...dataColumns(opts),
    max_length: opts.maxLength as number,
    batch_size: opts.batchSize as number,
    threads: opts.threads as number | undefined,
  });
  process.stdout.write(`${formatClassificationReport(results)}\n`);
  if (opts.output) {
    const out = String(opts.output);
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'eval_results.json'), JSON.stringify(results, null, 1));
    writeReport(out, { title: `nodetune eval: ${opts.model} on ${opts.data}`, trainLog: [], evalHistory: [], finalEval: results });
  }
  printTable('nodetune eval', [
    ['accuracy', results.accuracy.toFixed(4)],
    ['macro F1', results.macro_f1.toFixed(4)],
    ['weighted F1', results.weighted_f1.toFixed(4)],
    ['loss', (results.loss ?? NaN).toFixed(4)],
  ]);
}
