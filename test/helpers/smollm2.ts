// The real model the LLM tests run, SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by
// scripts/fetch-llm.sh), and its transformers fixture (test/fixtures/smollm2-generate, made by
// scripts/reference/smollm2_generate.py): 5 chat prompts, 32 greedy tokens each, and at every
// step the 20 largest logits and the logsumexp of each row.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DecoderEngine } from '../../src/llm/generate.js';
import { ROOT } from './tiny-model.js';

export const SMOLLM2_GGUF = join(ROOT, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
/** Why the real-model tests cannot run here, or false. */
export const smollm2Missing: string | false = existsSync(SMOLLM2_GGUF) ? false : `${SMOLLM2_GGUF} is missing: run bash scripts/fetch-llm.sh (setup does)`;

export const generateFixture = JSON.parse(readFileSync(join(ROOT, 'test/fixtures/smollm2-generate/expected.json'), 'utf8')) as {
  prompt_ids: number[][];
  pad_token_id: number;
  max_new_tokens: number;
  generated_ids: number[][];
  steps: Array<Array<{ ids: number[]; values: number[]; max: number; logsumexp: number }>>;
};

/** Prompts of different lengths as one left-padded batch (generation's layout). */
export function leftPadded(prompts: number[][], pad: number) {
  const T = Math.max(...prompts.map((p) => p.length));
  const input_ids = new Int32Array(prompts.length * T).fill(pad);
  const attention_mask = new Int32Array(prompts.length * T);
  prompts.forEach((p, i) => {
    input_ids.set(p, i * T + T - p.length);
    attention_mask.fill(1, i * T + T - p.length, (i + 1) * T);
  });
  return { input_ids, attention_mask, batchSize: prompts.length, seqLen: T };
}

/**
 * Runs the fixture's batched generation on `engine`, teacher-forced with transformers' tokens so
 * every step compares the same prefix. worst: the largest difference of the 20 largest logits and
 * the logsumexp, relative to the row's max; agree: the steps (of 5 x 32) whose argmax, end-of-
 * sequence ids left out as the fixture's generation suppressed them, is transformers' token.
 */
export async function againstTransformers(engine: DecoderEngine, vocabSize: number, eosTokenIds: readonly number[]): Promise<{ worst: number; agree: number; steps: number }> {
  const f = generateFixture;
  const V = vocabSize, B = f.prompt_ids.length;
  let { logits } = await engine.prefill(leftPadded(f.prompt_ids, f.pad_token_id), { maxNewTokens: f.max_new_tokens });
  let worst = 0, agree = 0;
  for (let s = 0; s < f.max_new_tokens; s++) {
    for (let b = 0; b < B; b++) {
      const ref = f.steps[s][b];
      const row = logits.subarray(b * V, (b + 1) * V);
      let max = -Infinity, best = -1;
      for (let i = 0; i < V; i++) {
        max = Math.max(max, row[i]);
        if (!eosTokenIds.includes(i) && (best < 0 || row[i] > row[best])) best = i;
      }
      let lse = 0;
      for (const x of row) lse += Math.exp(x - max);
      lse = max + Math.log(lse);
      const scale = Math.abs(ref.max);
      worst = Math.max(worst, Math.abs(lse - ref.logsumexp) / scale, ...ref.ids.map((id, k) => Math.abs(row[id] - ref.values[k]) / scale));
      agree += best === f.generated_ids[b][s] ? 1 : 0;
    }
    if (s + 1 < f.max_new_tokens) ({ logits } = await engine.decode(Int32Array.from(f.generated_ids.map((g) => g[s]))));
  }
  return { worst, agree, steps: f.max_new_tokens * B };
}
