/**
 * LLM: a Llama-family causal LM as people use one from Node — load a GGUF file, a Hugging Face
 * folder or a Hub id, then `generate` (raw text or a conversation), `stream` text deltas, or
 * `chat` for an assistant message with parsed tool calls. Options follow Hugging Face
 * GenerationConfig names, camel-cased as node-llama-cpp spells them (maxNewTokens = HF
 * max_new_tokens, topK = top_k, minP = min_p, repetitionPenalty = repetition_penalty).
 *
 * One engine holds one generation at a time (its KV cache): calls on one LLM run one after
 * another, in call order; several prompts given together run as one batch.
 */
import type { ChatMessage } from '../chat/template.js';
import { ADAPTER_CONFIG_FILE, adapterBase, checkLoraTensors, isAdapterFolder, llamaLinearShapes, loadPeftAdapter } from '../io/peft.js';
import type { LlamaConfig } from '../models/llama.js';
import type { Precision } from '../engine.js';
import type { LlmStreamDecoder, LlmTokenizer } from '../tokenizer/bpe.js';
import { ChoiceConstraint } from './choices.js';
import { generateIds, type FinishReason } from './generate.js';
import { loadCausalLM, useRunChatTemplate, type CausalLM } from './load.js';
import { resolveSampling, shown } from './sampling.js';
import { parseToolCalls, type ParsedToolCall } from './tool-calls.js';

/** A raw text prompt, or a conversation rendered through the model's chat template. */
export type Prompt = string | ChatMessage[];

export interface LLMLoadOptions {
  /** CPU threads for the engine (default: all cores). */
  threads?: number;
  /** Default seed of sampled generations (default 0); a call's `seed` wins. */
  seed?: number;
  /** A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) applied on the base model. */
  lora?: string;
  /** Hub revision (branch, tag, commit) when `model` is a repo id (default 'main'). */
  revision?: string;
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: string;
  /**
   * 'fp32' (default), 'bf16' (CUDA; on the CPU the weights read in bf16 by oneDNN) or 'q8_0' (CPU: the linear
   * layers read Q8_0 weights, llama.cpp's 8-bit format; the fastest batch-1 decode). See EngineOptions.precision.
   */
  precision?: Precision;
  /**
   * A Jinja chat template file that replaces the model's (a base model without one). Without it, a
   * LoRA run folder (as the model or as `lora`) brings the template it was trained with.
   */
  chatTemplateFile?: string;
}

/** Every LLMLoadOptions key (`satisfies` keeps the list complete and exact). */
const LOAD_OPTION_KEYS = Object.keys({ threads: 1, seed: 1, lora: 1, revision: 1, device: 1, precision: 1, chatTemplateFile: 1 } satisfies Record<keyof LLMLoadOptions, 1>);

/** Options of generate / stream / chat. */
export interface GenerateOptions {
  /** HF max_new_tokens: new tokens at most. Default: generation_config.json's max_new_tokens, else 256 (with `choices`: the longest choice + 1). */
  maxNewTokens?: number;
  /** HF min_new_tokens: end-of-sequence ids are suppressed until this many tokens (default 0). */
  minNewTokens?: number;
  /** HF temperature; 0 (default) decodes greedily (HF do_sample=False). */
  temperature?: number;
  /** HF top_k (0 = off). */
  topK?: number;
  /** HF top_p (1 = off). */
  topP?: number;
  /** HF min_p (0 = off). */
  minP?: number;
  /** HF repetition_penalty (1 = off). */
  repetitionPenalty?: number;
  /** Seed of the draws when sampling (default: LLMLoadOptions.seed, else 0): the same seed gives the same text. */
  seed?: number;
  /** Stop strings (OpenAI `stop`): generation ends when the text contains one; the text ends before it. */
  stop?: string | string[];
  /** Ends the generation at the next token; the result so far comes back with finishReason 'aborted'. */
  signal?: AbortSignal;
  /** JSON schemas of tools ({ type: 'function', function: { name, description, parameters } }), passed to the chat template; chat() parses the calls. */
  tools?: unknown[];
  /** Constrained decoding: the text must be exactly one of these strings (see ChoiceConstraint). */
  choices?: string[];
  /** Called with each text delta as it is decoded (what stream() yields), and the prompt's index in a batch (node-llama-cpp's onTextChunk). */
  onTextChunk?: (text: string, index: number) => void;
  /**
   * Report each generated token's log-probability under the model (log-softmax of its logits,
   * before repetition penalty, temperature, filters or choices) with this many most likely
   * alternatives, 0 to 20 (OpenAI's logprobs / top_logprobs). Default: none.
   */
  logprobs?: number;
}

/** A token with its log-probability (natural log), as OpenAI's logprobs give it. */
export interface TokenLogprob {
  id: number;
  /** The token decoded alone (a character split across tokens shows as U+FFFD; see bytes). */
  token: string;
  /** The token's UTF-8 bytes. */
  bytes: number[];
  logprob: number;
}

export interface GenerateResult {
  /** The generated text: end-of-sequence tokens left out, cut before a stop string. */
  text: string;
  /** Every generated token id, a final end-of-sequence id included. */
  tokens: number[];
  /** 'stop': an eos token, a stop string, or a complete choice; 'length': maxNewTokens reached; 'aborted': the signal fired. */
  finishReason: 'stop' | 'length' | 'aborted';
  usage: { promptTokens: number; completionTokens: number };
  /** With options.logprobs: one entry per id of `tokens`, and its most likely alternatives. */
  logprobs?: Array<TokenLogprob & { top: TokenLogprob[] }>;
}

/** What chat() answers: an assistant message (OpenAI / transformers shape), ready to append to the conversation. */
export interface AssistantMessage extends ChatMessage {
  role: 'assistant';
  /** The reply's text, tool calls taken out ('' when the reply is only calls). */
  content: string;
  /** Present when `tools` were given and the reply called any (formats: src/llm/tool-calls.ts). */
  tool_calls?: ParsedToolCall[];
}

interface Resolved {
  maxNewTokens: number;
  minNewTokens: number;
  stops: string[];
  choices?: string[];
  tools?: unknown[];
  signal?: AbortSignal;
  logprobs?: number;
  sampling: ReturnType<typeof resolveSampling>;
}

/** A conversation: a non-empty array of message objects (not strings, not arrays). */
function isConversation(p: unknown): p is ChatMessage[] {
  return Array.isArray(p) && p.length > 0 && p.every((m) => m !== null && typeof m === 'object' && !Array.isArray(m));
}

/**
 * One row's text as tokens arrive: decoded UTF-8 safely, searched for stop strings, and released
 * for streaming only where no stop string could still begin.
 */
class RowText {
  text = '';
  /** Where the first stop string starts (-1: none yet). */
  cut = -1;
  private fed = 0;
  private emitted = 0;
  private searched = 0;
  private readonly decoder: LlmStreamDecoder;
  private readonly maxStop: number;

  constructor(tokenizer: LlmTokenizer, private readonly eos: ReadonlySet<number>, private readonly stops: readonly string[]) {
    this.decoder = tokenizer.createStreamDecoder();
    this.maxStop = Math.max(0, ...stops.map((s) => s.length));
  }

  /** Decodes the ids not seen yet; true once a stop string has appeared. */
  feed(generated: readonly number[]): boolean {
    while (this.fed < generated.length) {
      const id = generated[this.fed++];
      if (id >= 0 && !this.eos.has(id)) this.text += this.decoder.push(id);
    }
    this.search();
    return this.cut >= 0;
  }

  /** The row ended: release what the decoder held back (an incomplete UTF-8 sequence). */
  finish(): void {
    if (this.cut >= 0) return;
    this.text += this.decoder.flush();
    this.search();
  }

  /** The final text. */
  get result(): string {
    return this.cut >= 0 ? this.text.slice(0, this.cut) : this.text;
  }

  /** Text not streamed yet that can no longer be part of a stop string (all of it once `done`). */
  delta(done: boolean): string {
    let limit = this.cut >= 0 ? this.cut : this.text.length;
    if (!done && this.cut < 0) limit -= this.heldForStops();
    if (limit <= this.emitted) return '';
    const out = this.text.slice(this.emitted, limit);
    this.emitted = limit;
    return out;
  }

  private search(): void {
    if (this.cut >= 0 || this.stops.length === 0) return;
    // A stop string may straddle what was searched before and what was just decoded.
    const from = Math.max(0, this.searched - this.maxStop + 1);
    for (const s of this.stops) {
      const at = this.text.indexOf(s, from);
      if (at >= 0 && (this.cut < 0 || at < this.cut)) this.cut = at;
    }
    this.searched = this.text.length;
  }

  /** Length of the longest end of the text that begins some stop string. */
  private heldForStops(): number {
    let held = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.text.length); k > held; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          held = k;
          break;
        }
      }
    }
    return held;
  }
}

/**
 * A causal language model ready to generate.
 *
 * ```ts
 * const llm = await LLM.load('SmolLM2-135M-Instruct.Q4_1.gguf', { threads: 2 });
 * const { text } = await llm.generate([{ role: 'user', content: 'Capital of France?' }], { maxNewTokens: 32 });
 * for await (const delta of llm.stream('Once upon a time', { maxNewTokens: 64, temperature: 0.7, seed: 1 })) process.stdout.write(delta);
 * await llm.dispose();
 * ```
 */
export class LLM {
  readonly config: LlamaConfig;
  readonly tokenizer: LlmTokenizer;
  /** generation_config.json of a model folder ({} for a GGUF). */
  readonly generationConfig: Readonly<Record<string, unknown>>;
  /** The GGUF file or model folder the weights came from. */
  readonly source: CausalLM['source'];
  private readonly lm: CausalLM;
  private readonly defaultSeed: number;
  private busy: Promise<void> = Promise.resolve();
  /** dispose() was called: new calls are refused. */
  private disposed = false;
  /** The engine is gone: calls queued before dispose() that had not started are refused. */
  private freed = false;

  private constructor(lm: CausalLM, seed: number) {
    this.lm = lm;
    this.config = lm.config;
    this.tokenizer = lm.tokenizer;
    this.generationConfig = lm.generationConfig;
    this.source = lm.source;
    this.defaultSeed = seed;
  }

  /**
   * Loads a model (see loadCausalLM: weights dequantized to float32, then held as `precision` says).
   * @param model a .gguf file, a Hugging Face model folder, a Hub repo id (pulled into the cache),
   *   or a PEFT adapter folder such as a `nodetune sft` run (adapter_config.json): its base
   *   (base_model_name_or_path, see adapterBase) with the adapter on it, as `lora` does.
   * @throws Error naming the file or key: an unknown option, a missing path (code ENOENT), an unsupported
   *   architecture or tokenizer, a missing or misshapen tensor; for `lora`, what loadPeftAdapter
   *   throws, or an adapter whose shapes do not fit the model (naming the tensor); for an adapter
   *   folder whose base cannot be loaded, one naming both.
   */
  static async load(model: string, opts: LLMLoadOptions = {}): Promise<LLM> {
    // Checked here, so a misspelled option is named as LLM.load's, not as the engine's.
    for (const k of Object.keys(opts ?? {}))
      if (!LOAD_OPTION_KEYS.includes(k)) throw new Error(`LLM.load: unknown option '${k}'; expected one of ${LOAD_OPTION_KEYS.join(', ')}`);
    const { lora: loraOption, seed, ...rest } = opts;
    if (seed !== undefined && !Number.isSafeInteger(seed)) throw new Error(`seed must be an integer, got ${shown(seed)}`);
    const run = loraOption === undefined && isAdapterFolder(model);
    const lora = run ? model : loraOption;
    const adapter = lora === undefined ? undefined : await loadPeftAdapter(lora);
    const base = run ? adapterBase(model, adapter!) : model;
    // Generation trains nothing: without an adapter the engine holds no gradient or optimizer buffers.
    const lm = await loadCausalLM(base, { ...rest, ...(seed !== undefined ? { seed } : {}), ...(adapter ? { lora: adapter.lora } : { trainable: false }) }).catch((err: Error) => {
      if (!run) throw err;
      throw new Error(`${model}: cannot load its base model ${base} (${ADAPTER_CONFIG_FILE} base_model_name_or_path): ${err.message}`, { cause: err });
    });
    if (adapter) {
      try {
        if (opts.chatTemplateFile === undefined) await useRunChatTemplate(lm.tokenizer, lora!);
        checkLoraTensors(adapter.tensors, adapter.lora, `${lora}/adapter_model.safetensors`, llamaLinearShapes(lm.config), lm.config.num_hidden_layers);
        // The engine names its LoRA parameters with PEFT's saved keys.
        for (const [name, t] of adapter.tensors) lm.engine.setWeight(name, t.data);
      } catch (err) {
        await lm.engine.dispose();
        throw err;
      }
    }
    return new LLM(lm, seed ?? 0);
  }

  /**
   * Generates a continuation of each prompt.
   *
   * A string is a raw prompt (BOS added when the tokenizer's add_bos_token says so; special-token
   * text such as `<|im_start|>` is parsed); messages are rendered with the chat template and
   * add_generation_prompt, as transformers' `apply_chat_template(..., add_generation_prompt=True)`,
   * with `options.tools`. An array of prompts runs as one left-padded batch and resolves to one
   * result per prompt. Follows Hugging Face generate() (see src/llm/generate.ts, sampling.ts).
   *
   * @throws Error naming the option for a bad option; naming the message index for a bad message
   *   (`prompts[i]: messages[j] ...` in a batch); naming both lengths when a prompt's tokens plus
   *   maxNewTokens exceed max_position_embeddings; after dispose().
   */
  generate(prompt: Prompt, options?: GenerateOptions): Promise<GenerateResult>;
  generate(prompts: Prompt[], options?: GenerateOptions): Promise<GenerateResult[]>;
  generate(prompt: Prompt | Prompt[], options?: GenerateOptions): Promise<GenerateResult | GenerateResult[]>;
  async generate(prompt: Prompt | Prompt[], options: GenerateOptions = {}): Promise<GenerateResult | GenerateResult[]> {
    const batch = !(typeof prompt === 'string' || isConversation(prompt));
    const prompts = (batch ? prompt : [prompt]) as unknown[];
    if (!Array.isArray(prompts)) throw new TypeError(`prompt must be a string, an array of chat messages, or an array of prompts; got ${prompt === null ? 'null' : typeof prompt}`);
    const results: GenerateResult[] = [];
    const onTextChunk = options?.onTextChunk;
    if (onTextChunk !== undefined && typeof onTextChunk !== 'function') throw new TypeError('onTextChunk must be a function');
    for await (const { row, delta } of this.run(prompts, batch, options, results)) onTextChunk?.(delta, row);
    return batch ? results : results[0];
  }

  /**
   * Generates for one prompt and yields the text as it comes: each delta is whole characters
   * (a character split across tokens waits for its last byte), text that could begin a stop string
   * waits until it cannot, and the deltas concatenate to generate()'s text for the same call.
   * The generation holds the model until the iteration ends (breaking out of it ends it).
   * @throws as generate(); a batch of prompts is an Error (stream one prompt at a time).
   */
  async *stream(prompt: Prompt, options: GenerateOptions = {}): AsyncGenerator<string, void, undefined> {
    if (!(typeof prompt === 'string' || isConversation(prompt))) throw new TypeError('stream() takes one prompt (a string or an array of chat messages); use generate() for a batch');
    for await (const { delta } of this.run([prompt], false, options, [])) yield delta;
  }

  /**
   * Answers a conversation: the reply as an assistant message. With `options.tools`, calls to those
   * tools in the reply (formats: src/llm/tool-calls.ts — `<tool_call>` blocks, Mistral `[TOOL_CALLS]`,
   * Llama 3 JSON) are parsed into `tool_calls` and taken out of `content`; a call naming a tool not
   * offered stays in `content` as text.
   * @throws as generate(); Error when messages is not a non-empty array of messages.
   */
  async chat(messages: ChatMessage[], options: GenerateOptions = {}): Promise<AssistantMessage> {
    if (!isConversation(messages)) throw new TypeError('chat() takes a non-empty array of messages ({ role, content })');
    const { text } = await this.generate(messages, options);
    if (!options.tools?.length) return { role: 'assistant', content: text };
    const toolNames = options.tools
      .map((t) => ((t as { function?: { name?: unknown } })?.function?.name ?? (t as { name?: unknown })?.name))
      .filter((n): n is string => typeof n === 'string');
    const { content, tool_calls } = parseToolCalls(text, { toolNames, offeredOnly: true });
    return tool_calls.length ? { role: 'assistant', content, tool_calls } : { role: 'assistant', content: text };
  }

  /** Frees the native engine once running work is done; later calls throw. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const release = await this.lock();
    try {
      this.freed = true;
      await this.lm.engine.dispose();
    } finally {
      release();
    }
  }

  /** Waits for the calls before this one; the returned function lets the next one run. */
  private async lock(): Promise<() => void> {
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const before = this.busy;
    this.busy = before.then(() => mine);
    await before;
    return release;
  }

  private resolve(options: GenerateOptions, encodedChoices: number[][] | undefined): Resolved {
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    const given = {
      temperature: options.temperature,
      topK: options.topK,
      topP: options.topP,
      minP: options.minP,
      repetitionPenalty: options.repetitionPenalty,
      seed: options.seed ?? this.defaultSeed,
    };
    // resolveSampling fills defaults by spreading: an undefined key would override its default.
    const sampling = resolveSampling(Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)));
    const stops = options.stop === undefined ? [] : typeof options.stop === 'string' ? [options.stop] : options.stop;
    if (!Array.isArray(stops) || !stops.every((s) => typeof s === 'string' && s.length > 0)) {
      throw new Error(`stop must be a non-empty string or an array of them, got ${JSON.stringify(options.stop)}`);
    }
    const fromConfig = this.generationConfig.max_new_tokens;
    const fallback = encodedChoices
      ? Math.max(...encodedChoices.map((c) => c.length)) + 1
      : Number.isInteger(fromConfig) && (fromConfig as number) > 0 ? (fromConfig as number) : 256;
    const maxNewTokens = options.maxNewTokens ?? fallback;
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new Error(`maxNewTokens must be a positive integer, got ${shown(options.maxNewTokens)}`);
    const minNewTokens = options.minNewTokens ?? 0;
    if (!Number.isInteger(minNewTokens) || minNewTokens < 0) throw new Error(`minNewTokens must be an integer >= 0, got ${shown(options.minNewTokens)}`);
    if (options.tools !== undefined && !Array.isArray(options.tools)) throw new Error('tools must be an array of tool schemas');
    if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) throw new Error('signal must be an AbortSignal');
    const lp = options.logprobs;
    if (lp !== undefined && !(Number.isInteger(lp) && lp >= 0 && lp <= 20)) throw new Error(`logprobs must be an integer from 0 to 20 (alternatives per token), got ${shown(lp)}`);
    return { maxNewTokens, minNewTokens, stops, tools: options.tools, signal: options.signal, sampling, choices: options.choices, logprobs: lp };
  }

  private encodeChoices(choices: unknown): number[][] | undefined {
    if (choices === undefined) return undefined;
    if (!Array.isArray(choices) || choices.length === 0) throw new Error(`choices must be a non-empty array of strings, got ${JSON.stringify(choices)}`);
    return choices.map((c, i) => {
      if (typeof c !== 'string' || c.length === 0) throw new Error(`choices[${i}] must be a non-empty string, got ${JSON.stringify(c)}`);
      return this.tokenizer.encode(c, { addSpecialTokens: false, parseSpecialTokens: false });
    });
  }

  /** Prompt → ids. `where` prefixes messages in a batch ("prompts[2]: "). */
  private encodePrompt(p: unknown, where: string, tools: unknown[] | undefined): number[] {
    const tok = this.tokenizer;
    if (typeof p === 'string') {
      const ids = tok.encode(p, { addSpecialTokens: false });
      if (tok.addBosToken && tok.bosTokenId !== undefined && ids[0] !== tok.bosTokenId) ids.unshift(tok.bosTokenId);
      return ids;
    }
    if (!isConversation(p)) throw new TypeError(`${where}must be a string or a non-empty array of chat messages ({ role, content })`);
    try {
      return tok.encode(tok.applyChatTemplate(p, { add_generation_prompt: true, tools }), { addSpecialTokens: false });
    } catch (err) {
      if (!where) throw err;
      throw new Error(`${where}${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * The generation shared by generate and stream: yields each row's text deltas and fills
   * `results[row]` as rows finish.
   */
  private async *run(prompts: unknown[], batch: boolean, options: GenerateOptions, results: GenerateResult[]): AsyncGenerator<{ row: number; delta: string }> {
    if (this.disposed) throw new Error('this LLM was disposed');
    const encodedChoices = this.encodeChoices(options?.choices);
    const o = this.resolve(options, encodedChoices);
    const ids = prompts.map((p, i) => this.encodePrompt(p, batch ? `prompts[${i}]: ` : '', o.tools));
    const maxPos = this.config.max_position_embeddings;
    if (o.maxNewTokens >= maxPos)
      throw new Error(`maxNewTokens ${o.maxNewTokens} leaves no room for a prompt within the model's max_position_embeddings ${maxPos} (at most ${maxPos - 1})`);
    ids.forEach((p, i) => {
      const name = batch ? `prompt ${i}` : 'the prompt';
      if (p.length === 0) throw new Error(`${name} is empty: it encodes to no tokens and the tokenizer adds no BOS`);
      if (p.length + o.maxNewTokens > maxPos) {
        throw new Error(`${name} is ${p.length} token${p.length === 1 ? '' : 's'}; with maxNewTokens ${o.maxNewTokens} that exceeds the model's max_position_embeddings ${maxPos} (at most ${Math.max(0, maxPos - o.maxNewTokens)} prompt tokens)`);
      }
    });
    if (ids.length === 0) return;
    const tok = this.tokenizer;
    const eos = new Set(tok.eosTokenIds);
    const rows = ids.map(() => new RowText(tok, eos, o.stops));
    const tokens: number[][] = ids.map(() => []);
    const logprobs: Array<NonNullable<GenerateResult['logprobs']>> = ids.map(() => []);
    const asToken = (id: number, logprob: number): TokenLogprob => {
      const token = tok.decode([id]);
      let bytes: Uint8Array;
      try {
        bytes = tok.tokenBytes(id);
      } catch {
        bytes = Buffer.from(token, 'utf8');  // a tokenizer without byte-level tokens: the text's bytes
      }
      return { id, token, bytes: Array.from(bytes), logprob };
    };
    const finishRow = (i: number, reason: FinishReason) => {
      rows[i].finish();
      results[i] = {
        text: rows[i].result,
        tokens: tokens[i],
        finishReason: reason === 'constraint' ? 'stop' : reason,
        usage: { promptTokens: ids[i].length, completionTokens: tokens[i].length },
        ...(o.logprobs !== undefined ? { logprobs: logprobs[i] } : {}),
      };
    };
    const release = await this.lock();
    try {
      if (this.freed) throw new Error('this LLM was disposed');
      if (o.signal?.aborted) {
        // No engine work for a generation cancelled before it started.
        for (let i = 0; i < ids.length; i++) finishRow(i, 'aborted');
        return;
      }
      const constraint = encodedChoices ? new ChoiceConstraint(encodedChoices, tok.eosTokenIds) : undefined;
      const events = generateIds(this.lm.engine, this.config.vocab_size, ids, {
        ...o.sampling,
        maxNewTokens: o.maxNewTokens,
        minNewTokens: o.minNewTokens,
        eosTokenIds: tok.eosTokenIds,
        padTokenId: tok.padTokenId ?? tok.eosTokenIds[0] ?? 0,
        stop: o.stops.length ? (row, generated) => rows[row].feed(generated) : undefined,
        constraint,
        signal: o.signal,
        logprobs: o.logprobs,
      });
      for await (const ev of events) {
        if (ev.token >= 0) tokens[ev.row].push(ev.token);
        if (ev.token >= 0 && ev.logprob !== undefined) logprobs[ev.row].push({ ...asToken(ev.token, ev.logprob), top: ev.top!.map(([id, lp]) => asToken(id, lp)) });
        rows[ev.row].feed(tokens[ev.row]);
        if (ev.finish) finishRow(ev.row, ev.finish);
        const delta = rows[ev.row].delta(ev.finish !== undefined);
        if (delta) yield { row: ev.row, delta };
      }
    } finally {
      release();
    }
  }
}
