/**
 * SFT records → token ids and labels (TRL SFTTrainer's data handling): chats rendered through the
 * model's chat template with loss on the assistant turns only (the end-of-turn token inside, so
 * the model learns to stop), prompt/completion with loss on the completion only (EOS appended),
 * text with loss on every token (EOS appended); right truncation to max_length (TRL's
 * truncation_mode "keep_start"), examples left without a target counted and skipped, optional
 * packing of short examples into max_length rows whose examples stay apart (each its own
 * attention segment), and the padded (B, T) batches the engine takes.
 */
import type { Batch } from '../../engine.js';
import type { LlmTokenizer } from '../../tokenizer/bpe.js';
import { resolveChatTemplate, type ChatMessage } from '../../chat/template.js';
import type { SftRecord, SourceRef, ChatRecord } from './data.js';

/** What the engine ignores in labels (PyTorch CrossEntropyLoss ignore_index). */
export const IGNORE_INDEX = -100;

/**
 * One training row: one example, or several packed ones. Labels are per token, IGNORE_INDEX where
 * no loss is taken; the engine shifts them (position t predicts labels[t + 1]).
 */
export interface SftRow {
  input_ids: Int32Array;
  labels: Int32Array;
  /**
   * Per token, the example (segment) it belongs to, 1, 2, 3...: attention stays inside a segment
   * and positions restart in each. Absent: one example, all 1.
   */
  segments?: Int32Array;
  /** Positions t ≥ 1 of each segment with labels[t] ≠ IGNORE_INDEX: the tokens the row is trained to predict. */
  numTargets: number;
  /** Examples in the row. */
  numExamples: number;
}

/** An encoded example with where it came from. */
export interface EncodedSftExample extends SftRow {
  source: SourceRef;
  /** It was cut at max_length. */
  truncated: boolean;
}

export interface EncodeSftOptions {
  /** Tokens per example at most (right truncation). */
  maxLength: number;
}

/** Counts of what encoding did, for the log and the report. */
export interface EncodeStats {
  examples: number;
  /** Examples cut at max_length (still trained on what was left). */
  truncated: number;
  /** Examples with no target token left after truncation, left out. */
  skipped: number;
  /** Where the first few skipped examples came from. */
  skippedSources: SourceRef[];
  /** Target tokens (loss positions) over all kept examples. */
  targetTokens: number;
  /** Tokens over all kept examples. */
  tokens: number;
}

const HERMES_TOOLS_PREAMBLE =
  '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' +
  'You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n';
const HERMES_TOOLS_POSTAMBLE =
  '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' +
  '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>';

/** A tool call written the Hermes way (Qwen2.5 / Hermes / SmolLM3 ChatML tool templates). */
export function hermesToolCallText(name: string, args: unknown): string {
  return `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>`;
}

/**
 * The messages and tools to render for a template: a template that handles tools gets them as
 * they are; one that ignores them (SmolLM2's ChatML) gets the Hermes tool convention written into
 * the conversation instead — the tool schemas in the system message and each assistant tool call
 * as a `<tool_call>` block in its content — so the model still sees what it is trained to call.
 */
export function chatForTemplate(tokenizer: LlmTokenizer, messages: ChatMessage[], tools: unknown[] | undefined): { messages: ChatMessage[]; tools?: unknown[] } {
  const hasCalls = messages.some((m) => m.tool_calls && m.tool_calls.length > 0);
  if (!tools && !hasCalls) return { messages };
  const { template } = resolveChatTemplate(tokenizer, { tools: tools ?? null, source: tokenizer.source });
  const knowsTools = /\btools\b/.test(template);
  const knowsCalls = /\btool_calls\b/.test(template);
  if ((knowsTools || !tools) && (knowsCalls || !hasCalls)) return { messages, ...(tools ? { tools } : {}) };
  let out = messages.map((m) => {
    if (knowsCalls || !m.tool_calls || m.tool_calls.length === 0) return m;
    const calls = m.tool_calls.map((c) => hermesToolCallText(c.function?.name ?? String(c.name), c.function?.arguments ?? c.arguments ?? {}));
    const { tool_calls: _drop, ...rest } = m;
    const text = typeof m.content === 'string' && m.content.trim() !== '' ? `${m.content}\n` : '';
    return { ...rest, content: text + calls.join('\n') };
  });
  if (tools && !knowsTools) {
    const block = HERMES_TOOLS_PREAMBLE + tools.map((t) => JSON.stringify(t)).join('\n') + HERMES_TOOLS_POSTAMBLE;
    if (out[0]?.role === 'system') out = [{ ...out[0], content: `${String(out[0].content ?? '')}\n\n${block}` }, ...out.slice(1)];
    else out = [{ role: 'system', content: block }, ...out];
    return { messages: out };
  }
  return { messages: out, ...(tools ? { tools } : {}) };
}

function countTargets(labels: Int32Array, from = 1): number {
  let n = 0;
  for (let t = from; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) n++;
  return n;
}

function encodeChat(tokenizer: LlmTokenizer, r: ChatRecord): { ids: number[]; labels: number[] } {
  const { messages, tools } = chatForTemplate(tokenizer, r.messages, r.tools);
  let enc;
  try {
    enc = tokenizer.encodeChat(messages, { tools: tools ?? null });
  } catch (err) {
    throw new Error(`${r.source.path}:${r.source.line}: ${(err as Error).message}`, { cause: err });
  }
  const labels = new Array<number>(enc.input_ids.length).fill(IGNORE_INDEX);
  const trainable = new Set(r.trainable);
  // chatForTemplate may add a system message in front: message indices shift by the difference.
  const shift = messages.length - r.messages.length;
  for (const s of enc.spans) {
    if (!trainable.has(s.messageIndex - shift)) continue;
    for (let t = s.tokenStart; t < s.tokenEnd; t++) labels[t] = enc.input_ids[t];
  }
  return { ids: enc.input_ids, labels };
}

/** BOS (when the tokenizer adds one) + text ids; the EOS id appended unless the post-processor adds it. */
function withEos(tokenizer: LlmTokenizer, ids: number[]): number[] {
  const eos = tokenizer.eosTokenId ?? tokenizer.eosTokenIds[0];
  if (eos === undefined || tokenizer.addEosToken || ids.at(-1) === eos) return ids;
  return [...ids, eos];
}

/**
 * Token ids and labels of one record, before truncation.
 * @throws Error naming the record's file and line when the chat template fails.
 */
export function encodeSftRecord(tokenizer: LlmTokenizer, r: SftRecord): { ids: number[]; labels: number[] } {
  if (r.kind === 'chat') return encodeChat(tokenizer, r);
  if (r.kind === 'text') {
    const ids = withEos(tokenizer, tokenizer.encode(r.text, { addSpecialTokens: true }));
    return { ids, labels: [...ids] };
  }
  // The completion's tokens are those that cover its bytes, so a BPE merge across the boundary
  // ("Answer:" + " yes") is tokenized as in the whole text and still trained on.
  const promptBytes = Buffer.byteLength(r.prompt, 'utf8');
  const { ids, offsets } = tokenizer.encodeWithByteOffsets(r.prompt + r.completion, { addSpecialTokens: true });
  const full = withEos(tokenizer, ids);
  const labels = full.map((id, t) => (t >= ids.length || offsets[t][1] > promptBytes ? id : IGNORE_INDEX));
  return { ids: full, labels };
}

/**
 * Encodes records for training: tokens, labels, right truncation to maxLength; an example with no
 * target token left (its targets were all past maxLength) is left out and counted, never kept as
 * a zero-loss example.
 * @throws Error naming file and line when a record cannot be rendered; when maxLength is not an integer ≥ 2.
 */
export function encodeSftRecords(tokenizer: LlmTokenizer, records: readonly SftRecord[], o: EncodeSftOptions): { examples: EncodedSftExample[]; stats: EncodeStats } {
  if (!Number.isInteger(o.maxLength) || o.maxLength < 2) throw new Error(`max_length ${o.maxLength}: expected an integer ≥ 2 (a target needs a token before it)`);
  const examples: EncodedSftExample[] = [];
  const stats: EncodeStats = { examples: records.length, truncated: 0, skipped: 0, skippedSources: [], targetTokens: 0, tokens: 0 };
  for (const r of records) {
    const { ids, labels } = encodeSftRecord(tokenizer, r);
    // Tokens after the last target (ChatML's "\n" after <|im_end|>) change no loss: causal
    // attention keeps them out of every earlier position, and nothing after them is predicted.
    let last = labels.length - 1;
    while (last > 0 && labels[last] === IGNORE_INDEX) last--;
    const truncated = last + 1 > o.maxLength;
    const n = Math.min(last + 1, o.maxLength);
    const row: EncodedSftExample = {
      input_ids: Int32Array.from(ids.slice(0, n)),
      labels: Int32Array.from(labels.slice(0, n)),
      numTargets: 0,
      numExamples: 1,
      source: r.source,
      truncated,
    };
    row.numTargets = countTargets(row.labels);
    if (truncated) stats.truncated++;
    if (row.numTargets === 0) {
      stats.skipped++;
      if (stats.skippedSources.length < 5) stats.skippedSources.push(r.source);
      continue;
    }
    stats.targetTokens += row.numTargets;
    stats.tokens += n;
    examples.push(row);
  }
  return { examples, stats };
}

/**
 * Packs examples into rows of at most maxLength tokens, first-fit decreasing (TRL's "bfd"
 * packing strategy keeps examples whole the same way): examples sorted by length, longest first,
 * each put into the first row with room, a new row when none has. Each example is a segment of
 * its row, numbered 1, 2, 3... in attention_mask, so the engine keeps attention inside it,
 * restarts its positions and never predicts across its end: a packed row trains exactly as its
 * examples would unpacked. Deterministic (ties keep input order).
 * @throws Error when an example is longer than maxLength (encode with the same maxLength first).
 */
export function packExamples(examples: readonly SftRow[], maxLength: number): SftRow[] {
  const order = examples.map((_, i) => i).sort((a, b) => examples[b].input_ids.length - examples[a].input_ids.length || a - b);
  const bins: Array<{ used: number; items: number[] }> = [];
  for (const i of order) {
    const len = examples[i].input_ids.length;
    if (len > maxLength) throw new Error(`packExamples: example ${i} has ${len} tokens, over max_length ${maxLength}`);
    let bin = bins.find((b) => b.used + len <= maxLength);
    if (!bin) bins.push((bin = { used: 0, items: [] }));
    bin.used += len;
    bin.items.push(i);
  }
  return bins.map((b) => {
    const input_ids = new Int32Array(b.used);
    const labels = new Int32Array(b.used);
    const segments = new Int32Array(b.used);
    let at = 0;
    let numTargets = 0;
    b.items.forEach((i, k) => {
      const e = examples[i];
      input_ids.set(e.input_ids, at);
      labels.set(e.labels, at);
      segments.fill(k + 1, at, at + e.input_ids.length);
      at += e.input_ids.length;
      numTargets += e.numTargets;
    });
    return { input_ids, labels, segments, numTargets, numExamples: b.items.length };
  });
}

/**
 * Pads rows into one (B, T) batch, T = the longest row: input_ids padded with padTokenId,
 * labels with IGNORE_INDEX, attention_mask 0 on padding and the segment number (1 unpacked) on
 * tokens.
 */
export function collateSft(rows: readonly SftRow[], padTokenId: number): Batch {
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.input_ids.length));
  const input_ids = new Int32Array(B * T).fill(padTokenId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const attention_mask = new Int32Array(B * T);
  rows.forEach((r, b) => {
    input_ids.set(r.input_ids, b * T);
    labels.set(r.labels, b * T);
    if (r.segments) attention_mask.set(r.segments, b * T);
    else attention_mask.fill(1, b * T, b * T + r.input_ids.length);
  });
  return { input_ids, attention_mask, labels, batchSize: B, seqLen: T };
}
