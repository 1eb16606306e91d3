import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getScheduler, getWarmupSteps, SCHEDULER_TYPES } from '../src/train/schedule.js';

// Learning rates below were computed once with transformers 5.24 (PyTorch 2.x, CPU): for each
// schedule, get_scheduler(name, SGD(lr=1e-3), num_warmup_steps, num_training_steps), then
// reading scheduler.get_last_lr()[0] before each optimizer.step(); scheduler.step().
const HF = {
  linear: { total: 10, warmup: 3, lrs: [0.0, 0.0003333333333333333, 0.0006666666666666666, 0.001, 0.0008571428571428571, 0.0007142857142857143, 0.0005714285714285714, 0.00042857142857142855, 0.0002857142857142857, 0.00014285714285714284, 0.0, 0.0] },
  linear_no_warmup: { total: 4, warmup: 0, lrs: [0.001, 0.00075, 0.0005, 0.00025, 0.0] },
  cosine: { total: 12, warmup: 2, lrs: [0.0, 0.0005, 0.001, 0.0009755282581475768, 0.0009045084971874737, 0.0007938926261462366, 0.0006545084971874737, 0.0005, 0.00034549150281252633, 0.00020610737385376348, 9.549150281252633e-05, 2.4471741852423235e-05, 0.0] },
  constant: { total: 5, warmup: 0, lrs: [0.001, 0.001, 0.001, 0.001, 0.001] },
  constant_with_warmup: { total: 8, warmup: 3, lrs: [0.0, 0.0003333333333333333, 0.0006666666666666666, 0.001, 0.001, 0.001] },
  inverse_sqrt: { total: 10, warmup: 4, lrs: [0.0, 0.00025, 0.0005, 0.00075, 0.001, 0.0008944271909999159, 0.0008164965809277262, 0.0007559289460184544, 0.0007071067811865475, 0.0006666666666666666] },
  inverse_sqrt_no_warmup: { total: 10, warmup: 0, lrs: [0.001, 0.0009999500037496877, 0.0009999000149975006, 0.0009998500337415647] },
} as const;

for (const [key, c] of Object.entries(HF)) {
  test(`${key} matches transformers get_scheduler`, () => {
    const name = key.replace(/_no_warmup$/, '') as (typeof SCHEDULER_TYPES)[number];
    const s = getScheduler({ name, learningRate: 1e-3, numTrainingSteps: c.total, warmupSteps: c.warmup });
    c.lrs.forEach((lr, step) => assert.ok(Math.abs(s.lrAt(step) - lr) <= 1e-15, `step ${step}: ${s.lrAt(step)} vs ${lr}`));
  });
}

test("warmup from a ratio: ceil(ratio × total), as TrainingArguments.get_warmup_steps", () => {
  // get_warmup_steps printed 2 for (0.1, 12), 57 for (0.06, 938), 5 for (5, 938).
  assert.equal(getWarmupSteps(12, 0.1), 2);
  assert.equal(getWarmupSteps(938, 0.06), 57);
  assert.equal(getWarmupSteps(938, 5), 5);
  assert.equal(getWarmupSteps(938, 0, 0.06), 57);
  const s = getScheduler({ name: 'cosine', learningRate: 1e-3, numTrainingSteps: 12, warmupRatio: 0.1 });
  assert.equal(s.warmupSteps, 2);
  assert.equal(s.lrAt(3), HF.cosine.lrs[3]);
  assert.equal(getScheduler({ learningRate: 1, numTrainingSteps: 10 }).name, 'linear');
});

test('inverse_time: lr_0 / (1 + decay_rate × steps after warmup)', () => {
  const s = getScheduler({ name: 'inverse_time', learningRate: 0.1, numTrainingSteps: 100, warmupSteps: 2, decayRate: 0.5 });
  assert.deepEqual([0, 1, 2, 3, 6].map((t) => s.lrAt(t)), [0, 0.05, 0.1, 0.1 / 1.5, 0.1 / 3]);
  assert.throws(() => getScheduler({ name: 'inverse_time', learningRate: 0.1, numTrainingSteps: 10 }), /inverse_time: decay_rate undefined/);
});

test('bad options throw naming the HF argument', () => {
  assert.throws(() => getScheduler({ name: 'cosine_with_restarts' as never, learningRate: 1, numTrainingSteps: 5 }), /lr_scheduler_type "cosine_with_restarts"; expected one of linear, cosine/);
  assert.equal(getScheduler({ learningRate: 0, numTrainingSteps: 5 }).lrAt(3), 0);
  assert.throws(() => getScheduler({ learningRate: -1, numTrainingSteps: 5 }), /learning_rate -1; expected a finite number >= 0/);
  assert.throws(() => getScheduler({ learningRate: 1, numTrainingSteps: 2.5 }), /num_training_steps 2\.5/);
  assert.throws(() => getScheduler({ learningRate: 1, numTrainingSteps: 5, warmupSteps: -1 }), /warmup_steps -1/);
  assert.throws(() => getScheduler({ learningRate: 1, numTrainingSteps: 5 }).lrAt(-1), /lrAt: step -1/);
});
