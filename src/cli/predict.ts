/**
 * `nodetune predict`: classifies texts with a fine-tuned model folder and
 * writes JSONL (text, label, score, top_k) to stdout.
 */
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { readTexts as readTextRecords } from '../data/index.js';
import { Classifier, type Prediction } from '../classifier.js';
import { assertModelFolder } from '../io/model-folder.js';
import { applyConfigFile, explainPathErrors, maxLength, positiveInt, requireOptions, warnMaxLength } from './common.js';

/**
 * Texts from a file or stdin ('-') through the training data reader (strict UTF-8,
 * same CSV/TSV/JSONL parsing): .csv/.tsv take --text-column; .jsonl/.ndjson take
 * {"text": ...} objects; any other file is one text per line; stdin is JSONL when
 * its first non-blank line starts with '{', else one text per line.
 * @throws Error naming file, line and column of a bad record, or an input without texts.
 */
export function readTexts(input: string, textColumn: string): string[] {
  if (input !== '-') return readTextRecords(input, { textColumn }).map((r) => r.text);
  const bytes = readFileSync(0);
  const first = new TextDecoder().decode(bytes.subarray(0, 4096)).replace(/^\ufeff/, '').trimStart();
  return readTextRecords('<stdin>', { textColumn, bytes, format: first.startsWith('{') ? 'jsonl' : 'lines' }).map((r) => r.text);
}

/** `predict | head` closes stdout early: stop quietly instead of an EPIPE stack trace. */
function exitQuietlyOnEpipe(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
}

export function registerPredict(program: Command): void {
  program
    .command('predict')
    .description('classify texts with a fine-tuned model; JSONL {text, label, score, top_k} on stdout')
    .option('--model <folder>', 'fine-tuned model folder')
    .option('--input <file|->', "texts: .csv/.tsv (--text-column), .jsonl, or one per line; '-' reads stdin")
    .option('--text-column <name>', 'column/key holding the text', 'text')
    .option('--top-k <k>', 'labels per text, best first', positiveInt, 1)
    .addOption(new Option('--backend <name>', 'inference engine').choices(['native', 'onnx']).default('native'))
    .option('--max-length <n>', 'tokens per text incl. [CLS]/[SEP] (default: max_position_embeddings, at most 512, as serve)', maxLength)
    .option('--batch-size <n>', 'texts per forward pass', positiveInt, 32)
    .option('--threads <n>', 'CPU threads', positiveInt)
    .option('--config <file>', 'JSON or YAML file holding any of these flags')
    .action(async (opts: Record<string, unknown>, cmd: Command) => {
      exitQuietlyOnEpipe();
      await explainPathErrors(opts, () => predict(cmd, opts), ['model']);
    });
}

async function predict(cmd: Command, opts: Record<string, unknown>): Promise<void> {
  await applyConfigFile(cmd, opts);
  requireOptions(opts, ['model', 'input']);
  assertModelFolder(String(opts.model)); // --model may come from --config, after explainPathErrors' own check
  const texts = readTexts(String(opts.input), opts.textColumn as string);
  const classifier = await Classifier.load(String(opts.model), {
    backend: opts.backend as 'native' | 'onnx',
    maxLength: opts.maxLength as number | undefined,
    batchSize: opts.batchSize as number,
    threads: opts.threads as number | undefined,
  });
  warnMaxLength(opts.maxLength as number | undefined, classifier.config.max_position_embeddings);
  try {
    const topK = opts.topK as number;
    const results = (await classifier.classify(texts, { topK })) as Prediction[][];
    for (let i = 0; i < texts.length; i++) {
      const top = results[i];
      process.stdout.write(`${JSON.stringify({ text: texts[i], label: top[0].label, score: top[0].score, top_k: top })}\n`);
    }
  } finally {
    await classifier.dispose();
  }
}
