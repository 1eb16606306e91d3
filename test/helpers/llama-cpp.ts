/**
 * llama.cpp as the tests' peer: node-llama-cpp 3.21.1's prebuilt CPU binary (never a local
 * build), one runtime per test file, disposed after its tests; greedy runs with the whole
 * next-token distribution at each step, and the measures to compare two of them.
 */
import { test } from 'node:test';

type NodeLlamaCpp = typeof import('node-llama-cpp');
let nlc: NodeLlamaCpp | null = null;
let nlcMissing = '';
try {
  nlc = await import('node-llama-cpp');
} catch (err) {
  nlcMissing = `node-llama-cpp is not installed (${(err as Error).message.split('\n')[0]})`;
}
/** Why the llama.cpp checks cannot run here (node-llama-cpp missing), or false. */
export const llamaCppMissing: string | false = nlc ? false : nlcMissing;

let llamaPromise: ReturnType<NodeLlamaCpp['getLlama']> | null = null;
/** One llama.cpp runtime for the test file: the prebuilt CPU binary, never a local build. */
export function llamaCpp(): ReturnType<NodeLlamaCpp['getLlama']> {
  llamaPromise ??= nlc!.getLlama({ gpu: false, build: 'never', logLevel: nlc!.LlamaLogLevel.error });
  return llamaPromise;
}
test.after(async () => {
  if (llamaPromise) await (await llamaPromise).dispose();
});

/** What llama.cpp generated for one prompt. */
export interface LlamaCppRun {
  /** The prompt's token ids as fed (model.tokenize(prompt) for a string: no BOS added). */
  promptIds: number[];
  /** Greedy new token ids (stops early at an end-of-generation token). */
  ids: number[];
  text: string;
  /** Softmax over the whole vocabulary at each step (token id → probability), before the greedy choice. */
  probabilities: Array<Map<number, number>>;
}

/**
 * Greedy continuation of each prompt by llama.cpp: `modelPath` loaded with `lora` (a LoRA GGUF
 * applied at scale 1 through createContext({ lora })), one sequence, history cleared between
 * prompts, 2 threads. Prompts may be text or token ids, so nodetune's own generation can be
 * compared id for id and step for step.
 */
export async function llamaCppGreedy(modelPath: string, prompts: Array<string | number[]>, opts: { lora?: string; maxTokens?: number } = {}): Promise<LlamaCppRun[]> {
  const llama = await llamaCpp();
  const model = await llama.loadModel({ modelPath });
  try {
    const context = await model.createContext({ contextSize: 256, threads: 2, ...(opts.lora ? { lora: { adapters: [{ filePath: opts.lora }] } } : {}) });
    const sequence = context.getSequence();
    const runs: LlamaCppRun[] = [];
    for (const prompt of prompts) {
      await sequence.clearHistory();
      const promptIds = typeof prompt === 'string' ? model.tokenize(prompt) : (prompt as never[]);
      const run: LlamaCppRun = { promptIds: [...promptIds], ids: [], text: '', probabilities: [] };
      for await (const step of sequence.evaluateWithMetadata(promptIds, { probabilities: true }, { temperature: 0 })) {
        run.ids.push(step.token);
        run.probabilities.push(step.probabilities as Map<number, number>);
        if (run.ids.length >= (opts.maxTokens ?? 8) || model.isEogToken(step.token)) break;
      }
      run.text = model.detokenize(run.ids as never[]);
      runs.push(run);
    }
    await context.dispose();
    return runs;
  } finally {
    await model.dispose();
  }
}

/** Total variation distance of two next-token distributions. */
export function totalVariation(p: Map<number, number>, q: Map<number, number>): number {
  let s = 0;
  for (const k of new Set([...p.keys(), ...q.keys()])) s += Math.abs((p.get(k) ?? 0) - (q.get(k) ?? 0));
  return s / 2;
}

/** The most probable token (ties to the lower id, as the greedy choice). */
export function argmax(p: Map<number, number>): number {
  let best = -1, bestP = -1;
  for (const [k, v] of p) if (v > bestP || (v === bestP && k < best)) [best, bestP] = [k, v];
  return best;
}
