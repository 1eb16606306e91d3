// The CUDA engine through the Node addon, on a GPU machine: the tiny-bert
// fixture (test/fixtures/tiny-bert: weights, batch and Hugging Face float64
// reference values made by scripts/reference/tiny_bert.py) trained on
// device 'cuda' in fp32 must match Hugging Face as the CPU engine does
// (test/engine.test.ts): logits, loss, every gradient, 3 AdamW steps, all
// within 1e-4 relative; the CPU engine in the same process must agree with
// it too, with dropout on (same Philox masks); bf16 must stay within 2e-2 of
// the reference loss; bad device numbers must be clear errors.
//
// Plain ESM (not under dist/test: CPU-only CI must not run it). Needs the
// compiled TypeScript (dist/) and a CUDA-enabled addon:
//   NODETUNE_ADDON=/path/nodetune.node node test/gpu/parity.mjs
//   NT_PARITY_DEVICE=cpu node test/gpu/parity.mjs   (dry run of the script on the CPU
//   engine, any machine: the GPU-only checks are skipped)
// Prints one line per check and, last, "addon parity: P of N checks passed".
// Exit 0 when all pass; 1 otherwise (also when there is no GPU).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const { Engine, loadAddon } = await import(join(root, 'dist/src/engine.js'));
const { fixtureEngine, loadTinyBertFixture, relErr } = await import(join(root, 'dist/test/helpers/tiny-bert-fixture.js'));

const rows = [];
function check(name, err, tol, note = '') {
  const pass = Number.isFinite(err) && err <= tol;
  rows.push(pass);
  console.log(`${pass ? 'ok  ' : 'FAIL'} ${name.padEnd(52)} ${err.toExponential(3).padStart(10)} (tol ${tol}) ${note}`);
}
function checkTrue(name, cond, note = '') {
  rows.push(!!cond);
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${name.padEnd(52)} ${note}`);
}

// The fixture loader and error metric of test/engine.test.ts (test/helpers/tiny-bert-fixture.ts).
const fixture = await loadTinyBertFixture();
const { config, expected, batch, meta } = fixture;
const opt = meta.optimizer;
const dev = process.env.NT_PARITY_DEVICE ?? 'cuda';
const onGpu = dev.startsWith('cuda');

function makeEngine(device, precision = 'fp32', extra = {}, seed = 7) {
  return fixtureEngine(fixture, { config: { ...config, ...extra }, device, precision, seed, threads: 4 });
}

async function main() {
  console.log(`addon: ${process.env.NODETUNE_ADDON ?? '(default)'}; cudaCompiled=${loadAddon().cudaCompiled}`);
  const gpu = makeEngine(dev);
  checkTrue('device string', onGpu ? /^cuda:0 \(.+, fp32\)$/.test(gpu.device()) : gpu.device() === 'cpu', gpu.device());

  const { logits, loss } = await gpu.forward(batch);
  check('fp32 forward logits vs HF', relErr(logits, expected.get('logits')), 1e-4);
  check('fp32 forward loss vs HF', Math.abs(loss - expected.get('loss')[0]) / expected.get('loss')[0], 1e-4);

  await gpu.accumulate(batch);
  let worst = 0;
  let worstName = '';
  for (const name of gpu.parameterNames()) {
    const err = relErr(gpu.getGradient(name), expected.get(`grad.${name}`));
    if (!(err <= worst)) [worst, worstName] = [err, name];
  }
  check('fp32 every gradient vs HF', worst, 1e-4, `worst: ${worstName}`);
  gpu.zeroGrad();

  let logWorst = 0;
  for (let s = 0; s < 3; s++) {
    const { loss: l, gradNorm } = await gpu.trainStep(batch, { learningRate: opt.lr });
    const ref = meta.train_log[s];
    logWorst = Math.max(logWorst, Math.abs(l - ref.loss) / ref.loss, Math.abs(gradNorm - ref.grad_norm) / ref.grad_norm);
  }
  check('fp32 3 AdamW steps: loss, grad_norm vs HF', logWorst, 1e-4);
  worst = 0;
  for (const name of gpu.parameterNames()) {
    const err = relErr(gpu.getWeight(name), expected.get(`after3.${name}`));
    if (!(err <= worst)) [worst, worstName] = [err, name];
  }
  check('fp32 weights after 3 steps vs HF', worst, 1e-4, `worst: ${worstName}`);
  await gpu.dispose();

  // Dropout on: the same seed draws the same masks on both devices.
  const drop = { hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1 };
  const cpu = makeEngine('cpu', 'fp32', drop, 3);
  const gpuDrop = makeEngine(dev, 'fp32', drop, 3);
  let dWorst = 0;
  for (let s = 0; s < 3; s++) {
    const a = await cpu.trainStep(batch, { learningRate: 1e-3 });
    const b = await gpuDrop.trainStep(batch, { learningRate: 1e-3 });
    dWorst = Math.max(dWorst, Math.abs(b.loss - a.loss) / a.loss, Math.abs(b.gradNorm - a.gradNorm) / a.gradNorm);
  }
  check('dropout 0.1: GPU vs CPU loss, grad_norm (3 steps)', dWorst, 1e-4);
  await cpu.dispose();
  await gpuDrop.dispose();
  if (!onGpu) return;

  const b16 = makeEngine('cuda', 'bf16');
  checkTrue('bf16 device string', /^cuda:0 \(.+, bf16\)$/.test(b16.device()), b16.device());
  let bWorst = 0;
  for (let s = 0; s < 3; s++) {
    const { loss: l } = await b16.trainStep(batch, { learningRate: opt.lr });
    bWorst = Math.max(bWorst, Math.abs(l - meta.train_log[s].loss));
  }
  check('bf16 3 steps: |loss - HF fp64 loss|', bWorst, 2e-2);
  await b16.dispose();

  let message = '';
  try {
    makeEngine('cuda:7');
  } catch (err) {
    message = err.message;
  }
  checkTrue('cuda:7 is a clear error', /CUDA device 7 requested but only \d+ devices? \(cuda:0/.test(message), message);
}

try {
  await main();
} catch (err) {
  rows.push(false);
  console.log(`FAIL error: ${err.stack ?? err}`);
}
const passed = rows.filter(Boolean).length;
console.log(`addon parity: ${passed} of ${rows.length} checks passed`);
process.exit(passed === rows.length ? 0 : 1);
