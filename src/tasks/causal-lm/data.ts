/**
 * Supervised fine-tuning data for causal LMs, read and validated before any model loads.
 *
 * Formats (one record per JSONL line; a .json file may hold an array of records, as
 * LLaMA-Factory's datasets do; the format is decided per record by its keys):
 * - chat, the OpenAI fine-tuning format: `{"messages": [{"role", "content"}...], "tools": [...]}`
 *   with roles system / developer (read as system) / user / assistant / tool, assistant
 *   `tool_calls` (`{"type": "function", "function": {"name", "arguments"}}`, arguments a JSON
 *   string as OpenAI writes them or an object), tool results, and OpenAI's per-message
 *   `"weight": 0 | 1` (0: that assistant turn is context, not a target);
 * - ShareGPT (LLaMA-Factory, Axolotl): `{"conversations": [{"from", "value"}...], "system"?,
 *   "tools"?}` with from human / gpt / system / function_call / observation (also user /
 *   assistant / tool), `tools` a JSON string or a list; function_call values are
 *   `{"name", "arguments"}` objects (or lists of them) and become assistant tool_calls,
 *   observations become tool messages;
 * - prompt/completion (TRL): `{"prompt": "...", "completion": "..."}`, or both as message lists
 *   (TRL's conversational prompt-completion: only the completion's assistant turns train);
 * - language modelling: `{"text": "..."}`, or a .txt file read as one example per
 *   blank-line-separated paragraph (Hugging Face datasets' text loader, sample_by="paragraph").
 *
 * Every error names the file, the line (for a .json array: the line where the record starts)
 * and the field, e.g. `chats.jsonl:12: messages[2].tool_calls[0].function.arguments is not valid JSON`.
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { decodeUtf8 } from '../../data/text.js';
import type { ChatMessage, ChatToolCall } from '../../chat/template.js';
import { parseJsonText } from '../../io/model-folder.js';

/** Where a record came from: file and 1-based line. */
export interface SourceRef {
  path: string;
  line: number;
}

/** A conversation to learn the assistant turns of. */
export interface ChatRecord {
  kind: 'chat';
  messages: ChatMessage[];
  /** Tool schemas, OpenAI's shape ({type: 'function', function: {name, description, parameters}}). */
  tools?: unknown[];
  /**
   * Indices of the assistant messages that are targets (an OpenAI weight-0 message or a
   * conversational prompt's assistant turn is context only).
   */
  trainable: number[];
  source: SourceRef;
}

/** A prompt and the completion to learn (TRL's prompt-completion, plain text). */
export interface CompletionRecord {
  kind: 'completion';
  prompt: string;
  completion: string;
  source: SourceRef;
}

/** Text to learn every token of (continued pre-training). */
export interface TextRecord {
  kind: 'text';
  text: string;
  source: SourceRef;
}

export type SftRecord = ChatRecord | CompletionRecord | TextRecord;

/** What readSftFile found. */
export interface SftDataset {
  path: string;
  records: SftRecord[];
  /** Records of each kind. */
  counts: Record<SftRecord['kind'], number>;
}

const SHAREGPT_ROLES: Record<string, string> = {
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  assistant: 'assistant',
  system: 'system',
  function_call: 'assistant',
  observation: 'tool',
  tool: 'tool',
  function: 'tool',
};

type Where = (field?: string) => string;

function describe(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  const s = JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

function str(v: unknown, where: Where, field: string, opts: { empty?: boolean } = {}): string {
  if (typeof v !== 'string') throw new Error(`${where(field)} is ${describe(v)}; expected a string`);
  if (!opts.empty && v.trim() === '') throw new Error(`${where(field)} is empty; expected text`);
  return v;
}

/** OpenAI content: a string, or a list of {type: 'text', text} parts (joined). */
function content(v: unknown, where: Where, field: string, opts: { empty?: boolean } = {}): string {
  if (Array.isArray(v)) {
    return v
      .map((part, k) => {
        const p = part as { type?: unknown; text?: unknown } | null;
        if (p === null || typeof p !== 'object' || p.type !== 'text') {
          throw new Error(`${where(`${field}[${k}]`)} is ${describe(p === null || typeof p !== 'object' ? p : p.type)}; only text parts ({"type": "text", "text": ...}) can be trained on`);
        }
        return str(p.text, where, `${field}[${k}].text`, { empty: true });
      })
      .join('');
  }
  return str(v, where, field, opts);
}

/** Tool-call arguments as an object (chat templates write them with tojson); a JSON string is parsed. */
function callArguments(v: unknown, where: Where, field: string): Record<string, unknown> {
  let args = v ?? {};
  if (typeof args === 'string') {
    try {
      args = args.trim() === '' ? {} : JSON.parse(args);
    } catch (err) {
      throw new Error(`${where(field)} is not valid JSON (${(err as Error).message}); expected the arguments object as JSON text`);
    }
  }
  if (args === null || typeof args !== 'object' || Array.isArray(args)) throw new Error(`${where(field)} is ${describe(args)}; expected an object of arguments`);
  return args as Record<string, unknown>;
}

function toolCall(v: unknown, where: Where, field: string): ChatToolCall {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${where(field)} is ${describe(v)}; expected {"type": "function", "function": {"name", "arguments"}}`);
  const c = v as Record<string, unknown>;
  const nested = c.function !== undefined;
  const fn = (nested ? c.function : c) as Record<string, unknown> | null;
  const fnField = nested ? `${field}.function` : field;
  if (fn === null || typeof fn !== 'object' || Array.isArray(fn)) throw new Error(`${where(fnField)} is ${describe(fn)}; expected {"name", "arguments"}`);
  const name = str(fn.name, where, `${fnField}.name`);
  const args = callArguments(fn.arguments ?? fn.parameters, where, `${fnField}.arguments`);
  const out: ChatToolCall = { type: 'function', function: { name, arguments: args } };
  if (typeof c.id === 'string') out.id = c.id;
  return out;
}

function tools(v: unknown, where: Where, field: string): unknown[] | undefined {
  if (v === undefined || v === null) return undefined;
  let list = v;
  if (typeof list === 'string') {
    if (list.trim() === '') return undefined;
    try {
      list = JSON.parse(list);
    } catch (err) {
      throw new Error(`${where(field)} is not valid JSON (${(err as Error).message}); expected a JSON list of tool schemas`);
    }
  }
  if (!Array.isArray(list)) throw new Error(`${where(field)} is ${describe(list)}; expected a list of tool schemas`);
  if (list.length === 0) return undefined;
  return list.map((t, k) => {
    if (t === null || typeof t !== 'object' || Array.isArray(t)) throw new Error(`${where(`${field}[${k}]`)} is ${describe(t)}; expected a tool schema object`);
    const o = t as Record<string, unknown>;
    // LLaMA-Factory lists bare function schemas; OpenAI wraps them in {type, function}.
    const fn = (o.type === 'function' && o.function ? o.function : o) as Record<string, unknown>;
    const fnField = fn === o ? `${field}[${k}]` : `${field}[${k}].function`;
    if (fn === null || typeof fn !== 'object') throw new Error(`${where(fnField)} is ${describe(fn)}; expected {"name", "description", "parameters"}`);
    str(fn.name, where, `${fnField}.name`);
    return fn === o ? { type: 'function', function: o } : o;
  });
}

function openAiMessages(v: unknown, where: Where, field: string): { messages: ChatMessage[]; weights: Array<number | undefined> } {
  if (!Array.isArray(v) || v.length === 0) throw new Error(`${where(field)} is ${Array.isArray(v) ? 'empty' : describe(v)}; expected a non-empty list of messages`);
  const weights: Array<number | undefined> = [];
  const messages = v.map((m, i): ChatMessage => {
    const f = `${field}[${i}]`;
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new Error(`${where(f)} is ${describe(m)}; expected {"role", "content"}`);
    const o = m as Record<string, unknown>;
    let role = str(o.role, where, `${f}.role`);
    if (role === 'developer') role = 'system';
    if (!['system', 'user', 'assistant', 'tool'].includes(role)) {
      throw new Error(`${where(`${f}.role`)} is ${JSON.stringify(role)}; expected system, developer, user, assistant or tool`);
    }
    const out: ChatMessage = { role };
    const calls = o.tool_calls ?? (o.function_call ? [o.function_call] : undefined);
    if (calls !== undefined && calls !== null) {
      if (role !== 'assistant') throw new Error(`${where(`${f}.tool_calls`)}: only assistant messages make tool calls (role is ${role})`);
      if (!Array.isArray(calls)) throw new Error(`${where(`${f}.tool_calls`)} is ${describe(calls)}; expected a list`);
      if (calls.length > 0) out.tool_calls = calls.map((c, j) => toolCall(c, where, `${f}.tool_calls[${j}]`));
    }
    if (o.content === undefined || o.content === null) {
      if (!out.tool_calls) throw new Error(`${where(`${f}.content`)} is missing; expected text (or tool_calls for an assistant)`);
      out.content = '';
    } else {
      out.content = content(o.content, where, `${f}.content`, { empty: role === 'assistant' || role === 'tool' });
    }
    if (role === 'tool') {
      if (typeof o.tool_call_id === 'string') out.tool_call_id = o.tool_call_id;
      if (typeof o.name === 'string') out.name = o.name;
    }
    let weight: number | undefined;
    if (o.weight !== undefined) {
      if (role !== 'assistant') throw new Error(`${where(`${f}.weight`)}: only assistant messages have a weight (role is ${role})`);
      if (o.weight !== 0 && o.weight !== 1) throw new Error(`${where(`${f}.weight`)} is ${describe(o.weight)}; expected 0 or 1`);
      weight = o.weight;
    }
    weights.push(weight);
    return out;
  });
  return { messages, weights };
}

function assistantTargets(messages: ChatMessage[], weights: Array<number | undefined>, from: number, where: Where, field: string): number[] {
  const trainable = messages.flatMap((m, i) => (m.role === 'assistant' && i >= from && weights[i] !== 0 ? [i] : []));
  if (trainable.length === 0) {
    throw new Error(`${where(field)} has no assistant message to learn from${messages.some((m) => m.role === 'assistant') ? ' (every assistant message has weight 0 or is part of the prompt)' : ''}`);
  }
  return trainable;
}

function shareGpt(o: Record<string, unknown>, where: Where, source: SourceRef): ChatRecord {
  const conv = o.conversations;
  if (!Array.isArray(conv) || conv.length === 0) throw new Error(`${where('conversations')} is ${Array.isArray(conv) ? 'empty' : describe(conv)}; expected a non-empty list of {"from", "value"}`);
  const messages: ChatMessage[] = [];
  if (o.system !== undefined && o.system !== null && o.system !== '') messages.push({ role: 'system', content: str(o.system, where, 'system') });
  conv.forEach((turn, i) => {
    const f = `conversations[${i}]`;
    if (turn === null || typeof turn !== 'object' || Array.isArray(turn)) throw new Error(`${where(f)} is ${describe(turn)}; expected {"from", "value"}`);
    const t = turn as Record<string, unknown>;
    const from = str(t.from ?? t.role, where, `${f}.from`);
    const role = SHAREGPT_ROLES[from];
    if (!role) throw new Error(`${where(`${f}.from`)} is ${JSON.stringify(from)}; expected one of ${Object.keys(SHAREGPT_ROLES).join(', ')}`);
    const value = t.value ?? t.content;
    if (from === 'function_call') {
      let parsed: unknown = value;
      if (typeof value === 'string') {
        try {
          parsed = JSON.parse(value);
        } catch (err) {
          throw new Error(`${where(`${f}.value`)} is not valid JSON (${(err as Error).message}); a function_call's value is {"name", "arguments"}`);
        }
      }
      const list = Array.isArray(parsed) ? parsed : [parsed];
      if (list.length === 0) throw new Error(`${where(`${f}.value`)} is an empty list; expected a call {"name", "arguments"}`);
      const calls = list.map((c, j) => toolCall(c, where, Array.isArray(parsed) ? `${f}.value[${j}]` : `${f}.value`));
      messages.push({ role: 'assistant', content: '', tool_calls: calls });
      return;
    }
    const text = str(value, where, `${f}.value`, { empty: role !== 'user' && role !== 'system' });
    if (role === 'system' && messages.length > 0 && i > 0) throw new Error(`${where(`${f}.from`)}: a system turn must come first`);
    messages.push({ role, content: text });
  });
  const tl = tools(o.tools, where, 'tools');
  return { kind: 'chat', messages, ...(tl ? { tools: tl } : {}), trainable: assistantTargets(messages, [], 0, where, 'conversations'), source };
}

/**
 * One record → an SftRecord, by its keys (messages, conversations, prompt + completion, text).
 * @throws Error naming `where` and the field.
 */
export function parseSftRecord(value: unknown, source: SourceRef): SftRecord {
  const where: Where = (field) => `${source.path}:${source.line}${field ? `: ${field}` : ''}`;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error(`${where()}: expected a JSON object, got ${describe(value)}`);
  const o = value as Record<string, unknown>;
  if (o.messages !== undefined) {
    const { messages, weights } = openAiMessages(o.messages, where, 'messages');
    const tl = tools(o.tools ?? o.functions, where, o.tools !== undefined ? 'tools' : 'functions');
    return { kind: 'chat', messages, ...(tl ? { tools: tl } : {}), trainable: assistantTargets(messages, weights, 0, where, 'messages'), source };
  }
  if (o.conversations !== undefined) return shareGpt(o, where, source);
  if (o.prompt !== undefined || o.completion !== undefined) {
    if (o.prompt === undefined) throw new Error(`${where('prompt')} is missing (the record has "completion")`);
    if (o.completion === undefined) throw new Error(`${where('completion')} is missing (the record has "prompt")`);
    if (Array.isArray(o.prompt) || Array.isArray(o.completion)) {
      const p = openAiMessages(o.prompt, where, 'prompt');
      const c = openAiMessages(o.completion, where, 'completion');
      const messages = [...p.messages, ...c.messages];
      const tl = tools(o.tools, where, 'tools');
      return {
        kind: 'chat', messages, ...(tl ? { tools: tl } : {}),
        trainable: assistantTargets(messages, [...p.weights, ...c.weights], p.messages.length, where, 'completion'), source,
      };
    }
    return { kind: 'completion', prompt: str(o.prompt, where, 'prompt', { empty: true }), completion: str(o.completion, where, 'completion'), source };
  }
  if (o.text !== undefined) return { kind: 'text', text: str(o.text, where, 'text'), source };
  const keys = Object.keys(o).map((k) => JSON.stringify(k)).join(', ');
  throw new Error(`${where()}: cannot tell the format from the keys ${keys || '(none)'}; expected "messages" (chat), "conversations" (ShareGPT), "prompt" + "completion", or "text"`);
}

/** 1-based line of each top-level element of a JSON array text (element starts), by a string-aware scan. */
function arrayElementLines(text: string): number[] {
  const lines: number[] = [];
  let line = 1;
  let depth = 0;
  let inString = false;
  let expectValue = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') line++;
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (depth === 1 && expectValue && !/\s/.test(c) && c !== ']') {
      lines.push(line);
      expectValue = false;
    }
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') {
      depth++;
      if (depth === 1) expectValue = true;
    } else if (c === ']' || c === '}') depth--;
    else if (c === ',' && depth === 1) expectValue = true;
  }
  return lines;
}

/**
 * Reads a fine-tuning data file: .jsonl (one record a line), .json (an array of records, or one
 * record a line), or .txt (one text example per blank-line-separated paragraph).
 * @throws Error naming file and line: invalid UTF-8 or JSON, a record whose format is unclear,
 *   any field error (see parseSftRecord), or a file without records.
 */
export function readSftFile(path: string): SftDataset {
  const { text } = decodeUtf8(readFileSync(path), path);
  const ext = extname(path).toLowerCase();
  const records: SftRecord[] = [];
  if (ext === '.txt' || ext === '.text' || ext === '.md') {
    let start = -1;
    const lines = text.split(/\r\n|\n|\r/);
    const para: string[] = [];
    const flush = () => {
      if (para.length > 0) records.push({ kind: 'text', text: para.join('\n'), source: { path, line: start } });
      para.length = 0;
    };
    lines.forEach((l, i) => {
      if (l.trim() === '') return flush();
      if (para.length === 0) start = i + 1;
      para.push(l);
    });
    flush();
  } else if (ext === '.json' && text.trimStart().startsWith('[')) {
    let data: unknown;
    try {
      data = parseJsonText(text, path);
    } catch (err) {
      throw new Error(`${(err as Error).message}; expected a JSON array of records, or one JSON object per line`, { cause: err });
    }
    const lines = arrayElementLines(text);
    (data as unknown[]).forEach((rec, i) => records.push(parseSftRecord(rec, { path, line: lines[i] ?? 1 })));
  } else if (ext === '.jsonl' || ext === '.ndjson' || ext === '.json') {
    text.split('\n').forEach((raw, i) => {
      const src = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (src.trim() === '') return;
      let obj: unknown;
      try {
        obj = JSON.parse(src);
      } catch (err) {
        throw new Error(`${path}:${i + 1}: not valid JSON (${(err as Error).message}); expected one JSON object per line`);
      }
      records.push(parseSftRecord(obj, { path, line: i + 1 }));
    });
  } else {
    throw new Error(`${path}: cannot tell the format from extension "${ext}"; expected .jsonl, .json or .txt`);
  }
  if (records.length === 0) throw new Error(`${path}: no examples found (the file is empty or blank)`);
  const counts = { chat: 0, completion: 0, text: 0 };
  for (const r of records) counts[r.kind]++;
  return { path, records, counts };
}
