/**
 * BERT WordPiece tokenization, ported from the Hugging Face `tokenizers` crate
 * (the "fast" tokenizer that `AutoTokenizer` returns for BERT): `BertNormalizer`
 * (normalizers/bert.rs), `BertPreTokenizer` (pre_tokenizers/bert.rs) and the
 * `WordPiece` model (models/wordpiece). It is the same algorithm as the Python
 * `BasicTokenizer` + `WordpieceTokenizer` of transformers, with the crate's
 * character classes where the two differ (CJK ranges, lowercase per code point,
 * the crate's Unicode tables, see unicode-tables.ts).
 */
import { NONSPACING_MARKS, NON_ASCII_PUNCTUATION, REMOVED_BY_CLEAN_TEXT, SPACE_BY_CLEAN_TEXT } from './unicode-tables.js';

/** Settings of `BertNormalizer`, by the field names of tokenizer.json. */
export interface BertNormalizerOptions {
  /** Remove \0, U+FFFD and control characters; map whitespace to ' '. */
  clean_text: boolean;
  /** Surround CJK ideographs with spaces so each becomes its own word. */
  handle_chinese_chars: boolean;
  /** NFD then drop nonspacing marks; null means "same as lowercase" (HF). */
  strip_accents: boolean | null;
  lowercase: boolean;
}

/** Settings of the `WordPiece` model. */
export interface WordPieceOptions {
  unk_token: string;
  continuing_subword_prefix: string;
  max_input_chars_per_word: number;
}

/** One added token (tokenizer.json `added_tokens`), matched in the text before the model runs. */
export interface AddedTokenSpec {
  content: string;
  id: number;
  special?: boolean;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
}

const WHITESPACE = /^\p{White_Space}$/u; // Rust `char::is_whitespace` (BertPreTokenizer)

/** Binary search in flat [first, last, first, last, ...] ranges. */
function inRanges(table: readonly number[], cp: number): boolean {
  let lo = 0;
  let hi = table.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < table[2 * mid]) hi = mid - 1;
    else if (cp > table[2 * mid + 1]) lo = mid + 1;
    else return true;
  }
  return false;
}

function isWhitespace(cp: number): boolean {
  return WHITESPACE.test(String.fromCodePoint(cp));
}

/** CJK Unified Ideographs blocks, as listed in the tokenizers crate (normalizers/bert.rs). */
export function isChineseChar(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/** ASCII punctuation or a Unicode P* character known to the tokenizers crate. */
export function isBertPunctuation(cp: number): boolean {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) return true;
  return inRanges(NON_ASCII_PUNCTUATION, cp);
}

/**
 * `BertNormalizer.normalize`: clean text, pad CJK ideographs with spaces,
 * strip accents (NFD, drop Mn), lowercase, in the crate's order.
 */
export function bertNormalize(text: string, opts: BertNormalizerOptions): string {
  let out = text;
  if (opts.clean_text || opts.handle_chinese_chars) {
    let s = '';
    for (const ch of out) {
      const cp = ch.codePointAt(0)!;
      if (opts.clean_text) {
        if (inRanges(REMOVED_BY_CLEAN_TEXT, cp)) continue;
        if (inRanges(SPACE_BY_CLEAN_TEXT, cp)) {
          s += ' ';
          continue;
        }
      }
      s += opts.handle_chinese_chars && isChineseChar(cp) ? ` ${ch} ` : ch;
    }
    out = s;
  }
  const strip = opts.strip_accents ?? opts.lowercase;
  if (strip) {
    let s = '';
    for (const ch of out.normalize('NFD')) if (!inRanges(NONSPACING_MARKS, ch.codePointAt(0)!)) s += ch;
    out = s;
  }
  if (opts.lowercase) {
    // Per code point, like Rust char::to_lowercase: no final-sigma context rule.
    let s = '';
    for (const ch of out) s += ch.toLowerCase();
    out = s;
  }
  return out;
}

/** `BertPreTokenizer`: split on whitespace (dropped) and isolate each punctuation character. */
export function bertPreTokenize(text: string): string[] {
  const words: string[] = [];
  let cur = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (isWhitespace(cp)) {
      if (cur) words.push(cur);
      cur = '';
    } else if (isBertPunctuation(cp)) {
      if (cur) words.push(cur);
      words.push(ch);
      cur = '';
    } else {
      cur += ch;
    }
  }
  if (cur) words.push(cur);
  return words;
}

/**
 * Greedy longest-match-first WordPiece of one word. A word longer than
 * max_input_chars_per_word (in code points), or with any unmatched rest,
 * becomes the single unk_token.
 */
export function wordpiece(word: string, vocab: ReadonlyMap<string, number>, opts: WordPieceOptions): string[] {
  const chars = Array.from(word);
  if (chars.length > opts.max_input_chars_per_word) return [opts.unk_token];
  const pieces: string[] = [];
  let start = 0;
  while (start < chars.length) {
    let end = chars.length;
    let found: string | null = null;
    while (start < end) {
      let sub = chars.slice(start, end).join('');
      if (start > 0) sub = opts.continuing_subword_prefix + sub;
      if (vocab.has(sub)) {
        found = sub;
        break;
      }
      end--;
    }
    if (found === null) return [opts.unk_token];
    pieces.push(found);
    start = end;
  }
  return pieces;
}

/** A piece of input text: either plain text for the model, or one matched added token. */
export type TextSegment = { text: string; addedId?: undefined } | { text: string; addedId: number };

const WORD_CHAR = /[\p{L}\p{N}_]/u;

/**
 * Split `text` on added tokens, leftmost-longest match first (the tokenizers
 * crate's AddedVocabulary uses Aho-Corasick LeftmostLongest). lstrip/rstrip
 * swallow adjacent whitespace; single_word requires non-word neighbours.
 */
export function splitOnAddedTokens(text: string, tokens: readonly AddedTokenSpec[]): TextSegment[] {
  if (tokens.length === 0 || text.length === 0) return text ? [{ text }] : [];
  const out: TextSegment[] = [];
  let plainStart = 0;
  let i = 0;
  while (i < text.length) {
    const m = matchAt(text, i, tokens);
    if (!m) {
      i++;
      continue;
    }
    let s = i;
    let e = i + m.content.length;
    if (m.lstrip) while (s > plainStart && /\s/u.test(text[s - 1])) s--;
    if (m.rstrip) while (e < text.length && /\s/u.test(text[e])) e++;
    if (s > plainStart) out.push({ text: text.slice(plainStart, s) });
    out.push({ text: text.slice(s, e), addedId: m.id });
    plainStart = i = e;
  }
  if (plainStart < text.length) out.push({ text: text.slice(plainStart) });
  return out;
}

function matchAt(text: string, i: number, tokens: readonly AddedTokenSpec[]): AddedTokenSpec | null {
  let best: AddedTokenSpec | null = null;
  for (const t of tokens) {
    if (!t.content || (best && t.content.length <= best.content.length)) continue;
    if (!text.startsWith(t.content, i)) continue;
    if (t.single_word) {
      const before = i > 0 && WORD_CHAR.test(text[i - 1]);
      const after = i + t.content.length < text.length && WORD_CHAR.test(text[i + t.content.length]);
      if (before || after) continue;
    }
    best = t;
  }
  return best;
}

/** Everything `WordPieceTokenizer` needs, as read from tokenizer.json or vocab.txt + tokenizer_config.json. */
export interface WordPieceTokenizerSpec {
  vocab: ReadonlyMap<string, number>;
  normalizer: BertNormalizerOptions | null;
  model: WordPieceOptions;
  added_tokens: readonly AddedTokenSpec[];
}

/**
 * The full BERT pipeline without special tokens: added-token split,
 * BertNormalizer, BertPreTokenizer, WordPiece.
 */
export class WordPieceTokenizer {
  private readonly raw: AddedTokenSpec[];
  private readonly normalizedAdded: AddedTokenSpec[];
  private readonly unkId: number;

  /** @throws Error when the unk_token is not in the vocabulary. */
  constructor(readonly spec: WordPieceTokenizerSpec) {
    this.raw = spec.added_tokens.filter((t) => t.normalized === false || t.special);
    this.normalizedAdded = spec.added_tokens.filter((t) => !(t.normalized === false || t.special));
    const unk = spec.vocab.get(spec.model.unk_token);
    if (unk === undefined) throw new Error(`unk_token '${spec.model.unk_token}' is not in the vocabulary`);
    this.unkId = unk;
  }

  /** Tokens of `text` with their ids (no [CLS]/[SEP]). */
  pieces(text: string): Array<{ token: string; id: number }> {
    const out: Array<{ token: string; id: number }> = [];
    for (const seg of splitOnAddedTokens(text, this.raw)) {
      if (seg.addedId !== undefined) {
        out.push({ token: this.contentOf(seg.addedId), id: seg.addedId });
        continue;
      }
      const norm = this.spec.normalizer ? bertNormalize(seg.text, this.spec.normalizer) : seg.text;
      for (const sub of splitOnAddedTokens(norm, this.normalizedAdded)) {
        if (sub.addedId !== undefined) {
          out.push({ token: this.contentOf(sub.addedId), id: sub.addedId });
          continue;
        }
        for (const w of bertPreTokenize(sub.text)) {
          for (const token of wordpiece(w, this.spec.vocab, this.spec.model)) {
            out.push({ token, id: this.spec.vocab.get(token) ?? this.unkId });
          }
        }
      }
    }
    return out;
  }

  /** Token strings of `text` (no [CLS]/[SEP]). */
  tokenize(text: string): string[] {
    return this.pieces(text).map((p) => p.token);
  }

  /** Token ids of `text` (no [CLS]/[SEP]). */
  encode(text: string): number[] {
    return this.pieces(text).map((p) => p.id);
  }

  private contentOf(id: number): string {
    return this.spec.added_tokens.find((t) => t.id === id)!.content;
  }
}
