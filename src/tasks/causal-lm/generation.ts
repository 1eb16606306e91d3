/**
 * Evaluation by generation, what an agent builder checks: for each eval example the model writes
 * the assistant turn (greedy, batched, optionally constrained to a set of answers) from the
 * conversation before it, and the answer is scored against the reference — exact match after
 * trimming; for a reference that is a tool call, whether the output holds a parseable call, the
 * function name, and the arguments (JSON deep equality).
 */
import type { CausalLM } from '../../llm/load.js';
import { generateIds } from '../../llm/generate.js';
import { parseToolCalls } from '../../llm/tool-calls.js';
import type { ChatMessage } from '../../chat/template.js';
import type { SftRecord, SourceRef } from './data.js';
import { chatForTemplate, hermesToolCallText } from './encode.js';
import { ChoiceTrie } from './choices.js';

/** One call, as compared: name and arguments object. */
export interface ToolCallRef {
  name: string;
  arguments: Record<string, unknown>;
}

/** What to generate for one record and what it should say. */
export interface GenerationTarget {
  source: SourceRef;
  /** Prompt token ids (the rendered conversation up to the answer, with the generation prompt). */
  promptIds: number[];
  /** The reference answer's text (for a tool call, the text the model is taught to write). */
  reference: string;
  /** The reference's tool calls, when it is a tool-calling turn. */
  referenceCalls?: ToolCallRef[];
  /** Names of the tools offered (a bare-JSON Llama 3 call counts only for one of these). */
  toolNames?: string[];
}

/** One generated answer and how it scored. */
export interface GenerationSample {
  source: string;
  prompt: string;
  reference: string;
  prediction: string;
  exact: boolean;
  /** For a tool-call reference: the calls found in the prediction. */
  calls?: ToolCallRef[];
}

/** Generation metrics (fractions in [0, 1]); the tool-call ones over tool-call references only. */
export interface GenerationMetrics {
  /** Examples generated for. */
  generated: number;
  /** Trimmed prediction equals the trimmed reference (a tool-call turn: the same calls, in order). */
  exact_match: number;
  /** Examples whose reference is a tool call. */
  tool_call_examples: number;
  /** Of those: the prediction holds at least one parseable call. */
  parseable_call_rate?: number;
  /** Of those: the first call's function name equals the reference's. */
  function_name_accuracy?: number;
  /** Of those: the first call's name and arguments equal the reference's (JSON deep equality). */
  arguments_accuracy?: number;
  /** Wall time of generating and scoring, seconds. */
  seconds: number;
}

export interface GenerateEvalOptions {
  /** New tokens per answer at most (default 256; with choices, the longest choice + 1). */
  maxNewTokens?: number;
  /** Prompts per batched generation (default 32). */
  batchSize?: number;
  /** Answers the output is constrained to (e.g. the label set). */
  choices?: readonly string[];
  /** Called after each batch with (done, total). */
  onProgress?: (done: number, total: number) => void;
}

function fail(source: SourceRef, message: string): Error {
  return new Error(`${source.path}:${source.line}: ${message}`);
}

/**
 * The generation target of a record: a chat's last trainable assistant turn (prompted by the
 * conversation before it), a completion's completion (prompted by its prompt). Text records have
 * none (undefined).
 * @throws Error naming file and line when the conversation cannot be rendered.
 */
export function generationTarget(lm: CausalLM, r: SftRecord): GenerationTarget | undefined {
  const tok = lm.tokenizer;
  if (r.kind === 'text') return undefined;
  if (r.kind === 'completion') {
    return { source: r.source, promptIds: tok.encode(r.prompt, { addSpecialTokens: true }), reference: r.completion };
  }
  const k = r.trainable[r.trainable.length - 1];
  const answer = r.messages[k];
  // Rendered as in training, so the prompt's tokens are the ones the answer followed there.
  const { messages, tools } = chatForTemplate(tok, r.messages.slice(0, k + 1), r.tools);
  let prompt: string;
  try {
    prompt = tok.applyChatTemplate(messages.slice(0, messages.length - 1) as ChatMessage[], { tools: tools ?? null, add_generation_prompt: true });
  } catch (err) {
    throw fail(r.source, (err as Error).message);
  }
  const calls = answer.tool_calls?.map((c) => ({ name: c.function?.name ?? String(c.name), arguments: (c.function?.arguments ?? c.arguments ?? {}) as Record<string, unknown> }));
  const reference = calls && calls.length > 0
    ? [typeof answer.content === 'string' ? answer.content.trim() : '', ...calls.map((c) => hermesToolCallText(c.name, c.arguments))].filter(Boolean).join('\n')
    : String(answer.content ?? '');
  const toolNames = (r.tools ?? []).map((t) => (t as { function?: { name?: unknown } }).function?.name).filter((n): n is string => typeof n === 'string');
  return {
    source: r.source,
    promptIds: tok.encode(prompt, { addSpecialTokens: false }),
    reference,
    ...(calls && calls.length > 0 ? { referenceCalls: calls } : {}),
    ...(toolNames.length > 0 ? { toolNames } : {}),
  };
}

/** JSON deep equality (object key order ignored; numbers by value). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((x, i) => jsonEqual(x, bb[i]));
  }
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b as object, k) && jsonEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/**
 * The tool calls in a generated answer, as src/llm/tool-calls.ts finds them (Hermes
 * `<tool_call>` blocks — the convention the training data is rendered in when the model's
 * template has none —, Mistral `[TOOL_CALLS]`, a Llama 3 bare-JSON call to one of `toolNames`).
 */
export function parseGeneratedToolCalls(text: string, toolNames: readonly string[] = []): ToolCallRef[] {
  return parseToolCalls(text, { toolNames }).tool_calls.map((c) => ({ name: c.function.name, arguments: c.function.arguments }));
}

/** Scores predictions against targets. */
export function scoreGenerations(targets: readonly GenerationTarget[], predictions: readonly string[], seconds = 0): { metrics: GenerationMetrics; exact: boolean[]; calls: Array<ToolCallRef[] | undefined> } {
  let exactN = 0, toolN = 0, parseable = 0, names = 0, args = 0;
  const exact: boolean[] = [];
  const calls: Array<ToolCallRef[] | undefined> = [];
  targets.forEach((t, i) => {
    const pred = predictions[i];
    let ok: boolean;
    if (t.referenceCalls) {
      toolN++;
      const found = parseGeneratedToolCalls(pred, t.toolNames);
      calls.push(found);
      if (found.length > 0) parseable++;
      const ref = t.referenceCalls[0];
      if (found[0]?.name === ref.name) names++;
      if (found[0]?.name === ref.name && jsonEqual(found[0].arguments, ref.arguments)) args++;
      ok = found.length === t.referenceCalls.length && found.every((c, k) => c.name === t.referenceCalls![k].name && jsonEqual(c.arguments, t.referenceCalls![k].arguments));
    } else {
      calls.push(undefined);
      ok = pred.trim() === t.reference.trim();
    }
    exact.push(ok);
    if (ok) exactN++;
  });
  const n = targets.length;
  const metrics: GenerationMetrics = { generated: n, exact_match: n ? exactN / n : NaN, tool_call_examples: toolN, seconds };
  if (toolN > 0) {
    metrics.parseable_call_rate = parseable / toolN;
    metrics.function_name_accuracy = names / toolN;
    metrics.arguments_accuracy = args / toolN;
  }
  return { metrics, exact, calls };
}

/**
 * Generates every target's answer: greedy, in batches of prompts of similar length, stopping at
 * the tokenizer's end-of-turn ids; with `choices`, constrained to them (and ended as soon as the
 * choice is decided). The text is decoded with special tokens kept (a `<tool_call>` marker may be
 * one) and the end-of-turn token dropped.
 * @returns predictions in target order.
 */
export async function generateAnswers(lm: CausalLM, targets: readonly GenerationTarget[], o: GenerateEvalOptions = {}): Promise<string[]> {
  const tok = lm.tokenizer;
  const eos = tok.eosTokenIds.length > 0 ? [...tok.eosTokenIds] : tok.eosTokenId !== undefined ? [tok.eosTokenId] : [];
  const trie = o.choices ? new ChoiceTrie(o.choices, (t) => tok.encode(t, { addSpecialTokens: false }), eos) : undefined;
  const maxNewTokens = o.maxNewTokens ?? (trie ? trie.maxTokens + 1 : 256);
  const batchSize = o.batchSize ?? 32;
  const pad = tok.padTokenId ?? eos[0] ?? 0;
  const order = targets.map((_, i) => i).sort((a, b) => targets[a].promptIds.length - targets[b].promptIds.length || a - b);
  const out = new Array<string>(targets.length);
  for (let s = 0; s < order.length; s += batchSize) {
    const idx = order.slice(s, s + batchSize);
    const ids: number[][] = idx.map(() => []);
    const room = lm.config.max_position_embeddings - Math.max(...idx.map((i) => targets[i].promptIds.length));
    if (room < 1) throw fail(targets[idx[idx.length - 1]].source, `the prompt fills the model's max_position_embeddings (${lm.config.max_position_embeddings}); nothing can be generated`);
    for await (const ev of generateIds(lm.engine, lm.config.vocab_size, idx.map((i) => targets[i].promptIds), {
      maxNewTokens: Math.min(maxNewTokens, room), eosTokenIds: eos, padTokenId: pad, temperature: 0, constraint: trie,
    })) {
      if (ev.token >= 0) ids[ev.row].push(ev.token);
    }
    idx.forEach((i, r) => {
      let row = ids[r];
      if (trie) {
        out[i] = trie.resolve(row) ?? '';
        return;
      }
      if (row.length > 0 && eos.includes(row[row.length - 1])) row = row.slice(0, -1);
      out[i] = tok.decode(row, { skipSpecialTokens: false });
    });
    o.onProgress?.(Math.min(s + batchSize, order.length), order.length);
  }
  return out;
}

/**
 * Generates and scores: the {@link GenerationMetrics} and every sample.
 * @throws Error naming file and line for a record that cannot be rendered.
 */
export async function evaluateByGeneration(lm: CausalLM, records: readonly SftRecord[], o: GenerateEvalOptions = {}): Promise<{ metrics: GenerationMetrics; samples: GenerationSample[] }> {
  const started = performance.now();
  const targets = records.map((r) => generationTarget(lm, r)).filter((t): t is GenerationTarget => t !== undefined);
  const predictions = await generateAnswers(lm, targets, o);
  const { metrics, exact, calls } = scoreGenerations(targets, predictions, (performance.now() - started) / 1000);
  const samples = targets.map((t, i) => ({
    source: `${t.source.path}:${t.source.line}`,
    prompt: lm.tokenizer.decode(t.promptIds, { skipSpecialTokens: false }),
    reference: t.reference,
    prediction: predictions[i],
    exact: exact[i],
    ...(calls[i] ? { calls: calls[i] } : {}),
  }));
  return { metrics, samples };
}

/**
 * The distinct reference answers of records (trimmed), sorted: the label set of a
 * classification-as-chat dataset, for constrained generation (--choices-from-labels).
 * Tool-call and text records give none.
 */
export function referenceChoices(records: readonly SftRecord[]): string[] {
  const set = new Set<string>();
  for (const r of records) {
    if (r.kind === 'completion') set.add(r.completion.trim());
    else if (r.kind === 'chat') {
      const m = r.messages[r.trainable[r.trainable.length - 1]];
      if (!m.tool_calls?.length && typeof m.content === 'string') set.add(m.content.trim());
    }
  }
  set.delete('');
  return [...set].sort();
}
