/**
 * `npm run bench [-- options]`: the training-step benchmark (bench/train.ts,
 * beside PyTorch eager) and then the inference benchmark (bench/inference.ts,
 * beside onnxruntime-node). Options go to the training benchmark; --batch,
 * --seq, --threads and --markdown also go to the inference one. With --json
 * only the training benchmark runs, so stdout is one JSON document. With
 * --help (-h) both print their options and nothing runs.
 */
import { spawnSync } from 'node:child_process';
import { writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const shared = new Set(['--batch', '--seq', '--threads']);
const inferenceArgs: string[] = [];
args.forEach((a, i) => {
  if (shared.has(a) && args[i + 1] !== undefined) inferenceArgs.push(a, args[i + 1]);
  if (shared.has(a.split('=')[0]) && a.includes('=')) inferenceArgs.push(a);
  if (a === '--markdown') inferenceArgs.push(a);
});

// Each script's --help prints and exits 0, which the loop below would take for a finished run.
const help = args.includes('--help') || args.includes('-h');
const runs: Array<[string, string[]]> = help
  ? [['train.js', ['--help']], ['inference.js', ['--help']]]
  : [['train.js', args], ...(args.includes('--json') ? [] : [['inference.js', inferenceArgs] as [string, string[]]])];
if (help) {
  // Synchronous, so it comes before the children's help on a pipe too.
  writeSync(
    1,
    'npm run bench [-- options]: bench/train.ts (training step beside PyTorch), then bench/inference.ts\n' +
      '(forward beside onnxruntime-node). Options go to the first; --batch, --seq, --threads and --markdown\n' +
      'also to the second; with --json only the first runs.\n\n',
  );
}
for (const [script, argv] of runs) {
  if (help && script !== runs[0][0]) writeSync(1, '\n');
  const run = spawnSync(process.execPath, [join(here, script), ...argv], { stdio: 'inherit' });
  if (run.status !== 0) process.exit(run.status ?? 1);
}
