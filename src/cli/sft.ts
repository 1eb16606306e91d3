/**
 * `nodetune sft`: supervised fine-tuning of a causal LM (LoRA by default) on chat, ShareGPT,
 * prompt/completion or text data. Flags follow Hugging Face TrainingArguments (as `nodetune
 * train`), PEFT LoraConfig and TRL SFTConfig names in kebab case; `--config file.json|yaml` may
 * hold any of them (flags given on the command line win).
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { fineTuneCausalLM, type SftOptions, type SftResult } from '../tasks/causal-lm/sft.js';
import { applyConfigFile, explainPathErrors, int, num, positiveInt, printTable, requireOptions } from './common.js';
import { attachProgress, logLine, runTrainingCommand, stopOnInterrupt, trainingArgumentsOf, withRunFlags, withTrainingFlags } from './training.js';

/** Commander parser for --lora-layers: "20-29", "0,2,4" or a mix ("0,10-12"). */
export function layerList(value: string): number[] {
  const out = new Set<number>();
  for (const part of value.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new InvalidArgumentError(`'${value}' is not a list of layer numbers (e.g. 20-29 or 0,2,4).`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new InvalidArgumentError(`'${part}' is an empty range.`);
    for (let l = a; l <= b; l++) out.add(l);
  }
  if (out.size === 0) throw new InvalidArgumentError(`'${value}' names no layer.`);
  return [...out].sort((x, y) => x - y);
}

/** Adds the flags of generation-based evaluation (shared by sft and eval). */
export function withGenerationFlags(cmd: Command): Command {
  return cmd
    .option('--choices <a,b,...>', 'constrain generated answers to these strings (comma-separated)')
    .option('--choices-file <file>', 'constrain generated answers to the lines of this file')
    .option('--choices-from-labels', 'constrain generated answers to the distinct reference answers (a label set)')
    .option('--max-new-tokens <n>', 'new tokens per generated answer (default 256; with choices, the longest + 1)', positiveInt)
    .option('--generation-batch-size <n>', 'prompts per batched generation', positiveInt, 32);
}

/** --choices / --choices-file as a list. @throws Error when both are given or the file is empty. */
export function choicesOf(o: Record<string, unknown>): string[] | undefined {
  if (o.choices !== undefined && o.choicesFile !== undefined) throw new Error('--choices and --choices-file contradict each other: pass one');
  if (o.choicesFromLabels && (o.choices !== undefined || o.choicesFile !== undefined)) throw new Error('--choices-from-labels and --choices/--choices-file contradict each other: pass one');
  let list: string[] | undefined;
  if (o.choices !== undefined) list = String(o.choices).split(',');
  if (o.choicesFile !== undefined) list = readFileSync(String(o.choicesFile), 'utf8').split(/\r?\n/);
  if (list === undefined) return undefined;
  list = list.map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw new Error(`${o.choicesFile ? `--choices-file ${o.choicesFile}` : '--choices'}: no choices given`);
  return list;
}

export function registerSft(program: Command): void {
  const cmd = withGenerationFlags(
    program
      .command('sft')
      .description('supervised fine-tuning of a causal LM (LoRA by default) on chat / ShareGPT / prompt-completion / text JSONL; evaluates by generation')
      .option('--model <gguf|folder|repo-id>', 'base model: a GGUF file, a Hugging Face folder or a Hub repo id')
      .option('--train <file>', 'training data (.jsonl, .json, .txt)')
      .option('--eval <file>', 'evaluation data (loss, perplexity, and answers generated and scored)')
      .option('--output <folder>', 'run folder (adapter, adapter GGUF, eval_results.json, training_log.jsonl, report.html)')
      .option('--max-length <n>', 'tokens per example at most (right truncation)', positiveInt, 1024)
      .option('--packing', 'pack short examples into --max-length rows (each example attends only to itself)')
      .option('--lora-r <n>', 'LoRA rank', positiveInt)
      .option('--lora-alpha <a>', 'LoRA alpha (scale alpha / r)', num)
      .option('--lora-dropout <p>', 'dropout on the adapters\' input', num)
      .option('--lora-target <modules>', "'all-linear' or a comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
      .option('--use-rslora', 'rsLoRA: scale alpha / sqrt(r)')
      .option('--lora-layers <list>', 'adapt only these decoder layers (PEFT layers_to_transform), e.g. 20-29')
      .option('--full', 'full fine-tuning: train every weight instead of LoRA adapters')
      .option('--gradient-checkpointing', 'recompute each layer in backward (less memory, more compute)')
  );
  withRunFlags(
    withTrainingFlags(cmd, {
      batchSize: 8,
      evalBatchSize: 16,
      learningRateHelp: "peak learning rate (default 2e-4 with LoRA, 2e-5 with --full), or 'auto': a learning-rate range test picks it",
      weightDecay: 0,
      weightDecayHelp: 'decoupled weight decay',
      gradientAccumulationHelp: 'micro-batches per optimizer step (loss normalised over their target tokens)',
      evalStrategyHelp: 'when to evaluate the loss during training',
      metricForBestModel: 'loss',
      metricHelp: 'loss | perplexity',
      seedHelp: 'seed of data order, dropout and adapter initialisation',
    })
      .option('--max-eval-samples <n>', 'evaluation loss on the first n eval examples only', positiveInt)
      .option('--no-eval-generation', 'skip generating and scoring answers for the eval examples')
      .option('--max-generation-samples <n>', 'generate for the first n eval examples only', positiveInt)
      .option('--report-samples <n>', 'examples generated before and after training for report.html', int, 8)
      .addOption(new Option('--precision <p>', 'fp32, or bf16: mixed precision on CUDA; on the CPU (LoRA) the frozen base read in bf16').choices(['fp32', 'bf16']).default('fp32'))
      .option('--chat-template-file <file>', "a Jinja chat template file that replaces the model's (a base model has none); the run folder keeps it"),
  ).action(async (opts: Record<string, unknown>, command: Command) => {
    await explainPathErrors(opts, async () => {
      await applyConfigFile(command, opts);
      requireOptions(opts, ['model', 'train', 'output']);
      await runTrainingCommand(opts, () => fineTuneCausalLM(toOptions(opts)), printResult);
    });
  });
}

function toOptions(o: Record<string, unknown>): SftOptions {
  const target = o.loraTarget === undefined ? undefined : String(o.loraTarget) === 'all-linear' ? 'all-linear' : String(o.loraTarget).split(',').map((s) => s.trim()).filter(Boolean);
  const opts: SftOptions = {
    ...trainingArgumentsOf(o),
    model: String(o.model),
    train_file: String(o.train),
    eval_file: o.eval as string | undefined,
    max_length: o.maxLength as number,
    packing: o.packing === true,
    lora_r: o.loraR as number | undefined,
    lora_alpha: o.loraAlpha as number | undefined,
    lora_dropout: o.loraDropout as number | undefined,
    lora_target_modules: target as SftOptions['lora_target_modules'],
    use_rslora: o.useRslora === true ? true : undefined,
    lora_layers_to_transform: o.loraLayers === undefined ? undefined : Array.isArray(o.loraLayers) ? (o.loraLayers as number[]) : layerList(String(o.loraLayers)),
    full_finetune: o.full === true,
    gradient_checkpointing: o.gradientCheckpointing === true ? true : undefined,
    max_eval_samples: o.maxEvalSamples as number | undefined,
    eval_generation: o.evalGeneration !== false,
    max_generation_samples: o.maxGenerationSamples as number | undefined,
    generation_max_new_tokens: o.maxNewTokens as number | undefined,
    generation_batch_size: o.generationBatchSize as number,
    choices: choicesOf(o),
    choices_from_labels: o.choicesFromLabels === true ? true : undefined,
    report_samples: o.reportSamples as number,
    threads: o.threads as number | undefined,
    device: o.device as string,
    precision: o.precision as 'fp32' | 'bf16',
    chat_template_file: o.chatTemplateFile as string | undefined,
    overwrite_output_dir: o.overwriteOutputDir === true,
    log: logLine,
  };
  opts.onTrainer = (trainer) => {
    attachProgress(trainer, { name: 'sft', rate: 'tokens', evalLine: (e) => `loss ${e.loss.toFixed(4)} perplexity ${e.perplexity.toFixed(3)}` });
    stopOnInterrupt(trainer);
  };
  return Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as SftOptions;
}

function printResult(r: SftResult): void {
  const e = r.eval;
  const pct = (x: number | undefined) => (x === undefined ? '' : `${(100 * x).toFixed(2)}%`);
  const rows: Array<[string, string]> = [
    ['output', r.output_dir],
    ['train examples / rows', `${r.train_examples} / ${r.train_rows}`],
    ['truncated / skipped', `${r.encode.train.truncated} / ${r.encode.train.skipped}`],
    ['steps', String(r.global_step)],
  ];
  if (e?.exact_match !== undefined) rows.push(['exact match', `${pct(e.exact_match)} of ${e.generated}`]);
  if (e?.tool_call_examples) {
    rows.push(['tool calls parseable', pct(e.parseable_call_rate)], ['function name', pct(e.function_name_accuracy)], ['arguments', pct(e.arguments_accuracy)]);
  }
  if (e?.loss !== undefined) rows.push(['eval loss', e.loss.toFixed(4)], ['perplexity', (e.perplexity ?? NaN).toFixed(3)]);
  if (!e) rows.push(['eval', 'none (no --eval)']);
  rows.push(['training time', `${r.train_seconds.toFixed(0)} s`], ['wall time', `${r.seconds.toFixed(0)} s`]);
  printTable('nodetune sft: result', rows);
}
