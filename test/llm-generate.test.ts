// Generation on the real model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized
// by nodetune's reader) against Hugging Face generate() on the same file
// dequantized by transformers (test/fixtures/smollm2-generate, made by
// scripts/reference/smollm2_generate.py): 5 chat prompts of different lengths
// in one left-padded batch, 32 greedy tokens each, and the logits at every step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCausalLM, type CausalLM } from '../src/llm/load.js';
import { generateIds } from '../src/llm/generate.js';
import { againstTransformers, generateFixture as fixture, leftPadded, SMOLLM2_GGUF as gguf, smollm2Missing as missing } from './helpers/smollm2.js';

let lm: CausalLM | undefined;
async function model(): Promise<CausalLM> {
  lm ??= await loadCausalLM(gguf, { threads: 2 });
  return lm;
}

test('the logits at every step of a batched, left-padded generation match transformers within 1e-4', { skip: missing }, async () => {
  const { engine, config, tokenizer } = await model();
  const { worst, agree, steps } = await againstTransformers(engine, config.vocab_size, tokenizer.eosTokenIds);
  assert.ok(worst < 1e-4, `largest difference of the 20 largest logits and the logsumexp, relative to the row's max: ${worst}`);
  assert.equal(agree, steps);
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

test('the memory of a large prefill (activations, KV cache) is given back when a much smaller one follows', { skip: missing }, async () => {
  // A server holding its largest request's buffers for good grew by gigabytes and never shrank.
  const own = await loadCausalLM(gguf, { threads: 2, trainable: false });
  const rssMiB = () => process.memoryUsage().rss / 2 ** 20;
  // Prefills only: a decode step after a large prefill already gives the prefill's activations back.
  const run = (B: number, T: number) =>
    own.engine.prefill({ input_ids: new Int32Array(B * T).fill(100), attention_mask: new Int32Array(B * T).fill(1), batchSize: B, seqLen: T }, { maxNewTokens: 4 });
  try {
    await run(1, 8);
    const small = rssMiB();
    await run(8, 1024);
    const big = rssMiB();
    await run(1, 8);
    const after = rssMiB();
    // Measured: small 809, big 2061, after 828 MiB (before the fix: 2061 after).
    assert.ok(big - small > 800, `the large prefill grew RSS by ${big - small} MiB`);
    assert.ok(after - small < 0.15 * (big - small), `after a small prefill RSS is ${after} MiB (small ${small}, big ${big})`);
  } finally {
    await own.engine.dispose();
  }
});

test.after(async () => {
  await lm?.engine.dispose();
});
