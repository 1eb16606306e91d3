/**
 * `node dist/bench/train.js`: the training-step benchmark (same flags and
 * output as `nodetune bench train`; `npm run bench` runs it first, then the
 * inference benchmark). Defaults: bert-tiny, MiniLM-L6 and bert-base at
 * B=32, T=32 and 128, 2 threads, PyTorch eager fp32 beside each.
 * About 7 minutes on a 2-core machine, most of it bert-base at T=128
 * (~11 s a step for nodetune, ~16 s for torch, 2 warm-up + 3 timed steps
 * each). Example:
 *   node dist/bench/train.js --shapes minilm-l6 --seq 128 --json
 */
import { Command } from 'commander';
import { addTrainOptions, trainAction } from '../src/cli/bench.js';

const program = addTrainOptions(new Command('bench/train').description('training-step throughput beside PyTorch eager fp32'))
  .showHelpAfterError()
  .action(async (opts: Record<string, unknown>) => {
    await trainAction(opts);
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
