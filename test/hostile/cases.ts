// The hostile caller's moves, one per case, each run in its own process by
// test/hostile.test.ts: `node dist/test/hostile/cases.js <case>` prints one
// line "HOSTILE-RESULT <json>" and exits 0, or dies (a signal, an abort, a
// nonzero status) — which is what the test looks for. Without a case name
// (as `node --test dist/test/` runs every .js under test/) it does nothing.
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { BERT_DEFAULTS, parameterShapes, type BertConfig } from '../../src/config.js';
import { Engine, loadAddon, type Batch } from '../../src/engine.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { MINILM_DIR } from '../helpers/tiny-model.js';

const SELF = fileURLToPath(import.meta.url);

/** A small BERT: one thread runs a step of it in well under a millisecond. */
export const TINY = {
  vocab_size: 64,
  hidden_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  intermediate_size: 32,
  max_position_embeddings: 64,
  type_vocab_size: 2,
  num_labels: 3,
  layer_norm_eps: 1e-12,
  hidden_dropout_prob: 0,
  attention_probs_dropout_prob: 0,
  classifier_dropout: 0,
};

/** Big enough that one trainStep of BIG_BATCH takes tens of milliseconds on one thread. */
const BIG = { ...TINY, vocab_size: 512, hidden_size: 128, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 512, max_position_embeddings: 128 };

/** The addon's Engine object as a caller reaching past the TypeScript class sees it. */
type Raw = any;

function rawEngine(config: Record<string, unknown> = TINY, options: Record<string, unknown> = {}): Raw {
  const e = new (loadAddon().Engine)(config as unknown as BertConfig, { threads: 1, seed: 1, ...options });
  fillWeights(e);
  return e;
}

/** Deterministic weights N-ish(0, 0.1), LayerNorm weights 1: the zero-filled defaults give constant logits. */
function fillWeights(e: { parameterNames(): string[]; parameterShape(n: string): number[]; setWeight(n: string, d: Float32Array): void }): void {
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * 0.2;
  for (const name of e.parameterNames()) {
    const n = e.parameterShape(name).reduce((a, b) => a * b, 1);
    const d = new Float32Array(n);
    if (name.endsWith('LayerNorm.weight')) d.fill(1);
    else for (let i = 0; i < n; i++) d[i] = rnd();
    e.setWeight(name, d);
  }
}

function batchOf(B: number, T: number, vocab = TINY.vocab_size, seed = 1): Required<Batch> {
  const input_ids = new Int32Array(B * T);
  for (let i = 0; i < input_ids.length; i++) input_ids[i] = (i * 7 + seed * 13) % vocab;
  return {
    input_ids,
    attention_mask: new Int32Array(B * T).fill(1),
    token_type_ids: new Int32Array(B * T),
    labels: Int32Array.from({ length: B }, (_, i) => (i + seed) % TINY.num_labels),
    batchSize: B,
    seqLen: T,
    rowOffset: 0,
  };
}

/** The message of what `f` throws or rejects with; fails when it succeeds. */
async function errorOf(f: () => unknown): Promise<string> {
  try {
    await f();
  } catch (err) {
    assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
    return err.message;
  }
  assert.fail('expected an Error, but the call succeeded');
}

/** Same as errorOf, but also fine when the call succeeds (returns null). */
async function outcomeOf(f: () => unknown): Promise<string | null> {
  try {
    await f();
    return null;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- 1. getters that dispose the engine while its arguments are read ----------

/** A batch whose attention_mask getter runs `hook` (once) before handing back the mask. */
function trappedBatch(B: number, T: number, hook: () => void, key: keyof Batch = 'attention_mask'): Batch {
  const b = batchOf(B, T) as unknown as Record<string, unknown>;
  const value = b[key];
  let fired = false;
  Object.defineProperty(b, key, {
    enumerable: true,
    get() {
      if (!fired) {
        fired = true;
        hook();
      }
      return value;
    },
  });
  return b as unknown as Batch;
}

/** An object whose `key` getter disposes `e` and then returns `value`. */
function disposingGetter(e: Raw, key: string, value: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return Object.defineProperty({ ...extra }, key, {
    enumerable: true,
    get() {
      e.dispose();
      return value;
    },
  });
}

/** A tiny Llama (GQA, tied): the causal-LM surface of the same Engine class. */
const TINY_LM = {
  model_type: 'llama', vocab_size: 64, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
  num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, max_position_embeddings: 64, tie_word_embeddings: true,
};

function lmBatch(B: number, T: number): Required<Batch> {
  const b = batchOf(B, T);
  return { ...b, labels: new Int32Array(b.input_ids) };
}

const CASES: Record<string, () => Promise<unknown>> = {
  async 'lm-dispose-in-prefill-batch-getter'() {
    const e = rawEngine(TINY_LM);
    const b = lmBatch(2, 8) as unknown as Record<string, unknown>;
    const mask = b.attention_mask;
    Object.defineProperty(b, 'attention_mask', { enumerable: true, get() { e.dispose(); return mask; } });
    return { message: await errorOf(() => e.prefill(b, { maxNewTokens: 4 })) };
  },

  async 'lm-dispose-in-prefill-options-getter'() {
    const e = rawEngine(TINY_LM);
    return { message: await errorOf(() => e.prefill(lmBatch(2, 8), disposingGetter(e, 'maxNewTokens', 4))) };
  },

  async 'lm-decode-reentry-and-detached'() {
    const e = rawEngine(TINY_LM);
    await e.prefill(lmBatch(2, 8), { maxNewTokens: 4 });
    // Two decodes without awaiting: the second is refused as busy, the first completes.
    const first = e.decode(Int32Array.from([1, 2]));
    const busy = await errorOf(() => e.decode(Int32Array.from([1, 2])));
    const { logits } = await first;
    const buf = new ArrayBuffer(8);
    const detachedTokens = new Int32Array(buf);
    structuredClone(buf, { transfer: [buf] });
    const detachedMsg = await errorOf(() => e.decode(detachedTokens));
    const wrongCount = await errorOf(() => e.decode(Int32Array.from([1])));
    const outOfRange = await errorOf(() => e.decode(Int32Array.from([1, 99])));
    return { busy, logits: logits.length, detachedMsg, wrongCount, outOfRange };
  },

  async 'lm-dispose-in-lora-getter'() {
    // A LoRA option getter that disposes another engine while a new one is configured.
    const e = rawEngine(TINY_LM);
    const lora = Object.defineProperty({ r: 2, lora_alpha: 4, target_modules: ['q_proj'] }, 'lora_dropout', {
      enumerable: true,
      get() {
        e.dispose();
        return 0;
      },
    });
    const built = new (loadAddon().Engine)(TINY_LM as never, { threads: 1, lora });
    const adapters = built.parameterNames().filter((n: string) => n.includes('lora_')).length;
    const after = await errorOf(() => e.forward(lmBatch(1, 4)));
    const huge = await errorOf(() => new (loadAddon().Engine)({ ...TINY_LM, num_hidden_layers: 1000000 } as never, { threads: 1 }));
    const badTarget = await errorOf(() => new (loadAddon().Engine)(TINY_LM as never, { lora: { r: 2, target_modules: ['lm_head'] } }));
    return { adapters, after, huge, badTarget };
  },

  async 'dispose-in-forward-batch-getter'() {
    const e = rawEngine();
    const message = await errorOf(() => e.forward(trappedBatch(4, 16, () => e.dispose())));
    const after = await errorOf(() => e.forward(batchOf(1, 4)));
    return { message, after };
  },

  async 'dispose-in-trainStep-batch-getter'() {
    const e = rawEngine();
    return { message: await errorOf(() => e.trainStep(trappedBatch(4, 16, () => e.dispose(), 'labels'), { learningRate: 1e-3 })) };
  },

  async 'dispose-in-trainStep-learningRate-getter'() {
    const e = rawEngine();
    return { message: await errorOf(() => e.trainStep(batchOf(4, 16), disposingGetter(e, 'learningRate', 1e-3))) };
  },

  async 'dispose-in-accumulate-lossScale-getter'() {
    const e = rawEngine();
    return { message: await errorOf(() => e.accumulate(batchOf(4, 16), disposingGetter(e, 'lossScale', 0.5))) };
  },

  async 'dispose-in-step-learningRate-getter'() {
    const e = rawEngine();
    await e.accumulate(batchOf(2, 8), { lossScale: 1 });
    return { message: await errorOf(() => e.step(disposingGetter(e, 'learningRate', 1e-3))) };
  },

  async 'dispose-in-setOptimizerState-getter'() {
    const e = rawEngine();
    const n = e.parameterShape('classifier.bias')[0];
    const state = disposingGetter(e, 'exp_avg', new Float32Array(n), { exp_avg_sq: new Float32Array(n) });
    return { message: await errorOf(() => e.setOptimizerState('classifier.bias', state)) };
  },

  async 'dispose-in-setCounters-getter-then-new-engine'() {
    let fresh: Raw;
    const e = rawEngine();
    const counters = Object.defineProperty({ microStep: 9 }, 'optimizerStep', {
      enumerable: true,
      get() {
        e.dispose();
        fresh = rawEngine(); // likely to reuse the freed memory
        return 1234;
      },
    });
    const message = await errorOf(() => e.setCounters(counters));
    return { message, freshCounters: fresh.getCounters() };
  },

  async 'proxy-batch-disposes'() {
    const e = rawEngine();
    const target = batchOf(4, 16);
    let reads = 0;
    const proxy = new Proxy(target, {
      get(t, key, recv) {
        if (++reads === 2) e.dispose();
        return Reflect.get(t, key, recv);
      },
    });
    return { message: await errorOf(() => e.forward(proxy)) };
  },

  async 'proxy-options-dispose-in-has-trap'() {
    // Proxies can run code from traps other than get; the engine is taken only after all of them.
    const e = rawEngine();
    const opts = new Proxy({ learningRate: 1e-3 }, {
      getOwnPropertyDescriptor(t, k) {
        e.dispose();
        return Reflect.getOwnPropertyDescriptor(t, k);
      },
      get(t, k, r) {
        e.dispose();
        return Reflect.get(t, k, r);
      },
    });
    return { message: await errorOf(() => e.trainStep(batchOf(2, 8), opts)) };
  },

  async 'throwing-getter-leaves-engine-usable'() {
    const e = rawEngine();
    const bad = Object.defineProperty(batchOf(2, 8), 'input_ids', { get: () => { throw new Error('boom from a getter'); } });
    const message = await errorOf(() => e.forward(bad));
    const { logits } = await e.forward(batchOf(2, 8));
    const lr = await errorOf(() => e.trainStep(batchOf(2, 8), { get learningRate(): number { throw new Error('boom from learningRate'); } }));
    const { loss } = await e.trainStep(batchOf(2, 8), { learningRate: 1e-3 });
    return { message, lr, logitsLength: logits.length, lossFinite: Number.isFinite(loss) };
  },

  async 'valueOf-is-never-called'() {
    const e = rawEngine();
    let called = 0;
    const sneaky = { valueOf() { called++; e.dispose(); return 2; }, [Symbol.toPrimitive]() { called++; e.dispose(); return 2; } };
    const messages = [
      await errorOf(() => e.forward({ ...batchOf(2, 8), batchSize: sneaky })),
      await errorOf(() => e.step({ learningRate: sneaky })),
      await errorOf(() => e.accumulate(batchOf(2, 8), { lossScale: sneaky })),
      await errorOf(() => e.setCounters({ optimizerStep: sneaky, microStep: 0 })),
    ];
    const { logits } = await e.forward(batchOf(2, 8));
    return { messages, called, logitsLength: logits.length };
  },

  async 'prototype-setters-dispose-while-results-are-built'() {
    // Results are plain objects: setting a key walks the prototype chain, where
    // a setter can run code. By then the engine must no longer be in use.
    const e = rawEngine();
    const e2 = rawEngine();
    const keys = ['logits', 'loss', 'gradNorm', 'exp_avg', 'exp_avg_sq', 'optimizerStep', 'microStep'];
    const saved = keys.map((k) => [k, Object.getOwnPropertyDescriptor(Object.prototype, k)] as const);
    let fired = 0;
    let target: Raw = e;
    for (const k of keys) {
      Object.defineProperty(Object.prototype, k, {
        configurable: true,
        set() {
          fired++;
          try {
            target.dispose();
          } catch {
            /* busy: fine */
          }
        },
      });
    }
    Object.defineProperty(Array.prototype, '0', { configurable: true, set() { fired++; try { target.dispose(); } catch { /* fine */ } } });
    const outcomes: Array<string | null> = [];
    try {
      outcomes.push(await outcomeOf(() => e.getOptimizerState('classifier.bias')));
      outcomes.push(await outcomeOf(() => e.getCounters()));
      outcomes.push(await outcomeOf(() => e.parameterNames()));
      target = e2;
      const run = async (f: () => Promise<unknown>) => outcomes.push(await outcomeOf(f));
      await run(() => e2.forward(batchOf(2, 8)));
      await run(() => e2.trainStep(batchOf(2, 8), { learningRate: 1e-3 }));
      await run(() => e2.getOptimizerState('classifier.bias'));
      await run(() => e2.getCounters());
      await run(() => e2.parameterShape('classifier.weight'));
    } finally {
      for (const [k, d] of saved) {
        if (d) Object.defineProperty(Object.prototype, k, d);
        else delete (Object.prototype as Record<string, unknown>)[k];
      }
      delete (Array.prototype as unknown as Record<string, unknown>)['0'];
    }
    return { fired, outcomes };
  },

  // ---- 2. re-entry: one engine, one worker --------------------------------------

  async 'reenter-forward-from-batch-getter'() {
    const e = rawEngine();
    const other = batchOf(3, 8, TINY.vocab_size, 5);
    let inner: Promise<{ logits: Float32Array }> | undefined;
    const outer = await errorOf(() => e.forward(trappedBatch(4, 16, () => (inner = e.forward(other)))));
    assert.ok(inner, 'the getter ran');
    const got = await inner;
    const ref = await rawEngine().forward(other);
    const again = await e.forward(other); // busy was cleared by the worker that set it
    return { outer, same: Array.from(got.logits).join() === Array.from(ref.logits).join(), again: Array.from(again.logits).join() === Array.from(ref.logits).join() };
  },

  async 'reenter-trainStep-from-learningRate-getter'() {
    const e = rawEngine();
    let inner: Promise<{ loss: number }> | undefined;
    const opts = { get learningRate() { inner ??= e.trainStep(batchOf(2, 8), { learningRate: 1e-3 }); return 1e-3; } };
    const outer = await errorOf(() => e.trainStep(batchOf(4, 16), opts));
    const { loss } = await inner!;
    const counters = e.getCounters();
    return { outer, innerLossFinite: Number.isFinite(loss), counters };
  },

  async 'reenter-many-forwards-while-running'() {
    // A long forward is running; every other call must be refused, and the
    // running one must still give the sequential answer.
    const e = rawEngine(BIG);
    const b = batchOf(16, 64, BIG.vocab_size);
    const ref = await rawEngine(BIG).forward(b);
    const running = e.forward(b);
    const refusals = [
      await errorOf(() => e.forward(batchOf(1, 4))),
      await errorOf(() => e.trainStep(batchOf(1, 4), { learningRate: 1 })),
      await errorOf(() => e.step({ learningRate: 1 })),
      await errorOf(() => e.accumulate(batchOf(1, 4), { lossScale: 1 })),
      await errorOf(() => e.dispose()),
      await errorOf(() => e.setWeight('classifier.bias', new Float32Array(3))),
      await errorOf(() => e.setCounters({ optimizerStep: 1, microStep: 1 })),
    ];
    const got = await running;
    const same = Array.from(got.logits).join() === Array.from(ref.logits).join();
    e.dispose();
    return { refusals, same };
  },

  // ---- 3. worker threads that die with a step in flight ----------------------------

  async 'worker-exit-mid-trainStep'() {
    const delays = [0, 0, 1, 2, 5, 10, 20, 40, 80];
    const codes: number[] = [];
    for (const delay of delays) codes.push(await runWorker({ mode: 'exit', delay, api: 'ts' }));
    for (const delay of [0, 3, 30]) codes.push(await runWorker({ mode: 'exit', delay, api: 'raw' }));
    const { loss } = await new Engine({ config: { ...BERT_DEFAULTS, ...TINY } as BertConfig, threads: 1 }).trainStep(batchOf(2, 8), { learningRate: 1e-3 });
    return { codes, mainStillTrains: Number.isFinite(loss) };
  },

  async 'worker-terminate-mid-trainStep'() {
    const codes: number[] = [];
    for (const delay of [0, 0, 1, 3, 10, 30, 60]) codes.push(await runWorker({ mode: 'terminate', delay, api: 'ts' }));
    for (const delay of [0, 5]) codes.push(await runWorker({ mode: 'terminate', delay, api: 'raw' }));
    return { codes };
  },

  async 'worker-exit-with-engines-collected'() {
    // The worker drops its engines and collects them while their steps run, then
    // exits (V8 flags are per process: --expose-gc on this one gives workers gc()).
    assert.ok((globalThis as { gc?: () => void }).gc, 'run with --expose-gc');
    const codes: number[] = [];
    for (const delay of [0, 5, 20]) codes.push(await runWorker({ mode: 'exit-gc', delay, api: 'raw' }));
    return { codes };
  },

  // ---- 4. engines collected with work pending -------------------------------------

  async 'gc-with-work-pending'() {
    const gc = (globalThis as { gc?: () => void }).gc;
    assert.ok(gc, 'run with --expose-gc');
    const b = batchOf(8, 32, BIG.vocab_size);
    const ref = await rawEngine(BIG).forward(b);
    const pending: Array<Promise<{ logits: Float32Array }>> = [];
    for (let i = 0; i < 4; i++) {
      let e: Raw = rawEngine(BIG);
      pending.push(e.forward(b));
      e = null;
    }
    let ts: Engine | null = new Engine({ config: { ...BERT_DEFAULTS, ...TINY } as BertConfig, threads: 1 });
    const tsStep = ts.trainStep(batchOf(2, 8), { learningRate: 1e-3 });
    ts = null;
    for (let i = 0; i < 10; i++) {
      gc();
      await new Promise((r) => setImmediate(r));
    }
    const results = await Promise.all(pending);
    const { loss } = await tsStep;
    for (let i = 0; i < 5; i++) {
      gc();
      await new Promise((r) => setImmediate(r));
    }
    return { allSame: results.every((r) => Array.from(r.logits).join() === Array.from(ref.logits).join()), tsLossFinite: Number.isFinite(loss) };
  },

  async 'exit-main-with-work-pending'() {
    const e = rawEngine(BIG);
    void e.trainStep(batchOf(16, 64, BIG.vocab_size), { learningRate: 1e-3 });
    setTimeout(() => {
      console.log(`HOSTILE-RESULT ${JSON.stringify({ exited: true })}`);
      process.exit(0);
    }, 5);
    await sleep(60_000);
    return { exited: false };
  },

  // ---- 5. huge and malformed configs -------------------------------------------------

  async 'native-config-bounds'() {
    const make = (over: Record<string, unknown>, opts: Record<string, unknown> = {}) => errorOf(() => new (loadAddon().Engine)({ ...TINY, ...over } as unknown as BertConfig, { threads: 1, ...opts }));
    return {
      numLabels: await make({ num_labels: 1e8 }),
      layers: await make({ num_hidden_layers: 1e6 }),
      hidden: await make({ hidden_size: 1e12 }),
      vocab: await make({ vocab_size: 2 ** 31 }),
      positions: await make({ max_position_embeddings: 1e9 }),
      negative: await make({ intermediate_size: -4 }),
      fraction: await make({ num_labels: 2.5 }),
      device: await make({}, { device: 123 }),
      precision: await make({}, { precision: 16 }),
      emptyWeights: await make({}, { class_weights: new Float32Array(0) }),
      detachedWeights: await make({}, { class_weights: detached(new Float32Array(TINY.num_labels)) }),
      wrongWeights: await make({}, { class_weights: [1, 2, 3] }),
      seed: await make({}, { seed: 'forty-two' }),
    };
  },

  async 'model-folder-huge-configs'() {
    const { loadModelFolder } = await import('../../src/io/model-folder.js');
    const { Classifier } = await import('../../src/classifier.js');
    const dir = await mkdtemp(join(tmpdir(), 'nodetune-hostile-'));
    try {
      const base = { model_type: 'bert', ...TINY } as Record<string, unknown>;
      delete base.num_labels;
      const folder = async (name: string, over: Record<string, unknown>) => {
        const d = join(dir, name);
        await mkdir(d, { recursive: true });
        await writeFile(join(d, 'config.json'), JSON.stringify({ ...base, ...over }));
        return d;
      };
      const out: Record<string, string> = {};
      const labels = await folder('labels', { num_labels: 1e8 });
      out.loadLabels = await errorOf(() => loadModelFolder(labels));
      out.classifierLabels = await errorOf(() => Classifier.load(labels, { backend: 'native' }));
      out.classifierLabelsOnnx = await errorOf(() => Classifier.load(labels));
      out.optionLabels = await errorOf(() => loadModelFolder(labels, { num_labels: 1e8 }));
      out.layers = await errorOf(async () => loadModelFolder(await folder('layers', { num_hidden_layers: 1e6 })));
      out.hidden = await errorOf(async () => loadModelFolder(await folder('hidden', { hidden_size: 1e12, num_attention_heads: 1 })));
      out.negativeLabels = await errorOf(async () => loadModelFolder(await folder('neg', { num_labels: -3 })));
      out.fractionLabels = await errorOf(async () => loadModelFolder(await folder('frac', { num_labels: 2.5 })));
      out.stringLabels = await errorOf(async () => loadModelFolder(await folder('str', { num_labels: '7' })));
      out.positions = await errorOf(async () => loadModelFolder(await folder('pos', { max_position_embeddings: 1e9 })));
      out.sparseId2label = await errorOf(async () => loadModelFolder(await folder('sparse', { id2label: { '0': 'a', '99999999': 'b' } })));
      // A valid config with broken weights files.
      const broken = await folder('broken', { num_labels: 2 });
      await writeFile(join(broken, 'model.safetensors'), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x7b]));
      out.hugeHeader = await errorOf(() => loadModelFolder(broken));
      const header = Buffer.from(JSON.stringify({ 'bert.pooler.dense.bias': { dtype: 'F32', shape: [1e15], data_offsets: [0, 4e15] } }));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(header.length));
      await writeFile(join(broken, 'model.safetensors'), Buffer.concat([len, header]));
      out.hugeTensor = await errorOf(() => loadModelFolder(broken));
      return out;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },

  // ---- 6. values written into optimizer state, counters -------------------------------

  async 'optimizer-state-non-finite'() {
    const e = rawEngine();
    const n = e.parameterShape('classifier.weight').reduce((a: number, b: number) => a * b, 1);
    const ok = () => new Float32Array(n).fill(0.01);
    const withAt = (i: number, v: number) => { const a = ok(); a[i] = v; return a; };
    const messages = {
      nanAvg: await errorOf(() => e.setOptimizerState('classifier.weight', { exp_avg: withAt(3, NaN), exp_avg_sq: ok() })),
      infAvg: await errorOf(() => e.setOptimizerState('classifier.weight', { exp_avg: withAt(5, -Infinity), exp_avg_sq: ok() })),
      negSq: await errorOf(() => e.setOptimizerState('classifier.weight', { exp_avg: ok(), exp_avg_sq: withAt(7, -1e-3) })),
      nanSq: await errorOf(() => e.setOptimizerState('classifier.weight', { exp_avg: ok(), exp_avg_sq: withAt(0, NaN) })),
      infSq: await errorOf(() => e.setOptimizerState('classifier.weight', { exp_avg: ok(), exp_avg_sq: withAt(1, Infinity) })),
      detached: await errorOf(() => e.setOptimizerState('classifier.weight', { exp_avg: detached(ok()), exp_avg_sq: ok() })),
    };
    // A refused state leaves the moments as they were (zeros: the first exp_avg was not half-written).
    const st = e.getOptimizerState('classifier.weight');
    const untouched = st.exp_avg.every((v: number) => v === 0) && st.exp_avg_sq.every((v: number) => v === 0);
    await e.trainStep(batchOf(2, 8), { learningRate: 1e-3 });
    const w = e.getWeight('classifier.weight');
    return { messages, untouched, weightsFinite: w.every((v: number) => Number.isFinite(v)) };
  },

  // ---- 7. activation arena sized by B × T ------------------------------------------

  async 'activation-arena-follows-the-shape'() {
    const cfg = { ...TINY, hidden_size: 64, num_attention_heads: 4, intermediate_size: 128, num_hidden_layers: 2, max_position_embeddings: 256 };
    const bytesAfter = async (shapes: Array<[number, number]>) => {
      const e = rawEngine(cfg);
      for (const [B, T] of shapes) await e.forward(batchOf(B, T));
      const bytes = e.activationBytes();
      e.dispose();
      return bytes;
    };
    return {
      wideThenLong: await bytesAfter([[256, 1], [1, 256]]),
      longOnly: await bytesAfter([[1, 256]]),
      wideOnly: await bytesAfter([[256, 1]]),
      maxByMax: await bytesAfter([[256, 256]]),
      bigThenSmall: await bytesAfter([[64, 64], [1, 8]]),
      smallOnly: await bytesAfter([[1, 8]]),
    };
  },

  // ---- 8. the TypeScript queue copies the batch at call time ----------------------

  async 'reused-batch-buffer'() {
    const config = { ...BERT_DEFAULTS, ...TINY } as BertConfig;
    const make = () => {
      const e = new Engine({ config, threads: 1, seed: 1 });
      fillWeights(e);
      return e;
    };
    const a = batchOf(4, 8, TINY.vocab_size, 1);
    const other = batchOf(4, 8, TINY.vocab_size, 2);
    const original = { ...a, input_ids: a.input_ids.slice(), labels: a.labels.slice() };
    // forward, then the caller refills its buffer in the same tick
    const e1 = make();
    const p = e1.forward(a);
    a.input_ids.set(other.input_ids);
    a.labels.set(other.labels);
    a.batchSize = 999;
    const got = await p;
    const ref = await make().forward(original);
    // a queued trainStep behind a forward: its batch and options are what they were at the call
    const e2 = make();
    const e3 = make();
    const buf = { ...original, input_ids: original.input_ids.slice(), labels: original.labels.slice() };
    const opts = { learningRate: 1e-2 };
    void e2.forward(batchOf(1, 4));
    const step = e2.trainStep(buf, opts);
    buf.input_ids.set(other.input_ids);
    buf.labels.set(other.labels);
    opts.learningRate = 100;
    const s2 = await step;
    const s3 = await e3.trainStep(original, { learningRate: 1e-2 });
    return {
      forwardSame: Array.from(got.logits).join() === Array.from(ref.logits).join(),
      stepSameLoss: s2.loss === s3.loss,
      stepSameWeights: Array.from(e2.getWeight('classifier.weight')).join() === Array.from(e3.getWeight('classifier.weight')).join(),
    };
  },

  // ---- 9. tokenization is bounded by max_length, not by the text -----------------------

  async 'tokenizer-10mb-text'() {
    const { BertTokenizer } = await import('../../src/tokenizer/index.js');
    const out: Record<string, unknown> = {};
    const text = makeLongText(10 * 1024 * 1024);
    for (const backend of ['tokenizers', 'wordpiece'] as const) {
      const tok = await BertTokenizer.fromFolder(MINILM_DIR, { backend, maxPositionEmbeddings: 512 });
      const seen = spyTokenizer(tok);
      const enc = tok.encode(text, null, { maxLength: 128 });
      const pair = tok.encode(text, text, { maxLength: 128 });
      const head = text.slice(0, 20_000);
      out[backend] = {
        longestInput: Math.max(...seen),
        length: enc.input_ids.length,
        sameAsHead: enc.input_ids.join() === tok.encode(head, null, { maxLength: 128 }).input_ids.join(),
        pairLength: pair.input_ids.length,
      };
    }
    return out;
  },

  async 'classifier-10mb-text'() {
    const { Classifier } = await import('../../src/classifier.js');
    const dir = await mkdtemp(join(tmpdir(), 'nodetune-hostile-'));
    try {
      const folder = await writeTrainedTinyFolder(dir);
      const clf = await Classifier.load(folder, { backend: 'native', threads: 1 });
      const seen = spyTokenizer((clf as unknown as { tokenizer: object }).tokenizer);
      const text = makeLongText(10 * 1024 * 1024);
      const [big, head] = await clf.classify([text, text.slice(0, 5000)], { topK: 2 });
      await clf.dispose();
      return { longestInput: Math.max(...seen), same: JSON.stringify(big) === JSON.stringify(head), maxLength: clf.maxLength };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};

/** A typed array whose buffer has been transferred away (detached). */
function detached<T extends Float32Array>(a: T): T {
  structuredClone(a.buffer, { transfer: [a.buffer] });
  return a;
}

/** Plain English-ish words, some punctuation and accents, `bytes` long. */
function makeLongText(bytes: number): string {
  const unit = 'Hello, my card was DECLINED at the café yesterday; why? Please refund the fee of $12.50 — thanks! ';
  return unit.repeat(Math.ceil(bytes / unit.length)).slice(0, bytes);
}

/** Records the length of every text the tokenizer's backend is handed (its private textToIds). */
function spyTokenizer(tok: object): number[] {
  const seen: number[] = [0];
  const t = tok as { textToIds: (s: string) => number[] };
  const inner = t.textToIds;
  t.textToIds = (s: string) => {
    seen.push(s.length);
    return inner(s);
  };
  return seen;
}

/** A TINY-shaped model folder with every weight present (a "fine-tuned" head) and the MiniLM tokenizer. */
async function writeTrainedTinyFolder(dir: string): Promise<string> {
  const folder = join(dir, 'trained');
  await mkdir(folder, { recursive: true });
  const json = { model_type: 'bert', ...TINY, vocab_size: 30522, id2label: { 0: 'a', 1: 'b', 2: 'c' } };
  const config = { ...BERT_DEFAULTS, ...json, num_labels: 3 } as unknown as BertConfig;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  let s = 7;
  for (const [name, shape] of parameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('LayerNorm.weight')) data.fill(1);
    else for (let i = 0; i < data.length; i++) data[i] = ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * 0.2;
    tensors.set(name, { shape, data });
  }
  await writeSafetensors(join(folder, 'model.safetensors'), tensors, { format: 'pt' });
  await writeFile(join(folder, 'config.json'), JSON.stringify(json));
  for (const f of ['tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json']) await copyFile(join(MINILM_DIR, f), join(folder, f));
  return folder;
}

// ---- worker-thread side ----------------------------------------------------------

interface WorkerPlan {
  mode: 'exit' | 'terminate' | 'exit-gc';
  delay: number;
  api: 'ts' | 'raw';
}

/** Runs one worker per the plan; resolves with its exit code once it is gone. */
function runWorker(plan: WorkerPlan): Promise<number> {
  return new Promise((resolve, reject) => {
    const w = new Worker(SELF, { workerData: plan, argv: ['--worker'] });
    w.on('message', (m) => {
      if (m === 'started' && plan.mode === 'terminate') setTimeout(() => void w.terminate(), plan.delay);
    });
    w.on('error', reject);
    w.on('exit', resolve);
  });
}

async function workerMain(plan: WorkerPlan): Promise<void> {
  const b = batchOf(16, 64, BIG.vocab_size);
  if (plan.api === 'ts') {
    const e = new Engine({ config: { ...BERT_DEFAULTS, ...BIG } as BertConfig, threads: 1 });
    void e.trainStep(b, { learningRate: 1e-3 }).then(() => e.trainStep(b, { learningRate: 1e-3 }));
    // the TypeScript queue calls the addon a microtask later
    await Promise.resolve();
    await Promise.resolve();
  } else if (plan.mode === 'exit-gc') {
    for (let i = 0; i < 3; i++) {
      let e: Raw = rawEngine(BIG);
      void e.trainStep(b, { learningRate: 1e-3 });
      e = null;
    }
    (globalThis as { gc?: () => void }).gc?.();
  } else {
    void rawEngine(BIG).trainStep(b, { learningRate: 1e-3 });
  }
  parentPort!.postMessage('started');
  if (plan.mode === 'exit' || plan.mode === 'exit-gc') {
    if (plan.delay === 0) process.exit(0);
    setTimeout(() => process.exit(0), plan.delay);
  }
  await sleep(60_000);
}

if (!isMainThread && process.argv.includes('--worker')) {
  await workerMain(workerData as WorkerPlan);
} else if (isMainThread && process.argv[2] && !process.argv[2].startsWith('-')) {
  const name = process.argv[2];
  const run = CASES[name];
  if (!run) {
    console.error(`unknown case '${name}'; cases: ${Object.keys(CASES).join(', ')}`);
    process.exit(2);
  }
  const result = await run();
  console.log(`HOSTILE-RESULT ${JSON.stringify(result)}`);
  process.exit(0);
}

export const CASE_NAMES = Object.keys(CASES);
