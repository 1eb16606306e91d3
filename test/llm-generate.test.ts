// Generation on the real model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized
// by nodetune's reader) against Hugging Face generate() on the same file
// dequantized by transformers (test/fixtures/smollm2-generate, made by
// scripts/reference/smollm2_generate.py): 5 chat prompts of different lengths
// in one left-padded batch, 32 greedy tokens each, and the logits at every step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCausalLM, type CausalLM } from '../src/llm/load.js';
import { generateIds } from '../src/llm/generate.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const gguf = join(root, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const fixture = JSON.parse(readFileSync(join(root, 'test/fixtures/smollm2-generate/expected.json'), 'utf8')) as {
  prompt_ids: number[][];
  pad_token_id: number;
  max_new_tokens: number;
  generated_ids: number[][];
  steps: Array<Array<{ ids: number[]; values: number[]; max: number; logsumexp: number }>>;
};
const missing = existsSync(gguf) ? false : `${gguf} is missing: run bash scripts/fetch-llm.sh (setup does)`;

let lm: CausalLM | undefined;
async function model(): Promise<CausalLM> {
  lm ??= await loadCausalLM(gguf, { threads: 2 });
  return lm;
}

function leftPadded(prompts: number[][], pad: number) {
  const T = Math.max(...prompts.map((p) => p.length));
  const input_ids = new Int32Array(prompts.length * T).fill(pad);
  const attention_mask = new Int32Array(prompts.length * T);
  prompts.forEach((p, i) => {
    input_ids.set(p, i * T + T - p.length);
    attention_mask.fill(1, i * T + T - p.length, (i + 1) * T);
  });
  return { input_ids, attention_mask, batchSize: prompts.length, seqLen: T };
}

test('the logits at every step of a batched, left-padded generation match transformers within 1e-4', { skip: missing }, async () => {
  const { engine, config } = await model();
  const V = config.vocab_size, B = fixture.prompt_ids.length;
  // Teacher-forced with HF's tokens, so each step's logits are compared on the same prefix.
  let { logits } = await engine.prefill(leftPadded(fixture.prompt_ids, fixture.pad_token_id), { maxNewTokens: fixture.max_new_tokens });
  let worst = 0;
  for (let s = 0; s < fixture.max_new_tokens; s++) {
    for (let b = 0; b < B; b++) {
      const ref = fixture.steps[s][b];
      const row = logits.subarray(b * V, (b + 1) * V);
      let max = -Infinity;
      for (const x of row) max = Math.max(max, x);
      let lse = 0;
      for (const x of row) lse += Math.exp(x - max);
      lse = max + Math.log(lse);
      const scale = Math.abs(ref.max);
      worst = Math.max(worst, Math.abs(lse - ref.logsumexp) / scale, ...ref.ids.map((id, k) => Math.abs(row[id] - ref.values[k]) / scale));
    }
    if (s + 1 < fixture.max_new_tokens) ({ logits } = await engine.decode(Int32Array.from(fixture.generated_ids.map((g) => g[s]))));
  }
  assert.ok(worst < 1e-4, `largest difference of the 20 largest logits and the logsumexp, relative to the row's max: ${worst}`);
});

test('greedy generation gives the tokens transformers generate() gives (5 prompts x 32 tokens)', { skip: missing }, async () => {
  const { engine, config, tokenizer } = await model();
  const out: number[][] = fixture.prompt_ids.map(() => []);
  for await (const ev of generateIds(engine, config.vocab_size, fixture.prompt_ids, {
    maxNewTokens: fixture.max_new_tokens,
    minNewTokens: fixture.max_new_tokens, // as the fixture: eos suppressed, every row runs 32 steps
    eosTokenIds: tokenizer.eosTokenIds,
    padTokenId: fixture.pad_token_id,
  })) {
    out[ev.row].push(ev.token);
  }
  for (let b = 0; b < out.length; b++) assert.deepEqual(out[b], fixture.generated_ids[b], `prompt ${b}: ${tokenizer.decode(out[b])}`);
});

test('sampling with a seed is reproducible and stops at eos or max_new_tokens', { skip: missing }, async () => {
  const { engine, config, tokenizer } = await model();
  const run = async (seed: number) => {
    const rows: number[][] = [[], []];
    const finish: string[] = [];
    for await (const ev of generateIds(engine, config.vocab_size, fixture.prompt_ids.slice(0, 2), {
      maxNewTokens: 12, eosTokenIds: tokenizer.eosTokenIds, padTokenId: fixture.pad_token_id, temperature: 0.8, topP: 0.95, seed,
    })) {
      if (ev.token >= 0) rows[ev.row].push(ev.token);
      if (ev.finish) finish[ev.row] = ev.finish;
    }
    return { rows, finish };
  };
  const a = await run(1), b = await run(1), c = await run(2);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.rows, c.rows);
  for (const [i, r] of a.rows.entries()) {
    assert.ok(r.length >= 1 && r.length <= 12);
    assert.equal(a.finish[i], tokenizer.eosTokenIds.includes(r[r.length - 1]) ? 'stop' : 'length');
  }
});

test('decode past the cache, a wrong token count, too long a generation and right padding are Errors', { skip: missing }, async () => {
  const { engine } = await model();
  await engine.prefill(leftPadded([[1, 2, 3]], 0), { maxNewTokens: 1 });
  await engine.decode(Int32Array.from([5])); // the cache holds prompt + maxNewTokens columns
  await assert.rejects(engine.decode(Int32Array.from([5])), /the KV cache is full/);
  await assert.rejects(engine.decode(Int32Array.from([5, 6])), /got 2 tokens, expected one per prompt \(1\)/);
  await assert.rejects(engine.prefill(leftPadded([[1, 2, 3]], 0), { maxNewTokens: 9000 }), /exceeds max_position_embeddings=8192/);
  await assert.rejects(engine.prefill({ ...leftPadded([[1, 2], [3]], 0), attention_mask: Int32Array.from([1, 1, 1, 0]) }, { maxNewTokens: 2 }), /needs left padding/);
});

test.after(async () => {
  await lm?.engine.dispose();
});
