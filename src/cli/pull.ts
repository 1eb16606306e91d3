/**
 * `nodetune pull <repo-id> [--revision R] [--cache-dir D]`: download a model
 * folder from the Hugging Face Hub (src/io/hub.ts) and print its local path.
 */
import type { Command } from 'commander';
import { pull } from '../io/hub.js';

function progressPrinter(): (file: string, received: number, total: number | undefined) => void {
  let last = 0;
  return (file, received, total) => {
    const now = Date.now();
    if (now - last < 250 && received !== total) return;
    last = now;
    const mb = (n: number) => (n / 1e6).toFixed(1);
    const text = total ? `${file}: ${mb(received)} / ${mb(total)} MB` : `${file}: ${mb(received)} MB`;
    if (process.stderr.isTTY) process.stderr.write(`\r${text}\x1b[K`);
    else if (received === total) process.stderr.write(`${text}\n`);
  };
}

export function registerPull(program: Command): void {
  program
    .command('pull')
    .description('download a model (config, safetensors weights, tokenizer) from the Hugging Face Hub into the local cache')
    .argument('<repo-id>', 'Hub repository, e.g. sentence-transformers/all-MiniLM-L6-v2')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--cache-dir <dir>', 'cache root (default $NODETUNE_CACHE or ~/.cache/nodetune/hub)')
    .action(async (repoId: string, o: { revision: string; cacheDir?: string }) => {
      const res = await pull(repoId, { revision: o.revision, cacheDir: o.cacheDir, onProgress: progressPrinter() });
      if (process.stderr.isTTY && res.downloaded.length) process.stderr.write('\n');
      const how = res.offlineReason
        ? `from the cache (${res.offlineReason})`
        : res.downloaded.length
          ? `downloaded ${res.downloaded.join(', ')}`
          : 'already up to date';
      process.stderr.write(`${res.repoId}@${res.revision}${res.commit ? ` (${res.commit.slice(0, 10)})` : ''}: ${how}\n`);
      process.stdout.write(`${res.folder}\n`);
    });
}
