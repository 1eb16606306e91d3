// The OpenAI-compatible LLM server (src/serve/llm-server.ts) on a loopback port with the real
// SmolLM2-135M-Instruct Q4_1 GGUF, called with the official `openai` client as an agent framework
// would: chat completions (plain, streamed, stop, max_tokens, tools offered and tool results sent
// back), completions, /v1/models; bad requests over raw fetch (OpenAI error objects, the server
// keeps serving); batching counted in engine prefill calls; a disconnected client's generation
// stopped; a full queue answered 503; `nodetune serve` on an sft run folder.
//
// The tool_calls response path is tested with the LLM's generate() stubbed to write a Hermes
// <tool_call> block (the 135M base model does not call tools reliably); the real model is tested
// with tools offered and tool results returned, on plain-text answers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { LLM, type GenerateOptions, type GenerateResult, type Prompt } from '../src/llm/llm.js';
import type { CausalLM } from '../src/llm/load.js';
import { writeRandomVProjAdapter } from './helpers/random-adapter.js';
import { startLlmServer, type RunningLlmServer } from '../src/serve/llm-server.js';
import { ToolCallStream, budgetTokens, parseChatCompletionRequest, renderChat } from '../src/serve/openai.js';
import { LlmTokenizer } from '../src/tokenizer/index.js';
import { GenerationBatcher } from '../src/serve/batcher.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = join(root, 'dist/src/cli/main.js');
const gguf = join(root, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const missing = existsSync(gguf) ? false : `${gguf} is missing: run bash scripts/fetch-llm.sh (setup does)`;

const MODEL = 'smol-test';
const MAX_BODY = 64 * 1024;
const FRANCE = [{ role: 'user' as const, content: 'What is the capital of France?' }];
const WEATHER_TOOL = {
  type: 'function' as const,
  function: { name: 'get_weather', description: 'Current weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
};

let llm: LLM;
let server: RunningLlmServer;
let client: OpenAI;
/** Engine calls, counted; `gate`, while set, holds every decode step (to keep a batch running). */
const engineCalls = { prefill: 0, decode: 0, gate: undefined as Promise<void> | undefined };

before(async () => {
  if (missing) return;
  llm = await LLM.load(gguf, { threads: 2 });
  const engine = (llm as unknown as { lm: CausalLM }).lm.engine;
  const prefill = engine.prefill.bind(engine);
  const decode = engine.decode.bind(engine);
  engine.prefill = (...args: Parameters<typeof prefill>) => {
    engineCalls.prefill++;
    return prefill(...args);
  };
  engine.decode = async (...args: Parameters<typeof decode>) => {
    engineCalls.decode++;
    if (engineCalls.gate) await engineCalls.gate;
    return decode(...args);
  };
  server = await startLlmServer({ llm, port: 0, modelName: MODEL, maxBatch: 8, maxBodyBytes: MAX_BODY });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  await server?.close();
  await llm?.dispose();
});

async function post(path: string, body: unknown, url = server.url): Promise<{ status: number; headers: Headers; json: any }> {
  const res = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

async function health(url = server.url): Promise<{ queued: number; running: number; batches: number }> {
  return (await fetch(`${url}/health`)).json() as Promise<{ queued: number; running: number; batches: number }>;
}

async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + 60_000;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Holds every engine decode step until the returned function is called. */
function closeGate(): () => void {
  let open!: () => void;
  engineCalls.gate = new Promise<void>((r) => (open = r));
  return () => {
    engineCalls.gate = undefined;
    open();
  };
}

/** What generate() gives for the same conversation: the server's answers are checked against it. */
let france8: GenerateResult;
async function greedyFrance(): Promise<GenerateResult> {
  france8 ??= await llm.generate(FRANCE, { maxNewTokens: 8 });
  return france8;
}

test('chat completion (openai client, greedy): the text, usage and finish_reason of LLM.generate, in OpenAI\'s shape', { skip: missing }, async () => {
  const want = await greedyFrance();
  const r = await client.chat.completions.create({ model: 'whatever-the-client-says', messages: FRANCE, max_tokens: 8, temperature: 0 });
  assert.match(r.id, /^chatcmpl-[0-9a-f]{24}$/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, MODEL);
  assert.ok(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 600);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, want.text);
  assert.match(want.text, /Paris/);
  assert.equal(r.choices[0].message.tool_calls, undefined);
  assert.equal(r.choices[0].finish_reason, want.finishReason);
  assert.deepEqual(r.usage, { prompt_tokens: want.usage.promptTokens, completion_tokens: want.usage.completionTokens, total_tokens: want.usage.promptTokens + want.usage.completionTokens });
});

test('streamed chat completion: role first, deltas that join to the non-streamed text, a finish chunk, the usage chunk, [DONE]', { skip: missing }, async () => {
  const want = await greedyFrance();
  const stream = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  for await (const c of stream) chunks.push(c);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id && c.model === MODEL));
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const withChoice = chunks.filter((c) => c.choices.length > 0);
  const text = withChoice.map((c) => c.choices[0].delta.content ?? '').join('');
  assert.equal(text, want.text);
  assert.ok(withChoice.length >= 4, `several deltas, got ${withChoice.length}`);
  assert.deepEqual(withChoice.map((c) => c.choices[0].finish_reason).filter(Boolean), [want.finishReason]);
  assert.equal(withChoice.at(-1)!.choices[0].finish_reason, want.finishReason);
  const last = chunks.at(-1)!;
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, { prompt_tokens: want.usage.promptTokens, completion_tokens: want.usage.completionTokens, total_tokens: want.usage.promptTokens + want.usage.completionTokens });
  // The wire format itself: `data: {...}\n\n` events ending with `data: [DONE]`.
  const res = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: FRANCE, max_tokens: 2, temperature: 0, stream: true }) });
  assert.match(res.headers.get('content-type')!, /^text\/event-stream/);
  const raw = await res.text();
  assert.match(raw, /^data: \{.*\}\n\n(data: \{.*\}\n\n)+data: \[DONE\]\n\n$/);
  assert.ok(!raw.includes('"usage"'), 'no usage field without stream_options.include_usage');
});

test('max_tokens and max_completion_tokens end with finish_reason "length"; stop strings cut the text before them, streamed or not', { skip: missing }, async () => {
  const want = await greedyFrance();
  const short = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 3, temperature: 0 });
  assert.equal(short.choices[0].finish_reason, 'length');
  assert.equal(short.usage!.completion_tokens, 3);
  assert.ok(want.text.startsWith(short.choices[0].message.content!));
  const newer = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_completion_tokens: 2, max_tokens: 5, temperature: 0 });
  assert.equal(newer.usage!.completion_tokens, 2, 'max_completion_tokens wins over the deprecated max_tokens');

  const cut = want.text.indexOf(' Paris');
  const stopped = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 8, temperature: 0, stop: [' Paris', 'never'] });
  assert.equal(stopped.choices[0].message.content, want.text.slice(0, cut));
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  const stream = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 8, temperature: 0, stop: ' Paris', stream: true });
  let text = '';
  for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
  assert.equal(text, want.text.slice(0, cut));
});

test('sampling with a seed: the same seed gives the same text (top_k, min_p, repetition_penalty accepted as vLLM takes them)', { skip: missing }, async () => {
  const ask = (seed: number) =>
    client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 6, temperature: 1.5, top_p: 0.95, seed, top_k: 50, min_p: 0.01, repetition_penalty: 1.1 } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
  const [a, b] = await Promise.all([ask(7), ask(7)]);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.equal(a.usage!.completion_tokens, b.usage!.completion_tokens);
});

test('/v1/completions: a raw prompt\'s continuation as LLM.generate gives it, streamed and not', { skip: missing }, async () => {
  const want = await llm.generate('Once upon a time', { maxNewTokens: 6 });
  const r = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 6, temperature: 0 });
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, want.text);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.deepEqual(r.usage, { prompt_tokens: want.usage.promptTokens, completion_tokens: 6, total_tokens: want.usage.promptTokens + 6 });
  const stream = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 6, temperature: 0, stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const c of stream) {
    text += c.choices[0].text;
    finish = c.choices[0].finish_reason ?? finish;
  }
  assert.equal(text, want.text);
  assert.equal(finish, 'length');
});

test('tools on the real model: the schemas reach the prompt (Hermes block in the system message for SmolLM2), tool_choice "none" leaves them out, tool results go back in', { skip: missing }, async () => {
  const plain = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 1, temperature: 0 });
  const offered = await client.chat.completions.create({ model: MODEL, messages: FRANCE, tools: [WEATHER_TOOL], tool_choice: 'auto', max_tokens: 1, temperature: 0 });
  const none = await client.chat.completions.create({ model: MODEL, messages: FRANCE, tools: [WEATHER_TOOL], tool_choice: 'none', max_tokens: 1, temperature: 0 });
  assert.ok(offered.usage!.prompt_tokens > plain.usage!.prompt_tokens + 50, `tools add the schema block: ${offered.usage!.prompt_tokens} vs ${plain.usage!.prompt_tokens}`);
  assert.equal(none.usage!.prompt_tokens, plain.usage!.prompt_tokens);
  // The second turn of a tool call, as the client sends it: assistant tool_calls with arguments as a JSON string, then the tool's result.
  const messages: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
    { role: 'developer', content: [{ type: 'text', text: 'Answer briefly.' }] },
    { role: 'user', content: 'What is the weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: '{"temperature_c": 21, "sky": "sunny"}' },
  ];
  const answer = await client.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL], max_tokens: 4, temperature: 0 });
  assert.equal(typeof answer.choices[0].message.content, 'string');
  assert.ok(answer.usage!.prompt_tokens > offered.usage!.prompt_tokens);
});

/** A server on `llm` whose generate() answers `reply` (streamed in 3-character pieces) and records the prompts. */
async function stubServer(reply: string): Promise<{ server: RunningLlmServer; prompts: Prompt[]; close: () => Promise<void> }> {
  const prompts: Prompt[] = [];
  const stub = Object.create(llm) as LLM;
  stub.generate = (async (ps: Prompt[], o: GenerateOptions = {}) =>
    ps.map((p, i) => {
      prompts.push(p);
      for (let k = 0; k < reply.length; k += 3) o.onTextChunk?.(reply.slice(k, k + 3), i);
      return { text: reply, tokens: [1, 2, 3], finishReason: 'stop', usage: { promptTokens: 10, completionTokens: 3 } } satisfies GenerateResult;
    })) as unknown as LLM['generate'];
  const s = await startLlmServer({ llm: stub, port: 0, modelName: MODEL });
  return { server: s, prompts, close: () => s.close() };
}

test('a reply holding a <tool_call> (generate stubbed) comes back as OpenAI tool_calls with JSON-string arguments, finish_reason "tool_calls", streamed and not', { skip: missing }, async () => {
  const call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>';
  const stub = await stubServer(`Let me check.\n${call}`);
  try {
    const c = new OpenAI({ baseURL: `${stub.server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const r = await c.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL] });
    const msg = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(msg.content, 'Let me check.');
    assert.equal(msg.tool_calls!.length, 1);
    const tc = msg.tool_calls![0] as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall;
    assert.match(tc.id, /^call_/);
    assert.equal(tc.type, 'function');
    assert.equal(tc.function.name, 'get_weather');
    assert.equal(typeof tc.function.arguments, 'string');
    assert.deepEqual(JSON.parse(tc.function.arguments), { city: 'Paris', days: 2 });
    // The model saw the tool: SmolLM2's template ignores `tools`, so the schema is in the rendered system message.
    assert.equal(typeof stub.prompts[0], 'string');
    assert.match(stub.prompts[0] as string, /^<\|im_start\|>system\n[\s\S]*<tools>\n\{"type":"function","function":\{"name":"get_weather"/);

    const stream = await c.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL], stream: true });
    let content = '';
    const calls: OpenAI.Chat.Completions.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta;
      content += d?.content ?? '';
      calls.push(...(d?.tool_calls ?? []));
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(content, 'Let me check.\n', 'the text before the call streams; the call itself does not');
    assert.equal(calls.length, 1);
    assert.equal(calls[0].index, 0);
    assert.equal(calls[0].function!.name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].function!.arguments!), { city: 'Paris', days: 2 });
    assert.equal(finish, 'tool_calls');

    // Without tools offered the same text is plain content.
    const plain = await c.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Weather in Paris?' }] });
    assert.equal(plain.choices[0].message.content, `Let me check.\n${call}`);
    assert.equal(plain.choices[0].finish_reason, 'stop');
  } finally {
    await stub.close();
  }
});

test('ToolCallStream: text streams until a tool-call marker could begin (split across deltas too); a leading JSON object is held; without tools nothing is held', () => {
  const run = (names: string[], deltas: string[]) => {
    const s = new ToolCallStream(names);
    const out = deltas.map((d) => s.push(d));
    return { out, end: s.end() };
  };
  let r = run(['f'], ['Hello <', 'b>world</b', '> and <to', 'ol_call>{"name": "f", "arguments": {}}</tool_call>']);
  assert.deepEqual(r.out, ['Hello ', '<b>world</b', '> and ', '']);
  assert.equal(r.end.content, '');
  assert.deepEqual(r.end.toolCalls.map((c) => [c.function.name, c.function.arguments]), [['f', '{}']]);
  r = run(['f'], ['  ', '{"name": "f", "parameters": {"x": 1}}']);
  assert.deepEqual(r.out, ['', '']);
  assert.deepEqual(r.end.toolCalls.map((c) => c.function.arguments), ['{"x":1}']);
  r = run(['f'], ['{not json', ' at all']);
  assert.deepEqual(r.end, { content: '{not json at all', toolCalls: [] });
  r = run(['f'], ['an unclosed <tool_', 'call> that is not a call']);
  assert.equal(r.out.join('') + r.end.content, 'an unclosed <tool_call> that is not a call');
  r = run([], ['<tool_call>{"name": "f"}</tool_call>']);
  assert.deepEqual(r.out, ['<tool_call>{"name": "f"}</tool_call>']);
  // A call to a tool that was not offered is never returned as a call (OpenAI never does): it is text.
  r = run(['f'], ['<tool_call>{"name": "g", "arguments": {}}</tool_call>']);
  assert.deepEqual(r.end, { content: '<tool_call>{"name": "g", "arguments": {}}</tool_call>', toolCalls: [] });
});

test('bad requests get OpenAI error objects (400 naming the field, 404, 405, 413) and the server keeps serving', { skip: missing }, async () => {
  const cases: Array<[string, unknown, number, string | null, RegExp]> = [
    ['/v1/chat/completions', '{"messages": [}', 400, null, /not valid JSON: .* at line 1 column 15/],
    ['/v1/chat/completions', '{\n  "messages": [\n    {"role": "user", "content": "hi"},\n  ]\n}', 400, null, /at line 4 column 3/],
    ['/v1/chat/completions', '', 400, null, /body is empty/],
    ['/v1/chat/completions', '[1]', 400, null, /must be a JSON object, got an array/],
    ['/v1/chat/completions', {}, 400, 'messages', /'messages' is required/],
    ['/v1/chat/completions', { messages: 'hi' }, 400, 'messages', /must be an array/],
    ['/v1/chat/completions', { messages: [] }, 400, 'messages', /empty/],
    ['/v1/chat/completions', { messages: [{ role: 'robot', content: 'x' }] }, 400, 'messages[0].role', /"robot" is unknown/],
    ['/v1/chat/completions', { messages: [{ content: 'x' }] }, 400, 'messages[0].role', /is required/],
    ['/v1/chat/completions', { messages: [{ role: 'user' }] }, 400, 'messages[0].content', /is required/],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 400, 'messages[0].content[0].type', /not supported/],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: [] }] }, 400, 'messages[0].content', /empty array/],
    ['/v1/chat/completions', { messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{oops' } }] }] }, 400, 'messages[0].tool_calls[0].function.arguments', /not valid JSON/],
    ['/v1/chat/completions', { messages: FRANCE, temperature: 3 }, 400, 'temperature', />= 0 and <= 2, got 3/],
    ['/v1/chat/completions', { messages: FRANCE, temperature: '0.5' }, 400, 'temperature', /must be a number/],
    ['/v1/chat/completions', { messages: FRANCE, top_p: 0 }, 400, 'top_p', /> 0 and <= 1/],
    ['/v1/chat/completions', { messages: FRANCE, n: 17 }, 400, 'n', /must be at most 16, got 17/],
    ['/v1/chat/completions', { messages: FRANCE, n: 2, stream: true }, 400, 'n', /'n' 2 with 'stream' is not supported/],
    ['/v1/chat/completions', { messages: FRANCE, max_tokens: 0 }, 400, 'max_tokens', />= 1/],
    ['/v1/chat/completions', { messages: FRANCE, max_tokens: 1.5 }, 400, 'max_tokens', /integer/],
    ['/v1/chat/completions', { messages: FRANCE, max_tokens: 100_000 }, 400, 'messages', /maximum context length is 8192 tokens/],
    ['/v1/chat/completions', { messages: FRANCE, stop: 5 }, 400, 'stop', /string or an array/],
    ['/v1/chat/completions', { messages: FRANCE, stop: ['a', ''] }, 400, 'stop[1]', /non-empty/],
    ['/v1/chat/completions', { messages: FRANCE, seed: 'x' }, 400, 'seed', /integer/],
    ['/v1/chat/completions', { messages: FRANCE, stream: 'yes' }, 400, 'stream', /boolean/],
    ['/v1/chat/completions', { messages: FRANCE, tools: [{ type: 'function', function: { name: 'bad name' } }] }, 400, 'tools[0].function.name', /letters, digits/],
    ['/v1/chat/completions', { messages: FRANCE, tools: [WEATHER_TOOL], tool_choice: 'required' }, 400, 'tool_choice', /not supported/],
    ['/v1/chat/completions', { messages: FRANCE, logprobs: true, stream: true }, 400, 'logprobs', /'logprobs' with 'stream' is not supported/],
    ['/v1/chat/completions', { messages: FRANCE, top_logprobs: 2 }, 400, 'top_logprobs', /needs 'logprobs': true/],
    ['/v1/chat/completions', { messages: FRANCE, logprobs: true, top_logprobs: 21 }, 400, 'top_logprobs', /<= 20/],
    ['/v1/chat/completions', { messages: FRANCE, response_format: { type: 'json_object' } }, 400, 'response_format', /not supported/],
    ['/v1/chat/completions', { messages: FRANCE, frequency_penalty: 0.5 }, 400, 'frequency_penalty', /repetition_penalty/],
    ['/v1/completions', { prompt: ['a', 'b'] }, 400, 'prompt', /one string, got an array of 2/],
    ['/v1/completions', {}, 400, 'prompt', /required/],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x'.repeat(MAX_BODY) }] }, 413, null, /exceeds the limit of 65536 bytes/],
    ['/v1/embeddings', { input: 'x' }, 404, null, /Invalid URL \(POST \/v1\/embeddings\)/],
  ];
  const before = engineCalls.prefill;
  for (const [path, body, status, param, message] of cases) {
    const r = await post(path, body);
    const what = `${path} ${typeof body === 'string' ? body : JSON.stringify(body).slice(0, 80)}`;
    assert.equal(r.status, status, what);
    assert.equal(r.json.error.type, 'invalid_request_error', what);
    assert.equal(r.json.error.param, param, what);
    assert.match(r.json.error.message, message, what);
    assert.ok('code' in r.json.error, what);
  }
  assert.equal(engineCalls.prefill, before, 'no bad request reaches the engine');
  const get = await fetch(`${server.url}/v1/chat/completions`);
  assert.equal(get.status, 405);
  assert.equal(get.headers.get('allow'), 'POST');
  const unknownModel = await fetch(`${server.url}/v1/models/gpt-4`);
  assert.equal(unknownModel.status, 404);
  assert.equal(((await unknownModel.json()) as { error: { code: string } }).error.code, 'model_not_found');
  // Through the client: a typed BadRequestError carrying param and code.
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 2.5 }), (e: unknown) => {
    assert.ok(e instanceof OpenAI.BadRequestError);
    assert.equal(e.status, 400);
    assert.equal(e.param, 'temperature');
    assert.equal(e.code, 'invalid_value');
    return true;
  });
  // Still serving.
  const ok = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 1, temperature: 0 });
  assert.equal(ok.choices[0].finish_reason, 'length');
  // A compressed body is named as such (415), not reported as invalid JSON.
  const gz = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: gzipSync(JSON.stringify({ messages: FRANCE })) });
  assert.equal(gz.status, 415);
  assert.match(((await gz.json()) as { error: { message: string } }).error.message, /Content-Encoding "gzip" is not supported: send the body uncompressed/);
  // Bytes that are not UTF-8 are named, not replaced with U+FFFD on the way to the model.
  const latin1 = Buffer.concat([Buffer.from('{"messages": [{"role": "user", "content": "caf'), Buffer.from([0xe9]), Buffer.from('"}]}')]);
  const bad = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: latin1 });
  assert.equal(bad.status, 400);
  assert.match(((await bad.json()) as { error: { message: string } }).error.message, /^request body is not valid UTF-8: byte 0xE9 at offset 46$/);
  // top_logprobs 0 asks for nothing: accepted, as OpenAI accepts it.
  assert.equal((await post('/v1/chat/completions', { messages: FRANCE, max_tokens: 1, top_logprobs: 0 })).status, 200);
});

test('budgetTokens: a prompt of no tokens (a chat template that renders nothing, no BOS) is a 400 naming it, not a 500 from the engine', () => {
  assert.throws(() => budgetTokens(0, undefined, 256, 8192, 'messages'), (e: unknown) => {
    const err = e as { status: number; param: string; message: string };
    assert.equal(err.status, 400);
    assert.equal(err.param, 'messages');
    assert.match(err.message, /the messages encode to no tokens \(the model's chat template renders them to nothing, and the tokenizer adds no BOS\)/);
    return true;
  });
  assert.equal(budgetTokens(5, undefined, 256, 8192, 'prompt'), 256);
  assert.equal(budgetTokens(8190, undefined, 256, 8192, 'prompt'), 2);
});

test('renderChat counts the BOS that generate() prepends when the template does not write it', async () => {
  const small = await LlmTokenizer.fromGguf(join(root, 'test/fixtures/llm-tokenizer/small/llama-bpe.gguf'));
  // This small vocabulary's BOS is <|im_start|>, which the template writes; a BOS it does not write is id 0.
  const tok = Object.create(small, { bosTokenId: { value: 0 } }) as LlmTokenizer;
  const messages = [{ role: 'user' as const, content: 'hi' }];
  const text = small.applyChatTemplate(messages, { add_generation_prompt: true });
  const r = renderChat(tok, messages, undefined);
  assert.deepEqual(r.prompt, messages, 'the messages go as they are (generate adds the BOS)');
  assert.equal(r.promptTokens, small.encode(text, { addSpecialTokens: false }).length + 1);
  assert.equal(renderChat(small, messages, undefined).promptTokens, small.encode(text, { addSpecialTokens: false }).length);
});

test('CORS: only with corsOrigins, a browser page of a listed origin may call the API (preflight answered, origin echoed); others get no header', { skip: missing }, async () => {
  const origin = 'http://app.example';
  const preflight = { method: 'OPTIONS', headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' } };
  // The default server: a browser page (it sends Origin) is refused before any work, even a
  // "simple" text/plain POST that needs no preflight; clients without Origin are served.
  const closed = await fetch(`${server.url}/v1/chat/completions`, preflight);
  assert.equal(closed.status, 403);
  assert.equal(closed.headers.get('access-control-allow-origin'), null);
  const before = engineCalls.prefill;
  const simple = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { origin, 'content-type': 'text/plain' }, body: JSON.stringify({ messages: FRANCE, max_tokens: 1 }) });
  assert.equal(simple.status, 403);
  assert.match(((await simple.json()) as { error: { message: string } }).error.message, /origin http:\/\/app\.example may not call this server: start it with --cors http:\/\/app\.example/);
  assert.equal(engineCalls.prefill, before, 'a refused origin costs no generation');
  const open = await startLlmServer({ llm: server.llm, port: 0, corsOrigins: [origin] });
  try {
    const pre = await fetch(`${open.url}/v1/chat/completions`, preflight);
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), origin);
    assert.match(pre.headers.get('access-control-allow-methods')!, /POST/);
    assert.equal(pre.headers.get('access-control-allow-headers'), 'authorization, content-type');
    const models = await fetch(`${open.url}/v1/models`, { headers: { origin } });
    assert.equal(models.status, 200);
    assert.equal(models.headers.get('access-control-allow-origin'), origin);
    const other = await fetch(`${open.url}/v1/models`, { headers: { origin: 'http://evil.example' } });
    assert.equal(other.status, 403);
    assert.equal(other.headers.get('access-control-allow-origin'), null);
    const noOrigin = await fetch(`${open.url}/v1/models`);
    assert.equal(noOrigin.status, 200);
    assert.equal(noOrigin.headers.get('vary'), 'Origin', 'every answer varies by Origin');
  } finally {
    await open.close();
  }
  const any = await startLlmServer({ llm: server.llm, port: 0, corsOrigins: ['*'] });
  try {
    const r = await fetch(`${any.url}/health`, { headers: { origin: 'http://evil.example' } });
    assert.equal(r.headers.get('access-control-allow-origin'), 'http://evil.example');
  } finally {
    await any.close();
  }
});

test('logprobs: each token of the answer with its log-probability and top_logprobs alternatives, as OpenAI shapes them; the bytes spell the text', { skip: missing }, async () => {
  const r = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
  const lp = r.choices[0].logprobs!;
  assert.equal(lp.refusal, null);
  const content = lp.content!;
  assert.equal(content.length, r.usage!.completion_tokens - (r.choices[0].finish_reason === 'stop' ? 1 : 0));
  for (const t of content) {
    assert.ok(t.logprob <= 0 && Number.isFinite(t.logprob));
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob && t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob);
    assert.equal(t.top_logprobs[0].token, t.token, 'greedy: the chosen token is the most likely');
    assert.equal(t.top_logprobs[0].logprob, t.logprob);
    assert.ok(t.top_logprobs.reduce((s, a) => s + Math.exp(a.logprob), 0) <= 1 + 1e-9);
  }
  assert.equal(Buffer.from(content.flatMap((t) => t.bytes!)).toString('utf8'), r.choices[0].message.content);
  const plain = await client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 6, temperature: 0 });
  assert.equal(plain.choices[0].logprobs, null);
  assert.equal(plain.choices[0].message.content, r.choices[0].message.content, 'asking for logprobs changes no token');
});

test('n choices: sampled with a seed, choice k draws with seed + k (distinct, each reproducible); usage counts the prompt once; completions too', { skip: missing }, async () => {
  const ask = { model: MODEL, messages: FRANCE, n: 3, max_tokens: 8, temperature: 1, seed: 11 };
  const a = await client.chat.completions.create(ask);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  const texts = a.choices.map((c) => c.message.content);
  assert.ok(new Set(texts).size > 1, `the choices differ: ${JSON.stringify(texts)}`);
  const again = await client.chat.completions.create(ask);
  assert.deepEqual(again.choices.map((c) => c.message.content), texts, 'the same request gives the same choices');
  const one = await client.chat.completions.create({ ...ask, n: 1, seed: 12 });
  assert.equal(one.choices[0].message.content, texts[1], 'choice 1 is what seed + 1 gives alone');
  assert.equal(a.usage!.prompt_tokens, one.usage!.prompt_tokens, 'the prompt is counted once');
  assert.ok(a.usage!.completion_tokens > one.usage!.completion_tokens && a.usage!.completion_tokens <= 3 * 8, `completion tokens ${a.usage!.completion_tokens}: every choice's`);
  const greedy = await client.completions.create({ model: MODEL, prompt: 'The capital of France is', n: 2, max_tokens: 4, temperature: 0 });
  assert.equal(greedy.choices.length, 2);
  assert.equal(greedy.choices[0].text, greedy.choices[1].text, 'greedy choices are equal');
});

test('GET /v1/models lists the served model; GET /v1/models/{id} and /health answer', { skip: missing }, async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => [m.id, m.object, m.owned_by]), [[MODEL, 'model', 'nodetune']]);
  const one = await client.models.retrieve(MODEL);
  assert.equal(one.id, MODEL);
  const h = (await (await fetch(`${server.url}/health`)).json()) as Record<string, unknown>;
  assert.equal(h.status, 'ok');
  // Slashes merged as nginx merges them (a URL parser would take //v1 for a host): a base URL with a trailing slash still works.
  const doubled = await fetch(`${server.url}//v1/models/?x=1`);
  assert.equal(doubled.status, 200);
  assert.equal(((await doubled.json()) as { data: unknown[] }).data.length, 1);
  assert.equal(h.model, MODEL);
});

test('concurrent requests are batched: 5 requests, 3 engine prefills (matching settings share a batch, others wait for the next); each answer is what it gets alone', { skip: missing }, async () => {
  const want = await greedyFrance();
  const before = { prefill: engineCalls.prefill, batches: server.stats.batches };
  const open = closeGate();
  let opened = false;
  try {
    // A long generation holds the engine; what arrives meanwhile queues.
    const first = client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 12, temperature: 0 });
    await until('the first request to run', async () => (await health()).running === 1);
    const same = Array.from({ length: 3 }, () => client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 8, temperature: 0 }));
    // Different max_tokens: LLM.generate takes one set of options per batch, so this one goes alone.
    const other = client.chat.completions.create({ model: MODEL, messages: FRANCE, max_tokens: 4, temperature: 0 });
    await until('4 queued requests', async () => (await health()).queued === 4);
    open();
    opened = true;
    const [a, b, c, d, e] = await Promise.all([first, ...same, other]);
    assert.equal(a.choices[0].finish_reason, 'length');
    for (const r of [b, c, d]) assert.equal(r.choices[0].message.content, want.text);
    assert.ok(want.text.startsWith(e.choices[0].message.content!));
    assert.equal(e.usage!.completion_tokens, 4);
    assert.equal(engineCalls.prefill - before.prefill, 3, 'one prefill for the first, one for the batch of 3, one for the other');
    assert.equal(server.stats.batches - before.batches, 3);
    assert.ok(server.stats.largestBatch >= 3);
  } finally {
    if (!opened) open();
  }
});

test('a client that disconnects stops its generation (queued: it never runs; running: the batch stops); a full queue answers 503', { skip: missing }, async () => {
  // One request per batch and one waiting at most, on the same LLM.
  const small = await startLlmServer({ llm, port: 0, modelName: MODEL, maxBatch: 1, maxQueue: 1 });
  const open = closeGate();
  let opened = false;
  try {
    const before = { ...engineCalls };
    const running = new AbortController();
    const queued = new AbortController();
    const runningReq = fetch(`${small.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: FRANCE, max_tokens: 200, temperature: 0, stream: true }), signal: running.signal });
    await until('the streamed request to run', async () => (await health(small.url)).running === 1);
    const queuedReq = fetch(`${small.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: FRANCE, max_tokens: 200, temperature: 0 }), signal: queued.signal });
    await until('one queued request', async () => (await health(small.url)).queued === 1);
    const full = await post('/v1/chat/completions', { messages: FRANCE, max_tokens: 1 }, small.url);
    assert.equal(full.status, 503);
    assert.equal(full.headers.get('retry-after'), '1');
    assert.equal(full.json.error.type, 'server_error');
    assert.equal(full.json.error.code, 'server_overloaded');
    queued.abort();
    await assert.rejects(queuedReq, { name: 'AbortError' });
    await until('the queued request to leave the queue', async () => (await health(small.url)).queued === 0);
    const res = await runningReq;
    assert.equal(res.status, 200);
    running.abort();
    open();
    opened = true;
    await until('the running batch to stop', async () => (await health(small.url)).running === 0);
    assert.equal(engineCalls.prefill - before.prefill, 1, 'the queued request never reached the engine');
    assert.ok(engineCalls.decode - before.decode <= 2, `the aborted generation stopped after ${engineCalls.decode - before.decode} decode steps of 200`);
    // Both servers still answer.
    assert.equal((await post('/v1/chat/completions', { messages: FRANCE, max_tokens: 1 }, small.url)).status, 200);
  } finally {
    if (!opened) open();
    await small.close();
  }
});

test('the batcher reruns a failed batch one job at a time, so one failing job fails only itself', async () => {
  const calls: string[][] = [];
  const fake = {
    async generate(prompts: Prompt[]): Promise<GenerateResult[]> {
      calls.push(prompts as string[]);
      if (prompts.includes('bad')) throw new Error('engine says no');
      return prompts.map((p) => ({ text: `echo ${p}`, tokens: [], finishReason: 'stop' as const, usage: { promptTokens: 1, completionTokens: 1 } }));
    },
  };
  const b = new GenerationBatcher(fake, { maxBatch: 4 });
  const jobs = ['a', 'bad', 'c'].map((p) => b.submit({ prompt: p, options: {}, key: 'k' }));
  const settled = await Promise.allSettled(jobs);
  assert.deepEqual(calls, [['a', 'bad', 'c'], ['a'], ['bad'], ['c']]);
  assert.deepEqual(settled.map((s) => (s.status === 'fulfilled' ? s.value.text : (s.reason as Error).message)), ['echo a', 'engine says no', 'echo c']);
  assert.throws(() => new GenerationBatcher(fake, { maxBatch: 0 }), /maxBatch must be a positive integer/);
});

test('request parsing: developer → system, text parts joined, tool-call arguments parsed, null fields read as absent', () => {
  const r = parseChatCompletionRequest({
    messages: [
      { role: 'developer', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'x', type: 'function', function: { name: 'f', arguments: '{"k": [1]}' } }] },
    ],
    temperature: null,
    stop: null,
    tools: [WEATHER_TOOL],
    tool_choice: 'auto',
    stream: true,
    stream_options: { include_usage: true },
  });
  assert.deepEqual(r.messages, [
    { role: 'system', content: 'a\nb' },
    { role: 'assistant', content: '', tool_calls: [{ id: 'x', type: 'function', function: { name: 'f', arguments: { k: [1] } } }] },
  ]);
  assert.deepEqual(r.options, {});
  assert.deepEqual(r.toolNames, ['get_weather']);
  assert.equal(r.stream, true);
  assert.equal(r.includeUsage, true);
});

test('nodetune serve --model <sft run folder> serves base + adapter under --model-name, and stops on SIGTERM', { skip: missing }, async () => {
  const base = await greedyFrance();
  const run = await mkdtemp(join(tmpdir(), 'nodetune-serve-run-'));
  // A run folder as `nodetune sft` leaves it: the adapter, its base named by base_model_name_or_path.
  await writeRandomVProjAdapter(run, llm.config, gguf);
  const child = spawn(process.execPath, [CLI, 'serve', '--model', run, '--port', '0', '--threads', '2', '--model-name', 'my-run', '--max-batch', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  try {
    const url = await new Promise<string>((ok, fail) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d;
        const m = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
        if (m) ok(m[1]);
      });
      child.once('exit', (code) => fail(new Error(`serve exited with ${code} before listening: ${stderr}`)));
    });
    const cli = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    assert.deepEqual((await cli.models.list()).data.map((m) => m.id), ['my-run']);
    const answer = await cli.chat.completions.create({ model: 'my-run', messages: FRANCE, max_tokens: 8, temperature: 0 });
    assert.equal(answer.model, 'my-run');
    assert.notEqual(answer.choices[0].message.content, base.text, 'the adapter changes the greedy answer');
    const exited = new Promise<number | null>((ok) => child.once('exit', ok));
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await rm(run, { recursive: true, force: true });
  }
});
