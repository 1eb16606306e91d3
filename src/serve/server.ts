/**
 * HTTP inference server for a fine-tuned classifier, on node:http.
 *
 * Routes
 *   POST /classify   body {"text": "..."} or {"texts": ["...", ...]}, optional "top_k" (default 1)
 *                    → 200 {"predictions": [[{"label": string, "score": number}, ...], ...]}
 *                    One inner list per input text, in input order (a single "text" gives a
 *                    one-element outer list); each inner list holds top_k labels by descending
 *                    softmax score, like the Hugging Face text-classification pipeline.
 *   GET  /health     → 200 {"status": "ok", "model": <model folder name>, "labels": num_labels, "backend": "onnx"|"native"}
 *
 * Every error answers {"error": message}: 400 invalid JSON or fields, 404 unknown path,
 * 405 wrong method (with Allow), 413 body over maxBodyBytes, 500 inference failure.
 * A bad request never stops the server.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, resolve } from 'node:path';
import { Classifier, type ClassifierBackend, type Prediction } from '../classifier.js';
import { HttpError, listen, readBody, requestPath, sendJson } from './http.js';

export interface ServeOptions {
  /** Model folder to load (ignored when `classifier` is given). */
  model?: string;
  /** An already loaded classifier to serve; the server does not dispose it. */
  classifier?: Classifier;
  /** TCP port; 0 picks a free one. Default 8080. */
  port?: number;
  /** Interface to bind; default 127.0.0.1 (loopback only). */
  host?: string;
  /** Backend when loading `model`; default 'onnx'. */
  backend?: ClassifierBackend;
  /** Most texts in one request; default 256. */
  maxTexts?: number;
  /** Largest request body in bytes; default 1 MiB. */
  maxBodyBytes?: number;
  /** Passed to Classifier.load. */
  maxLength?: number;
  batchSize?: number;
  threads?: number;
  /** Receives one line per request error (default: silent). */
  log?: (line: string) => void;
}

export interface RunningServer {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  classifier: Classifier;
  /** Stops accepting connections, closes open ones, disposes a classifier the server loaded. */
  close(): Promise<void>;
}

interface ClassifyRequest {
  texts: string[];
  topK: number;
}

const ALLOWED_FIELDS = new Set(['text', 'texts', 'top_k']);

/** Validates a parsed /classify body. @throws HttpError 400 naming the field. */
export function parseClassifyBody(body: unknown, maxTexts: number): ClassifyRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'request body must be a JSON object with "text" or "texts"');
  }
  const fields = body as Record<string, unknown>;
  const unknown = Object.keys(fields).find((k) => !ALLOWED_FIELDS.has(k));
  if (unknown !== undefined) throw new HttpError(400, `unknown field "${unknown}" (expected "text", "texts", "top_k")`);
  if ('text' in fields === 'texts' in fields) throw new HttpError(400, 'give exactly one of "text" (a string) or "texts" (a list of strings)');
  let texts: string[];
  if ('text' in fields) {
    if (typeof fields.text !== 'string') throw new HttpError(400, `"text" must be a string, got ${jsonType(fields.text)}`);
    texts = [fields.text];
  } else {
    if (!Array.isArray(fields.texts)) throw new HttpError(400, `"texts" must be a list of strings, got ${jsonType(fields.texts)}`);
    if (fields.texts.length === 0) throw new HttpError(400, '"texts" is empty; give at least one string');
    if (fields.texts.length > maxTexts) throw new HttpError(400, `"texts" has ${fields.texts.length} entries; the limit is ${maxTexts}`);
    const bad = fields.texts.findIndex((t) => typeof t !== 'string');
    if (bad >= 0) throw new HttpError(400, `"texts"[${bad}] must be a string, got ${jsonType(fields.texts[bad])}`);
    texts = fields.texts as string[];
  }
  const topK = fields.top_k ?? 1;
  if (typeof topK !== 'number' || !Number.isInteger(topK) || topK < 1) {
    throw new HttpError(400, `"top_k" must be a positive integer, got ${JSON.stringify(topK)}`);
  }
  return { texts, topK };
}

function jsonType(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v;
}

async function handleClassify(req: IncomingMessage, res: ServerResponse, classifier: Classifier, opts: Required<Pick<ServeOptions, 'maxTexts' | 'maxBodyBytes'>>): Promise<void> {
  const raw = await readBody(req, opts.maxBodyBytes);
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch (err) {
    throw new HttpError(400, `invalid JSON: ${(err as Error).message}`);
  }
  const { texts, topK } = parseClassifyBody(body, opts.maxTexts);
  const predictions: Prediction[][] = await classifier.classify(texts, { topK });
  sendJson(res, 200, { predictions });
}

function route(method: string, path: string): 'classify' | 'health' {
  const routes: Record<string, ['classify' | 'health', string]> = { '/classify': ['classify', 'POST'], '/health': ['health', 'GET'] };
  const entry = routes[path];
  if (!entry) throw new HttpError(404, `no route ${path} (routes: POST /classify, GET /health)`);
  const allowed = entry[1] === 'GET' ? ['GET', 'HEAD'] : [entry[1]];
  if (!allowed.includes(method)) throw new HttpError(405, `${method} is not allowed on ${path} (use ${entry[1]})`, { allow: allowed.join(', ') });
  return entry[0];
}

/**
 * Start the HTTP server for a classifier.
 *
 * @returns once listening: the base URL, the classifier, and close().
 * @throws Error when neither `model` nor `classifier` is given, the model
 *   cannot be loaded (see Classifier.load), or host:port cannot be bound
 *   (see listen; a classifier loaded here is disposed first).
 */
export async function startServer(options: ServeOptions): Promise<RunningServer> {
  if (!options.classifier && !options.model) throw new Error('startServer: give a model folder (model) or a loaded classifier');
  const owned = !options.classifier;
  const classifier =
    options.classifier ??
    (await Classifier.load(options.model!, {
      backend: options.backend,
      maxLength: options.maxLength,
      batchSize: options.batchSize,
      threads: options.threads,
    }));
  const limits = { maxTexts: options.maxTexts ?? 256, maxBodyBytes: options.maxBodyBytes ?? 1024 * 1024 };
  const modelName = basename(resolve(classifier.folder));
  const log = options.log ?? (() => undefined);

  const server = createServer((req, res) => {
    const path = requestPath(req.url);
    const work = async () => {
      const which = route(req.method ?? 'GET', path);
      if (which === 'health') {
        req.resume();
        sendJson(res, 200, { status: 'ok', model: modelName, labels: classifier.labels.length, backend: classifier.backend });
      } else {
        await handleClassify(req, res, classifier, limits);
      }
    };
    work().catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : 500;
      const message = err instanceof Error ? err.message : String(err);
      log(`${req.method} ${path} → ${status}: ${message}`);
      if (!res.headersSent) sendJson(res, status, { error: message }, err instanceof HttpError ? err.headers : {});
      else res.destroy();
    });
  });

  try {
    await listen(server, options.port ?? 8080, options.host ?? '127.0.0.1');
  } catch (err) {
    if (owned) await classifier.dispose();
    throw err;
  }
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}`,
    classifier,
    async close() {
      await new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      });
      if (owned) await classifier.dispose();
    },
  };
}
