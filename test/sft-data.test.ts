// SFT data (src/tasks/causal-lm/data.ts, encode.ts): the readers of OpenAI chat, ShareGPT,
// prompt/completion and text files and the errors that name file, line and field; loss masks on
// SmolLM2's real tokenizer and chat template (assistant turns only with <|im_end|> inside,
// completion only, every token); tool schemas and calls written the Hermes way for a template
// that ignores tools; truncation and skip counts; packing; the collator; choice tries and the
// generation metrics on fixed strings.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSftFile, parseSftRecord, type ChatRecord, type SftRecord } from '../src/tasks/causal-lm/data.js';
import { chatForTemplate, collateSft, encodeSftRecord, encodeSftRecords, packExamples, IGNORE_INDEX, type SftRow } from '../src/tasks/causal-lm/encode.js';
import { ChoiceTrie } from '../src/tasks/causal-lm/choices.js';
import { jsonEqual, parseGeneratedToolCalls, referenceChoices, scoreGenerations, type GenerationTarget } from '../src/tasks/causal-lm/generation.js';
import { LlmTokenizer } from '../src/tokenizer/bpe.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const gguf = join(root, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const missing = existsSync(gguf) ? false : `${gguf} is missing: run bash scripts/fetch-llm.sh (setup does)`;

let tmp: string;
let tok: LlmTokenizer;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-sft-data-'));
  if (!missing) tok = await LlmTokenizer.fromGguf(gguf);
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

let n = 0;
async function file(ext: string, text: string): Promise<string> {
  const path = join(tmp, `data-${++n}${ext}`);
  await writeFile(path, text);
  return path;
}
const jsonl = (...rows: unknown[]) => rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n';

const TOOL = { type: 'function', function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } } } } };

test('OpenAI chat: tools, tool_calls with JSON-string arguments parsed, tool results, developer role, weight 0', async () => {
  const path = await file('.jsonl', jsonl(
    {
      messages: [
        { role: 'developer', content: 'Be brief.' },
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', tool_call_id: 'c1', content: '{"temp": 21}' },
        { role: 'assistant', content: 'It is 21 degrees.', weight: 0 },
        { role: 'user', content: 'Thanks' },
        { role: 'assistant', content: [{ type: 'text', text: 'You are ' }, { type: 'text', text: 'welcome.' }] },
      ],
      tools: [TOOL],
    },
    '',
    { messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] },
  ));
  const ds = readSftFile(path);
  assert.deepEqual(ds.counts, { chat: 2, completion: 0, text: 0 });
  const r = ds.records[0] as ChatRecord;
  assert.equal(r.source.line, 1);
  assert.equal(ds.records[1].source.line, 3, 'blank lines are skipped but counted');
  assert.equal(r.messages[0].role, 'system');
  assert.deepEqual(r.messages[2].tool_calls, [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: { city: 'Paris' } } }]);
  assert.equal(r.messages[2].content, '');
  assert.equal(r.messages[3].tool_call_id, 'c1');
  assert.equal(r.messages[6].content, 'You are welcome.');
  assert.deepEqual(r.trainable, [2, 6], 'the weight-0 answer is context only');
  assert.deepEqual(r.tools, [TOOL]);
});

test('ShareGPT: human/gpt/system/function_call/observation and a tools string become messages, tool_calls and tools', async () => {
  const conv = {
    conversations: [
      { from: 'human', value: 'Find a recipe with rice' },
      { from: 'function_call', value: '{"name": "search_recipes", "arguments": {"ingredients": ["rice"]}}' },
      { from: 'observation', value: '{"recipes": ["fried rice"]}' },
      { from: 'gpt', value: 'Try fried rice.' },
    ],
    system: 'You help with cooking.',
    tools: '[{"name": "search_recipes", "description": "Search recipes", "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}}}]',
  };
  // A .json file holding an array (LLaMA-Factory's layout): errors and sources name each record's first line.
  const path = await file('.json', `[\n  ${JSON.stringify(conv)},\n  {\n    "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]\n  }\n]\n`);
  const ds = readSftFile(path);
  const r = ds.records[0] as ChatRecord;
  assert.deepEqual(r.messages.map((m) => m.role), ['system', 'user', 'assistant', 'tool', 'assistant']);
  assert.deepEqual(r.messages[2].tool_calls, [{ type: 'function', function: { name: 'search_recipes', arguments: { ingredients: ['rice'] } } }]);
  assert.deepEqual(r.tools, [{ type: 'function', function: { name: 'search_recipes', description: 'Search recipes', parameters: { type: 'object', properties: { ingredients: { type: 'array' } } } } }]);
  assert.deepEqual(r.trainable, [2, 4]);
  assert.deepEqual(ds.records.map((x) => x.source.line), [2, 3]);
});

test('prompt/completion (strings and message lists), text records and .txt paragraphs', async () => {
  const path = await file('.jsonl', jsonl(
    { prompt: 'Translate: chat', completion: ' cat' },
    { prompt: [{ role: 'user', content: 'Say hi' }], completion: [{ role: 'assistant', content: 'hi' }] },
    { text: 'Some domain text.' },
  ));
  const ds = readSftFile(path);
  assert.deepEqual(ds.counts, { chat: 1, completion: 1, text: 1 });
  assert.deepEqual((ds.records[1] as ChatRecord).trainable, [1]);
  const txt = readSftFile(await file('.txt', 'First paragraph\nstill first.\n\n\nSecond one.\r\n'));
  assert.deepEqual(txt.records.map((r) => [r.kind === 'text' && r.text, r.source.line]), [['First paragraph\nstill first.', 1], ['Second one.', 5]]);
});

test('bad records are errors naming file, line and field', async () => {
  const cases: Array<[string, string, RegExp]> = [
    ['.jsonl', '{"messages": [}\n', /:1: not valid JSON .*expected one JSON object per line/],
    ['.jsonl', '\n[1, 2]\n', /:2: expected a JSON object, got an array/],
    ['.jsonl', jsonl({ messages: [] }), /:1: messages is empty; expected a non-empty list of messages/],
    ['.jsonl', jsonl({ messages: [{ role: 'bot', content: 'x' }] }), /:1: messages\[0\]\.role is "bot"; expected system, developer, user, assistant or tool/],
    ['.jsonl', jsonl({ messages: [{ role: 'user' }] }), /:1: messages\[0\]\.content is missing/],
    ['.jsonl', jsonl({ messages: [{ role: 'user', content: 'x' }] }), /:1: messages has no assistant message to learn from/],
    ['.jsonl', jsonl({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y', weight: 0 }] }), /:1: messages has no assistant message to learn from \(every assistant message has weight 0/],
    ['.jsonl', jsonl({ messages: [{ role: 'user', content: 'x', weight: 1 }] }), /:1: messages\[0\]\.weight: only assistant messages have a weight/],
    ['.jsonl', '\n\n' + jsonl({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', tool_calls: [{ function: { name: 'f', arguments: '{bad' } }] }] }), /:3: messages\[1\]\.tool_calls\[0\]\.function\.arguments is not valid JSON/],
    ['.jsonl', jsonl({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y' }], tools: [{ type: 'function', function: { description: 'no name' } }] }), /:1: tools\[0\]\.function\.name is missing; expected a string/],
    ['.jsonl', jsonl({ conversations: [{ from: 'robot', value: 'x' }] }), /:1: conversations\[0\]\.from is "robot"; expected one of human/],
    ['.jsonl', jsonl({ conversations: [{ from: 'human', value: 'x' }, { from: 'function_call', value: 'not json' }] }), /:1: conversations\[1\]\.value is not valid JSON/],
    ['.jsonl', jsonl({ conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }], tools: '[oops' }), /:1: tools is not valid JSON/],
    ['.jsonl', jsonl({ prompt: 'x' }), /:1: completion is missing \(the record has "prompt"\)/],
    ['.jsonl', jsonl({ text: '' }), /:1: text is empty; expected text/],
    ['.jsonl', jsonl({ input: 'x', output: 'y' }), /:1: cannot tell the format from the keys "input", "output"; expected "messages" \(chat\), "conversations" \(ShareGPT\), "prompt" \+ "completion", or "text"/],
    ['.json', '[\n {"text": "ok"},\n\n {"text": 5}\n]', /:4: text is 5; expected a string/],
    // A cut-off pretty-printed array: the line and column where the JSON breaks, not a character offset.
    ['.json', '[\n  {"text": "ok"},\n  {"text": "cut', /:3:\d+: invalid JSON: .*; expected a JSON array of records/],
    ['.jsonl', '\n \n', /no examples found/],
    ['.csv', 'text\nx\n', /cannot tell the format from extension "\.csv"; expected \.jsonl, \.json or \.txt/],
  ];
  for (const [ext, text, want] of cases) {
    const path = await file(ext, text);
    assert.throws(() => readSftFile(path), (err: Error) => {
      assert.ok(err.message.startsWith(path), `names the file: ${err.message}`);
      assert.match(err.message, want);
      return true;
    });
  }
  await assert.rejects(async () => readSftFile(await file('.jsonl', Buffer.from([0x7b, 0xff, 0x7d]).toString('latin1'))), /invalid UTF-8|not valid JSON/);
});

test('chat masks on SmolLM2: assistant tokens only, <|im_end|> inside, the newline after it and the prompt outside', { skip: missing }, () => {
  const r = parseSftRecord({ messages: [{ role: 'system', content: 'Classify.' }, { role: 'user', content: 'my card has not come' }, { role: 'assistant', content: 'card_arrival' }, { role: 'user', content: 'and?' }, { role: 'assistant', content: 'done', weight: 0 }] }, { path: 'x.jsonl', line: 1 });
  const { ids, labels } = encodeSftRecord(tok, r);
  const enc = tok.encodeChat((r as ChatRecord).messages);
  assert.deepEqual(ids, enc.input_ids);
  const imEnd = tok.tokenToId('<|im_end|>')!;
  const target = ids.filter((_, t) => labels[t] !== IGNORE_INDEX);
  assert.equal(tok.decode(target), 'card_arrival<|im_end|>', 'only the first answer (the second has weight 0), its end-of-turn token included');
  assert.equal(target.at(-1), imEnd);
  const first = labels.findIndex((l) => l !== IGNORE_INDEX);
  assert.equal(tok.decode(ids.slice(0, first)).endsWith('<|im_start|>assistant\n'), true, 'the generation prompt is not learned');
  assert.deepEqual(labels.map((l, t) => (l === IGNORE_INDEX ? 0 : 1)), enc.assistant_masks.map((m, t) => (m && enc.spans.find((s) => t >= s.tokenStart && t < s.tokenEnd)!.messageIndex === 2 ? 1 : 0)));
  // The choices a trie is built from are the tokens the answer was trained as.
  assert.deepEqual(target.slice(0, -1), tok.encode('card_arrival', { addSpecialTokens: false }));
});

test('prompt/completion: loss on the completion and EOS only; text: every token and EOS', { skip: missing }, () => {
  const c = encodeSftRecord(tok, { kind: 'completion', prompt: 'Q: capital of France?\nA:', completion: ' Paris', source: { path: 'p', line: 1 } });
  assert.equal(tok.decode(c.ids.filter((_, t) => c.labels[t] !== IGNORE_INDEX)), ' Paris<|im_end|>');
  assert.equal(tok.decode(c.ids), 'Q: capital of France?\nA: Paris<|im_end|>');
  const t = encodeSftRecord(tok, { kind: 'text', text: 'Domain text.', source: { path: 't', line: 1 } });
  assert.deepEqual(t.labels, t.ids);
  assert.equal(t.ids.at(-1), tok.eosTokenId);
});

test('a template without tools (SmolLM2) gets the Hermes tool block in the system message and <tool_call> answers', { skip: missing }, () => {
  const r = parseSftRecord({
    messages: [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', content: '{"temp": 21}' },
      { role: 'assistant', content: '21 degrees.' },
    ],
    tools: [TOOL],
  }, { path: 'x.jsonl', line: 7 }) as ChatRecord;
  const { messages } = chatForTemplate(tok, r.messages, r.tools);
  assert.equal(messages[0].role, 'system');
  assert.match(String(messages[0].content), /<tools>\n\{"type":"function","function":\{"name":"get_weather"/);
  assert.equal(messages[2].content, '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>');
  assert.equal(messages[2].tool_calls, undefined);
  const { ids, labels } = encodeSftRecord(tok, r);
  const learned = tok.decode(ids.filter((_, t) => labels[t] !== IGNORE_INDEX));
  assert.equal(learned, '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call><|im_end|>21 degrees.<|im_end|>');
  assert.deepEqual(parseGeneratedToolCalls(String(messages[2].content)), [{ name: 'get_weather', arguments: { city: 'Paris' } }]);
});

test('truncation is counted; an example with no target left is skipped and counted, never kept as a zero-loss example', { skip: missing }, () => {
  const long = 'word '.repeat(60);
  const recs: SftRecord[] = [
    parseSftRecord({ messages: [{ role: 'user', content: 'short' }, { role: 'assistant', content: 'ok' }] }, { path: 'd.jsonl', line: 1 }),
    parseSftRecord({ messages: [{ role: 'user', content: long }, { role: 'assistant', content: 'never seen' }] }, { path: 'd.jsonl', line: 2 }),
    parseSftRecord({ text: long }, { path: 'd.jsonl', line: 3 }),
  ];
  const { examples, stats } = encodeSftRecords(tok, recs, { maxLength: 40 });
  assert.equal(stats.examples, 3);
  assert.equal(stats.truncated, 2);
  assert.equal(stats.skipped, 1);
  assert.deepEqual(stats.skippedSources, [{ path: 'd.jsonl', line: 2 }]);
  assert.equal(examples.length, 2);
  assert.equal(examples[1].input_ids.length, 40);
  assert.equal(examples[1].numTargets, 39, 'a text row predicts every token after its first');
  assert.equal(stats.targetTokens, examples[0].numTargets + 39);
  assert.throws(() => encodeSftRecords(tok, recs, { maxLength: 1 }), /max_length 1: expected an integer ≥ 2/);
});

function row(ids: number[], labels: number[]): SftRow {
  return { input_ids: Int32Array.from(ids), labels: Int32Array.from(labels), numTargets: labels.slice(1).filter((l) => l !== IGNORE_INDEX).length, numExamples: 1 };
}

test('packing: first-fit decreasing into max_length rows, one segment per example; the collator pads with 0 mask and -100 labels', () => {
  const ex = [row([1, 2, 3], [-100, 2, 3]), row([4, 5, 6, 7, 8], [-100, -100, 6, 7, 8]), row([9, 10], [9, 10]), row([11, 12, 13, 14], [11, 12, 13, 14])];
  const packed = packExamples(ex, 8);
  assert.deepEqual(packed.map((r) => [...r.input_ids]), [[4, 5, 6, 7, 8, 1, 2, 3], [11, 12, 13, 14, 9, 10]]);
  assert.deepEqual(packed.map((r) => [...r.segments!]), [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 2, 2]]);
  assert.deepEqual(packed.map((r) => [r.numTargets, r.numExamples]), [[5, 2], [4, 2]]);
  assert.equal(packed.reduce((k, r) => k + r.numTargets, 0), ex.reduce((k, r) => k + r.numTargets, 0));
  const b = collateSft(packed, 0);
  assert.deepEqual([b.batchSize, b.seqLen], [2, 8]);
  assert.deepEqual([...b.attention_mask!], [1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 2, 2, 0, 0]);
  assert.deepEqual([...b.labels!].slice(8), [11, 12, 13, 14, 9, 10, -100, -100]);
  assert.deepEqual([...collateSft([ex[0]], 7).attention_mask!], [1, 1, 1]);
  assert.throws(() => packExamples(ex, 4), /example 1 has 5 tokens, over max_length 4/);
});

test('choice trie: allowed ids follow the choices, a decided choice ends the row, resolve fills in the forced rest', () => {
  const vocab: Record<string, number[]> = { card_arrival: [1, 2, 3], card_linking: [1, 4], top_up: [5, 6, 7, 8], top: [5, 6] };
  const trie = new ChoiceTrie(Object.keys(vocab), (t) => vocab[t], [99]);
  assert.equal(trie.maxTokens, 4);
  assert.deepEqual([...trie.allowed([])].sort(), [1, 5]);
  assert.deepEqual([...trie.allowed([1])].sort(), [2, 4]);
  assert.equal(trie.allowed([1, 2]).size, 0, 'card_arrival is decided after [1, 2]');
  assert.equal(trie.resolve([1, 2]), 'card_arrival');
  assert.deepEqual([...trie.allowed([5])], [6], 'top and top_up share [5, 6]: top ends inside the shared path, so nothing is decided yet');
  assert.equal(trie.resolve([5]), undefined);
  assert.deepEqual([...trie.allowed([5, 6])].sort((a, b) => a - b), [7, 99], 'top may end (eos) or go on to top_up');
  assert.equal(trie.resolve([5, 6, 99]), 'top');
  assert.equal(trie.resolve([5, 6, 7]), 'top_up');
  assert.equal(trie.allowed([5, 6, 99]).size, 0);
  assert.equal(trie.resolve([42]), undefined);
  assert.throws(() => new ChoiceTrie([], () => [1], []), /at least one/);
  assert.throws(() => new ChoiceTrie(['x'], () => [], []), /choices\[0\] "x" has no tokens/);
});

test('generation metrics on fixed strings: exact match after trimming; parseable calls, function names and arguments (key order ignored)', () => {
  const t = (reference: string, calls?: Array<{ name: string; arguments: Record<string, unknown> }>): GenerationTarget => ({ source: { path: 'e', line: 1 }, promptIds: [1], reference, ...(calls ? { referenceCalls: calls } : {}) });
  const call = { name: 'get_weather', arguments: { city: 'Paris', days: [1, 2] } };
  const targets = [t('card_arrival'), t('card_arrival'), t(' top_up '), t('', [call]), t('', [call]), t('', [call]), t('', [call])];
  const predictions = [
    '  card_arrival\n',
    'card arrival',
    'top_up',
    '<tool_call>\n{"name": "get_weather", "arguments": {"days": [1, 2], "city": "Paris"}}\n</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": [1, 2]}}</tool_call>',
    '<tool_call>{"name": "get_time", "arguments": {}}',
    'I cannot call tools.',
  ];
  const { metrics, exact } = scoreGenerations(targets, predictions, 1.5);
  assert.deepEqual(exact, [true, false, true, true, false, false, false]);
  assert.deepEqual(metrics, {
    generated: 7, exact_match: 3 / 7, tool_call_examples: 4, seconds: 1.5,
    parseable_call_rate: 3 / 4, function_name_accuracy: 2 / 4, arguments_accuracy: 1 / 4,
  });
  assert.ok(jsonEqual({ a: [1, { b: null }], c: 'x' }, { c: 'x', a: [1, { b: null }] }));
  assert.ok(!jsonEqual({ a: 1 }, { a: 1, b: undefined }));
  assert.ok(!jsonEqual([1, 2], [2, 1]));
  assert.ok(!jsonEqual({ a: '1' }, { a: 1 }));
  const recs = [
    parseSftRecord({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: ' b ' }] }, { path: 'r', line: 1 }),
    parseSftRecord({ prompt: 'p', completion: 'a' }, { path: 'r', line: 2 }),
    parseSftRecord({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }, { path: 'r', line: 3 }),
    parseSftRecord({ text: 'ignored' }, { path: 'r', line: 4 }),
  ];
  assert.deepEqual(referenceChoices(recs), ['a', 'b']);
});
