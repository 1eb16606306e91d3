/**
 * `nodetune serve --model <X> [--port 8080] [--host 127.0.0.1] ...`: HTTP inference.
 * A classifier folder gets POST /classify and GET /health (src/serve/server.ts); a causal LM — a
 * GGUF file, a Llama-family folder, a Hub id or an `nodetune sft` run folder — gets the
 * OpenAI-compatible API (POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET
 * /health; src/serve/llm-server.ts).
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import type { ClassifierBackend } from '../classifier.js';
import { startServer } from '../serve/server.js';
import { startLlmServer } from '../serve/llm-server.js';
import { isCausalLMModel } from './eval.js';
import { parseIntOption } from './export.js';
import { explainPathErrors, maxLength, warnMaxLength } from './common.js';
import { CHAT_TEMPLATE_FILE_HELP, LLM_PRECISION_HELP } from './generate.js';
import type { Precision } from '../engine.js';

function positive(value: string): number {
  const n = parseIntOption(value);
  if (n < 1) throw new InvalidArgumentError(`'${value}' must be at least 1.`);
  return n;
}

function port(value: string): number {
  const n = parseIntOption(value);
  if (n < 0 || n > 65535) throw new InvalidArgumentError(`'${value}' is not a TCP port (0-65535).`);
  return n;
}

interface ServeCliOptions {
  model: string;
  port: number;
  host: string;
  backend: ClassifierBackend;
  maxTexts: number;
  maxBodyBytes: number;
  maxLength?: number;
  batchSize: number;
  threads?: number;
  precision?: Precision;
  chatTemplateFile?: string;
  cors?: string[];
  maxBatch: number;
  maxQueue?: number;
  maxTokens?: number;
  modelName?: string;
}

/** Adds the `serve` sub-command to `program`. It runs until SIGINT/SIGTERM. */
export function registerServe(program: Command): Command {
  return program
    .command('serve')
    .description(
      'serve a model over HTTP: a classifier folder answers POST /classify {"text"|"texts", "top_k"}; a causal LM ' +
        '(GGUF, Llama-family folder, Hub id, sft run folder) the OpenAI API: POST /v1/chat/completions, POST /v1/completions, GET /v1/models. GET /health for both',
    )
    .requiredOption('--model <folder|gguf|repo-id>', 'classifier folder (onnx/model.onnx for --backend onnx), or a causal LM: .gguf, Llama-family folder, Hub id, sft run folder')
    .option('--port <n>', 'TCP port (0: any free port)', port, 8080)
    .option('--host <address>', 'interface to bind (0.0.0.0 exposes the server to the network)', '127.0.0.1')
    .addOption(new Option('--backend <name>', 'classifier: inference backend').choices(['onnx', 'native']).default('onnx'))
    .option('--max-texts <n>', 'classifier: most texts per request', positive, 256)
    .option('--max-body-bytes <n>', 'largest request body in bytes', positive, 1024 * 1024)
    .option('--max-length <n>', 'classifier: tokens per text incl. [CLS]/[SEP] (default: max_position_embeddings, at most 512)', maxLength)
    .option('--batch-size <n>', 'classifier: texts per forward pass', positive, 32)
    .option('--threads <n>', 'intra-op threads (default: all cores)', positive)
    .addOption(new Option('--precision <p>', `causal LM: ${LLM_PRECISION_HELP}`).choices(['fp32', 'bf16', 'q8_0']))
    .option('--chat-template-file <file>', `causal LM: ${CHAT_TEMPLATE_FILE_HELP}`)
    .option('--cors <origins...>', "causal LM: origins whose browser pages may call the API (CORS), '*' for any (default: none)")
    .option('--max-batch <n>', 'causal LM: concurrent requests generated as one engine batch at most', positive, 8)
    .option('--max-queue <n>', 'causal LM: requests waiting at most; more get 503 (default 8 x --max-batch)', positive)
    .option('--max-tokens <n>', 'causal LM: max_tokens of a request that sets none (default: generation_config.json max_new_tokens, else 512)', positive)
    .option('--model-name <name>', 'causal LM: the model id /v1/models lists and responses carry (default: the file or folder name, or the Hub id)')
    // A classifier's --model must be a model folder; a causal LM's may be a file or a Hub id.
    .action((opts: ServeCliOptions) => explainPathErrors({ ...opts }, () => serve(opts), isCausalLMModel(opts.model) ? [] : ['model']));
}

/** Words for the system errors of binding host:port, by code. */
const LISTEN_HINTS: Record<string, string> = {
  ENOTFOUND: 'no such IP address or host name',
  EAI_AGAIN: 'the host name could not be resolved',
  EADDRNOTAVAIL: 'not an address of this machine',
  EADDRINUSE: 'another process is listening there',
  EACCES: 'permission denied; ports below 1024 need privileges',
};

/**
 * startServer's listen error rethrown naming the flag at fault: --port for a port
 * in use or privileged, --host otherwise. Other errors pass through.
 * @returns e.g. Error "--host 999.1.1.1: cannot listen there (getaddrinfo ENOTFOUND: no such IP address or host name)".
 */
export function nameListenFlag(err: unknown, host: string, port: number): unknown {
  const e = err as NodeJS.ErrnoException;
  if (e?.syscall !== 'listen' && e?.syscall !== 'getaddrinfo') return err;
  const flag = e.code === 'EADDRINUSE' || e.code === 'EACCES' ? `--port ${port}` : `--host ${host}`;
  const hint = e.code && LISTEN_HINTS[e.code] ? `: ${LISTEN_HINTS[e.code]}` : '';
  return new Error(`${flag}: cannot listen there (${e.syscall} ${e.code}${hint})`, { cause: err });
}

/** Starts the server; it stops on SIGINT/SIGTERM (exit 0, or 1 when closing fails). */
async function serve(opts: ServeCliOptions): Promise<void> {
  if (isCausalLMModel(opts.model)) return serveLlm(opts);
  if (opts.precision !== undefined) throw new InvalidArgumentError(`--precision is for a causal LM; the classifier ${opts.model} is served in fp32`);
  if (opts.chatTemplateFile !== undefined) throw new InvalidArgumentError(`--chat-template-file is for a causal LM; the classifier ${opts.model} has no chat template`);
  if (opts.cors !== undefined) throw new InvalidArgumentError(`--cors is for a causal LM's OpenAI API; the classifier server of ${opts.model} sends no CORS headers`);
  const server = await startServer({ ...opts, log: (line) => process.stderr.write(`${line}\n`) }).catch((err: unknown) => {
    throw nameListenFlag(err, opts.host, opts.port);
  });
  warnMaxLength(opts.maxLength, server.classifier.config.max_position_embeddings);
  process.stdout.write(`serving ${opts.model} (${opts.backend}) at ${server.url}  — POST /classify, GET /health\n`);
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

/** The OpenAI-compatible server for a causal LM; it stops on SIGINT/SIGTERM like the classifier's. */
async function serveLlm(opts: ServeCliOptions): Promise<void> {
  const server = await startLlmServer({
    model: opts.model,
    host: opts.host,
    port: opts.port,
    threads: opts.threads,
    precision: opts.precision,
    chatTemplateFile: opts.chatTemplateFile,
    corsOrigins: opts.cors,
    maxBatch: opts.maxBatch,
    maxQueue: opts.maxQueue,
    maxBodyBytes: opts.maxBodyBytes,
    defaultMaxTokens: opts.maxTokens,
    modelName: opts.modelName,
    log: (line) => process.stderr.write(`${line}\n`),
  }).catch((err: unknown) => {
    throw nameListenFlag(err, opts.host, opts.port);
  });
  process.stdout.write(
    `serving ${opts.model}${opts.precision && opts.precision !== 'fp32' ? ` (${opts.precision} weights)` : ''} as "${server.modelName}" at ${server.url}  — OpenAI API at ${server.url}/v1: ` +
      `POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health\n`,
  );
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
