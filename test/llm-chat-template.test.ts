// A chat template from a file (--chat-template-file, chatTemplateFile): a base model without one
// can be chatted with, fine-tuned on conversations and served; the run folder keeps the template
// it was trained with, and loading the run uses it; a model without a usable template is named
// as the server's fault (500 and a warning at start), not the client's. On a tiny random Llama
// GGUF whose tokenizer (the small "gpt-2" fixture) has its chat template removed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LLM } from '../src/llm/llm.js';
import { loadSftModel } from '../src/tasks/causal-lm/model.js';
import { fineTuneCausalLM } from '../src/tasks/causal-lm/sft.js';
import { startLlmServer } from '../src/serve/llm-server.js';
import { writeTinyLlamaGguf } from './helpers/tiny-llama-gguf.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
// A plain template of the kind a base model is given (a turn per message, then the answer's header).
const TEMPLATE = "{% for m in messages %}### {{ m.role }}\n{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}### assistant\n{% endif %}";
let tmp = '';
let bare = '';
let templateFile = '';
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'nodetune-chat-template-'));
  bare = join(tmp, 'bare.gguf');
  await writeTinyLlamaGguf(bare, root, { chatTemplate: false });
  templateFile = join(tmp, 'plain.jinja');
  await writeFile(templateFile, TEMPLATE);
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const hi = [{ role: 'user' as const, content: 'hi' }];

test('a model without a chat template: chat names --chat-template-file; LLM.load({ chatTemplateFile }) renders with the file; a broken file is named at load', async () => {
  const without = await LLM.load(bare, { threads: 1 });
  try {
    assert.equal(without.tokenizer.chatTemplate, undefined);
    await assert.rejects(without.chat(hi, { maxNewTokens: 1 }), /no chat template .*give one with --chat-template-file/);
  } finally {
    await without.dispose();
  }
  const llm = await LLM.load(bare, { threads: 1, chatTemplateFile: templateFile });
  try {
    assert.equal(llm.tokenizer.chatTemplate, TEMPLATE);
    assert.equal(llm.tokenizer.applyChatTemplate(hi, { add_generation_prompt: true }), '### user\nhi\n### assistant\n');
    const reply = await llm.chat(hi, { maxNewTokens: 2 });
    assert.equal(reply.role, 'assistant');
  } finally {
    await llm.dispose();
  }
  const broken = join(tmp, 'broken.jinja');
  await writeFile(broken, '{% for m in messages %}{{ m.content }}{% endfor %');
  await assert.rejects(LLM.load(bare, { chatTemplateFile: broken }), new RegExp(`${broken.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: the chat template does not parse`));
  await assert.rejects(LLM.load(bare, { chatTemplateFile: join(tmp, 'none.jinja') }), /chat template file .*none\.jinja does not exist/);
  // An empty file, or one that renders nothing, is named at load, not as an empty prompt later.
  for (const [name, text] of [['empty.jinja', ''], ['nothing.jinja', '{% if false %}x{% endif %}']]) {
    await writeFile(join(tmp, name), text);
    await assert.rejects(LLM.load(bare, { chatTemplateFile: join(tmp, name) }), new RegExp(`chat template file .*${name.replace('.', '\\.')} renders the conversation \\[\\{ role: 'user', content: 'Hello' \\}\\] to "": expected the messages' text in it`));
  }
});

test('sft with chat_template_file on a base without one: the run folder keeps the template, and loading the run uses it', async () => {
  const train = join(tmp, 'train.jsonl');
  await writeFile(train, ['a', 'b', 'c', 'd'].map((x) => JSON.stringify({ messages: [{ role: 'user', content: `say ${x}` }, { role: 'assistant', content: x }] })).join('\n') + '\n');
  const out = join(tmp, 'run');
  await fineTuneCausalLM({ model: bare, train_file: train, output_dir: out, chat_template_file: templateFile, max_length: 128, max_steps: 1, per_device_train_batch_size: 2, lora_r: 2, lora_alpha: 4, threads: 1, report_samples: 0, logging_steps: 1 });
  const saved = JSON.parse(await readFile(join(out, 'tokenizer_config.json'), 'utf8'));
  assert.equal(saved.chat_template, TEMPLATE);
  for (const load of [() => LLM.load(out, { threads: 1 }), () => LLM.load(bare, { threads: 1, lora: out })]) {
    const run = await load();
    try {
      assert.equal(run.tokenizer.chatTemplate, TEMPLATE, 'the run brings its template to a base that has none');
    } finally {
      await run.dispose();
    }
  }
  const lm = await loadSftModel(out, { threads: 1 });
  assert.equal(lm.tokenizer.chatTemplate, TEMPLATE);
  await lm.engine.dispose();
  // Resuming with another template would render the data otherwise: refused, naming the flag.
  const other = join(tmp, 'other.jinja');
  await writeFile(other, TEMPLATE.replace(/###/g, '##'));
  await assert.rejects(
    fineTuneCausalLM({ model: bare, train_file: train, output_dir: out, chat_template_file: other, max_length: 128, max_steps: 2, per_device_train_batch_size: 2, lora_r: 2, lora_alpha: 4, threads: 1, report_samples: 0, resume_from_checkpoint: true }),
    /settings differ from the checkpoint[\s\S]*--chat-template-file \(or the model's own template\): checkpoint sha256:[0-9a-f]{16}, now sha256:[0-9a-f]{16}/,
  );
});

test('serve: a model that cannot render conversations is warned about at start, and chat requests get a 500 naming the fix', async () => {
  const llm = await LLM.load(bare, { threads: 1 });
  const lines: string[] = [];
  const server = await startLlmServer({ llm, port: 0, log: (l) => lines.push(l) });
  try {
    assert.match(lines.join('\n'), /^warning: POST \/v1\/chat\/completions will fail: .*no chat template/m);
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: hi, max_tokens: 1 }) });
    assert.equal(r.status, 500);
    const body = (await r.json()) as { error: { type: string; message: string } };
    assert.equal(body.error.type, 'server_error');
    assert.match(body.error.message, /this server's model cannot render conversations: .*Restart it with --chat-template-file, or send raw prompts to POST \/v1\/completions/);
    const raw = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'hi', max_tokens: 1 }) });
    assert.equal(raw.status, 200);
  } finally {
    await server.close();
    await llm.dispose();
  }
});
