/**
 * `nodetune eval`: a classifier folder's evaluation report on a labelled file (accuracy, F1s,
 * per-class report, confusion matrix); or, for a causal LM — a GGUF file, a Llama-family folder,
 * a Hub repo id, or an sft run folder — loss, perplexity and the answers it generates scored
 * (exact match, tool-call accuracy), so a base model and its fine-tuned run compare on one file.
 */
import { Command, Option } from 'commander';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { evaluateFile } from '../train/evaluate.js';
import { formatClassificationReport } from '../metrics/index.js';
import { writeReport } from '../report/index.js';
import { CAUSAL_LM_MODEL_TYPES } from '../models/llama.js';
import { isAdapterFolder } from '../io/peft.js';
import { evaluateCausalLM } from '../tasks/causal-lm/evaluate.js';
import { applyConfigFile, dataColumns, explainPathErrors, maxLength, positiveInt, printTable, requireOptions, withDataColumns } from './common.js';
import { choicesOf, withGenerationFlags } from './sft.js';
import { CHAT_TEMPLATE_FILE_HELP, LLM_PRECISION_HELP } from './generate.js';
import type { Precision } from '../engine.js';

export function registerEval(program: Command): void {
  withGenerationFlags(
    withDataColumns(
      program
        .command('eval')
        .description(
          'evaluate a fine-tuned classifier folder on a labelled file (accuracy, F1s, per-class report, confusion matrix), ' +
            'or a causal LM (GGUF, folder, Hub id, sft run folder) on SFT data (loss, perplexity, generated answers scored)',
        ),
    ),
  )
    .option('--model <folder|gguf|repo-id>', 'fine-tuned model folder (config.json with id2label), or a causal LM / sft run folder')
    .option('--data <file>', 'labelled data (.csv, .tsv, .jsonl); for a causal LM, SFT data (.jsonl, .json, .txt)')
    .option('--max-length <n>', 'truncate to n tokens (default 128; a causal LM: 1024)', maxLength)
    .option('--batch-size <n>', 'examples per forward pass', positiveInt, 64)
    .option('--threads <n>', 'CPU threads (default: all cores)', positiveInt)
    .addOption(new Option('--precision <p>', `causal LM: ${LLM_PRECISION_HELP}`).choices(['fp32', 'bf16', 'q8_0']))
    .option('--chat-template-file <file>', `causal LM: ${CHAT_TEMPLATE_FILE_HELP}`)
    .option('--output <folder>', 'also write eval_results.json and report.html here (a causal LM: eval_generations.jsonl too)')
    .option('--max-samples <n>', 'causal LM: evaluate the first n examples only', positiveInt)
    .option('--no-generation', 'causal LM: loss and perplexity only')
    .option('--no-loss', 'causal LM: generated answers only')
    .option('--config <file>', 'JSON or YAML file holding any of these flags')
    .action(async (opts: Record<string, unknown>, cmd: Command) => {
      const run = async () => {
        await applyConfigFile(cmd, opts);
        if (typeof opts.model === 'string' && isCausalLMModel(opts.model)) return runCausalLMEval(cmd, opts);
        return runEval(opts);
      };
      // A classifier's --model must be a model folder; a causal LM's may be a file or a Hub id.
      const llm = typeof opts.model === 'string' && isCausalLMModel(opts.model);
      return explainPathErrors(opts, run, llm ? [] : ['model']);
    });
}

/**
 * Whether --model names a causal LM rather than a classifier folder: a .gguf file, an sft run
 * folder (adapter_config.json), a folder whose config.json model_type is a Llama-family type, or
 * a Hub repo id (owner/name) that is not a local path. Anything else takes the classifier path,
 * whose errors name a missing or wrong --model.
 */
export function isCausalLMModel(model: string): boolean {
  if (existsSync(model)) {
    if (statSync(model).isFile()) return model.toLowerCase().endsWith('.gguf');
    if (isAdapterFolder(model)) return true;
    try {
      const type = (JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')) as { model_type?: unknown }).model_type;
      return (CAUSAL_LM_MODEL_TYPES as readonly unknown[]).includes(type);
    } catch {
      return false;
    }
  }
  // owner/name whose owner is not a local folder (runs/x that is missing is a path, not a repo).
  const m = /^([A-Za-z0-9][\w.-]*)\/[\w.-]+$/.exec(model);
  return m !== null && !existsSync(m[1]) && !model.endsWith('.gguf');
}

async function runCausalLMEval(cmd: Command, opts: Record<string, unknown>): Promise<void> {
  requireOptions(opts, ['model', 'data']);
  const { results, samples, encode } = await evaluateCausalLM({
    model: String(opts.model),
    data: String(opts.data),
    max_length: opts.maxLength as number | undefined,
    // 64 suits a classifier's short texts; chats can be 1024 tokens long.
    batch_size: cmd.getOptionValueSource('batchSize') === 'default' ? 16 : (opts.batchSize as number),
    max_eval_samples: opts.maxSamples as number | undefined,
    max_generation_samples: opts.maxSamples as number | undefined,
    skip_loss: opts.loss === false,
    generation: opts.generation !== false,
    max_new_tokens: opts.maxNewTokens as number | undefined,
    generation_batch_size: opts.generationBatchSize as number,
    choices: choicesOf(opts),
    choices_from_labels: opts.choicesFromLabels === true,
    threads: opts.threads as number | undefined,
    precision: opts.precision as Precision | undefined,
    chat_template_file: opts.chatTemplateFile as string | undefined,
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(`${JSON.stringify(results, null, 1)}\n`);
  if (opts.output) {
    const out = String(opts.output);
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'eval_results.json'), JSON.stringify(results, null, 1));
    await writeFile(join(out, 'eval_generations.jsonl'), samples.map((s) => JSON.stringify(s) + '\n').join(''));
    writeReport(out, {
      title: `nodetune eval: ${opts.model} on ${opts.data}`,
      trainLog: [],
      evalHistory: [],
      metrics: results.exact_match !== undefined ? [['exact match', `${(100 * results.exact_match).toFixed(2)}% of ${results.generated}`]] : [],
      samples: samples.slice(0, 50).map((s) => ({ source: s.source, prompt: s.prompt, reference: s.reference, after: s.prediction })),
      config: { model: opts.model, data: opts.data, encode },
    });
  }
  const pct = (x: number | undefined) => (x === undefined ? '' : `${(100 * x).toFixed(2)}%`);
  const rows: Array<[string, string]> = [];
  if (results.exact_match !== undefined) rows.push(['exact match', `${pct(results.exact_match)} of ${results.generated}`]);
  if (results.tool_call_examples) {
    rows.push(['tool calls parseable', pct(results.parseable_call_rate)], ['function name', pct(results.function_name_accuracy)], ['arguments', pct(results.arguments_accuracy)]);
  }
  if (results.loss !== undefined) rows.push(['loss', results.loss.toFixed(4)], ['perplexity', (results.perplexity ?? NaN).toFixed(3)]);
  printTable('nodetune eval', rows);
}

async function runEval(opts: Record<string, unknown>): Promise<void> {
  requireOptions(opts, ['model', 'data']);
  if (opts.precision !== undefined) throw new Error(`--precision is for a causal LM; the classifier ${String(opts.model)} is evaluated in fp32`);
  if (opts.chatTemplateFile !== undefined) throw new Error(`--chat-template-file is for a causal LM; the classifier ${String(opts.model)} has no chat template`);
  const results = await evaluateFile({
    model: String(opts.model),
    data: String(opts.data),
    ...dataColumns(opts),
    max_length: (opts.maxLength as number | undefined) ?? 128,
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
