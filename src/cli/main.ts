#!/usr/bin/env node
/**
 * The `nodetune` command line. Each sub-command lives in its own file under
 * src/cli/ and only wraps the TypeScript API (src/index.ts).
 */
import { realpathSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { abortDistributed, currentWorld, finishDistributed } from '../train/distributed.js';
import { registerPull } from './pull.js';
import { registerTrain } from './train.js';
import { registerSft } from './sft.js';
import { registerPretrain } from './pretrain.js';
import { registerLrFind } from './lr-find.js';
import { registerEval } from './eval.js';
import { registerPredict } from './predict.js';
import { registerExport } from './export.js';
import { registerServe } from './serve.js';
import { registerBench } from './bench.js';
import { registerGenerate } from './generate.js';
import { registerChat } from './chat.js';

function packageVersion(): string {
  const pkg = new URL('../../../package.json', import.meta.url);
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

export function buildProgram(): Command {
  const program = new Command('nodetune')
    .description('Fine-tune pretrained transformers from Node.js: BERT-family encoders (pretrain, train, export to ONNX, serve) and Llama-family LLMs (sft, generate, chat).')
    .version(packageVersion())
    .showHelpAfterError('(add --help for the list of options)');
  registerTrain(program);
  registerSft(program);
  registerPretrain(program);
  registerLrFind(program);
  registerEval(program);
  registerPredict(program);
  registerExport(program);
  registerServe(program);
  registerGenerate(program);
  registerChat(program);
  registerPull(program);
  registerBench(program);
  return program;
}

/** True when this file is the process's entry point, also through npm's bin symlink. */
function isEntryPoint(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  buildProgram()
    .parseAsync(process.argv)
    .then(() => finishDistributed())
    .catch((err: unknown) => {
      const { rank, size } = currentWorld();
      process.stderr.write(`nodetune${size > 1 ? ` (rank ${rank} of ${size})` : ''}: ${err instanceof Error ? err.message : String(err)}\n`);
      // Data parallel: end every rank now, rather than let the others wait for this one until the timeout.
      abortDistributed();
      process.exit(1);
    });
}
