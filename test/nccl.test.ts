// Data parallel on GPUs (issue 15; native/cuda/nccl_allreduce.*): what can be checked without a
// GPU. A rank's plain 'cuda' is its own GPU, cuda:<local rank> (resolveDevice), and an engine
// error on that device says how it was chosen; the addon reports whether it has the NCCL path
// (only a build with the CUDA engine, MPI and NCCL does). The all-reduce itself runs in
// test/gpu/nccl_check.cpp (`mpirun -n 1` in test/gpu/run.sh on a GPU machine).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine, loadAddon, resolveDevice } from '../src/engine.js';
import { loadTinyBertFixture } from './helpers/tiny-bert-fixture.js';

test("resolveDevice: plain 'cuda' under an MPI launcher is cuda:<local rank>; anything else stays", () => {
  assert.equal(resolveDevice('cuda', { OMPI_COMM_WORLD_LOCAL_RANK: '1' }), 'cuda:1');
  assert.equal(resolveDevice('cuda', { MPI_LOCALRANKID: '3' }), 'cuda:3');
  assert.equal(resolveDevice('cuda', { OMPI_COMM_WORLD_LOCAL_RANK: '0', MPI_LOCALRANKID: '2' }), 'cuda:0', "Open MPI's first");
  assert.equal(resolveDevice('cuda', {}), 'cuda', 'no launcher: the factory default, cuda:0');
  assert.equal(resolveDevice('cuda', { OMPI_COMM_WORLD_LOCAL_RANK: 'x' }), 'cuda', 'not a number: left alone');
  assert.equal(resolveDevice('cuda:2', { OMPI_COMM_WORLD_LOCAL_RANK: '1' }), 'cuda:2', 'an explicit device is kept');
  assert.equal(resolveDevice('cpu', { OMPI_COMM_WORLD_LOCAL_RANK: '1' }), 'cpu');
  assert.equal(resolveDevice(undefined, { OMPI_COMM_WORLD_LOCAL_RANK: '1' }), undefined);
});

test("an engine error on the rank's device names how 'cuda' became cuda:<local rank>", async () => {
  const f = await loadTinyBertFixture();
  const saved = process.env.OMPI_COMM_WORLD_LOCAL_RANK;
  process.env.OMPI_COMM_WORLD_LOCAL_RANK = '7';
  try {
    // No GPU here, or no cuda:7: either way the engine cannot be created, and the message says why it was cuda:7.
    assert.throws(() => new Engine({ config: f.config, device: 'cuda' }), /^Error: device 'cuda' is cuda:7 in this MPI rank \(its local rank: one GPU per rank\): .*(CUDA|cuda)/);
    assert.throws(() => new Engine({ config: f.config, device: 'tpu' }), /unknown device 'tpu'/, 'other devices are not rewritten');
  } finally {
    if (saved === undefined) delete process.env.OMPI_COMM_WORLD_LOCAL_RANK;
    else process.env.OMPI_COMM_WORLD_LOCAL_RANK = saved;
  }
});

test('the addon says whether it has the NCCL all-reduce: only with the CUDA engine and MPI', () => {
  const addon = loadAddon();
  assert.equal(typeof addon.ncclCompiled, 'boolean');
  if (addon.ncclCompiled) assert.ok(addon.cudaCompiled && addon.mpiCompiled, 'NCCL is built with CUDA and MPI only');
  if (!addon.cudaCompiled) assert.equal(addon.ncclCompiled, false);
});
