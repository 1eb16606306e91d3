/**
 * An OpenAI-compatible HTTP server for a causal LM, on node:http — what agent frameworks already
 * talk to (the `openai` client with a baseURL, LangChain's ChatOpenAI, ...).
 *
 * Routes (OpenAI API reference, platform.openai.com/docs/api-reference):
 *   POST /v1/chat/completions  messages, tools, tool_choice 'auto'|'none', temperature, top_p,
 *                              max_tokens / max_completion_tokens, stop, seed, n = 1, stream,
 *                              stream_options.include_usage (+ top_k, min_p, repetition_penalty)
 *                              → chat.completion, or server-sent chat.completion.chunk events
 *                              ending with `data: [DONE]`
 *   POST /v1/completions       prompt (one string), the same options → text_completion (or chunks)
 *   GET  /v1/models            → {object: 'list', data: [{id, object: 'model', created, owned_by}]}
 *   GET  /v1/models/{id}       → the model, or 404
 *   GET  /health               → {status: 'ok', model, queued, running, batches, rows}
 *
 * Errors answer OpenAI's {error: {message, type, param, code}}: 400 invalid JSON (naming line
 * and column) or fields (naming the field in `param`), 404 unknown route or model id, 405 wrong
 * method (with Allow), 413 body over maxBodyBytes, 503 queue full (Retry-After: 1), 500 engine
 * failure. A bad request never stops the server. A client that disconnects stops its generation:
 * it leaves the queue, or its row stops being sent, and a batch whose clients are all gone stops.
 *
 * The `model` field of a request is not checked (any name is served by the one model, as llama.cpp's
 * server does); responses carry the served name.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { LLM, type GenerateOptions, type GenerateResult, type Prompt } from '../llm/llm.js';
import { GenerationBatcher, QueueFullError, type BatcherStats } from './batcher.js';
import { HttpError, listen, readBody, requestPath, sendJson } from './http.js';
import {
  budgetTokens,
  chatChoice,
  chatLogprobs,
  choiceOptions,
  completionId,
  errorBody,
  parseChatCompletionRequest,
  parseCompletionRequest,
  parseJsonBody,
  rawPromptTokens,
  renderChat,
  ToolCallStream,
  usageOf,
  usageOfChoices,
  type OpenAIFinishReason,
} from './openai.js';
import type { Precision } from '../engine.js';

export interface LlmServeOptions {
  /** A .gguf file, a Hugging Face folder, a Hub id, or an `nodetune sft` run folder (ignored when `llm` is given). */
  model?: string;
  /** An already loaded LLM to serve; the server does not dispose it. */
  llm?: LLM;
  /** TCP port; 0 picks a free one. Default 8080. */
  port?: number;
  /** Interface to bind; default 127.0.0.1 (loopback only). */
  host?: string;
  /** CPU threads when loading `model` (default: all cores). */
  threads?: number;
  /** Weights of a loaded `model`: 'fp32' (default), 'bf16' or 'q8_0' (EngineOptions.precision). */
  precision?: Precision;
  /** A Jinja chat template file that replaces a loaded `model`'s (LLMLoadOptions.chatTemplateFile). */
  chatTemplateFile?: string;
  /** Requests per engine batch at most (default 8). */
  maxBatch?: number;
  /** Requests waiting for the engine at most; more get 503 (default 8 × maxBatch). */
  maxQueue?: number;
  /** Largest request body in bytes; default 1 MiB. */
  maxBodyBytes?: number;
  /** The name /v1/models lists and responses carry (default: the model file or folder name, or the Hub id). */
  modelName?: string;
  /** max_tokens of a request that gives none (default: generation_config.json's max_new_tokens, else 512), cut to what the context leaves. */
  defaultMaxTokens?: number;
  /**
   * Origins whose browser pages may call the API (CORS), or ['*'] for any. A request from any other
   * origin (a browser page of another site: it sends an Origin header) is refused with 403 before
   * any work. Default none (llama.cpp's server allows any origin, Ollama localhost ones); clients
   * that send no Origin (SDKs, curl) are not affected.
   */
  corsOrigins?: string[];
  /** Receives a warning at start when the model cannot render a conversation, and one line per failed request (default: silent). */
  log?: (line: string) => void;
}

export interface RunningLlmServer {
  /** Base URL, e.g. http://127.0.0.1:8080 (the OpenAI client's baseURL is this + '/v1'). */
  url: string;
  llm: LLM;
  modelName: string;
  /** Batches run so far, rows, the largest batch. */
  stats: Readonly<BatcherStats>;
  /** Stops accepting connections, closes open ones (their generations stop), disposes an LLM the server loaded. */
  close(): Promise<void>;
}

/**
 * Loads what `nodetune serve --model` names: a run folder of `nodetune sft` (a PEFT adapter whose
 * adapter_config.json names its base), a GGUF file, a Hugging Face folder (a full fine-tune's
 * too) or a Hub id — LLM.load, which takes all of them.
 * @throws Error as LLM.load.
 */
export async function loadServedLLM(model: string, opts: { threads?: number; precision?: Precision; chatTemplateFile?: string } = {}): Promise<LLM> {
  return LLM.load(model, opts);
}

/** The served name: a file's name without .gguf, a folder's name, or a Hub id as given. */
function defaultModelName(model: string): string {
  if (!existsSync(model)) return model;
  return basename(resolve(model)).replace(/\.gguf$/i, '');
}

/** Server-sent events on a response whose headers go out with the first event (so a 503 can still be JSON). */
class EventStream {
  private started = false;

  constructor(private readonly res: ServerResponse) {}

  get open(): boolean {
    return !this.res.destroyed && !this.res.writableEnded;
  }

  send(data: unknown): void {
    if (!this.open) return;
    if (!this.started) {
      this.started = true;
      this.res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
    }
    this.res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
  }

  end(): void {
    if (!this.open) return;
    this.send('[DONE]');
    this.res.end();
  }

  get headersSent(): boolean {
    return this.started;
  }
}

type Route = 'chat' | 'completions' | 'models' | 'model' | 'health';

const ROUTES: Record<string, [Route, 'GET' | 'POST']> = {
  '/v1/chat/completions': ['chat', 'POST'],
  '/v1/completions': ['completions', 'POST'],
  '/v1/models': ['models', 'GET'],
  '/health': ['health', 'GET'],
};

function route(method: string, path: string): Route {
  const entry = ROUTES[path] ?? (path.startsWith('/v1/models/') ? (['model', 'GET'] as [Route, 'GET']) : undefined);
  if (!entry) throw new HttpError(404, `Invalid URL (${method} ${path}): routes are POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health`, {}, null, 'unknown_url');
  const allowed = entry[1] === 'GET' ? ['GET', 'HEAD'] : [entry[1]];
  if (!allowed.includes(method)) throw new HttpError(405, `${method} is not allowed on ${path} (use ${entry[1]})`, { allow: allowed.join(', ') }, null, 'method_not_allowed');
  return entry[0];
}

/**
 * Which requests may share an engine batch: equal options give equal generations per row. A
 * sampled request with its own seed runs alone, so that the seed reproduces its text (a row's
 * draws depend on its place in the batch).
 */
let solo = 0;
function batchKey(options: GenerateOptions, promptIsText: boolean): string {
  const o = options;
  const sampled = (o.temperature ?? 0) > 0;
  if (sampled && o.seed !== undefined) return `solo:${++solo}`;
  return JSON.stringify([
    o.maxNewTokens,
    sampled ? [o.temperature, o.topP, o.topK, o.minP] : 'greedy',
    o.repetitionPenalty,
    o.stop,
    promptIsText ? null : o.tools ?? null,
    o.logprobs ?? null,
  ]);
}

/**
 * Starts the OpenAI-compatible server for a causal LM.
 * @returns once listening: the base URL, the LLM, counters, and close().
 * @throws Error when neither `model` nor `llm` is given, the model cannot be loaded (see
 *   loadServedLLM), maxBatch / maxQueue are not positive integers, or host:port cannot be bound
 *   (an LLM loaded here is disposed first).
 */
export async function startLlmServer(options: LlmServeOptions): Promise<RunningLlmServer> {
  if (!options.llm && !options.model) throw new Error('startLlmServer: give a model (model) or a loaded LLM (llm)');
  const owned = !options.llm;
  const llm = options.llm ?? (await loadServedLLM(options.model!, { threads: options.threads, precision: options.precision, chatTemplateFile: options.chatTemplateFile }));
  let batcher: GenerationBatcher;
  try {
    const maxBatch = options.maxBatch ?? 8;
    batcher = new GenerationBatcher(llm, { maxBatch, maxQueue: options.maxQueue ?? 8 * maxBatch });
  } catch (err) {
    if (owned) await llm.dispose();
    throw err;
  }
  const modelName = options.modelName ?? defaultModelName(options.model ?? llm.source.path);
  const created = Math.floor(Date.now() / 1000);
  const maxBodyBytes = options.maxBodyBytes ?? 1024 * 1024;
  const fromConfig = llm.generationConfig.max_new_tokens;
  const defaultMaxTokens = options.defaultMaxTokens ?? (Number.isInteger(fromConfig) && (fromConfig as number) > 0 ? (fromConfig as number) : 512);
  const contextLength = llm.config.max_position_embeddings;
  const log = options.log ?? (() => undefined);
  const cors = options.corsOrigins ?? [];
  const modelObject = { id: modelName, object: 'model', created, owned_by: 'nodetune' };
  // A model that cannot render a plain conversation fails every chat request: say so at the start.
  try {
    renderChat(llm.tokenizer, [{ role: 'user', content: 'Hello' }], undefined);
  } catch (err) {
    log(`warning: POST /v1/chat/completions will fail: ${(err as Error).message.replace(/^this server's model cannot render conversations: /, '')}`);
  }

  /** The queued generation of one request; `signal` fires when its client disconnects. */
  const generate = (prompt: Prompt, o: GenerateOptions, signal: AbortSignal, onDelta?: (t: string) => void): Promise<GenerateResult> =>
    batcher.submit({ prompt, options: o, key: batchKey(o, typeof prompt === 'string'), signal, onDelta }).catch((err: unknown) => {
      if (err instanceof QueueFullError) throw new HttpError(503, err.message, { 'retry-after': '1' }, null, 'server_overloaded');
      throw err;
    });

  /** The n choices of one request, queued together (one batch when they fit); one failing stops the rest. */
  async function generateChoices(n: number, prompt: Prompt, o: GenerateOptions, signal: AbortSignal): Promise<GenerateResult[]> {
    const failed = new AbortController();
    const either = AbortSignal.any([signal, failed.signal]);
    try {
      return await Promise.all(Array.from({ length: n }, (_, k) => generate(prompt, choiceOptions(o, k), either)));
    } catch (err) {
      failed.abort();
      throw err;
    }
  }

  async function chat(req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const r = parseChatCompletionRequest(parseJsonBody(await readBody(req, maxBodyBytes)));
    const rendered = renderChat(llm.tokenizer, r.messages, r.tools);
    const maxNewTokens = budgetTokens(rendered.promptTokens, r.maxTokens, defaultMaxTokens, contextLength, 'messages');
    const o: GenerateOptions = { ...r.options, maxNewTokens, ...(rendered.tools ? { tools: rendered.tools } : {}), ...(r.logprobs !== undefined ? { logprobs: r.logprobs } : {}) };
    const id = completionId('chatcmpl');
    const now = Math.floor(Date.now() / 1000);
    const base = { id, object: r.stream ? 'chat.completion.chunk' : 'chat.completion', created: now, model: modelName, system_fingerprint: null };
    if (!r.stream) {
      const results = await generateChoices(r.n, rendered.prompt, o, signal);
      if (results.some((x) => x.finishReason === 'aborted')) return;
      const choices = results.map((x, index) => ({ index, ...chatChoice(x, r.toolNames), logprobs: r.logprobs !== undefined ? chatLogprobs(x, llm.tokenizer.eosTokenIds) : null }));
      sendJson(res, 200, { ...base, choices, usage: usageOfChoices(results) });
      return;
    }
    const events = new EventStream(res);
    const usageField = r.includeUsage ? { usage: null } : {};
    const chunk = (delta: Record<string, unknown>, finish: OpenAIFinishReason | null) => ({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...usageField });
    const send = (delta: Record<string, unknown>) => {
      // OpenAI's first chunk carries the role.
      if (!events.headersSent) events.send(chunk({ role: 'assistant', content: '' }, null));
      events.send(chunk(delta, null));
    };
    const hold = new ToolCallStream(r.toolNames);
    let result: GenerateResult;
    try {
      result = await generate(rendered.prompt, o, signal, (d) => {
        const content = hold.push(d);
        if (content) send({ content });
      });
    } catch (err) {
      if (!events.headersSent) throw err;
      events.send(errorBody(err).body);
      events.end();
      return;
    }
    if (result.finishReason === 'aborted') return;
    const { content, toolCalls } = hold.end();
    if (content) send({ content });
    if (toolCalls.length > 0) send({ tool_calls: toolCalls.map((c, index) => ({ index, ...c })) });
    if (!events.headersSent) events.send(chunk({ role: 'assistant', content: '' }, null));
    const finish: OpenAIFinishReason = result.finishReason === 'length' ? 'length' : toolCalls.length > 0 ? 'tool_calls' : 'stop';
    events.send(chunk({}, finish));
    if (r.includeUsage) events.send({ ...base, choices: [], usage: usageOf(result) });
    events.end();
  }

  async function completions(req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> {
    const r = parseCompletionRequest(parseJsonBody(await readBody(req, maxBodyBytes)));
    const promptTokens = rawPromptTokens(llm.tokenizer, r.prompt);
    const maxNewTokens = budgetTokens(promptTokens, r.maxTokens, defaultMaxTokens, contextLength, 'prompt');
    const o: GenerateOptions = { ...r.options, maxNewTokens };
    const base = { id: completionId('cmpl'), object: 'text_completion', created: Math.floor(Date.now() / 1000), model: modelName, system_fingerprint: null };
    const finishOf = (x: GenerateResult): OpenAIFinishReason => (x.finishReason === 'length' ? 'length' : 'stop');
    if (!r.stream) {
      const results = await generateChoices(r.n, r.prompt, o, signal);
      if (results.some((x) => x.finishReason === 'aborted')) return;
      const choices = results.map((x, index) => ({ index, text: x.text, logprobs: null, finish_reason: finishOf(x) }));
      sendJson(res, 200, { ...base, choices, usage: usageOfChoices(results) });
      return;
    }
    const events = new EventStream(res);
    const usageField = r.includeUsage ? { usage: null } : {};
    const chunk = (text: string, finish: OpenAIFinishReason | null) => ({ ...base, choices: [{ index: 0, text, logprobs: null, finish_reason: finish }], ...usageField });
    let result: GenerateResult;
    try {
      result = await generate(r.prompt, o, signal, (d) => events.send(chunk(d, null)));
    } catch (err) {
      if (!events.headersSent) throw err;
      events.send(errorBody(err).body);
      events.end();
      return;
    }
    if (result.finishReason === 'aborted') return;
    events.send(chunk('', finishOf(result)));
    if (r.includeUsage) events.send({ ...base, choices: [], usage: usageOf(result) });
    events.end();
  }

  const server: Server = createServer((req, res) => {
    const path = requestPath(req.url);
    const controller = new AbortController();
    // 'close' before the response finished: the client went away (or the server is closing).
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
    });
    const origin = req.headers.origin;
    if (cors.length > 0) res.setHeader('vary', 'Origin');  // a shared cache must not mix origins' answers
    if (origin !== undefined && !(cors.includes('*') || cors.includes(origin))) {
      // A browser page of another site: it may send a "simple" POST without asking, so refuse it
      // before any work (curl and SDKs send no Origin).
      req.resume();
      const { status, body } = errorBody(new HttpError(403, `origin ${origin} may not call this server: start it with --cors ${origin} (or '*')`, {}, null, 'origin_not_allowed'));
      sendJson(res, status, body);
      return;
    }
    if (origin !== undefined) {
      res.setHeader('access-control-allow-origin', origin);
      // The preflight a browser sends before a JSON POST: what the real request may carry.
      if (req.method === 'OPTIONS' && (ROUTES[path] || path.startsWith('/v1/models/'))) {
        req.resume();
        res.writeHead(204, {
          'access-control-allow-methods': 'GET, HEAD, POST',
          'access-control-allow-headers': req.headers['access-control-request-headers'] ?? 'authorization, content-type',
          'access-control-max-age': '600',
        });
        res.end();
        return;
      }
    }
    const work = async () => {
      const which = route(req.method ?? 'GET', path);
      if (which === 'chat') return chat(req, res, controller.signal);
      if (which === 'completions') return completions(req, res, controller.signal);
      req.resume();
      if (which === 'health') {
        return sendJson(res, 200, { status: 'ok', model: modelName, queued: batcher.queued, running: batcher.running, batches: batcher.stats.batches, rows: batcher.stats.rows });
      }
      if (which === 'models') return sendJson(res, 200, { object: 'list', data: [modelObject] });
      const wanted = decodeURIComponent(path.slice('/v1/models/'.length));
      if (wanted !== modelName) throw new HttpError(404, `The model '${wanted}' does not exist: this server serves '${modelName}'`, {}, 'model', 'model_not_found');
      return sendJson(res, 200, modelObject);
    };
    work().catch((err: unknown) => {
      const { status, body, headers } = errorBody(err);
      log(`${req.method} ${path} → ${status}: ${body.error.message}`);
      if (!res.headersSent) sendJson(res, status, body, headers);
      else res.destroy();
    });
  });

  try {
    await listen(server, options.port ?? 8080, options.host ?? '127.0.0.1');
  } catch (err) {
    if (owned) await llm.dispose();
    throw err;
  }
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}`,
    llm,
    modelName,
    stats: batcher.stats,
    async close() {
      await new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      });
      if (owned) await llm.dispose();
    },
  };
}
