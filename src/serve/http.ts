/**
 * What both HTTP servers (the classifier's src/serve/server.ts and the LLM's
 * src/serve/llm-server.ts) share on node:http: an error that carries its status, a bounded body
 * reader, JSON replies and listen() as a promise.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { firstInvalidUtf8Offset } from '../data/text.js';

/**
 * An error that becomes an HTTP reply. `param` and `code` fill the OpenAI error object
 * ({error: {message, type, param, code}}); the classifier server sends only the message.
 */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/**
 * A request's path for routing: the query left off, runs of slashes merged and a trailing one
 * dropped (as nginx does), so `//v1/models` is /v1/models — a URL parser would read `//v1` as a host.
 */
export function requestPath(url: string | undefined): string {
  return (url ?? '/').split('?')[0].replace(/\/{2,}/g, '/').replace(/(.)\/$/, '$1');
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

/**
 * Reads the body up to `limit` bytes.
 * @throws HttpError 413 when the declared or received length is over `limit`; the rest of the
 *   body is drained, not kept, so a large upload costs no memory. 415 for a compressed body
 *   (Content-Encoding other than identity), which would otherwise read as invalid JSON; 400 for
 *   bytes that are not UTF-8 (naming the offset).
 */
export function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolveBody, reject) => {
    const encoding = req.headers['content-encoding'];
    if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity') {
      req.resume();
      reject(new HttpError(415, `Content-Encoding ${JSON.stringify(encoding)} is not supported: send the body uncompressed`, {}, null, 'unsupported_media_type'));
      return;
    }
    const declared = Number(req.headers['content-length']);
    if (declared > limit) {
      req.resume();
      reject(new HttpError(413, `request body of ${declared} bytes exceeds the limit of ${limit} bytes`, { connection: 'close' }, null, 'request_too_large'));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > limit) return reject(new HttpError(413, `request body exceeds the limit of ${limit} bytes`, {}, null, 'request_too_large'));
      const bytes = Buffer.concat(chunks);
      try {
        resolveBody(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
      } catch {
        // Replaced silently, a bad byte would reach the model as U+FFFD.
        const at = firstInvalidUtf8Offset(bytes);
        reject(new HttpError(400, `request body is not valid UTF-8: byte 0x${bytes[at].toString(16).toUpperCase().padStart(2, '0')} at offset ${at}`, {}, null, 'invalid_encoding'));
      }
    });
    req.on('error', reject);
  });
}

/**
 * server.listen as a promise.
 * @throws Error "cannot listen on <host>:<port> (<syscall> <code>)" with the
 *   system error's code, syscall and address kept (e.g. getaddrinfo ENOTFOUND
 *   for an unknown host, listen EADDRINUSE for a port in use).
 */
export function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((ok, fail) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const what = err.syscall && err.code ? `${err.syscall} ${err.code}` : err.message;
      fail(Object.assign(new Error(`cannot listen on ${host}:${port} (${what})`, { cause: err }), { code: err.code, syscall: err.syscall, host, port }));
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      ok();
    });
  });
}

/** The JSON type of a value as error messages name it. */
export function jsonType(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}
