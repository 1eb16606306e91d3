/**
 * `nodetune bench generate`: generation throughput of nodetune's engine beside llama.cpp
 * (node-llama-cpp 3.21.1, its prebuilt CPU binary) on the same GGUF, in the same run, with the
 * same thread count, the same prompt ids, greedy decoding and the same number of new tokens.
 *
 * Each side runs in its own process (`node dist/src/bench/generate.js case '<json>'`), so thread
 * pools and peak memory are its own. A case at batch B:
 * - prefill: the B prompts (identical ids) in one batch, up to the first new token of each;
 *   prefill tokens/s = B x prompt tokens / that time;
 * - decode: the N - 1 further steps of one token per sequence, end-of-sequence suppressed so
 *   every step runs; decode tokens/s = B x (N - 1) / that time.
 * nodetune: generateIds (src/llm/generate.ts) on loadCausalLM's engine (weights dequantized to
 * float32, bf16 or Q8_0 by --precision), minNewTokens = N. llama.cpp: B sequences of one context (`sequences: B`, batchSize
 * >= B x prompt so the prompts prefill in one llama_decode), each `sequence.evaluate(prompt,
 * { temperature: 0, tokenBias: eos never })` at once; node-llama-cpp batches the sequences'
 * steps into one llama_decode per step ("maximumParallelism"), so B = 16 is a real batch there
 * too. Weights stay Q4_1 in llama.cpp, which also quantizes activations to Q8_1 for its matmuls:
 * the greedy tokens agree for the first steps and may part later (the report counts them).
 */
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { repoRoot } from './paths.js';
import { runJsonLine } from './train.js';
import { loadWarning, type BenchReport, type BenchValue } from './report.js';

/** The GGUF the bench uses by default (scripts/fetch-llm.sh puts it there). */
export const DEFAULT_GENERATE_MODEL = join(repoRoot, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
/** The fixed prompt (raw text, no chat template): ~60 tokens of SmolLM2's tokenizer. */
export const DEFAULT_GENERATE_PROMPT =
  'The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, ' +
  'oil-based ink and a wooden press adapted from wine making. Within fifty years presses were running in more than two ' +
  'hundred cities across Europe, and the cost of a book fell';

export interface GenerateBenchOptions {
  /** GGUF file (default DEFAULT_GENERATE_MODEL). */
  model?: string;
  /** Prompt text (default DEFAULT_GENERATE_PROMPT). */
  prompt?: string;
  /** New tokens per sequence, N >= 2 (default 64). */
  newTokens?: number;
  /** Batch sizes (default [1, 16]). */
  batches?: number[];
  /** Threads on both sides (default 2). */
  threads?: number;
  /** Run llama.cpp beside nodetune (default true). */
  llamaCpp?: boolean;
  /** nodetune's weights: 'fp32' (default), 'bf16' or 'q8_0' (EngineOptions.precision). */
  precision?: 'fp32' | 'bf16' | 'q8_0';
  onProgress?: (line: string) => void;
}

/** What a case process is told. */
interface CaseSpec {
  side: 'nodetune' | 'llama.cpp';
  model: string;
  ids: number[];
  batch: number;
  newTokens: number;
  threads: number;
  precision: 'fp32' | 'bf16' | 'q8_0';
}

/** What a case process prints (one JSON line). */
interface CaseResult {
  prefill_tokens_per_s?: number;
  decode_tokens_per_s?: number;
  decode_ms_per_step?: number;
  peak_rss_mib?: number;
  /** Row 0's generated ids. */
  tokens?: number[];
  version?: string;
  status?: string;
}

/** Times a batched greedy generation: t0 start, t1 every first token, t2 every last token. */
function rates(spec: CaseSpec, t0: number, t1: number, t2: number): Pick<CaseResult, 'prefill_tokens_per_s' | 'decode_tokens_per_s' | 'decode_ms_per_step'> {
  const steps = spec.newTokens - 1;
  return {
    prefill_tokens_per_s: (spec.batch * spec.ids.length * 1e3) / (t1 - t0),
    decode_tokens_per_s: (spec.batch * steps * 1e3) / (t2 - t1),
    decode_ms_per_step: (t2 - t1) / steps,
  };
}

async function nodetuneCase(spec: CaseSpec): Promise<CaseResult> {
  const { loadCausalLM } = await import('../llm/load.js');
  const { generateIds } = await import('../llm/generate.js');
  const lm = await loadCausalLM(spec.model, { threads: spec.threads, trainable: false, precision: spec.precision });
  try {
    const prompts = Array.from({ length: spec.batch }, () => spec.ids);
    const run = async (n: number) => {
      const rows: number[][] = prompts.map(() => []);
      let t1 = 0;
      const t0 = performance.now();
      for await (const ev of generateIds(lm.engine, lm.config.vocab_size, prompts, {
        maxNewTokens: n, minNewTokens: n, eosTokenIds: lm.tokenizer.eosTokenIds, padTokenId: lm.tokenizer.padTokenId ?? 0,
      })) {
        rows[ev.row].push(ev.token);
        if (ev.row === spec.batch - 1 && rows[ev.row].length === 1) t1 = performance.now();
      }
      return { t0, t1, t2: performance.now(), rows };
    };
    await run(2); // warm-up: arenas and the KV cache sized once, pages touched
    const { t0, t1, t2, rows } = await run(spec.newTokens);
    return { ...rates(spec, t0, t1, t2), tokens: rows[0], peak_rss_mib: process.resourceUsage().maxRSS / 1024 };
  } finally {
    await lm.engine.dispose();
  }
}

async function llamaCppCase(spec: CaseSpec): Promise<CaseResult> {
  const nlc = await import('node-llama-cpp');
  const llama = await nlc.getLlama({ gpu: false, build: 'never', maxThreads: spec.threads, logLevel: 'disabled' as import('node-llama-cpp').LlamaLogLevel });
  const model = await llama.loadModel({ modelPath: spec.model, gpuLayers: 0 });
  const perSequence = spec.ids.length + spec.newTokens + 8;
  const context = await model.createContext({
    sequences: spec.batch,
    contextSize: perSequence,
    batchSize: Math.max(spec.batch * spec.ids.length, spec.batch),
    threads: { ideal: spec.threads, min: spec.threads },
  });
  try {
    const bias = new nlc.TokenBias(model.tokenizer);
    for (const t of [model.tokens.eos, model.tokens.eot]) if (t !== null && t !== undefined) bias.set(t, 'never');
    // One set of sequences for both runs: a disposed sequence's slot returns to the context only later.
    const sequences = Array.from({ length: spec.batch }, () => context.getSequence());
    const run = async (n: number) => {
      await Promise.all(sequences.map((s) => s.clearHistory()));
      const rows: number[][] = sequences.map(() => []);
      const firsts: number[] = [];
      const t0 = performance.now();
      await Promise.all(
        sequences.map(async (seq, b) => {
          for await (const token of seq.evaluate(spec.ids as import('node-llama-cpp').Token[], { temperature: 0, tokenBias: bias })) {
            rows[b].push(token);
            if (rows[b].length === 1) firsts.push(performance.now());
            if (rows[b].length === n) break;
          }
        }),
      );
      return { t0, t1: Math.max(...firsts), t2: performance.now(), rows };
    };
    await run(2);
    const { t0, t1, t2, rows } = await run(spec.newTokens);
    const pkg = JSON.parse(await readFile(join(repoRoot, 'node_modules/node-llama-cpp/package.json'), 'utf8').catch(() => '{}')) as { version?: string };
    const version = `node-llama-cpp ${pkg.version ?? '?'} (llama.cpp ${llama.llamaCppRelease.release})`;
    return { ...rates(spec, t0, t1, t2), tokens: rows[0], peak_rss_mib: process.resourceUsage().maxRSS / 1024, version };
  } finally {
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  }
}

/** Leading tokens two generations share. */
function sharedPrefix(a: number[] | undefined, b: number[] | undefined): number | null {
  if (!a || !b) return null;
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/**
 * Measures nodetune and (unless llamaCpp is false) llama.cpp at each batch size.
 * @throws Error for a bad option (naming it), a missing model file, or a nodetune case that fails.
 */
export async function runGenerateBench(opts: GenerateBenchOptions = {}): Promise<BenchReport> {
  const model = resolve(opts.model ?? DEFAULT_GENERATE_MODEL);
  const threads = opts.threads ?? 2;
  const newTokens = opts.newTokens ?? 64;
  const batches = opts.batches ?? [1, 16];
  const precision = opts.precision ?? 'fp32';
  if (!Number.isInteger(newTokens) || newTokens < 2) throw new Error(`--new-tokens must be an integer >= 2 (one prefill token and at least one decode step), got ${newTokens}`);
  if (!Number.isInteger(threads) || threads < 1) throw new Error(`--threads must be a positive integer, got ${threads}`);
  if (batches.length === 0 || !batches.every((b) => Number.isInteger(b) && b >= 1)) throw new Error(`--batch must list positive integers, got ${batches.join(',')}`);
  const { LlmTokenizer } = await import('../tokenizer/bpe.js');
  // The prompt ids both sides get (LlmTokenizer's equal llama.cpp's own on this tokenizer: test/llm-tokenizer.test.ts).
  let ids: number[];
  try {
    const tok = await LlmTokenizer.fromGguf(model);
    ids = tok.encode(opts.prompt ?? DEFAULT_GENERATE_PROMPT, { addSpecialTokens: false });
    if (tok.addBosToken && tok.bosTokenId !== undefined) ids.unshift(tok.bosTokenId);
  } catch (err) {
    throw new Error(`--model ${model}: ${(err as Error).message}`, { cause: err });
  }
  const load1 = Number(loadavg()[0].toFixed(2));
  const self = fileURLToPath(import.meta.url);
  const env = { ...process.env, OMP_NUM_THREADS: String(threads) };
  const runCase = (side: CaseSpec['side'], batch: number) =>
    runJsonLine<CaseResult>(process.execPath, [self, 'case', JSON.stringify({ side, model, ids, batch, newTokens, threads, precision } satisfies CaseSpec)], env);
  let peer: string | null = opts.llamaCpp === false ? 'not run (--no-llama-cpp)' : null;
  const rows: Array<Record<string, BenchValue>> = [];
  for (const B of batches) {
    const ours = await runCase('nodetune', B);
    if (ours.decode_tokens_per_s === undefined) throw new Error(`bench generate: nodetune at batch ${B}: ${ours.status}`);
    const row: Record<string, BenchValue> = {
      B, prompt: ids.length, new: newTokens,
      prefill: ours.prefill_tokens_per_s!, decode: ours.decode_tokens_per_s, ms_step: ours.decode_ms_per_step!, peak: ours.peak_rss_mib ?? null,
      cpp_prefill: null, cpp_decode: null, cpp_ms_step: null, cpp_peak: null, vs_cpp: null, same: null, cpp_status: peer,
    };
    if (opts.llamaCpp !== false) {
      const theirs = await runCase('llama.cpp', B);
      if (theirs.decode_tokens_per_s !== undefined) {
        peer = theirs.version ?? 'node-llama-cpp';
        Object.assign(row, {
          cpp_prefill: theirs.prefill_tokens_per_s!, cpp_decode: theirs.decode_tokens_per_s, cpp_ms_step: theirs.decode_ms_per_step!,
          cpp_peak: theirs.peak_rss_mib ?? null, vs_cpp: ours.decode_tokens_per_s / theirs.decode_tokens_per_s,
          same: sharedPrefix(ours.tokens, theirs.tokens), cpp_status: null,
        });
      } else {
        row.cpp_status = theirs.status ?? 'failed';
      }
    }
    rows.push(row);
    opts.onProgress?.(
      `B=${B}: nodetune prefill ${(row.prefill as number).toFixed(1)} tokens/s, decode ${(row.decode as number).toFixed(1)} tokens/s` +
        (row.cpp_decode !== null ? `; llama.cpp prefill ${(row.cpp_prefill as number).toFixed(1)}, decode ${(row.cpp_decode as number).toFixed(1)} tokens/s` : `; llama.cpp: ${row.cpp_status}`),
    );
  }
  return {
    suite: 'generate',
    title: `nodetune generation throughput beside llama.cpp (cpu, ${threads} threads, greedy, ${newTokens} new tokens)`,
    context: {
      device: 'cpu', cpu: (cpus()[0]?.model ?? 'unknown').trim(), threads, model, prompt_tokens: ids.length, new_tokens: newTokens,
      node: process.version, peer: peer ?? null,
      nodetune: `${{ fp32: 'float32 weights (GGUF dequantized)', bf16: 'bf16 weights (GGUF dequantized)', q8_0: 'Q8_0 weights (GGUF dequantized, then quantized)' }[precision]}, generateIds: one prefill, then one decode per step`,
      llama_cpp: 'GGUF weights as stored, B sequences of one context, node-llama-cpp batching',
      load_avg_1min: load1,
    },
    columns: [
      { key: 'B', header: 'B' },
      { key: 'prefill', header: 'prefill tokens/s', digits: 1 },
      { key: 'decode', header: 'decode tokens/s', digits: 1 },
      { key: 'ms_step', header: 'ms/step', digits: 1 },
      { key: 'peak', header: 'peak MiB', digits: 0 },
      { key: 'cpp_prefill', header: 'llama.cpp prefill tokens/s', digits: 1, missing: 'cpp_status' },
      { key: 'cpp_decode', header: 'llama.cpp decode tokens/s', digits: 1, missing: 'cpp_status' },
      { key: 'cpp_ms_step', header: 'llama.cpp ms/step', digits: 1, missing: 'cpp_status' },
      { key: 'cpp_peak', header: 'llama.cpp peak MiB', digits: 0, missing: 'cpp_status' },
      { key: 'vs_cpp', header: 'decode vs llama.cpp', digits: 2, missing: 'cpp_status' },
      { key: 'same', header: 'same greedy tokens', missing: 'cpp_status' },
    ],
    rows,
    notes: [
      ...[loadWarning(load1, threads)].filter((n): n is string => n !== null),
      'each side in its own process after one warm-up generation; prefill = B x prompt tokens up to every first token; decode = B x (N - 1) steps',
      `peak = getrusage maxrss of that side's process, loading included (nodetune dequantizes the GGUF tensor by tensor and holds it ${{ fp32: 'in float32', bf16: 'in float32 with a bf16 copy', q8_0: 'as Q8_0 (norms float32)' }[precision]}; llama.cpp maps it as stored)`,
      `same greedy tokens: leading tokens of sequence 0 that nodetune and llama.cpp share (llama.cpp multiplies Q4_1 weights by Q8_1-quantized activations; nodetune ${{ fp32: 'float32 weights by float32 activations', bf16: 'bf16 weights by bf16-rounded activations', q8_0: 'Q8_0 weights by Q8_0-quantized activations' }[precision]}); on a near-tie either side may turn`,
    ],
  };
}

/** `node dist/src/bench/generate.js case '<CaseSpec JSON>'`: one side, one batch size; one JSON line on stdout. */
async function caseMain(json: string): Promise<void> {
  const spec = JSON.parse(json) as CaseSpec;
  const result = spec.side === 'nodetune' ? await nodetuneCase(spec) : await llamaCppCase(spec);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function isEntryPoint(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint() && process.argv[2] === 'case') {
  caseMain(process.argv[3] ?? '').catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
