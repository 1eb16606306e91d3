// Token choice against Hugging Face generate()'s own logits processors
// (test/fixtures/sampling, made by scripts/reference/sampling.py): the same
// surviving tokens with the same probabilities; plus seeding and errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sampler, applyRepetitionPenalty, resolveSampling, type SamplingOptions } from '../src/llm/sampling.js';

const fixture = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../test/fixtures/sampling/processors.json'), 'utf8')) as {
  cases: Array<{ logits: number[]; seen: number[]; options: SamplingOptions; ids: number[]; probs: number[] }>;
};

test('repetition penalty, temperature, top-k (ties kept), top-p and min-p leave the tokens and probabilities HF leaves', () => {
  for (const [i, c] of fixture.cases.entries()) {
    const { ids, probs } = new Sampler(c.options).distribution(Float32Array.from(c.logits), c.seen);
    assert.deepEqual(ids, c.ids, `case ${i} ${JSON.stringify(c.options)}: surviving ids`);
    for (let k = 0; k < probs.length; k++) assert.ok(Math.abs(probs[k] - c.probs[k]) < 1e-6, `case ${i}: p[${ids[k]}] ${probs[k]} vs ${c.probs[k]}`);
  }
});

test('draws follow the distribution, are reproducible with a seed and differ across seeds', () => {
  const c = fixture.cases[2];
  const draw = (seed: number, n: number) => {
    const s = new Sampler({ ...c.options, seed });
    return Array.from({ length: n }, () => s.next(Float32Array.from(c.logits), c.seen));
  };
  assert.deepEqual(draw(5, 50), draw(5, 50));
  assert.notDeepEqual(draw(5, 50), draw(6, 50));
  const n = 20000;
  const counts = new Map<number, number>();
  for (const id of draw(1, n)) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [k, id] of c.ids.entries()) {
    const p = c.probs[k];
    const sd = Math.sqrt((p * (1 - p)) / n);
    assert.ok(Math.abs((counts.get(id) ?? 0) / n - p) < 5 * sd + 1e-9, `token ${id}: frequency ${(counts.get(id) ?? 0) / n} vs p ${p}`);
  }
  for (const id of counts.keys()) assert.ok(c.ids.includes(id), `token ${id} is outside the nucleus but was drawn`);
});

test('greedy is the argmax after the repetition penalty; an allowed set constrains the choice', () => {
  const logits = Float32Array.from([1, 5, 3, -2]);
  assert.equal(new Sampler().next(Float32Array.from(logits)), 1);
  // HF: a positive logit is divided by the penalty, a negative one multiplied.
  const penalised = Float32Array.from(logits);
  applyRepetitionPenalty(penalised, [1, 3, 1], 2);
  assert.deepEqual([...penalised], [1, 2.5, 3, -4]);
  assert.equal(new Sampler({ repetitionPenalty: 2 }).next(Float32Array.from(logits), [1]), 2);
  assert.equal(new Sampler().next(Float32Array.from(logits), [], new Set([0, 3])), 0);
  assert.equal(new Sampler({ temperature: 1, seed: 3 }).next(Float32Array.from(logits), [], new Set([3])), 3);
});

test('bad options name the option and the range', () => {
  assert.throws(() => resolveSampling({ temperature: -1 }), /temperature must be a finite number >= 0, got -1/);
  assert.throws(() => resolveSampling({ topP: 0 }), /topP must be in \(0, 1\], got 0/);
  assert.throws(() => resolveSampling({ topK: 1.5 }), /topK must be an integer >= 0/);
  assert.throws(() => resolveSampling({ minP: 2 }), /minP must be in \[0, 1\]/);
  assert.throws(() => resolveSampling({ repetitionPenalty: 0 }), /repetitionPenalty must be a finite number > 0/);
});
