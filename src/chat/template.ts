/**
 * Chat templates: a model's Jinja chat_template rendered with @huggingface/jinja (the engine
 * transformers.js uses), with the variables transformers' apply_chat_template passes
 * (utils/chat_template_utils.py render_jinja_template: messages, tools, documents,
 * add_generation_prompt, the tokenizer's special tokens, any extra keyword), trim_blocks and
 * lstrip_blocks on, raise_exception and strftime_now defined. The output is meant to equal
 * `tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=..., tokenize=False)`.
 */
import { Template } from '@huggingface/jinja';

/** Roles the message check accepts unless RenderChatOptions.roles says otherwise. */
export const CHAT_ROLES: readonly string[] = ['system', 'user', 'assistant', 'tool'];

/** One tool call of an assistant message (OpenAI / transformers shape; `function` may be omitted and its fields given directly). */
export interface ChatToolCall {
  id?: string;
  type?: 'function';
  function?: { name: string; arguments: Record<string, unknown> | string };
  name?: string;
  arguments?: Record<string, unknown> | string;
  [key: string]: unknown;
}

/** A content part of a multimodal message ({ type: 'text', text }). */
export interface ChatContentPart {
  type: string;
  [key: string]: unknown;
}

/** One chat message. `content` may be null or absent only for an assistant message with tool_calls. */
export interface ChatMessage {
  role: string;
  content?: string | ChatContentPart[] | null;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
  name?: string;
  [key: string]: unknown;
}

/** What a chat template sees. Extra keys (enable_thinking, date_string, ...) are passed through. */
export interface ChatTemplateContext {
  messages: ChatMessage[];
  /** JSON schemas of the tools ({ type: 'function', function: { name, description, parameters } }). */
  tools?: unknown[] | null;
  documents?: unknown[] | null;
  add_generation_prompt?: boolean;
  bos_token?: string | null;
  eos_token?: string | null;
  pad_token?: string | null;
  unk_token?: string | null;
  [key: string]: unknown;
}

export interface RenderChatOptions {
  /** Where the template came from, named in errors (e.g. "tokenizer_config.json chat_template"). Default "chat template". */
  source?: string;
  /** Accepted message roles; default CHAT_ROLES. */
  roles?: readonly string[];
}

const cache = new Map<string, Template>();
const CACHE_MAX = 16;

/**
 * Parses a chat template without rendering it, so a template given by a user fails where it is
 * given, not at the first conversation.
 * @throws Error "<source>: the chat template does not parse: <Jinja error>".
 */
export function parseChatTemplate(template: string, source: string): void {
  compile(template, source);
}

function compile(template: string, source: string): Template {
  let t = cache.get(template);
  if (t === undefined) {
    try {
      t = new Template(template);
    } catch (err) {
      throw new Error(`${source}: the chat template does not parse: ${(err as Error).message}`, { cause: err });
    }
    if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value as string);
    cache.set(template, t);
  }
  return t;
}

/**
 * Check messages the way a chat template needs them: each an object with a known role and a
 * content (a string or a list of content parts); an assistant message may have tool_calls instead
 * of content.
 * @throws Error naming the message index: not an object, a missing or unknown role, missing
 *   content, malformed tool_calls.
 */
export function validateChatMessages(messages: unknown, roles: readonly string[] = CHAT_ROLES): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages)) throw new Error(`messages must be an array, got ${messages === null ? 'null' : typeof messages}`);
  messages.forEach((m: unknown, i: number) => {
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new Error(`messages[${i}] must be an object with role and content`);
    const msg = m as Record<string, unknown>;
    if (typeof msg.role !== 'string') throw new Error(`messages[${i}] has no role (expected one of ${roles.join(', ')})`);
    if (!roles.includes(msg.role)) throw new Error(`messages[${i}] has unknown role ${JSON.stringify(msg.role)} (expected one of ${roles.join(', ')})`);
    const calls = msg.tool_calls;
    if (calls !== undefined && calls !== null) {
      if (!Array.isArray(calls)) throw new Error(`messages[${i}].tool_calls must be an array`);
      calls.forEach((c: unknown, j: number) => {
        const call = c as Record<string, unknown> | null;
        const fn = (call?.function ?? call) as Record<string, unknown> | null;
        if (call === null || typeof call !== 'object' || fn === null || typeof fn !== 'object' || typeof fn.name !== 'string') {
          throw new Error(`messages[${i}].tool_calls[${j}] must have a function name`);
        }
      });
    }
    const content = msg.content;
    const hasCalls = Array.isArray(calls) && calls.length > 0;
    if (content === undefined || content === null) {
      if (msg.role === 'assistant' && hasCalls) return;
      throw new Error(`messages[${i}] (${msg.role}) has no content`);
    }
    if (typeof content === 'string') return;
    if (Array.isArray(content) && content.every((p) => p !== null && typeof p === 'object' && typeof (p as { type?: unknown }).type === 'string')) return;
    throw new Error(`messages[${i}] (${msg.role}) content must be a string or a list of { type, ... } parts`);
  });
}

/**
 * Render a chat template.
 *
 * `context` gives messages, tools, documents, add_generation_prompt (default false), the special
 * tokens (bos_token, eos_token, ...) and any extra variable. tools and documents are passed as
 * null when absent, as transformers passes None.
 *
 * Differences from transformers that a template could show: numbers are JavaScript numbers, so a
 * float with no fraction (1.0) is written "1" by tojson where Python writes "1.0".
 *
 * @returns the rendered prompt.
 * @throws Error naming the message index for bad messages (see validateChatMessages), and an Error
 *   naming `options.source` and the Jinja error when the template does not parse or fails to render
 *   (including raise_exception() calls in the template).
 */
export function renderChatTemplate(template: string, context: ChatTemplateContext, options: RenderChatOptions = {}): string {
  const source = options.source ?? 'chat template';
  if (typeof template !== 'string') throw new Error(`${source}: the chat template must be a string`);
  validateChatMessages(context.messages, options.roles);
  const t = compile(template, source);
  const vars: Record<string, unknown> = {
    ...context,
    messages: context.messages,
    tools: context.tools ?? null,
    documents: context.documents ?? null,
    add_generation_prompt: context.add_generation_prompt ?? false,
  };
  try {
    return t.render(vars);
  } catch (err) {
    throw new Error(`${source}: the chat template failed to render: ${(err as Error).message}`, { cause: err });
  }
}

/** A tokenizer's chat templates: the default one and the named ones. */
export interface ChatTemplateSet {
  chatTemplate?: string;
  chatTemplates?: readonly { name: string; template: string }[];
}

/**
 * Pick the template to render, as transformers' get_chat_template does: `template` may be the name
 * of one of the named templates, or a template string itself; with none given, "tool_use" when
 * tools are passed and the tokenizer has it, else the default one.
 * @throws Error when the tokenizer has no chat template and none is given.
 */
export function resolveChatTemplate(
  set: ChatTemplateSet,
  options: { template?: string; tools?: unknown[] | null; source?: string } = {},
): { template: string; source: string } {
  const base = options.source ?? 'tokenizer';
  const named = set.chatTemplates ?? [];
  if (options.template !== undefined) {
    const byName = named.find((t) => t.name === options.template);
    if (byName) return { template: byName.template, source: `${base} chat template "${byName.name}"` };
    return { template: options.template, source: 'the chat template passed in' };
  }
  if (options.tools && named.some((t) => t.name === 'tool_use')) {
    return { template: named.find((t) => t.name === 'tool_use')!.template, source: `${base} chat template "tool_use"` };
  }
  if (set.chatTemplate !== undefined) return { template: set.chatTemplate, source: `${base} chat_template` };
  throw new Error(
    `${base}: no chat template (tokenizer_config.json chat_template, chat_template.jinja or GGUF tokenizer.chat_template); give one with --chat-template-file (chatTemplateFile in LLM.load and loadCausalLM)`,
  );
}
