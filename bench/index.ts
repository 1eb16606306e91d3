/**
 * `npm run bench [-- options]`: the training-step benchmark (bench/train.ts,
 * beside PyTorch eager) and then the inference benchmark (bench/inference.ts,
 * beside onnxruntime-node). Options go to the training benchmark; --batch,
 * --seq, --threads and --markdown also go to the inference one. With --json
 * only the training benchmark runs, so stdout is one JSON document.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const shared = new Set(['--batch', '--seq', '--threads']);
const inferenceArgs: string[] = [];
args.forEach((a, i) => {
  if (shared.has(a) && args[i + 1] !== undefined) inferenceArgs.push(a, args[i + 1]);
  if (a === '--markdown') inferenceArgs.push(a);
});

const runs: Array<[string, string[]]> = [['train.js', args]];
if (!args.includes('--json')) runs.push(['inference.js', inferenceArgs]);
for (const [script, argv] of runs) {
  const run = spawnSync(process.execPath, [join(here, script), ...argv], { stdio: 'inherit' });
  if (run.status !== 0) process.exit(run.status ?? 1);
}
