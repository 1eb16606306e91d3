/**
 * `nodetune predict`: classifies texts with a fine-tuned model folder and
 * writes JSONL (text, label, score, top_k) to stdout.
 */
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parse } from 'csv-parse/sync';
import { Classifier, type Prediction } from '../classifier.js';
import { applyConfigFile, positiveInt, requireOptions } from './common.js';

/**
 * Texts from a file or stdin ('-'): .csv/.tsv take --text-column; .jsonl/.ndjson
 * take {"text": ...} objects; any other file is one text per line; on stdin a
 * line starting with '{' is read as a JSON object.
 * @throws Error naming file and line of a record without the text column.
 */
export function readTexts(input: string, textColumn: string): string[] {
  const source = input === '-' ? '<stdin>' : input;
  const raw = readFileSync(input === '-' ? 0 : input, 'utf8').replace(/^\ufeff/, '');
  const ext = extname(input).toLowerCase();
  if (ext === '.csv' || ext === '.tsv') {
    const rows = parse(raw, { columns: true, delimiter: ext === '.tsv' ? '\t' : ',', skip_empty_lines: true, bom: true }) as Record<string, string>[];
    return rows.map((r, i) => {
      if (typeof r[textColumn] !== 'string') throw new Error(`${source}: record ${i + 1} has no column '${textColumn}' (use --text-column)`);
      return r[textColumn];
    });
  }
  const lines = raw.split(/\r?\n/);
  const texts: string[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    // A named plain-text file is one text per line, even a line that starts with '{'; stdin may be JSONL.
    if (ext === '.jsonl' || ext === '.ndjson' || (input === '-' && line.trimStart().startsWith('{'))) {
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch (err) {
        throw new Error(`${source}:${i + 1}: not valid JSON: ${(err as Error).message}`);
      }
      const text = (obj as Record<string, unknown>)?.[textColumn];
      if (typeof text !== 'string') throw new Error(`${source}:${i + 1}: expected a JSON object with a string "${textColumn}"`);
      texts.push(text);
    } else {
      texts.push(line);
    }
  });
  return texts;
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
    .option('--max-length <n>', 'truncate to n tokens', positiveInt, 128)
    .option('--batch-size <n>', 'texts per forward pass', positiveInt, 32)
    .option('--threads <n>', 'CPU threads', positiveInt)
    .option('--config <file>', 'JSON or YAML file holding any of these flags')
    .action(async (opts: Record<string, unknown>, cmd: Command) => {
      await applyConfigFile(cmd, opts);
      requireOptions(opts, ['model', 'input']);
      const texts = readTexts(String(opts.input), opts.textColumn as string);
      const classifier = await Classifier.load(String(opts.model), {
        backend: opts.backend as 'native' | 'onnx',
        maxLength: opts.maxLength as number,
        batchSize: opts.batchSize as number,
        threads: opts.threads as number | undefined,
      });
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
    });
}
