/**
 * Chat templates (src/chat) against transformers' apply_chat_template.
 *
 * References (test/fixtures/llm-tokenizer/chat.json, made by scripts/reference/llm_tokenizer.py):
 * for SmolLM2-135M-Instruct's ChatML template (from its GGUF) and Qwen2.5-0.5B-Instruct's
 * template (tools, tool calls, tool results), the string apply_chat_template(..., tokenize=False)
 * renders, and the assistant spans transformers' {% generation %} tracking reports on a copy of
 * each template with the assistant text wrapped in {% generation %} (the copy renders the same
 * string). For SmolLM2 also input_ids and assistant_masks from apply_chat_template(...,
 * tokenize=True, return_assistant_tokens_mask=True). nodetune finds the spans on the untagged
 * templates by rendering prefixes of the conversation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  renderChatTemplate,
  renderChatWithAssistantSpans,
  resolveChatTemplate,
  validateChatMessages,
  type ChatMessage,
} from '../src/chat/index.js';
import { LlmTokenizer } from '../src/tokenizer/bpe.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'test/fixtures/llm-tokenizer');
const SMOLLM2 = join(ROOT, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const skipReal = existsSync(SMOLLM2) ? false : `${SMOLLM2} is absent: run bash scripts/fetch-llm.sh (scripts/setup.sh does)`;

interface ChatCase {
  template: string;
  name: string;
  messages: ChatMessage[];
  tools?: unknown[];
  add_generation_prompt: boolean;
  expected: string;
  /** Python code-point indices. */
  assistant_spans: [number, number][];
  input_ids?: number[];
  assistant_masks?: number[];
}
const chat = JSON.parse(readFileSync(join(FIX, 'chat.json'), 'utf8')) as {
  special_tokens: Record<string, string>;
  templates: Record<string, { source: string; template: string }>;
  cases: ChatCase[];
};

/** A Python (code point) index into s as a JavaScript (UTF-16) index. */
function utf16Index(s: string, codePoints: number): number {
  let i = 0;
  for (let n = 0; n < codePoints; n++) i += s.codePointAt(i)! > 0xffff ? 2 : 1;
  return i;
}

function context(c: ChatCase) {
  return { messages: c.messages, tools: c.tools, add_generation_prompt: c.add_generation_prompt, ...chat.special_tokens };
}

for (const c of chat.cases) {
  test(`${c.template}: ${c.name}: the rendered string and the assistant spans equal transformers'`, () => {
    const tpl = chat.templates[c.template];
    assert.equal(renderChatTemplate(tpl.template, context(c), { source: tpl.source }), c.expected);
    const { text, spans } = renderChatWithAssistantSpans(tpl.template, context(c), { endOfTurn: '<|im_end|>' });
    assert.equal(text, c.expected);
    const want = c.assistant_spans.map(([a, b]) => [utf16Index(text, a), utf16Index(text, b)]);
    assert.deepEqual(spans.map((s) => [s.start, s.end]), want);
    const assistants = c.messages.flatMap((m, i) => (m.role === 'assistant' ? [i] : []));
    assert.deepEqual(spans.map((s) => s.messageIndex), assistants);
  });
}

test('SmolLM2 tokenizer: applyChatTemplate uses its GGUF template; encodeChat ids and assistant_masks equal transformers', { skip: skipReal }, async () => {
  const tok = await LlmTokenizer.fromGguf(SMOLLM2);
  assert.equal(tok.chatTemplate, chat.templates.smollm2.template);
  for (const c of chat.cases.filter((x) => x.template === 'smollm2')) {
    const opts = { add_generation_prompt: c.add_generation_prompt };
    assert.equal(tok.applyChatTemplate(c.messages, opts), c.expected, c.name);
    const enc = tok.encodeChat(c.messages, opts);
    assert.equal(enc.text, c.expected);
    assert.deepEqual(enc.input_ids, c.input_ids, c.name);
    assert.deepEqual(enc.assistant_masks, c.assistant_masks, c.name);
    for (const s of enc.spans) {
      // The span's last token is the end-of-turn token <|im_end|> (id 2): it is learned.
      assert.equal(enc.input_ids[s.tokenEnd - 1], 2, c.name);
      assert.equal(tok.decode(enc.input_ids.slice(s.tokenStart, s.tokenEnd)), enc.text.slice(s.start, s.end));
    }
  }
  // The Qwen2.5 template passed by string, with tools: the same text as rendering it directly.
  const q = chat.cases.find((x) => x.template === 'qwen2.5' && x.tools)!;
  assert.equal(tok.applyChatTemplate(q.messages, { chat_template: chat.templates['qwen2.5'].template, tools: q.tools, add_generation_prompt: q.add_generation_prompt }), q.expected);
});

test('messages are checked: unknown role, missing role or content, bad tool_calls name the message index', () => {
  const tpl = chat.templates.smollm2.template;
  const render = (messages: unknown) => renderChatTemplate(tpl, { messages: messages as ChatMessage[] });
  assert.throws(() => render([{ role: 'user', content: 'a' }, { role: 'robot', content: 'b' }]), /messages\[1\] has unknown role "robot" \(expected one of system, user, assistant, tool\)/);
  assert.throws(() => render([{ content: 'a' }]), /messages\[0\] has no role/);
  assert.throws(() => render([{ role: 'user', content: 'a' }, { role: 'user' }]), /messages\[1\] \(user\) has no content/);
  assert.throws(() => render([{ role: 'tool', content: null }]), /messages\[0\] \(tool\) has no content/);
  assert.throws(() => render([{ role: 'assistant', content: null }]), /messages\[0\] \(assistant\) has no content/);
  assert.throws(() => render([{ role: 'user', content: 5 }]), /messages\[0\] \(user\) content must be a string or a list/);
  assert.throws(() => render(['hi']), /messages\[0\] must be an object/);
  assert.throws(() => render('hi'), /messages must be an array/);
  assert.throws(() => render([{ role: 'assistant', tool_calls: [{ function: {} }] }]), /messages\[0\]\.tool_calls\[0\] must have a function name/);
  // An assistant turn that only calls tools needs no content; content parts are accepted.
  validateChatMessages([{ role: 'assistant', content: null, tool_calls: [{ name: 'f', arguments: {} }] }]);
  validateChatMessages([{ role: 'user', content: [{ type: 'text', text: 'hi' }] }]);
  validateChatMessages([{ role: 'ipython', content: 'x' }], ['ipython']);
});

test('a template that fails names its source and the Jinja error', () => {
  const messages = [{ role: 'user', content: 'hi' }];
  assert.throws(() => renderChatTemplate('{% for m in messages %}', { messages }, { source: 'x/tokenizer_config.json chat_template' }), (err: Error) => {
    assert.match(err.message, /^x\/tokenizer_config\.json chat_template: the chat template does not parse: /);
    return true;
  });
  assert.throws(
    () => renderChatTemplate("{{ raise_exception('Conversation roles must alternate') }}", { messages }, { source: 'GGUF tokenizer.chat_template' }),
    /^Error: GGUF tokenizer\.chat_template: the chat template failed to render: .*Conversation roles must alternate/,
  );
  assert.throws(() => renderChatTemplate('{{ messages[0].content.nope() }}', { messages }), /^Error: chat template: the chat template failed to render: /);
});

test('template variables as transformers passes them: tools/documents None when absent, extra keys, special tokens, tojson', () => {
  const messages = [{ role: 'user', content: 'hi' }];
  assert.equal(renderChatTemplate('{{ tools is none }} {{ documents is none }} {{ add_generation_prompt }}', { messages }), 'true true false');
  assert.equal(renderChatTemplate('{{ bos_token }}{{ enable_thinking }}', { messages, bos_token: '<s>', enable_thinking: false }), '<s>false');
  assert.equal(renderChatTemplate('{{ x | tojson }}', { messages, x: { a: [1, 2.5, null, true], 'ü': 'é\n"' } }), '{"a": [1, 2.5, null, true], "ü": "é\\n\\""}');
});

test('spans: a template that rewrites earlier turns when more follow is refused, naming the message', () => {
  const tpl = '{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m.content }}{% endfor %}';
  const messages = [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }];
  assert.throws(() => renderChatWithAssistantSpans(tpl, { messages }), /messages\[1\] renders differently when later messages follow/);
  // Without an end-of-turn token the span runs to the end of what the message rendered.
  const plain = '{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}';
  const r = renderChatWithAssistantSpans(plain, { messages: messages.slice(0, 2) });
  assert.equal(r.text, '<user>a\n<assistant>b\n');
  assert.deepEqual(r.spans, [{ messageIndex: 1, start: 19, end: 21 }]);
  assert.equal(r.text.slice(19, 21), 'b\n');
  // An assistant turn first: the empty conversation is rendered for its header.
  const first = renderChatWithAssistantSpans(plain, { messages: [{ role: 'assistant', content: 'x' }] });
  assert.deepEqual(first.spans, [{ messageIndex: 0, start: 11, end: 13 }]);
});

test('resolveChatTemplate: named templates as transformers picks them', () => {
  const set = { chatTemplate: 'D', chatTemplates: [{ name: 'default', template: 'D' }, { name: 'tool_use', template: 'T' }] };
  assert.equal(resolveChatTemplate(set).template, 'D');
  assert.equal(resolveChatTemplate(set, { tools: [{}] }).template, 'T');
  assert.equal(resolveChatTemplate(set, { template: 'tool_use' }).template, 'T');
  assert.equal(resolveChatTemplate(set, { template: '{{ 1 }}' }).template, '{{ 1 }}');
  assert.equal(resolveChatTemplate({ chatTemplate: 'D' }, { tools: [{}] }).template, 'D');
  assert.throws(() => resolveChatTemplate({}, { source: 'm/tokenizer.json' }), /m\/tokenizer\.json: no chat template/);
});
