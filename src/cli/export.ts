/**
 * `nodetune export --model <folder> [--output <folder>] [--opset 17]`:
 * writes onnx/model.onnx (transformers.js / onnxruntime layout) for a
 * fine-tuned model folder.
 */
import { Command, InvalidArgumentError } from 'commander';
import { SUPPORTED_OPSETS } from '../onnx/export.js';
import { exportModelFolder } from '../onnx/folder.js';
import { explainPathErrors } from './common.js';

/** Parses a base-10 integer option value. @throws InvalidArgumentError naming the value. */
export function parseIntOption(value: string): number {
  const n = Number(value);
  if (!/^\s*-?\d+\s*$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`'${value}' is not an integer.`);
  return n;
}

/** Adds the `export` sub-command to `program`. */
export function registerExport(program: Command): Command {
  return program
    .command('export')
    .description('export a fine-tuned model folder to ONNX (onnx/model.onnx, loadable by onnxruntime and transformers.js)')
    .requiredOption('--model <folder>', 'model folder (config.json, model.safetensors, tokenizer files)')
    .option('--output <folder>', 'destination folder (default: the model folder); config and tokenizer files are copied there')
    .option('--opset <n>', `ONNX opset, ${SUPPORTED_OPSETS[0]}-${SUPPORTED_OPSETS.at(-1)} (20+ uses the Gelu operator)`, parseIntOption, 17)
    .action((opts: ExportCliOptions) => explainPathErrors({ ...opts }, () => runExport(opts), ['model']));
}

interface ExportCliOptions {
  model: string;
  output?: string;
  opset: number;
}

async function runExport(opts: ExportCliOptions): Promise<void> {
  if (!SUPPORTED_OPSETS.includes(opts.opset)) throw new Error(`--opset ${opts.opset}: expected ${SUPPORTED_OPSETS[0]}-${SUPPORTED_OPSETS.at(-1)}`);
  const result = await exportModelFolder(opts.model, { output: opts.output, opset: opts.opset });
  for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
  const extra = result.externalDataPath ? ` (+ external data ${result.externalDataPath})` : '';
  process.stdout.write(`wrote ${result.modelPath}${extra}: opset ${result.opset}, IR version ${result.irVersion}, ${result.modelBytes} bytes\n`);
}
