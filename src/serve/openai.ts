/**
 * The OpenAI API's request and response shapes for the LLM server: validating a
 * /v1/chat/completions or /v1/completions body into LLM.generate options, and shaping results
 * into chat.completion / chat.completion.chunk / text_completion objects.
 *
 * Follows the OpenAI API reference (platform.openai.com/docs/api-reference/chat/create and
 * .../completions/create): field names, ranges (temperature 0–2, top_p 0–1), the error object
 * {error: {message, type, param, code}}, and the streamed chunk format. Extensions that vLLM and
 * llama.cpp's server also accept: top_k, min_p, repetition_penalty.
 */
import { randomBytes } from 'node:crypto';
import type { ChatMessage, ChatToolCall } from '../chat/template.js';
import type { GenerateOptions, GenerateResult, Prompt, TokenLogprob } from '../llm/llm.js';
import { parseToolCalls, type ParsedToolCall } from '../llm/tool-calls.js';
import type { LlmTokenizer } from '../tokenizer/bpe.js';
import { chatForTemplate } from '../tasks/causal-lm/encode.js';
import { parseJsonText } from '../io/model-folder.js';
import { HttpError, jsonType } from './http.js';

/** The OpenAI error body. `type` is 'invalid_request_error' for 4xx, 'server_error' for 5xx. */
export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** OpenAI's error object for an HttpError (or any error: a 500). */
export function errorBody(err: unknown): { status: number; body: OpenAIErrorBody; headers: Record<string, string> } {
  if (err instanceof HttpError) {
    const type = err.status >= 500 ? 'server_error' : 'invalid_request_error';
    return { status: err.status, headers: err.headers, body: { error: { message: err.message, type, param: err.param, code: err.code } } };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { status: 500, headers: {}, body: { error: { message, type: 'server_error', param: null, code: null } } };
}

/** A 400 naming the request field at fault (OpenAI's `param`). */
export function badRequest(param: string | null, message: string, code: string | null = null): HttpError {
  return new HttpError(400, message, {}, param, code);
}

/** Sampling and length options shared by both endpoints (GenerateOptions without the per-call hooks). */
export type RequestOptions = Pick<GenerateOptions, 'maxNewTokens' | 'temperature' | 'topP' | 'topK' | 'minP' | 'repetitionPenalty' | 'seed' | 'stop'>;

/** A validated /v1/chat/completions request. */
export interface ChatCompletionRequest {
  /** The conversation, normalised: text content parts joined, 'developer' as 'system', tool-call arguments parsed to objects. */
  messages: ChatMessage[];
  /** Tool schemas passed to the model (absent when none were given or tool_choice is 'none'). */
  tools?: unknown[];
  /** Names of the offered tools (a Llama 3 bare-JSON reply counts as a call only for one of these). */
  toolNames: string[];
  /** max_completion_tokens ?? max_tokens, when given. */
  maxTokens?: number;
  /** logprobs: true → top_logprobs (0 to 20) alternatives per token; absent without logprobs. */
  logprobs?: number;
  options: Omit<RequestOptions, 'maxNewTokens'>;
  /** Choices to generate (OpenAI's n; 1 when streaming). */
  n: number;
  stream: boolean;
  /** stream_options.include_usage: a last chunk carries the usage. */
  includeUsage: boolean;
}

/** A validated /v1/completions request. */
export interface CompletionRequest {
  prompt: string;
  maxTokens?: number;
  options: Omit<RequestOptions, 'maxNewTokens'>;
  n: number;
  stream: boolean;
  includeUsage: boolean;
}

/** Roles accepted in `messages`; 'developer' is OpenAI's newer name for 'system'. */
const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'];

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * Parses a request body.
 * @throws HttpError 400 naming the line and column for bad JSON, or saying the body is empty or not an object.
 */
export function parseJsonBody(raw: string): Record<string, unknown> {
  if (raw.trim() === '') throw badRequest(null, 'the request body is empty; expected a JSON object');
  let body: unknown;
  try {
    body = parseJsonText(raw, 'body');
  } catch (err) {
    // Node 20's JSON.parse does not always say where; parseJsonText finds the line and column.
    const m = /^body:(\d+):(\d+): invalid JSON: (.*)$/s.exec((err as Error).message);
    throw badRequest(null, m ? `the request body is not valid JSON: ${m[3]} at line ${m[1]} column ${m[2]}` : `the request body is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(body)) throw badRequest(null, `the request body must be a JSON object, got ${jsonType(body)}`);
  return body;
}

/** A field's value, with null read as absent (OpenAI's clients send null for "default"). */
function field(body: Record<string, unknown>, name: string): unknown {
  const v = body[name];
  return v === null ? undefined : v;
}

function number(body: Record<string, unknown>, name: string, lo: number, hi: number, loOpen = false): number | undefined {
  const v = field(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw badRequest(name, `'${name}' must be a number, got ${jsonType(v)}`, 'invalid_type');
  if (v > hi || v < lo || (loOpen && v === lo)) {
    throw badRequest(name, `'${name}' must be ${loOpen ? '>' : '>='} ${lo} and <= ${hi}, got ${v}`, 'invalid_value');
  }
  return v;
}

function integer(body: Record<string, unknown>, name: string, lo: number, hi = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = field(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw badRequest(name, `'${name}' must be an integer, got ${JSON.stringify(v)}`, 'invalid_type');
  if (v < lo || v > hi) throw badRequest(name, `'${name}' must be >= ${lo}${hi < Number.MAX_SAFE_INTEGER ? ` and <= ${hi}` : ''}, got ${v}`, 'invalid_value');
  return v;
}

function boolean(body: Record<string, unknown>, name: string): boolean | undefined {
  const v = field(body, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw badRequest(name, `'${name}' must be a boolean, got ${jsonType(v)}`, 'invalid_type');
  return v;
}

/** Refuses a field this server does not implement rather than silently ignoring what was asked. */
function unsupported(body: Record<string, unknown>, name: string, ok: (v: unknown) => boolean, why: string): void {
  const v = field(body, name);
  if (v !== undefined && !ok(v)) throw badRequest(name, `'${name}' ${JSON.stringify(v)} is not supported: ${why}`, 'unsupported_value');
}

/** The most choices one request may ask for (n): each is a row of the engine's batch. */
export const MAX_CHOICES = 16;

/** The fields both endpoints share: sampling, stop, seed, max tokens, n, stream. */
function commonFields(body: Record<string, unknown>): { options: Omit<RequestOptions, 'maxNewTokens'>; maxTokens?: number; n: number; stream: boolean; includeUsage: boolean } {
  if (field(body, 'model') !== undefined && typeof body.model !== 'string') throw badRequest('model', `'model' must be a string, got ${jsonType(body.model)}`, 'invalid_type');
  const n = integer(body, 'n', 1) ?? 1;
  if (n > MAX_CHOICES) throw badRequest('n', `'n' must be at most ${MAX_CHOICES}, got ${n}`, 'invalid_value');
  unsupported(body, 'presence_penalty', (v) => v === 0, 'use repetition_penalty (Hugging Face\'s, > 1 discourages repeats)');
  unsupported(body, 'frequency_penalty', (v) => v === 0, 'use repetition_penalty (Hugging Face\'s, > 1 discourages repeats)');
  unsupported(body, 'logit_bias', (v) => isObject(v) && Object.keys(v).length === 0, 'this server does not bias logits');
  unsupported(body, 'best_of', (v) => v === 1, 'this server does not pick the best of several generations (n returns them all)');
  const temperature = number(body, 'temperature', 0, 2);
  const topP = number(body, 'top_p', 0, 1, true);
  const topK = integer(body, 'top_k', 0);
  const minP = number(body, 'min_p', 0, 1);
  const repetitionPenalty = number(body, 'repetition_penalty', 0, Number.MAX_VALUE, true);
  const seed = integer(body, 'seed', Number.MIN_SAFE_INTEGER);
  const maxCompletion = integer(body, 'max_completion_tokens', 1);
  const maxTokens = maxCompletion ?? integer(body, 'max_tokens', 1);
  let stop: string[] | undefined;
  const s = field(body, 'stop');
  if (s !== undefined) {
    const list = typeof s === 'string' ? [s] : s;
    if (!Array.isArray(list)) throw badRequest('stop', `'stop' must be a string or an array of strings, got ${jsonType(s)}`, 'invalid_type');
    if (list.length > 16) throw badRequest('stop', `'stop' has ${list.length} strings; at most 16`, 'invalid_value');
    list.forEach((x: unknown, i) => {
      if (typeof x !== 'string' || x === '') throw badRequest(`stop[${i}]`, `'stop[${i}]' must be a non-empty string, got ${JSON.stringify(x)}`, 'invalid_value');
    });
    if (list.length > 0) stop = list as string[];
  }
  const stream = boolean(body, 'stream') ?? false;
  const so = field(body, 'stream_options');
  let includeUsage = false;
  if (so !== undefined) {
    if (!isObject(so)) throw badRequest('stream_options', `'stream_options' must be an object, got ${jsonType(so)}`, 'invalid_type');
    const iu = so.include_usage ?? undefined;
    if (iu !== undefined && typeof iu !== 'boolean') throw badRequest('stream_options.include_usage', `'stream_options.include_usage' must be a boolean, got ${jsonType(iu)}`, 'invalid_type');
    includeUsage = iu === true;
  }
  const options = Object.fromEntries(Object.entries({ temperature, topP, topK, minP, repetitionPenalty, seed, stop }).filter(([, v]) => v !== undefined));
  if (stream && n > 1) throw badRequest('n', `'n' ${n} with 'stream' is not supported: stream one choice, or ask for ${n} without streaming`, 'unsupported_value');
  return { options, ...(maxTokens !== undefined ? { maxTokens } : {}), n, stream, includeUsage };
}

/** Text of a message's content: a string, or text parts joined by newlines (as vLLM does). */
function contentText(content: unknown, where: string): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw badRequest(`${where}.content`, `'${where}.content' must be a string or an array of text parts, got ${jsonType(content)}`, 'invalid_type');
  if (content.length === 0) throw badRequest(`${where}.content`, `'${where}.content' is an empty array: expected at least one text part (or a string)`, 'invalid_value');
  return content
    .map((part: unknown, k) => {
      const at = `${where}.content[${k}]`;
      if (!isObject(part)) throw badRequest(at, `'${at}' must be an object {type: 'text', text}`, 'invalid_type');
      if (part.type !== 'text') throw badRequest(`${at}.type`, `'${at}.type' ${JSON.stringify(part.type)} is not supported: this model reads text parts only`, 'unsupported_value');
      if (typeof part.text !== 'string') throw badRequest(`${at}.text`, `'${at}.text' must be a string, got ${jsonType(part.text)}`, 'invalid_type');
      return part.text;
    })
    .join('\n');
}

function toolCallsOf(calls: unknown, where: string): ChatToolCall[] {
  if (!Array.isArray(calls)) throw badRequest(`${where}.tool_calls`, `'${where}.tool_calls' must be an array, got ${jsonType(calls)}`, 'invalid_type');
  return calls.map((c: unknown, j) => {
    const at = `${where}.tool_calls[${j}]`;
    if (!isObject(c) || !isObject(c.function)) throw badRequest(at, `'${at}' must be {id, type: 'function', function: {name, arguments}}`, 'invalid_type');
    const fn = c.function;
    if (typeof fn.name !== 'string' || fn.name === '') throw badRequest(`${at}.function.name`, `'${at}.function.name' must be a non-empty string`, 'invalid_type');
    let args: unknown = fn.arguments ?? {};
    // OpenAI sends arguments as a JSON string; chat templates (`| tojson`) want the object.
    if (typeof args === 'string') {
      try {
        args = args.trim() === '' ? {} : JSON.parse(args);
      } catch (err) {
        throw badRequest(`${at}.function.arguments`, `'${at}.function.arguments' is not valid JSON: ${(err as Error).message}`, 'invalid_value');
      }
    }
    if (!isObject(args)) throw badRequest(`${at}.function.arguments`, `'${at}.function.arguments' must be a JSON object`, 'invalid_value');
    return { ...(typeof c.id === 'string' ? { id: c.id } : {}), type: 'function', function: { name: fn.name, arguments: args } };
  });
}

function messagesOf(body: Record<string, unknown>): ChatMessage[] {
  const messages = field(body, 'messages');
  if (messages === undefined) throw badRequest('messages', "'messages' is required: an array of {role, content}", 'missing_required_parameter');
  if (!Array.isArray(messages)) throw badRequest('messages', `'messages' must be an array, got ${jsonType(messages)}`, 'invalid_type');
  if (messages.length === 0) throw badRequest('messages', "'messages' is empty; give at least one message", 'invalid_value');
  return messages.map((m: unknown, i) => {
    const where = `messages[${i}]`;
    if (!isObject(m)) throw badRequest(where, `'${where}' must be an object {role, content}, got ${jsonType(m)}`, 'invalid_type');
    if (typeof m.role !== 'string') throw badRequest(`${where}.role`, `'${where}.role' is required: one of ${ROLES.join(', ')}`, 'missing_required_parameter');
    if (!ROLES.includes(m.role)) throw badRequest(`${where}.role`, `'${where}.role' ${JSON.stringify(m.role)} is unknown: expected one of ${ROLES.join(', ')}`, 'invalid_value');
    const role = m.role === 'developer' ? 'system' : m.role;
    const out: ChatMessage = { role };
    const calls = m.tool_calls ?? undefined;
    if (calls !== undefined) {
      if (role !== 'assistant') throw badRequest(`${where}.tool_calls`, `'${where}.tool_calls' is only allowed on assistant messages`, 'invalid_value');
      const parsed = toolCallsOf(calls, where);
      if (parsed.length > 0) out.tool_calls = parsed;
    }
    if (m.content === undefined || m.content === null) {
      if (!(role === 'assistant' && out.tool_calls)) throw badRequest(`${where}.content`, `'${where}.content' is required (only an assistant message with tool_calls may omit it)`, 'missing_required_parameter');
      out.content = '';
    } else {
      out.content = contentText(m.content, where);
    }
    for (const key of ['name', 'tool_call_id'] as const) {
      const v = m[key] ?? undefined;
      if (v === undefined) continue;
      if (typeof v !== 'string') throw badRequest(`${where}.${key}`, `'${where}.${key}' must be a string, got ${jsonType(v)}`, 'invalid_type');
      out[key] = v;
    }
    return out;
  });
}

function toolsOf(body: Record<string, unknown>): { tools?: unknown[]; toolNames: string[] } {
  const tools = field(body, 'tools');
  const choice = field(body, 'tool_choice');
  if (choice !== undefined && choice !== 'auto' && choice !== 'none') {
    const what = typeof choice === 'string' ? JSON.stringify(choice) : 'a named function';
    throw badRequest('tool_choice', `'tool_choice' ${what} is not supported: use 'auto' or 'none'`, 'unsupported_value');
  }
  if (tools === undefined) return { toolNames: [] };
  if (!Array.isArray(tools)) throw badRequest('tools', `'tools' must be an array, got ${jsonType(tools)}`, 'invalid_type');
  const names = tools.map((t: unknown, i) => {
    const at = `tools[${i}]`;
    if (!isObject(t) || t.type !== 'function' || !isObject(t.function)) throw badRequest(at, `'${at}' must be {type: 'function', function: {name, description?, parameters?}}`, 'invalid_type');
    const name = t.function.name;
    // OpenAI's rule for function names.
    if (typeof name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(name)) {
      throw badRequest(`${at}.function.name`, `'${at}.function.name' must be 1-64 letters, digits, underscores or dashes, got ${JSON.stringify(name)}`, 'invalid_value');
    }
    const params = t.function.parameters ?? undefined;
    if (params !== undefined && !isObject(params)) throw badRequest(`${at}.function.parameters`, `'${at}.function.parameters' must be a JSON schema object`, 'invalid_type');
    return name;
  });
  if (tools.length === 0 || choice === 'none') return { toolNames: [] };
  return { tools, toolNames: names };
}

/**
 * Validates a /v1/chat/completions body.
 * @throws HttpError 400 whose `param` names the field: missing or empty messages, an unknown role,
 *   content missing or not text, tool-call arguments that are not a JSON object, temperature outside
 *   [0, 2], top_p outside (0, 1], n above MAX_CHOICES (or above 1 when streaming), stop not a
 *   string or array of strings, a tool_choice other than 'auto'/'none', top_logprobs outside
 *   [0, 20] or without logprobs, logprobs when streaming, and fields this server does not
 *   implement (response_format other than text, non-zero presence/frequency penalties, logit_bias).
 */
export function parseChatCompletionRequest(body: Record<string, unknown>): ChatCompletionRequest {
  const messages = messagesOf(body);
  const { tools, toolNames } = toolsOf(body);
  const logprobs = boolean(body, 'logprobs') ?? false;
  const top = integer(body, 'top_logprobs', 0, 20);
  if (top !== undefined && top > 0 && !logprobs) throw badRequest('top_logprobs', "'top_logprobs' needs 'logprobs': true", 'invalid_value');
  unsupported(body, 'response_format', (v) => isObject(v) && v.type === 'text', "only {type: 'text'}; structured output is not implemented");
  const common = commonFields(body);
  if (logprobs && common.stream) throw badRequest('logprobs', "'logprobs' with 'stream' is not supported: ask without streaming", 'unsupported_value');
  return { messages, ...(tools ? { tools } : {}), toolNames, ...common, ...(logprobs ? { logprobs: top ?? 0 } : {}) };
}

/**
 * A chat choice's `logprobs` (OpenAI's shape): the tokens of its text — a final end-of-sequence
 * token left out, as the text leaves it out — each with its most likely alternatives.
 */
export function chatLogprobs(r: GenerateResult, eosTokenIds: readonly number[]): { content: unknown[]; refusal: null } {
  const entries = [...(r.logprobs ?? [])];
  if (entries.length > 0 && eosTokenIds.includes(entries[entries.length - 1].id)) entries.pop();
  const shape = (t: TokenLogprob) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes });
  return { content: entries.map((e) => ({ ...shape(e), top_logprobs: e.top.map(shape) })), refusal: null };
}

/**
 * Validates a /v1/completions body: `prompt` a string (or an array holding one string).
 * @throws HttpError 400 as parseChatCompletionRequest, and for a missing prompt, several prompts,
 *   `echo`, `suffix` or `logprobs`.
 */
export function parseCompletionRequest(body: Record<string, unknown>): CompletionRequest {
  let prompt = field(body, 'prompt');
  if (prompt === undefined) throw badRequest('prompt', "'prompt' is required: a string", 'missing_required_parameter');
  if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
  if (typeof prompt !== 'string') throw badRequest('prompt', `'prompt' must be one string, got ${Array.isArray(prompt) ? `an array of ${prompt.length}` : jsonType(prompt)}`, 'invalid_type');
  if (prompt === '') throw badRequest('prompt', "'prompt' is empty", 'invalid_value');
  unsupported(body, 'echo', (v) => v === false, 'the prompt is not echoed');
  unsupported(body, 'suffix', () => false, 'this model does not fill in the middle');
  unsupported(body, 'logprobs', () => false, 'this server returns no log probabilities');
  return { prompt, ...commonFields(body) };
}

/** What the server hands the batcher for a chat request: the prompt and what must match for two requests to share a batch. */
export interface RenderedChat {
  /** The rendered conversation as raw text, or the messages themselves when raw text would not encode the same (see renderChat). */
  prompt: Prompt;
  /** Tools to pass with `prompt` when it is messages. */
  tools?: unknown[];
  /** Prompt token count (what usage.prompt_tokens reports). */
  promptTokens: number;
}

/**
 * Renders a conversation as `nodetune sft` trains and `nodetune eval` prompts it (chatForTemplate:
 * tools the template ignores are written into the system message the Hermes way), through the
 * chat template with the generation prompt.
 *
 * Requests with different tools can then share one engine batch, because the rendered text is
 * the prompt; that holds only when raw text encodes to the same ids as the conversation does —
 * it does unless the tokenizer would prepend a BOS the template does not write, and then the
 * messages go as they are (and only requests with the same tools share a batch).
 * @throws HttpError 500 when the model has no chat template or its template does not parse (the
 *   server's fault: every conversation fails); 400 (param 'messages') when the template refuses
 *   this conversation.
 */
export function renderChat(tok: LlmTokenizer, messages: ChatMessage[], tools: unknown[] | undefined): RenderedChat {
  try {
    tok.checkChatTemplate({ tools });
  } catch (err) {
    throw new HttpError(500, `this server's model cannot render conversations: ${(err as Error).message}. Restart it with --chat-template-file, or send raw prompts to POST /v1/completions`);
  }
  let text: string;
  let forTemplate: { messages: ChatMessage[]; tools?: unknown[] };
  try {
    forTemplate = chatForTemplate(tok, messages, tools);
    text = tok.applyChatTemplate(forTemplate.messages, { add_generation_prompt: true, tools: forTemplate.tools ?? null });
  } catch (err) {
    throw badRequest('messages', `the chat template cannot render these messages: ${(err as Error).message}`, 'invalid_value');
  }
  const ids = tok.encode(text, { addSpecialTokens: false });
  const bosAdded = tok.addBosToken && tok.bosTokenId !== undefined && ids[0] !== tok.bosTokenId;
  if (!bosAdded) return { prompt: text, promptTokens: ids.length };
  // generate() prepends the BOS: it is a prompt token (as rawPromptTokens counts it).
  return { prompt: forTemplate.messages, ...(forTemplate.tools ? { tools: forTemplate.tools } : {}), promptTokens: ids.length + 1 };
}

/** Tokens of a raw /v1/completions prompt, as LLM.generate encodes it (BOS prepended when the tokenizer adds one). */
export function rawPromptTokens(tok: LlmTokenizer, prompt: string): number {
  const ids = tok.encode(prompt, { addSpecialTokens: false });
  return ids.length + (tok.addBosToken && tok.bosTokenId !== undefined && ids[0] !== tok.bosTokenId ? 1 : 0);
}

/**
 * The max_tokens a request runs with: the one asked for, else `fallback` cut to what the context
 * leaves.
 * @throws HttpError 400 code 'context_length_exceeded' (param 'messages' or 'prompt') when the
 *   prompt plus the asked max_tokens, or the prompt alone, do not fit max_position_embeddings;
 *   400 'invalid_value' when the prompt is no tokens at all (nothing to generate from).
 */
export function budgetTokens(promptTokens: number, asked: number | undefined, fallback: number, contextLength: number, param: 'messages' | 'prompt'): number {
  if (promptTokens === 0) {
    const why = param === 'messages' ? "the model's chat template renders them to nothing" : 'the prompt is empty';
    throw badRequest(param, `the ${param} encode to no tokens (${why}, and the tokenizer adds no BOS): nothing to generate from`, 'invalid_value');
  }
  const room = contextLength - promptTokens;
  if (asked !== undefined && asked > room) {
    throw badRequest(param, `This model's maximum context length is ${contextLength} tokens. However, you requested ${promptTokens + asked} tokens (${promptTokens} in the ${param}, ${asked} in the completion). Please reduce the length of the ${param} or the completion.`, 'context_length_exceeded');
  }
  if (room < 1) throw badRequest(param, `This model's maximum context length is ${contextLength} tokens; the ${param} alone are ${promptTokens} tokens.`, 'context_length_exceeded');
  return asked ?? Math.min(fallback, room);
}

/** 'chatcmpl-…' / 'cmpl-…' ids as OpenAI writes them. */
export function completionId(prefix: 'chatcmpl' | 'cmpl'): string {
  return `${prefix}-${randomBytes(12).toString('hex')}`;
}

/** An OpenAI tool call: arguments as a JSON string. */
export interface OpenAIToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export function openAIToolCalls(calls: readonly ParsedToolCall[]): OpenAIToolCall[] {
  return calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.function.name, arguments: JSON.stringify(c.function.arguments) } }));
}

export type OpenAIFinishReason = 'stop' | 'length' | 'tool_calls';

/** OpenAI's usage object. */
export function usageOf(r: GenerateResult): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return usageOfChoices([r]);
}

/** The usage of the n choices of one request, as OpenAI counts it: the prompt once, every choice's tokens. */
export function usageOfChoices(rs: readonly GenerateResult[]): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  const completion = rs.reduce((k, r) => k + r.usage.completionTokens, 0);
  return { prompt_tokens: rs[0].usage.promptTokens, completion_tokens: completion, total_tokens: rs[0].usage.promptTokens + completion };
}

/**
 * The options of choice k of a request: with a seed, choice k samples with seed + k, so the n
 * choices differ and each reproduces (without one, rows of a batch draw apart already).
 */
export function choiceOptions(o: GenerateOptions, k: number): GenerateOptions {
  return k === 0 || o.seed === undefined ? o : { ...o, seed: o.seed + k };
}

/**
 * The assistant message and finish reason of a chat result. With tools offered, calls in the text
 * (src/llm/tool-calls.ts formats) become `tool_calls` and leave `content` (null when nothing else
 * was said, as OpenAI answers); a reply that ended by itself with calls finishes 'tool_calls'.
 */
export function chatChoice(r: GenerateResult, toolNames: readonly string[] | undefined): { message: { role: 'assistant'; content: string | null; tool_calls?: OpenAIToolCall[]; refusal: null }; finish_reason: OpenAIFinishReason } {
  const finish: OpenAIFinishReason = r.finishReason === 'length' ? 'length' : 'stop';
  if (toolNames && toolNames.length > 0) {
    const { content, tool_calls } = parseToolCalls(r.text, { toolNames, offeredOnly: true });
    if (tool_calls.length > 0) {
      return { message: { role: 'assistant', content: content === '' ? null : content, tool_calls: openAIToolCalls(tool_calls), refusal: null }, finish_reason: finish === 'stop' ? 'tool_calls' : finish };
    }
  }
  return { message: { role: 'assistant', content: r.text, refusal: null }, finish_reason: finish };
}

/** Markers that open a tool call in the formats src/llm/tool-calls.ts reads. */
const CALL_MARKERS = ['<tool_call>', '[TOOL_CALLS]', '<|python_tag|>'];

/**
 * Streams a reply that may hold tool calls: text goes out as it comes until a tool-call marker
 * could be starting (or, at the very start, a `{` that could open a Llama 3 JSON call); from there
 * on it is held, because a call cannot be told from text until it is complete. At the end the
 * held text is parsed: calls come out as OpenAI `tool_calls`, anything else as content.
 * Without tools, everything streams as it comes.
 */
export class ToolCallStream {
  private text = '';
  private sent = 0;
  private holdFrom = -1;

  constructor(private readonly toolNames: readonly string[]) {}

  /** Takes a delta; returns the content that can go out now ('' when held). */
  push(delta: string): string {
    this.text += delta;
    if (this.toolNames.length === 0) {
      this.sent = this.text.length;
      return delta;
    }
    if (this.holdFrom >= 0) return '';
    // Markers begin at or after `sent`: text before it was checked when it went out.
    for (const m of CALL_MARKERS) {
      const at = this.text.indexOf(m, this.sent);
      if (at >= 0 && (this.holdFrom < 0 || at < this.holdFrom)) this.holdFrom = at;
    }
    if (this.holdFrom < 0 && this.sent === 0 && this.text.trimStart().startsWith('{')) this.holdFrom = 0;
    let limit = this.holdFrom >= 0 ? this.holdFrom : this.text.length;
    if (this.holdFrom < 0) {
      // Leading whitespace may precede a JSON call; a marker may be cut across deltas.
      if (this.text.trim() === '') limit = this.sent;
      else limit -= this.partialMarker();
    }
    if (limit <= this.sent) return '';
    const out = this.text.slice(this.sent, limit);
    this.sent = limit;
    return out;
  }

  /** The reply ended: content not sent yet and the tool calls found (OpenAI shape). */
  end(): { content: string; toolCalls: OpenAIToolCall[] } {
    const rest = this.text.slice(this.sent);
    this.sent = this.text.length;
    if (this.toolNames.length === 0 || rest === '') return { content: rest, toolCalls: [] };
    const { content, tool_calls } = parseToolCalls(rest, { toolNames: this.toolNames, offeredOnly: true });
    if (tool_calls.length === 0) return { content: rest, toolCalls: [] };
    return { content, toolCalls: openAIToolCalls(tool_calls) };
  }

  private partialMarker(): number {
    let held = 0;
    for (const m of CALL_MARKERS) {
      for (let k = Math.min(m.length - 1, this.text.length - this.sent); k > held; k--) {
        if (this.text.endsWith(m.slice(0, k))) {
          held = k;
          break;
        }
      }
    }
    return held;
  }
}
