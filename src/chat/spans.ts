/**
 * Where each assistant turn sits in a rendered conversation, for supervised fine-tuning loss
 * masks (only the assistant's tokens carry labels). Chat templates in the wild seldom carry
 * transformers' {% generation %} tags, so the spans are found by rendering prefixes of the
 * conversation: an assistant turn starts where the conversation before it, rendered with the
 * generation prompt, ends (that is what the model sees when it is asked to answer), and ends where
 * the conversation through it ends — trimmed to its last end-of-turn token, so the "\n" a template
 * writes between turns is not learned but the end-of-turn token is.
 */
import { renderChatTemplate, type ChatTemplateContext, type RenderChatOptions } from './template.js';

/** One assistant turn: characters [start, end) of the rendered text (UTF-16 indices, as JavaScript strings index). */
export interface AssistantSpan {
  messageIndex: number;
  start: number;
  end: number;
}

export interface AssistantSpanOptions extends RenderChatOptions {
  /**
   * End-of-turn token text(s) ("<|im_end|>", "<|eot_id|>"): a span ends just after the last one
   * inside it. Without any, or when none is inside, the span runs to the end of what the message
   * rendered.
   */
  endOfTurn?: string | readonly string[];
}

/**
 * Render a conversation and locate each assistant message's text in it.
 *
 * For assistant message i: full = render(all messages); start = length of render(messages[0..i),
 * add_generation_prompt=true) when that is a prefix of full, else the longest common prefix of the
 * two (never before render(messages[0..i)) ends); end = length of render(messages[0..i]), then
 * trimmed to the last end-of-turn token inside the span.
 *
 * @throws Error naming the message index when the template does not render a conversation's
 *   prefix as a prefix of the whole (a template that rewrites earlier turns when more follow,
 *   e.g. one that drops reasoning from all but the last assistant turn): no honest span exists.
 *   Also whatever renderChatTemplate throws.
 */
export function renderChatWithAssistantSpans(
  template: string,
  context: ChatTemplateContext,
  options: AssistantSpanOptions = {},
): { text: string; spans: AssistantSpan[] } {
  const text = renderChatTemplate(template, context, options);
  const render = (n: number, gen: boolean): string =>
    renderChatTemplate(template, { ...context, messages: context.messages.slice(0, n), add_generation_prompt: gen }, options);
  const eot = options.endOfTurn === undefined ? [] : typeof options.endOfTurn === 'string' ? [options.endOfTurn] : [...options.endOfTurn];
  const source = options.source ?? 'chat template';
  const spans: AssistantSpan[] = [];
  context.messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const through = render(i + 1, false);
    if (!text.startsWith(through)) {
      throw new Error(`${source}: messages[${i}] renders differently when later messages follow; cannot place its span`);
    }
    let start: number;
    const asked = i === 0 ? tryRender(() => render(0, true)) : render(i, true);
    if (asked !== undefined && text.startsWith(asked)) {
      start = asked.length;
    } else {
      const before = i === 0 ? '' : render(i, false);
      if (!text.startsWith(before)) {
        throw new Error(`${source}: the messages before messages[${i}] render differently when more follow; cannot place its span`);
      }
      start = Math.max(before.length, asked === undefined ? 0 : commonPrefix(asked, text));
    }
    let end = through.length;
    let best = -1;
    for (const tok of eot) {
      const at = tok.length > 0 ? text.lastIndexOf(tok, end - tok.length) : -1;
      if (at >= start && at + tok.length > best) best = at + tok.length;
    }
    if (best > 0) end = best;
    spans.push({ messageIndex: i, start, end: Math.max(start, end) });
  });
  return { text, spans };
}

function tryRender(f: () => string): string | undefined {
  try {
    return f();
  } catch {
    // Some templates index messages[0] and cannot render an empty conversation.
    return undefined;
  }
}

function commonPrefix(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

/** A tokenizer that can say which bytes of the text each token covers (LlmTokenizer). */
export interface ByteOffsetTokenizer {
  encodeWithByteOffsets(text: string): { ids: number[]; offsets: [number, number][] };
}

/** An assistant span in characters and in tokens ([tokenStart, tokenEnd) indexes input_ids). */
export interface AssistantTokenSpan extends AssistantSpan {
  tokenStart: number;
  tokenEnd: number;
}

export interface EncodedChat {
  /** The rendered conversation. */
  text: string;
  input_ids: number[];
  /** 1 for tokens of assistant turns (end-of-turn token included), else 0; as transformers' return_assistant_tokens_mask. */
  assistant_masks: number[];
  spans: AssistantTokenSpan[];
}

/**
 * Tokenize a rendered conversation and mark its assistant tokens: a token belongs to a span when
 * any of its bytes does (a token that straddles the start carries the reply's first characters).
 * No BOS/EOS is added: the template writes what the model expects.
 */
export function tokenizeChatSpans(tokenizer: ByteOffsetTokenizer, text: string, spans: readonly AssistantSpan[]): EncodedChat {
  const { ids, offsets } = tokenizer.encodeWithByteOffsets(text);
  const mask = new Array<number>(ids.length).fill(0);
  const out: AssistantTokenSpan[] = [];
  for (const s of spans) {
    const bStart = Buffer.byteLength(text.slice(0, s.start), 'utf8');
    const bEnd = Buffer.byteLength(text.slice(0, s.end), 'utf8');
    let tokenStart = -1;
    let tokenEnd = -1;
    for (let j = 0; j < ids.length; j++) {
      const [a, b] = offsets[j];
      if (b > bStart && a < bEnd) {
        if (tokenStart < 0) tokenStart = j;
        tokenEnd = j + 1;
        mask[j] = 1;
      }
    }
    if (tokenStart < 0) {
      // An empty span: point at the token where it would begin.
      const at = offsets.findIndex(([a]) => a >= bStart);
      tokenStart = tokenEnd = at < 0 ? ids.length : at;
    }
    out.push({ ...s, tokenStart, tokenEnd });
  }
  return { text, input_ids: ids, assistant_masks: mask, spans: out };
}
