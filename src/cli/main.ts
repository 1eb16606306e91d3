#!/usr/bin/env node
/**
 * The `nodetune` command line. Each sub-command lives in its own file under
 * src/cli/ and only wraps the TypeScript API (src/index.ts).
 */
import { Command } from 'commander';
import { registerPull } from './pull.js';
import { registerTrain } from './train.js';
import { registerEval } from './eval.js';
import { registerPredict } from './predict.js';
import { registerExport } from './export.js';
import { registerServe } from './serve.js';

export function buildProgram(): Command {
  const program = new Command('nodetune')
    .description('Fine-tune pretrained BERT-family encoders from Node.js, export to ONNX, serve.')
    .showHelpAfterError();
  registerTrain(program);
  registerEval(program);
  registerPredict(program);
  registerExport(program);
  registerServe(program);
  registerPull(program);
  return program;
}

const isMain = import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/cli/main.js');
if (isMain) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((err: unknown) => {
      process.stderr.write(`nodetune: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
}
