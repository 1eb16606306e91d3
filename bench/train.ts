/**
 * `npm run bench`: the training-step benchmark (same flags and output as
 * `nodetune bench train`). Defaults: bert-tiny, MiniLM-L6 and bert-base at
 * B=32, T=32 and 128, 2 threads, PyTorch eager fp32 beside each.
 * About 5 minutes on a 2-core machine, most of it bert-base at T=128
 * (~10 s per step for each side). Example:
 *   npm run bench -- --shapes minilm-l6 --seq 128 --json
 */
import { Command } from 'commander';
import { addTrainOptions, trainAction } from '../src/cli/bench.js';

const program = addTrainOptions(new Command('npm run bench').description('training-step throughput beside PyTorch eager fp32'))
  .showHelpAfterError()
  .action(async (opts: Record<string, unknown>) => {
    await trainAction(opts);
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
