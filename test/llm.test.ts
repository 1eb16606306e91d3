// LLM (src/llm/llm.ts) on the real model, SmolLM2-135M-Instruct Q4_1 GGUF: generate, stream,
// chat, stop strings, choices, abort, the event loop during generation, errors; tool-call
// parsing on fixed strings; and llama.cpp (node-llama-cpp 3.21.1) greedy on the same file,
// whose first token must be nodetune's (its Q4_1 matmuls round differently from exact float32
// dequantized math, so only the first tokens are compared).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LLM, type GenerateResult } from '../src/llm/llm.js';
import { generateIds } from '../src/llm/generate.js';
import type { CausalLM } from '../src/llm/load.js';
import { ChoiceConstraint } from '../src/llm/choices.js';
import { parseToolCalls } from '../src/llm/tool-calls.js';
import { writeRandomVProjAdapter } from './helpers/random-adapter.js';
import { generateFixture as fixture, SMOLLM2_GGUF as gguf, smollm2Missing as missing } from './helpers/smollm2.js';
import { ROOT } from './helpers/tiny-model.js';


let shared: LLM | undefined;
async function llm(): Promise<LLM> {
  shared ??= await LLM.load(gguf, { threads: 2 });
  return shared;
}
const engineOf = (m: LLM) => (m as unknown as { lm: CausalLM }).lm.engine;

const FRANCE = [{ role: 'user', content: 'What is the capital of France?' }];
const SKY = [{ role: 'user', content: 'Is the sky blue? Answer yes or no.' }];

test('greedy generate() gives generateIds\' tokens, which are transformers\' (a batch of the 5 fixture prompts)', { skip: missing }, async () => {
  const m = await llm();
  // The fixture's prompts are ids of chat-rendered text; as raw text (special tokens parsed) they encode back to the same ids.
  const texts = fixture.prompt_ids.map((ids) => m.tokenizer.decode(ids));
  texts.forEach((t, i) => assert.deepEqual(m.tokenizer.encode(t, { addSpecialTokens: false }), fixture.prompt_ids[i]));
  const n = 6;
  const results = await m.generate(texts, { maxNewTokens: n, minNewTokens: n });
  const direct: number[][] = texts.map(() => []);
  for await (const ev of generateIds(engineOf(m), m.config.vocab_size, fixture.prompt_ids, { maxNewTokens: n, minNewTokens: n, eosTokenIds: m.tokenizer.eosTokenIds, padTokenId: m.tokenizer.padTokenId! })) {
    direct[ev.row].push(ev.token);
  }
  results.forEach((r, i) => {
    assert.deepEqual(r.tokens, direct[i], `prompt ${i}`);
    assert.deepEqual(r.tokens, fixture.generated_ids[i].slice(0, n), `prompt ${i} against transformers`);
    assert.equal(r.text, m.tokenizer.decode(r.tokens.filter((t) => !m.tokenizer.eosTokenIds.includes(t))));
    assert.deepEqual(r.usage, { promptTokens: fixture.prompt_ids[i].length, completionTokens: n });
    assert.equal(r.finishReason, 'length');
  });
  // One prompt alone gives the same as in the batch (left padding is masked).
  assert.deepEqual(await m.generate(texts[1], { maxNewTokens: n, minNewTokens: n }), results[1]);
});

test('a chat prompt renders through the chat template with the generation prompt; generation stops at <|im_end|>', { skip: missing }, async () => {
  const m = await llm();
  const rendered = m.tokenizer.applyChatTemplate(FRANCE, { add_generation_prompt: true });
  assert.match(rendered, /<\|im_start\|>user\nWhat is the capital of France\?<\|im_end\|>\n<\|im_start\|>assistant\n$/);
  const chat = await m.generate(FRANCE, { maxNewTokens: 16 });
  const raw = await m.generate(rendered, { maxNewTokens: 16 });
  assert.deepEqual(chat, raw);
  assert.equal(chat.usage.promptTokens, m.tokenizer.encode(rendered, { addSpecialTokens: false }).length);
  assert.equal(chat.text, 'The capital of France is Paris.');
  assert.equal(chat.finishReason, 'stop');
  assert.equal(chat.tokens.at(-1), m.tokenizer.tokenToId('<|im_end|>'));
  const reply = await m.chat(FRANCE, { maxNewTokens: 16 });
  assert.deepEqual(reply, { role: 'assistant', content: 'The capital of France is Paris.' });
});

test('stop strings cut the text before them and finish with "stop"; streaming never shows part of one', { skip: missing }, async () => {
  const m = await llm();
  const free = await m.generate('The capital of France is', { maxNewTokens: 8 });
  assert.equal(free.text, ' Paris.\n\nThe answer is:');
  assert.equal(free.finishReason, 'length');
  const dot = await m.generate('The capital of France is', { maxNewTokens: 8, stop: '.' });
  assert.deepEqual([dot.text, dot.finishReason, dot.tokens.length], [' Paris', 'stop', 2]);
  // A stop string spanning tokens (".\n\n" + "The"), the earliest of several wins.
  const span = await m.generate('The capital of France is', { maxNewTokens: 8, stop: ['answer', '\n\nThe'] });
  assert.deepEqual([span.text, span.finishReason], [' Paris.', 'stop']);
  const deltas: string[] = [];
  for await (const d of m.stream('The capital of France is', { maxNewTokens: 8, stop: ['\n\nThe'] })) deltas.push(d);
  assert.equal(deltas.join(''), ' Paris.');
  assert.ok(deltas.every((d) => !d.includes('\n')), JSON.stringify(deltas));
});

test('choices constrain the output to one of the strings (greedy would answer otherwise)', { skip: missing }, async () => {
  const m = await llm();
  const choices = ['Maybe', 'Definitely not', 'Absolutely'];
  const free = await m.generate(SKY, { maxNewTokens: 8 });
  assert.ok(!choices.includes(free.text), `unconstrained: ${JSON.stringify(free.text)}`);
  const r = await m.generate(SKY, { choices });
  assert.ok(choices.includes(r.text), JSON.stringify(r.text));
  assert.equal(r.finishReason, 'stop');
  assert.deepEqual(r.tokens, m.tokenizer.encode(r.text, { addSpecialTokens: false }));
  // Choices with a shared prefix: where the shorter ends, eos may end the row; the trie allows only the continuations otherwise.
  const c = new ChoiceConstraint([[1, 2], [1, 2, 3], [4]], [0]);
  assert.deepEqual([...c.allowed([])].sort(), [1, 4]);
  assert.deepEqual([...c.allowed([1])], [2]);
  assert.deepEqual([...c.allowed([1, 2])].sort(), [0, 3]);
  assert.deepEqual([...c.allowed([1, 2, 3])], []);
  assert.deepEqual([...c.allowed([4])], []);
  const both = await m.generate(['The sky is', SKY], { choices: ['blue', 'green'], maxNewTokens: 4 });
  assert.ok(both.every((x) => ['blue', 'green'].includes(x.text)), JSON.stringify(both.map((x) => x.text)));
});

test('streamed deltas concatenate to generate()\'s text and never split a character (emoji: 3 tokens each)', { skip: missing }, async () => {
  const m = await llm();
  const prompt = [{ role: 'user', content: 'Reply with party emoji only: 🎉' }];
  // 9 tokens: three whole emoji (10 would end inside the fourth, and the final flush would give U+FFFD, as decode() does).
  const full = await m.generate(prompt, { maxNewTokens: 9 });
  const deltas: string[] = [];
  for await (const d of m.stream(prompt, { maxNewTokens: 9 })) deltas.push(d);
  assert.equal(deltas.join(''), full.text);
  assert.ok([...full.text].some((ch) => ch.codePointAt(0)! > 0xffff), `expected an emoji in ${JSON.stringify(full.text)}`);
  // Some token is only part of a character: it yields nothing, so there are fewer deltas than tokens.
  assert.ok(deltas.length < full.tokens.length, `${deltas.length} deltas for ${full.tokens.length} tokens`);
  for (const d of deltas) {
    assert.ok(!d.includes('\uFFFD'), JSON.stringify(d));
    assert.equal(Buffer.from(d, 'utf8').toString('utf8'), d); // no lone surrogate
  }
  const chunks: string[] = [];
  const viaCallback = await m.generate(prompt, { maxNewTokens: 9, onTextChunk: (t) => chunks.push(t) });
  assert.deepEqual(chunks, deltas);
  assert.deepEqual(viaCallback, full);
  const cut: string[] = [];
  for await (const d of m.stream(prompt, { maxNewTokens: 10 })) cut.push(d);
  assert.deepEqual(cut, [...deltas, '\uFFFD']);
});

test('the event loop runs during generation: a timer fires between every two tokens', { skip: missing }, async () => {
  const m = await llm();
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const seen: number[] = [];
  try {
    for await (const _ of m.stream('The capital of France is', { maxNewTokens: 6 })) seen.push(ticks);
  } finally {
    clearInterval(timer);
  }
  assert.ok(seen.length >= 4, `${seen.length} deltas`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] > seen[i - 1], `no timer tick between delta ${i - 1} and ${i}: ${seen}`);
});

test('an AbortSignal ends the generation with finishReason "aborted" and the text so far', { skip: missing }, async () => {
  const m = await llm();
  const before = new AbortController();
  before.abort();
  assert.deepEqual(await m.generate('The capital of France is', { signal: before.signal }), {
    text: '', tokens: [], finishReason: 'aborted', usage: { promptTokens: 5, completionTokens: 0 },
  });
  // Aborted while the prompt is prefilled: the first step sees it.
  const during = new AbortController();
  const pending = m.generate('The capital of France is', { maxNewTokens: 50, signal: during.signal });
  setTimeout(() => during.abort(), 0);
  const r = await pending;
  assert.equal(r.finishReason, 'aborted');
  assert.ok(r.tokens.length < 50);
  // Mid-stream: the stream ends after the abort.
  const mid = new AbortController();
  const deltas: string[] = [];
  for await (const d of m.stream('The capital of France is', { maxNewTokens: 50, signal: mid.signal })) {
    deltas.push(d);
    if (deltas.length === 2) mid.abort();
  }
  assert.deepEqual(deltas, [' Paris', '.']);
  // The model is free again afterwards.
  assert.equal((await m.generate('The capital of France is', { maxNewTokens: 1 })).text, ' Paris');
});

test('calls on one LLM queue: concurrent generations give what they give one at a time', { skip: missing }, async () => {
  const m = await llm();
  const a = await m.generate(FRANCE, { maxNewTokens: 5 });
  const b = await m.generate('The capital of France is', { maxNewTokens: 5 });
  const [a2, b2] = await Promise.all([m.generate(FRANCE, { maxNewTokens: 5 }), m.generate('The capital of France is', { maxNewTokens: 5 })]);
  assert.deepEqual([a2, b2], [a, b]);
});

test('sampling: a seed reproduces the text; temperature 0 is greedy', { skip: missing }, async () => {
  const m = await llm();
  const o = { maxNewTokens: 8, temperature: 0.9, topP: 0.95, seed: 7 };
  const x = await m.generate('Once upon a time', o);
  assert.deepEqual(await m.generate('Once upon a time', o), x);
  const others = await Promise.all([1, 2, 3].map((seed) => m.generate('Once upon a time', { ...o, seed })));
  assert.ok(others.some((y) => y.text !== x.text));
});

test('chat() with tools parses the model\'s <tool_call> output (forced here with choices)', { skip: missing }, async () => {
  const m = await llm();
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';
  const reply = await m.chat([{ role: 'user', content: 'Weather in Paris?' }], { tools, choices: [call] });
  assert.equal(reply.content, '');
  assert.equal(reply.tool_calls?.length, 1);
  assert.deepEqual(reply.tool_calls![0].function, { name: 'get_weather', arguments: { city: 'Paris' } });
  assert.match(reply.tool_calls![0].id, /^call_[0-9a-f]{24}$/);
  // The reply can go back into the conversation.
  const next = await m.generate([{ role: 'user', content: 'Weather in Paris?' }, reply, { role: 'tool', content: '{"temp": 21}' }], { maxNewTokens: 1 });
  assert.equal(next.tokens.length, 1);
});

test("logprobs: the first token's log-probability and alternatives are the log-softmax of the prefill logits (float64), before temperature; bad values are named", { skip: missing }, async () => {
  const m = await llm();
  const prompt = 'The capital of France is';
  const r = await m.generate(prompt, { maxNewTokens: 3, temperature: 0.7, seed: 3, logprobs: 4 });
  assert.equal(r.logprobs!.length, r.tokens.length);
  const ids = m.tokenizer.encode(prompt, { addSpecialTokens: false });
  const { logits } = await engineOf(m).prefill({ input_ids: Int32Array.from(ids), attention_mask: new Int32Array(ids.length).fill(1), batchSize: 1, seqLen: ids.length }, { maxNewTokens: 1 });
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let z = 0;
  for (const x of logits) z += Math.exp(x - max);
  const logp = (id: number) => logits[id] - max - Math.log(z);
  const first = r.logprobs![0];
  assert.equal(first.id, r.tokens[0]);
  assert.ok(Math.abs(first.logprob - logp(first.id)) < 1e-5, `${first.logprob} vs ${logp(first.id)}`);
  const want = [...logits.keys()].sort((a, b) => logits[b] - logits[a] || a - b).slice(0, 4);
  assert.deepEqual(first.top.map((t) => t.id), want);
  first.top.forEach((t) => assert.ok(Math.abs(t.logprob - logp(t.id)) < 1e-5));
  assert.equal(first.token, m.tokenizer.decode([first.id]));
  assert.deepEqual(first.bytes, Array.from(m.tokenizer.tokenBytes(first.id)));
  assert.equal((await m.generate(prompt, { maxNewTokens: 2 })).logprobs, undefined);
  await assert.rejects(m.generate(prompt, { logprobs: 21 }), /logprobs must be an integer from 0 to 20 \(alternatives per token\), got 21/);
});

test('tool-call parsing on fixed strings: hermes blocks, Mistral [TOOL_CALLS], Llama 3 JSON; malformed calls stay text', () => {
  const two = parseToolCalls('Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>{"name": "b", "arguments": "{\\"y\\": [2]}"}</tool_call>');
  assert.equal(two.content, 'Let me check.');
  assert.deepEqual(two.tool_calls.map((c) => c.function), [{ name: 'a', arguments: { x: 1 } }, { name: 'b', arguments: { y: [2] } }]);
  assert.ok(two.tool_calls.every((c) => c.type === 'function'));
  assert.notEqual(two.tool_calls[0].id, two.tool_calls[1].id);
  // Cut off before </tool_call> (max tokens, or a stop string) but whole JSON: still a call.
  assert.deepEqual(parseToolCalls('<tool_call>\n{"name": "a", "arguments": {}}').tool_calls.map((c) => c.function.name), ['a']);
  const bad = '<tool_call>{"name": "a", "arguments": {"x": </tool_call>';
  assert.deepEqual(parseToolCalls(bad), { content: bad, tool_calls: [] });
  assert.deepEqual(parseToolCalls('<tool_call>{"arguments": {}}</tool_call>').tool_calls, []);
  const mistral = parseToolCalls('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]');
  assert.deepEqual(mistral.tool_calls.map((c) => c.function), [{ name: 'get_weather', arguments: { city: 'Paris' } }]);
  const mistral11 = parseToolCalls('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]f[ARGS]{}');
  assert.deepEqual(mistral11.tool_calls.map((c) => c.function.name), ['get_weather', 'f']);
  const llama3 = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}';
  assert.deepEqual(parseToolCalls(llama3, { toolNames: ['get_weather'] }).tool_calls.map((c) => c.function), [{ name: 'get_weather', arguments: { city: 'Paris' } }]);
  // A JSON answer is not a call unless it names an offered tool.
  assert.deepEqual(parseToolCalls('{"name": "Ada", "parameters": {}}', { toolNames: ['get_weather'] }).tool_calls, []);
  assert.deepEqual(parseToolCalls('no calls here'), { content: 'no calls here', tool_calls: [] });
  // offeredOnly (a server, LLM.chat): a call to a tool not offered is not a call, in every format; it stays text.
  const mixed = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call><tool_call>{"name": "get_weather", "arguments": {}}</tool_call>';
  const offered = parseToolCalls(mixed, { toolNames: ['get_weather'], offeredOnly: true });
  assert.deepEqual(offered.tool_calls.map((c) => c.function.name), ['get_weather']);
  assert.equal(offered.content, '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>');
  assert.deepEqual(parseToolCalls(mixed).tool_calls.map((c) => c.function.name), ['get_time', 'get_weather'], 'without offeredOnly (evaluation) any name is a call');
  assert.deepEqual(parseToolCalls('[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]', { toolNames: ['get_weather'], offeredOnly: true }).tool_calls, []);
  assert.deepEqual(parseToolCalls('[TOOL_CALLS]get_time[ARGS]{}', { toolNames: ['get_weather'], offeredOnly: true }).tool_calls, []);
});

test('errors: a prompt too long for the context names both lengths; bad messages name their index; bad options name the option', { skip: missing }, async () => {
  const m = await llm();
  const long = 'hello '.repeat(8000);
  const n = m.tokenizer.encode(long, { addSpecialTokens: false }).length;
  await assert.rejects(m.generate(long, { maxNewTokens: 256 }), new RegExp(`^Error: the prompt is ${n} tokens; with maxNewTokens 256 that exceeds the model's max_position_embeddings 8192 \\(at most 7936 prompt tokens\\)$`));
  await assert.rejects(m.generate(['hi', long], { maxNewTokens: 256 }), new RegExp(`^Error: prompt 1 is ${n} tokens`));
  await assert.rejects(m.generate([{ role: 'user', content: 'a' }, { role: 'robot', content: 'b' }]), /^Error: messages\[1\] has unknown role "robot"/);
  await assert.rejects(m.generate(['ok', [{ role: 'user' }]]), /^Error: prompts\[1\]: messages\[0\] \(user\) has no content/);
  await assert.rejects(m.generate([42 as unknown as string]), /prompts\[0\]: must be a string or a non-empty array of chat messages/);
  await assert.rejects(m.generate('x', { temperature: -1 }), /temperature must be a finite number >= 0, got -1/);
  await assert.rejects(m.generate('x', { maxNewTokens: 0 }), /maxNewTokens must be a positive integer, got 0/);
  await assert.rejects(m.generate('x', { maxNewTokens: Infinity }), /maxNewTokens must be a positive integer, got Infinity$/);
  await assert.rejects(m.generate('x', { maxNewTokens: 1e8 }), /^Error: maxNewTokens 100000000 leaves no room for a prompt within the model's max_position_embeddings 8192 \(at most 8191\)$/);
  await assert.rejects(m.generate('x', { temperature: NaN }), /temperature must be a finite number >= 0, got NaN$/);
  await assert.rejects(m.generate('x', { topP: 0 }), /topP must be in \(0, 1\]/);
  await assert.rejects(m.generate('x', { stop: [''] }), /stop must be a non-empty string or an array of them/);
  await assert.rejects(m.generate('x', { choices: [] }), /choices must be a non-empty array of strings/);
  await assert.rejects(m.generate('x', { choices: ['a', ''] }), /choices\[1\] must be a non-empty string/);
  await assert.rejects(m.generate(''), /the prompt is empty/);
  await assert.rejects(async () => {
    for await (const _ of m.stream(['a', 'b'] as unknown as string)) break;
  }, /stream\(\) takes one prompt/);
  assert.deepEqual(await m.generate([]), []);
});

test('load({ lora }): a PEFT adapter folder is applied (greedy output changes), a misfit adapter is named; dispose() lets earlier calls finish', { skip: missing }, async () => {
  const m = await llm();
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-llm-lora-'));
  let tuned: LLM | undefined;
  try {
    await writeRandomVProjAdapter(dir, m.config, 'HuggingFaceTB/SmolLM2-135M-Instruct');
    tuned = await LLM.load(gguf, { threads: 2, lora: dir });
    const base: GenerateResult = await m.generate(FRANCE, { maxNewTokens: 6 });
    // dispose() waits for the generation called before it; calls after it are refused.
    const pending = tuned.generate(FRANCE, { maxNewTokens: 6 });
    const disposing = tuned.dispose();
    const changed = await pending;
    await disposing;
    assert.notDeepEqual(changed.tokens, base.tokens);
    await assert.rejects(tuned.generate(FRANCE), /this LLM was disposed/);
  } finally {
    await tuned?.dispose();
    await rm(dir, { recursive: true, force: true });
  }
  await assert.rejects(LLM.load(gguf, { lora: join(ROOT, 'test/fixtures/llm-export/peft-tiny-llama') }), /adapter_model\.safetensors.*(shape|layer|missing)/);
  await assert.rejects(LLM.load(gguf, { precison: 'q8_0' } as never), /^Error: LLM\.load: unknown option 'precison'; expected one of threads, seed, lora, revision, device, precision, chatTemplateFile$/);
});

test('node-llama-cpp (llama.cpp) on the same GGUF: the same first-token distribution, and the same greedy first token wherever it is not a near tie', { skip: missing }, async (t) => {
  let llama: import('node-llama-cpp').Llama;
  try {
    const { getLlama } = await import('node-llama-cpp');
    llama = await getLlama({ gpu: false, build: 'never', logLevel: 'disabled' as import('node-llama-cpp').LlamaLogLevel });
  } catch (err) {
    t.skip(`node-llama-cpp does not load here: ${(err as Error).message}`);
    return;
  }
  const m = await llm();
  const prompts: Array<string | typeof FRANCE> = [FRANCE, SKY, 'The capital of France is', [{ role: 'user', content: 'Write a haiku about the sea.' }], 'def fibonacci(n):'];
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  const context = await model.createContext({ contextSize: 512, threads: 2 });
  const n = 3;
  const rows: string[] = [];
  let sameFirst = 0, sameAll = 0;
  const V = m.config.vocab_size;
  try {
    for (const p of prompts) {
      const ours = await m.generate(p, { maxNewTokens: n });
      const ids = typeof p === 'string' ? m.tokenizer.encode(p, { addSpecialTokens: false }) : m.tokenizer.encode(m.tokenizer.applyChatTemplate(p, { add_generation_prompt: true }), { addSpecialTokens: false });
      // nodetune's first-step distribution, from the engine the LLM holds (nothing else runs on it now).
      const { logits } = await engineOf(m).prefill({ input_ids: Int32Array.from(ids), attention_mask: new Int32Array(ids.length).fill(1), batchSize: 1, seqLen: ids.length }, { maxNewTokens: 1 });
      let max = -Infinity;
      for (let v = 0; v < V; v++) max = Math.max(max, logits[v]);
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(logits[v] - max);
      const prob = (id: number) => Math.exp(logits[id] - max) / z;
      const ranked = [...Array(V).keys()].sort((a, b) => logits[b] - logits[a]);
      const margin = prob(ranked[0]) - prob(ranked[1]);
      const sequence = context.getSequence();
      const theirs: number[] = [];
      let theirProbs: Map<number, number> | undefined;
      try {
        for await (const out of sequence.evaluateWithMetadata(ids as import('node-llama-cpp').Token[], { probabilities: true }, { temperature: 0, yieldEogToken: true })) {
          theirs.push(out.token);
          theirProbs ??= out.probabilities as Map<number, number>;
          if (theirs.length === n) break;
        }
      } finally {
        sequence.dispose();
      }
      const top = [...theirProbs!].slice(0, 5);
      const worst = Math.max(...top.map(([id, pr]) => Math.abs(pr - prob(id))));
      rows.push(
        `${JSON.stringify(typeof p === 'string' ? p : p[0].content)}: nodetune [${ours.tokens}] ${JSON.stringify(m.tokenizer.decode(ours.tokens))}, ` +
          `llama.cpp [${theirs}] ${JSON.stringify(m.tokenizer.decode(theirs))}; nodetune top-2 margin ${margin.toFixed(3)}, ` +
          `largest probability difference on llama.cpp's top 5 ${worst.toFixed(3)}`,
      );
      if (theirs[0] === ours.tokens[0]) sameFirst++;
      if (JSON.stringify(theirs) === JSON.stringify(ours.tokens)) sameAll++;
      assert.ok(worst < 0.05, rows.at(-1));
      if (margin >= 0.02) assert.equal(theirs[0], ours.tokens[0], rows.at(-1));
      else assert.ok(ranked.slice(0, 2).includes(theirs[0]), rows.at(-1));
    }
  } finally {
    for (const r of rows) t.diagnostic(r);
    t.diagnostic(`first token equal on ${sameFirst}/${prompts.length} prompts, all ${n} equal on ${sameAll}/${prompts.length}`);
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  }
});

test.after(async () => {
  await shared?.dispose();
});
