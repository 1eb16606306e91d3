// The native boundary against a hostile caller (issue 18): getters, Proxies and
// prototype setters that dispose or re-enter the engine while a call reads its
// arguments or builds its result; worker threads that exit or are terminated
// with a step in flight; engines collected with work pending; huge and
// malformed configs and model folders; optimizer state with NaN; a reused batch
// buffer; a 10 MB text. Each case runs in its own process
// (test/hostile/cases.ts), so a crash is a failed test, not a dead runner: the
// process must exit 0, by itself (no signal, no abort), within its timeout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MINILM_DIR } from './helpers/tiny-model.js';
import { BertTokenizer } from '../src/tokenizer/index.js';
import { loadAddon } from '../src/engine.js';
import { CONFIG_LIMITS } from '../src/io/model-folder.js';

const CASES = join(dirname(fileURLToPath(import.meta.url)), 'hostile', 'cases.js');

/**
 * Runs one case in a fresh node and returns what it printed after HOSTILE-RESULT.
 * Fails on a signal (SIGSEGV, SIGABRT), a nonzero status, or a hang past `timeoutMs`.
 */
function runCase(name: string, opts: { gc?: boolean; timeoutMs?: number } = {}): any {
  const args = [...(opts.gc ? ['--expose-gc'] : []), CASES, name];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 });
  const tail = `\n--- stdout ---\n${r.stdout?.slice(-2000)}\n--- stderr ---\n${r.stderr?.slice(-4000)}`;
  assert.equal(r.error, undefined, `case ${name}: ${r.error?.message}${tail}`);
  assert.equal(r.signal, null, `case ${name} died of ${r.signal}${tail}`);
  assert.equal(r.status, 0, `case ${name} exited with ${r.status}${tail}`);
  const line = r.stdout.split('\n').find((l) => l.startsWith('HOSTILE-RESULT '));
  assert.ok(line, `case ${name} printed no result${tail}`);
  return JSON.parse(line.slice('HOSTILE-RESULT '.length));
}

const DISPOSED = /Engine\.\w+\(\): the engine has been disposed/;

test('a getter that disposes the engine while forward/trainStep/accumulate/step/setOptimizerState read their arguments gets an Error, not a use-after-free', () => {
  const forward = runCase('dispose-in-forward-batch-getter');
  assert.match(forward.message, /Engine\.forward\(\): the engine has been disposed/);
  assert.match(forward.after, /Engine\.forward\(\): the engine has been disposed/);
  assert.match(runCase('dispose-in-trainStep-batch-getter').message, /Engine\.trainStep\(\): the engine has been disposed/);
  assert.match(runCase('dispose-in-trainStep-learningRate-getter').message, /Engine\.trainStep\(\): the engine has been disposed/);
  assert.match(runCase('dispose-in-accumulate-lossScale-getter').message, /Engine\.accumulate\(\): the engine has been disposed/);
  assert.match(runCase('dispose-in-step-learningRate-getter').message, /Engine\.step\(\): the engine has been disposed/);
  assert.match(runCase('dispose-in-setOptimizerState-getter').message, /Engine\.setOptimizerState\(\): the engine has been disposed/);
  assert.match(runCase('proxy-batch-disposes').message, DISPOSED);
  assert.match(runCase('proxy-options-dispose-in-has-trap').message, DISPOSED);
});

test('the causal-LM surface (prefill, decode, LoRA options) follows the same rules: getters that dispose get an Error, decodes never overlap, bad tokens are named', () => {
  assert.match(runCase('lm-dispose-in-prefill-batch-getter').message, /Engine\.prefill\(\): the engine has been disposed/);
  assert.match(runCase('lm-dispose-in-prefill-options-getter').message, /Engine\.prefill\(\): the engine has been disposed/);
  const d = runCase('lm-decode-reentry-and-detached');
  assert.match(d.busy, /Engine\.decode\(\): the engine is busy/);
  assert.equal(d.logits, 2 * 64);
  assert.match(d.detachedMsg, /buffer is detached/);
  assert.match(d.wrongCount, /got 1 tokens, expected one per prompt \(2\)/);
  assert.match(d.outOfRange, /tokens\[1\] = 99 is out of range/);
  const l = runCase('lm-dispose-in-lora-getter');
  assert.equal(l.adapters, 2);
  assert.match(l.after, /Engine\.forward\(\): the engine has been disposed/);
  assert.match(l.huge, /num_hidden_layers = 1000000 is larger than any Llama-family model/);
  assert.match(l.badTarget, /target_modules\[0\] = 'lm_head' is not a module LoRA can adapt/);
});

test('setCounters whose getter disposes the engine and makes a new one: an Error, and the new engine keeps its own counters', () => {
  const r = runCase('dispose-in-setCounters-getter-then-new-engine');
  assert.match(r.message, /Engine\.setCounters\(\): the engine has been disposed/);
  assert.deepEqual(r.freshCounters, { optimizerStep: 0, microStep: 0 });
});

test('a throwing getter surfaces its own Error and leaves the engine usable (not stuck busy)', () => {
  const r = runCase('throwing-getter-leaves-engine-usable');
  assert.equal(r.message, 'boom from a getter');
  assert.equal(r.lr, 'boom from learningRate');
  assert.equal(r.logitsLength, 6);
  assert.equal(r.lossFinite, true);
});

test('numbers are read without coercion: valueOf / Symbol.toPrimitive never run', () => {
  const r = runCase('valueOf-is-never-called');
  assert.equal(r.called, 0);
  assert.match(r.messages[0], /batch\.batchSize must be a number/);
  assert.match(r.messages[1], /learningRate must be a number/);
  assert.match(r.messages[2], /lossScale must be a number/);
  assert.match(r.messages[3], /optimizerStep must be/);
  assert.equal(r.logitsLength, 6);
});

test('prototype setters that dispose while a result object is built do not touch a freed engine', () => {
  const r = runCase('prototype-setters-dispose-while-results-are-built');
  assert.ok(r.fired > 0, 'the setters ran');
  for (const o of r.outcomes) if (o !== null) assert.match(o, DISPOSED);
});

test('re-entry: a getter that calls forward() queues that call; the outer call is refused as busy; one worker at a time', () => {
  const r = runCase('reenter-forward-from-batch-getter');
  assert.match(r.outer, /Engine\.forward\(\): the engine is busy/);
  assert.equal(r.same, true, 'the re-entrant forward gives the sequential logits');
  assert.equal(r.again, true, 'busy is cleared by the worker that set it');
  const t = runCase('reenter-trainStep-from-learningRate-getter');
  assert.match(t.outer, /Engine\.trainStep\(\): the engine is busy/);
  assert.equal(t.innerLossFinite, true);
  assert.deepEqual(t.counters, { optimizerStep: 1, microStep: 1 });
});

test('while a forward runs, every other call on that engine is refused and the running one is undisturbed', () => {
  const r = runCase('reenter-many-forwards-while-running');
  assert.equal(r.refusals.length, 7);
  for (const m of r.refusals.slice(0, 4)) assert.match(m, /the engine is busy/);
  assert.match(r.refusals[4], /Engine\.dispose\(\): a forward\/trainStep is running/);
  for (const m of r.refusals.slice(5)) assert.match(m, /the engine is busy/);
  assert.equal(r.same, true);
});

test('a worker thread that calls process.exit() with a trainStep in flight does not take the process down', () => {
  const r = runCase('worker-exit-mid-trainStep', { timeoutMs: 120_000 });
  assert.deepEqual(r.codes, r.codes.map(() => 0));
  assert.equal(r.mainStillTrains, true);
});

test('worker.terminate() with a trainStep in flight does not take the process down', () => {
  const r = runCase('worker-terminate-mid-trainStep', { timeoutMs: 120_000 });
  assert.equal(r.codes.length, 9);
  for (const c of r.codes) assert.equal(c, 1, 'a terminated worker exits with code 1');
});

test('a worker that collects its engines with steps in flight and exits does not take the process down', () => {
  const r = runCase('worker-exit-with-engines-collected', { gc: true, timeoutMs: 120_000 });
  assert.deepEqual(r.codes, [0, 0, 0]);
});

test('engines collected (--expose-gc) with work pending finish that work with the right answer', () => {
  const r = runCase('gc-with-work-pending', { gc: true });
  assert.equal(r.allSame, true);
  assert.equal(r.tsLossFinite, true);
});

test('process.exit() on the main thread with a step in flight exits cleanly', () => {
  assert.equal(runCase('exit-main-with-work-pending').exited, true);
});

test('huge or malformed native configs and options are refused by name before anything is allocated', () => {
  const r = runCase('native-config-bounds', { timeoutMs: 30_000 });
  assert.match(r.numLabels, /config\.num_labels = 100000000 is too large/);
  assert.match(r.layers, /config\.num_hidden_layers = 1000000 is too large/);
  assert.match(r.hidden, /config\.hidden_size = 1000000000000 is too large/);
  assert.match(r.vocab, /config\.vocab_size = 2147483648 is too large/);
  assert.match(r.positions, /config\.max_position_embeddings = 1000000000 is too large/);
  assert.match(r.negative, /config\.intermediate_size must be a positive integer, got -4/);
  assert.match(r.fraction, /config\.num_labels must be an integer, got 2\.5/);
  assert.match(r.device, /options\.device must be a string/);
  assert.match(r.precision, /options\.precision must be a string/);
  assert.match(r.emptyWeights, /options\.class_weights is empty/);
  assert.match(r.detachedWeights, /options\.class_weights.*detached/);
  assert.match(r.wrongWeights, /options\.class_weights must be a Float32Array/);
  assert.match(r.seed, /options\.seed must be a number or a bigint/);
});

test('model folders with huge or malformed config.json sizes are refused by name (loadModelFolder, Classifier.load)', () => {
  const r = runCase('model-folder-huge-configs', { timeoutMs: 30_000 });
  assert.match(r.loadLabels, /config\.json: num_labels 100000000 is too large \(at most \d+\)/);
  assert.match(r.classifierLabels, /config\.json: num_labels 100000000 is too large/);
  assert.match(r.classifierLabelsOnnx, /config\.json: num_labels 100000000 is too large/);
  assert.match(r.optionLabels, /num_labels 100000000 is too large/);
  assert.match(r.layers, /config\.json: num_hidden_layers 1000000 is too large/);
  assert.match(r.hidden, /config\.json: hidden_size 1000000000000 is too large/);
  assert.match(r.negativeLabels, /config\.json: num_labels must be a positive integer, got -3/);
  assert.match(r.fractionLabels, /config\.json: num_labels must be a positive integer, got 2\.5/);
  assert.match(r.stringLabels, /config\.json: num_labels must be a positive integer, got "7"/);
  assert.match(r.positions, /config\.json: max_position_embeddings 1000000000 is too large/);
  assert.match(r.sparseId2label, /id2label must map every id 0\.\.1 to a string; id 1 is undefined/);
  assert.match(r.hugeHeader, /safetensors file .*model\.safetensors/);
  assert.match(r.hugeTensor, /safetensors file .*model\.safetensors/);
});

test("config.json's size limits are the native engine's (BertConfigLimits)", () => {
  assert.deepEqual({ ...loadAddon().configLimits }, { ...CONFIG_LIMITS });
});

test('setOptimizerState refuses NaN/Inf moments and a negative exp_avg_sq, naming tensor and index, and writes nothing', () => {
  const r = runCase('optimizer-state-non-finite');
  assert.match(r.messages.nanAvg, /setOptimizerState\('classifier\.weight'\): exp_avg\[3\] = nan.*finite/);
  assert.match(r.messages.infAvg, /exp_avg\[5\] = -inf/);
  assert.match(r.messages.negSq, /exp_avg_sq\[7\] = -0\.001.*finite number >= 0/);
  assert.match(r.messages.nanSq, /exp_avg_sq\[0\] = nan/);
  assert.match(r.messages.infSq, /exp_avg_sq\[1\] = inf/);
  assert.match(r.messages.detached, /exp_avg.*detached/);
  assert.equal(r.untouched, true);
  assert.equal(r.weightsFinite, true);
});

test('the CPU activation arena is sized by B × T of the batch, and shrinks after a much larger one', () => {
  const r = runCase('activation-arena-follows-the-shape');
  assert.ok(r.longOnly > 0 && r.wideOnly > 0);
  assert.equal(r.wideThenLong, r.longOnly, '256×1 then 1×256 holds what 1×256 needs');
  assert.ok(r.wideThenLong * 20 < r.maxByMax, `${r.wideThenLong} bytes, not max B × max T (${r.maxByMax})`);
  assert.equal(r.bigThenSmall, r.smallOnly, 'a much smaller batch after a big one gives the memory back');
});

test('the TypeScript queue copies a batch and its options at call time: refilling the buffer in the same tick changes nothing', () => {
  const r = runCase('reused-batch-buffer');
  assert.equal(r.forwardSame, true);
  assert.equal(r.stepSameLoss, true);
  assert.equal(r.stepSameWeights, true);
});

test('a 10 MB text is tokenized from a bounded prefix (both tokenizer backends), with the tokens of the whole text', () => {
  const r = runCase('tokenizer-10mb-text', { timeoutMs: 60_000 });
  for (const backend of ['tokenizers', 'wordpiece']) {
    const b = r[backend];
    assert.ok(b.longestInput > 0 && b.longestInput <= 128 * 128 + 1024, `${backend}: tokenized ${b.longestInput} characters`);
    assert.equal(b.length, 128);
    assert.equal(b.sameAsHead, true);
    assert.equal(b.pairLength, 128);
  }
});

test('Classifier: a 10 MB text costs a bounded prefix and gets the same answer as its first 5000 characters', () => {
  const r = runCase('classifier-10mb-text', { timeoutMs: 60_000 });
  assert.ok(r.longestInput > 0 && r.longestInput <= 128 * r.maxLength + 1024, `tokenized ${r.longestInput} characters`);
  assert.equal(r.same, true);
});

// In process: no crash is possible here, only a wrong token.
test('bounded tokenization gives exactly the tokens of the whole text (random texts, pairs, both backends)', async () => {
  const pieces = ['hello', 'world', ' ', '  ', '\n', '\t', ',', '.', '!', 'café', 'NAÏVE', 'ΟΔΟΣ', '字', '你好', '[MASK]', '[SEP]', '[mask]',
    'supercalifragilisticexpialidocious', 'x'.repeat(150), 'ab'.repeat(60), '\u0301', 'e\u0301', '😀', '\u0000', '\u0085', '$12.50', '—', '-', "don't"];
  let s = 99;
  const rnd = (n: number) => ((s = (s * 1103515245 + 12345) >>> 0) % n);
  const text = (n: number) => Array.from({ length: n }, () => pieces[rnd(pieces.length)]).join(rnd(3) === 0 ? '' : ' ');
  for (const backend of ['tokenizers', 'wordpiece'] as const) {
    const tok = await BertTokenizer.fromFolder(MINILM_DIR, { backend, maxPositionEmbeddings: 512 });
    const full = (t: string) => tok.encodeText(t);
    for (let i = 0; i < 60; i++) {
      const a = text(20 + rnd(400));
      const b = rnd(2) ? text(20 + rnd(400)) : null;
      const maxLength = [3, 4, 8, 16, 33, 64, 128][rnd(7)];
      const got = tok.encode(a, b, { maxLength });
      // the reference: the whole texts through the backend, then the same truncation
      const ids = full(a);
      const pair = b ? full(b) : null;
      const special = pair ? 3 : 2;
      let ka = ids.length;
      let kb = pair?.length ?? 0;
      if (pair) {
        const { longestFirstLengths } = await import('../src/tokenizer/index.js');
        [ka, kb] = longestFirstLengths(ids.length, pair.length, maxLength - special);
      } else ka = Math.min(ka, maxLength - special);
      const want = [tok.clsTokenId, ...ids.slice(0, ka), tok.sepTokenId, ...(pair ? [...pair.slice(0, kb), tok.sepTokenId] : [])];
      assert.deepEqual(got.input_ids, want, `${backend} case ${i}: maxLength ${maxLength}, ${JSON.stringify(a.slice(0, 80))}`);
    }
  }
});
