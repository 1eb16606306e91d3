/**
 * `node dist/bench/kernels.js`: the kernel suite (same flags and output as
 * `nodetune bench kernels`): each CPU kernel at MiniLM-L6 B=32 T=128 shapes
 * against the machine's sgemm and memory-copy ceilings, measured in the same
 * run. Needs build/Release/nodetune_bench_kernels (Google Benchmark). About
 * 1 minute on a 2-core machine. Example:
 *   node dist/bench/kernels.js --threads 2 --markdown
 */
import { Command } from 'commander';
import { registerBench } from '../src/cli/bench.js';

const program = new Command('nodetune').showHelpAfterError();
registerBench(program);
program.parseAsync(['node', 'nodetune', 'bench', 'kernels', ...process.argv.slice(2)]).catch((err: unknown) => {
  process.stderr.write(`bench kernels: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
