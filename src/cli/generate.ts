/**
 * `nodetune generate --model <gguf | folder | hub id> --prompt TEXT [--chat] ...`: streams a
 * causal LM's continuation of a prompt to stdout (src/llm/llm.ts). The decoding flags, shared
 * with `nodetune chat`, are Hugging Face GenerationConfig names in kebab case.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import { LLM, type GenerateOptions } from '../llm/llm.js';
import type { ChatMessage } from '../chat/template.js';
import { explainPathErrors, int, num, positiveInt, requireOptions } from './common.js';
import type { Precision } from '../engine.js';

function range(test: (x: number) => boolean, want: string) {
  return (value: string): number => {
    const x = num(value);
    if (!test(x)) throw new InvalidArgumentError(`'${value}' must be ${want}.`);
    return x;
  };
}

const nonNegativeInt = (value: string): number => {
  const x = int(value);
  if (x < 0) throw new InvalidArgumentError(`'${value}' must be an integer >= 0.`);
  return x;
};

/** Adds the model and decoding flags `generate` and `chat` share. */
export function addGenerationOptions(cmd: Command): Command {
  return cmd
    .option('--model <gguf|folder|hub-id>', 'a .gguf file, a Hugging Face model folder, a Hub repo id (Llama, Qwen2, Mistral), or an sft run folder (its base + adapter)')
    .option('--revision <rev>', 'Hub revision when --model is a repo id', 'main')
    .option('--lora <folder>', 'a PEFT LoRA adapter folder to apply')
    .option('--system <text>', 'system message (chat template)')
    .option('--chat-template-file <file>', CHAT_TEMPLATE_FILE_HELP)
    .option('--max-new-tokens <n>', 'new tokens at most (HF max_new_tokens; default: generation_config.json, else 256)', positiveInt)
    .option('--temperature <t>', 'sampling temperature; 0 = greedy', range((x) => x >= 0, 'a number >= 0'), 0)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', nonNegativeInt)
    .option('--top-p <p>', 'nucleus sampling: keep the smallest set with probability >= p (1 = off)', range((x) => x > 0 && x <= 1, 'in (0, 1]'))
    .option('--min-p <p>', 'drop tokens below p x the top probability (0 = off)', range((x) => x >= 0 && x <= 1, 'in [0, 1]'))
    .option('--repetition-penalty <x>', 'HF repetition_penalty (1 = off)', range((x) => x > 0, 'a number > 0'))
    .option('--seed <n>', 'seed of the sampling draws', int)
    .option('--stop <strings...>', 'stop strings: generation ends before the first of them')
    .option('--threads <n>', 'CPU threads (default: all cores)', positiveInt)
    .option('--device <device>', "'cpu', 'cuda' or 'cuda:N' (an addon built with the CUDA backend)", 'cpu')
    .addOption(new Option('--precision <p>', `${LLM_PRECISION_HELP}; on CUDA bf16 is bf16 weights and activations`).choices(['fp32', 'bf16', 'q8_0']).default('fp32'));
}

/** --chat-template-file of the commands that render conversations (generate, chat, serve, eval, sft). */
export const CHAT_TEMPLATE_FILE_HELP = "a Jinja chat template file that replaces the model's (a base model has none; an sft run folder brings the one it was trained with)";

/** --precision of the commands that load a causal LM for generation (generate, chat, serve, eval). */
export const LLM_PRECISION_HELP =
  'fp32, bf16 (the weights read in bf16 by oneDNN: CPUs with AMX-BF16 or AVX512_BF16) or q8_0 (CPU: the linear layers read Q8_0 weights, llama.cpp\'s 8-bit format; the fastest batch-1 decode)';

/** GenerateOptions from the parsed flags. */
export function generationOptions(opts: Record<string, unknown>): GenerateOptions {
  const o: GenerateOptions = {
    maxNewTokens: opts.maxNewTokens as number | undefined,
    temperature: opts.temperature as number | undefined,
    topK: opts.topK as number | undefined,
    topP: opts.topP as number | undefined,
    minP: opts.minP as number | undefined,
    repetitionPenalty: opts.repetitionPenalty as number | undefined,
    seed: opts.seed as number | undefined,
    stop: opts.stop as string[] | undefined,
  };
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as GenerateOptions;
}

/**
 * Loads --model (and --lora), naming the flag when either path is wrong.
 * @throws Error "--model x.gguf does not exist", "--lora dir: ..." and what LLM.load throws.
 */
export async function loadFromFlags(opts: Record<string, unknown>): Promise<LLM> {
  requireOptions(opts, ['model']);
  const load = () =>
    LLM.load(String(opts.model), {
      threads: opts.threads as number | undefined,
      device: opts.device as string | undefined,
      precision: opts.precision as Precision | undefined,
      revision: opts.revision as string | undefined,
      lora: opts.lora as string | undefined,
      chatTemplateFile: opts.chatTemplateFile as string | undefined,
    });
  return explainPathErrors({ model: opts.model }, async () => {
    try {
      return await load();
    } catch (err) {
      const e = err as Error;
      if (typeof opts.lora === 'string' && e.message?.includes(opts.lora) && !e.message.startsWith('--')) throw new Error(`--lora ${opts.lora}: ${e.message}`, { cause: err });
      throw err;
    }
  });
}

/** LLM errors about the prompt's length, worded with the flags that set it. */
export function nameLengthFlags(err: unknown, promptFlag: string): unknown {
  const e = err as Error;
  if (/^maxNewTokens \d+ leaves no room/.test(e?.message ?? '')) return new Error(e.message.replace('maxNewTokens', '--max-new-tokens'), { cause: err });
  if (!/^the prompt is \d+ tokens?;/.test(e?.message ?? '')) return err;
  return new Error(`${promptFlag}: ${e.message.replace('maxNewTokens', '--max-new-tokens')}`, { cause: err });
}

/** `generate | head` closes stdout early: stop quietly instead of an EPIPE stack trace. */
function exitQuietlyOnEpipe(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
}

export function registerGenerate(program: Command): void {
  addGenerationOptions(
    program
      .command('generate')
      .description('generate text with a causal LM (GGUF, Hugging Face folder or Hub id); the continuation streams to stdout'),
  )
    .option('--prompt <text>', 'the prompt: raw text, or with --chat the user message')
    .option('--chat', 'apply the model\'s chat template: --prompt is a user message (after --system)')
    .action(async (opts: Record<string, unknown>) => {
      exitQuietlyOnEpipe();
      await generate(opts);
    });
}

async function generate(opts: Record<string, unknown>): Promise<void> {
  requireOptions(opts, ['model', 'prompt']);
  if (opts.system !== undefined && !opts.chat) throw new Error('--system needs --chat (a raw prompt has no system message)');
  const options = generationOptions(opts);
  const prompt: string | ChatMessage[] = opts.chat
    ? [...(opts.system !== undefined ? [{ role: 'system', content: String(opts.system) }] : []), { role: 'user', content: String(opts.prompt) }]
    : String(opts.prompt);
  const llm = await loadFromFlags(opts);
  const controller = new AbortController();
  // Ctrl-C ends the generation; what came so far is printed, and the exit status is 130.
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  try {
    let last = '';
    for await (const delta of llm.stream(prompt, { ...options, signal: controller.signal })) {
      process.stdout.write(delta);
      last = delta;
    }
    if (!last.endsWith('\n')) process.stdout.write('\n');
  } catch (err) {
    throw nameLengthFlags(err, '--prompt');
  } finally {
    process.off('SIGINT', onSigint);
    await llm.dispose();
  }
  if (controller.signal.aborted) process.exitCode = 130;
}
