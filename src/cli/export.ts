/**
 * `nodetune export --model <folder>`: for a fine-tuned classifier folder, onnx/model.onnx
 * (transformers.js / onnxruntime layout; `--output`, `--opset 17`); for a causal LM — an sft run
 * folder, whose adapter is merged into its base (PEFT merge_and_unload), or any Llama-family
 * model — `--format hf` (a transformers folder, default `<model>/merged`) or `--format gguf`
 * (`--type f16|q8_0`, over the base GGUF's metadata, default `<model>/model-<type>.gguf`).
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { join } from 'node:path';
import { SUPPORTED_OPSETS } from '../onnx/export.js';
import { exportModelFolder } from '../onnx/folder.js';
import { exportCausalLM } from '../tasks/causal-lm/model.js';
import { explainPathErrors, positiveInt } from './common.js';
import { isCausalLMModel } from './eval.js';

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
    .description('export a fine-tuned classifier to ONNX (onnx/model.onnx), or a causal LM / sft run (adapter merged) to a Hugging Face folder or GGUF')
    .requiredOption('--model <folder>', 'model folder (config.json, model.safetensors, tokenizer files), or an sft run folder / causal LM GGUF')
    .option('--output <path>', 'destination: a folder (onnx, hf) or a .gguf file (gguf)')
    .addOption(new Option('--format <format>', 'onnx (classifier), hf or gguf (causal LM)').choices(['onnx', 'hf', 'gguf']))
    .addOption(new Option('--type <type>', 'gguf: storage type of 2-D tensors').choices(['f16', 'q8_0']).default('f16'))
    .option('--opset <n>', `ONNX opset, ${SUPPORTED_OPSETS[0]}-${SUPPORTED_OPSETS.at(-1)} (20+ uses the Gelu operator)`, parseIntOption, 17)
    .option('--threads <n>', 'CPU threads for loading (causal LM)', positiveInt)
    .action((opts: ExportCliOptions) => {
      const llm = isCausalLMModel(opts.model);
      return explainPathErrors({ ...opts }, () => (llm ? runCausalLMExport(opts) : runExport(opts)), llm ? [] : ['model']);
    });
}

interface ExportCliOptions {
  model: string;
  output?: string;
  opset: number;
  format?: 'onnx' | 'hf' | 'gguf';
  type: 'f16' | 'q8_0';
  threads?: number;
}

async function runExport(opts: ExportCliOptions): Promise<void> {
  if (opts.format !== undefined && opts.format !== 'onnx') throw new Error(`--format ${opts.format} is for causal LMs; ${opts.model} is a classifier folder (export it with --format onnx)`);
  if (!SUPPORTED_OPSETS.includes(opts.opset)) throw new Error(`--opset ${opts.opset}: expected ${SUPPORTED_OPSETS[0]}-${SUPPORTED_OPSETS.at(-1)}`);
  const result = await exportModelFolder(opts.model, { output: opts.output, opset: opts.opset });
  for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
  const extra = result.externalDataPath ? ` (+ external data ${result.externalDataPath})` : '';
  process.stdout.write(`wrote ${result.modelPath}${extra}: opset ${result.opset}, IR version ${result.irVersion}, ${result.modelBytes} bytes\n`);
}

async function runCausalLMExport(opts: ExportCliOptions): Promise<void> {
  const format = opts.format ?? 'hf';
  if (format === 'onnx') throw new Error(`--format onnx is for classifier folders; ${opts.model} is a causal LM (export it with --format hf or gguf)`);
  const type = opts.type === 'q8_0' ? 'Q8_0' : 'F16';
  const folder = opts.model.toLowerCase().endsWith('.gguf') ? join(opts.model, '..') : opts.model;
  const output = opts.output ?? (format === 'hf' ? join(folder, 'merged') : join(folder, `model-${opts.type}.gguf`));
  const files = await exportCausalLM(opts.model, { format, type, output, threads: opts.threads });
  process.stdout.write(`wrote ${format === 'hf' ? `${output}: ${files.join(', ')}` : `${output} (${type})`}\n`);
}
