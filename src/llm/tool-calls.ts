/**
 * Tool calls in a model's output text → OpenAI-shaped `tool_calls`. The one place that knows the
 * formats models write them in; LLM.chat uses it when tools are given.
 *
 * Formats understood (each as its model family's chat template and docs define it):
 * - `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call —
 *   Qwen2/2.5/3 (their tokenizer_config.json chat_template), Hermes 2/3, SmolLM3 and the other
 *   ChatML tool templates.
 * - `mistral`: `[TOOL_CALLS]` followed by a JSON array of `{"name", "arguments"}` (Mistral
 *   v0.3 / Nemo templates; `[TOOL_CALLS]name[ARGS]{...}` of newer Mistral templates too).
 * - `llama3`: the whole reply is one JSON object `{"name": ..., "parameters": {...}}`, optionally
 *   after `<|python_tag|>` (Llama 3.1/3.2/3.3 JSON tool calling, per Meta's prompt format
 *   docs). Because any JSON answer looks like this, it is taken as a call only when `name` is one
 *   of the tools offered.
 *
 * A block whose JSON does not parse, or has no string `name`, is not a call: it stays in the text;
 * with `offeredOnly`, so does a block that names a tool not offered (OpenAI never returns a call to
 * a function it was not given, and a client could not dispatch it).
 */
import { randomBytes } from 'node:crypto';
import type { ChatToolCall } from '../chat/template.js';

/** One parsed call, as OpenAI returns it, with arguments as an object (as chat templates take them back). */
export interface ParsedToolCall extends ChatToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: Record<string, unknown> };
}

/** The tool-call formats {@link parseToolCalls} knows. */
export const TOOL_CALL_FORMATS = ['hermes', 'mistral', 'llama3'] as const;
export type ToolCallFormat = (typeof TOOL_CALL_FORMATS)[number];

export interface ParseToolCallsOptions {
  /** Names of the tools offered: a `llama3` bare-JSON reply counts as a call only for one of these. */
  toolNames?: readonly string[];
  /** Every format: a call is one only when it names one of `toolNames` (what a server returns). Default false (an evaluation scores a call to any name). */
  offeredOnly?: boolean;
  /** Formats to try, in order (default: all of TOOL_CALL_FORMATS). */
  formats?: readonly ToolCallFormat[];
}

const newId = () => `call_${randomBytes(12).toString('hex')}`;

/** A name a call may have (any, or one of the tools offered). */
type NameFilter = (name: string) => boolean;

function call(value: unknown, named: NameFilter): ParsedToolCall | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  // Some models nest it the OpenAI way: {"type": "function", "function": {...}}.
  const fn = (v.function !== null && typeof v.function === 'object' ? v.function : v) as Record<string, unknown>;
  if (typeof fn.name !== 'string' || fn.name === '' || !named(fn.name)) return undefined;
  let args = fn.arguments ?? fn.parameters ?? {};
  if (typeof args === 'string') {
    try {
      args = JSON.parse(args);
    } catch {
      return undefined;
    }
  }
  if (args === null || typeof args !== 'object' || Array.isArray(args)) return undefined;
  return { id: newId(), type: 'function', function: { name: fn.name, arguments: args as Record<string, unknown> } };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function hermes(text: string, named: NameFilter): { content: string; calls: ParsedToolCall[] } | undefined {
  const calls: ParsedToolCall[] = [];
  // An unclosed last block (generation stopped at </tool_call>'s first token, or at max tokens) still counts if its JSON is whole.
  const content = text.replace(/<tool_call>\s*([\s\S]*?)\s*(?:<\/tool_call>|$)/g, (whole, body: string) => {
    const c = call(parseJson(body), named);
    if (!c) return whole;
    calls.push(c);
    return '';
  });
  return calls.length ? { content: content.trim(), calls } : undefined;
}

function mistral(text: string, named: NameFilter): { content: string; calls: ParsedToolCall[] } | undefined {
  const at = text.indexOf('[TOOL_CALLS]');
  if (at < 0) return undefined;
  const rest = text.slice(at + '[TOOL_CALLS]'.length).trim();
  const calls: ParsedToolCall[] = [];
  const list = parseJson(rest);
  if (Array.isArray(list)) {
    for (const item of list) {
      const c = call(item, named);
      if (!c) return undefined;
      calls.push(c);
    }
  } else {
    // name[ARGS]{json} pairs, each after its own [TOOL_CALLS] marker.
    for (const part of text.slice(at).split('[TOOL_CALLS]').slice(1)) {
      const m = /^\s*([^\s[]+)\[ARGS\]([\s\S]*)$/.exec(part);
      const c = m ? call({ name: m[1], arguments: parseJson(m[2].trim()) }, named) : undefined;
      if (!c) return undefined;
      calls.push(c);
    }
  }
  return calls.length ? { content: text.slice(0, at).trim(), calls } : undefined;
}

function llama3(text: string, toolNames: readonly string[]): { content: string; calls: ParsedToolCall[] } | undefined {
  const body = text.replace(/^\s*<\|python_tag\|>/, '').trim();
  if (!body.startsWith('{')) return undefined;
  const c = call(parseJson(body), (name) => toolNames.includes(name));
  if (!c) return undefined;
  return { content: '', calls: [c] };
}

/**
 * Finds the tool calls in a model's reply.
 * @param text the generated text (special tokens such as `<tool_call>` kept in it).
 * @returns `content`: the text with the calls removed (trimmed); `tool_calls`: the calls in order
 *   (empty when none was found, and then `content` is `text` unchanged).
 */
export function parseToolCalls(text: string, options: ParseToolCallsOptions = {}): { content: string; tool_calls: ParsedToolCall[] } {
  const toolNames = options.toolNames ?? [];
  const named: NameFilter = options.offeredOnly ? (name) => toolNames.includes(name) : () => true;
  for (const format of options.formats ?? TOOL_CALL_FORMATS) {
    const found = format === 'hermes' ? hermes(text, named) : format === 'mistral' ? mistral(text, named) : llama3(text, toolNames);
    if (found) return { content: found.content, tool_calls: found.calls };
  }
  return { content: text, tool_calls: [] };
}
