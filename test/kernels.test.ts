/**
 * CPU kernel checks: runs the native gradcheck binary (native/test/gradcheck.cpp)
 * and asserts every check it reports, one subtest per kernel.
 *
 * The binary compares float64 analytic gradients with central finite
 * differences, forwards with direct transcriptions of the HF / PyTorch
 * formulas, float32 with float64, and checks the Philox dropout RNG against the
 * Random123 known answers. It is built by cmake (target nodetune_gradcheck) into
 * build/Release/; set NODETUNE_GRADCHECK to run another build.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface Check {
  kernel: string;
  input: string;
  method: 'finite_difference' | 'reference' | 'float32_vs_float64' | 'property';
  case: string;
  threads: number;
  max_rel_err: number | null;
  tol: number;
  pass: boolean;
}

// dist/test/kernels.test.js -> repository root
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const binary =
  process.env.NODETUNE_GRADCHECK ?? path.join(repoRoot, 'build', 'Release', 'nodetune_gradcheck');

/** Function names declared in kernels.h (the engine-facing kernel contract). */
function declaredKernels(): string[] {
  const header = readFileSync(path.join(repoRoot, 'native', 'cpu', 'kernels.h'), 'utf8');
  const names = [...header.matchAll(/^(?:void|T|float|double)\s+(\w+)\s*\(/gm)].map((m) => m[1]);
  return [...new Set(names)];
}

function runGradcheck(): { status: number | null; checks: Check[]; error?: string } {
  if (!existsSync(binary)) {
    return { status: null, checks: [], error: `gradcheck binary not found at ${binary}; build it with cmake (target nodetune_gradcheck) or set NODETUNE_GRADCHECK` };
  }
  const r = spawnSync(binary, [], { encoding: 'utf8', timeout: 120_000 });
  if (r.error) return { status: null, checks: [], error: `${binary}: ${r.error.message}` };
  try {
    return { status: r.status, checks: (JSON.parse(r.stdout) as { checks: Check[] }).checks };
  } catch (e) {
    return { status: r.status, checks: [], error: `${binary}: stdout is not the expected JSON (${String(e)}); stderr: ${r.stderr}` };
  }
}

const run = runGradcheck();
const describe = (c: Check) =>
  `${c.kernel} ${c.input} [${c.method}; ${c.case}; threads=${c.threads}]: max_rel_err=${c.max_rel_err} tol=${c.tol}`;

test('gradcheck binary runs and reports checks', () => {
  assert.equal(run.error, undefined, run.error);
  assert.ok(run.checks.length > 0, 'no checks reported');
  const anyFailed = run.checks.some((c) => !c.pass);
  assert.equal(run.status, anyFailed ? 1 : 0, 'exit status must be 1 exactly when a check fails');
});

const byKernel = new Map<string, Check[]>();
for (const c of run.checks) byKernel.set(c.kernel, [...(byKernel.get(c.kernel) ?? []), c]);

for (const [kernel, checks] of byKernel) {
  test(`kernel ${kernel}`, () => {
    for (const c of checks) {
      assert.equal(c.pass, true, describe(c));
      assert.equal(typeof c.max_rel_err, 'number', describe(c));
      assert.ok((c.max_rel_err as number) < c.tol, describe(c));
    }
  });
}

test('every kernel in kernels.h is checked, every backward by finite differences', () => {
  const declared = declaredKernels();
  assert.ok(declared.includes('layernorm_backward'), 'kernels.h parse found no kernels');
  for (const name of declared) {
    const checks = byKernel.get(name) ?? [];
    assert.ok(checks.length > 0, `kernels.h declares ${name} but gradcheck does not check it`);
    if (name.endsWith('_backward')) {
      assert.ok(
        checks.some((c) => c.method === 'finite_difference'),
        `${name} has no finite-difference check`,
      );
    }
  }
  const adam = byKernel.get('adamw_update') ?? [];
  assert.ok(adam.some((c) => c.method === 'reference' && c.input === 'params'), 'adamw_update has no reference check of params');
});

test('every check ran with 1 and with 3 OpenMP threads', () => {
  const key = (c: Check) => `${c.kernel}|${c.input}|${c.method}|${c.case}`;
  const one = new Set(run.checks.filter((c) => c.threads === 1).map(key));
  const three = new Set(run.checks.filter((c) => c.threads === 3).map(key));
  assert.ok(one.size > 0);
  assert.deepEqual([...three].sort(), [...one].sort());
});
