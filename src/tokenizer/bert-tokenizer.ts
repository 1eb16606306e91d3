/**
 * BertTokenizer: text → input_ids / token_type_ids / attention_mask, as the
 * Hugging Face fast BERT tokenizer produces them (`AutoTokenizer` →
 * `tokenizers` crate: BertNormalizer, BertPreTokenizer, WordPiece,
 * TemplateProcessing `[CLS] A [SEP] B [SEP]`, truncation LongestFirst,
 * padding to the longest in the batch on the right).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import {
  WordPieceTokenizer,
  type AddedTokenSpec,
  type BertNormalizerOptions,
  type WordPieceTokenizerSpec,
} from './wordpiece.js';

/** Which implementation turns text into ids. */
export type TokenizerBackendName = 'tokenizers' | 'wordpiece';

export interface BertTokenizerOptions {
  /** max_position_embeddings of the model: encode() never returns more tokens than this. */
  maxPositionEmbeddings?: number;
  /**
   * 'auto' (default): @huggingface/tokenizers on tokenizer.json when it agrees with
   * the Hugging Face crate on the probe strings, else the built-in WordPiece port.
   * 'tokenizers' / 'wordpiece' force one (tokenizers needs tokenizer.json).
   */
  backend?: 'auto' | TokenizerBackendName;
}

/** One encoded example; all arrays have the same length T. */
export interface Encoding {
  input_ids: number[];
  token_type_ids: number[];
  attention_mask: number[];
}

/** A padded batch, row-major (B, T) Int32Array each. */
export interface BatchEncoding {
  input_ids: Int32Array;
  attention_mask: Int32Array;
  token_type_ids: Int32Array;
  batchSize: number;
  seqLen: number;
}

export interface EncodeOptions {
  /**
   * Maximum tokens including [CLS]/[SEP]; default 128, capped at max_position_embeddings.
   * It also bounds the work: see BertTokenizer.encode.
   */
  maxLength?: number;
}

/**
 * encode() reads at most this many characters per token of maxLength (plus
 * the margin) of a text: English averages about 5 characters a token, so only
 * texts made mostly of whitespace, control characters or 100-character words
 * ever reach it. Without such a bound one 10 MB text blocked the event loop
 * for seconds to produce 128 tokens.
 */
export const MAX_CHARS_PER_TOKEN = 64;

/**
 * Strings on which @huggingface/tokenizers 0.2 has been seen to differ from
 * the Rust crate: final sigma (the crate lowercases per code point), CJK
 * Extension B ideographs (split by the crate), punctuation newer than the
 * crate's Unicode table (not split by it).
 */
const PROBES = ['Hello, WORLD! Café naïve résumé', 'ΟΔΟΣ ΚΟΣΜΟΣ', '\u{20000}\u{2A6D6}字', 'a\u2E43b x\u00ADy'];

type SpecialTokenValue = string | { content?: string } | null | undefined;

interface TokenizerConfigJson {
  do_lower_case?: boolean;
  strip_accents?: boolean | null;
  tokenize_chinese_chars?: boolean;
  unk_token?: SpecialTokenValue;
  sep_token?: SpecialTokenValue;
  pad_token?: SpecialTokenValue;
  cls_token?: SpecialTokenValue;
  mask_token?: SpecialTokenValue;
  additional_special_tokens?: SpecialTokenValue[];
  added_tokens_decoder?: Record<string, { content: string; special?: boolean; normalized?: boolean; lstrip?: boolean; rstrip?: boolean; single_word?: boolean }>;
  model_max_length?: number;
  [key: string]: unknown;
}

function tokenContent(v: SpecialTokenValue): string | undefined {
  if (v == null) return undefined;
  return typeof v === 'string' ? v : v.content;
}

async function readJson<T>(path: string): Promise<T> {
  const text = await readFile(path, 'utf8');
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new Error(`${path}: invalid JSON (${(err as Error).message})`, { cause: err });
  }
}

async function readJsonIfExists<T>(path: string): Promise<T | undefined> {
  return existsSync(path) ? readJson<T>(path) : undefined;
}

/** vocab.txt → token → id (line number, 0-based), as transformers' load_vocab (strip only the newline). */
export function parseVocabTxt(text: string): Map<string, number> {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const vocab = new Map<string, number>();
  lines.forEach((tok, i) => vocab.set(tok, i));
  return vocab;
}

interface SpecialTokens {
  cls: string;
  sep: string;
  pad: string;
  unk: string;
  mask: string;
}

function specialTokensFrom(cfg: TokenizerConfigJson, map: TokenizerConfigJson | undefined): SpecialTokens {
  const pick = (k: keyof SpecialTokens, dflt: string) =>
    tokenContent(cfg[`${k}_token` as keyof TokenizerConfigJson] as SpecialTokenValue) ??
    tokenContent(map?.[`${k}_token` as keyof TokenizerConfigJson] as SpecialTokenValue) ??
    dflt;
  return { cls: pick('cls', '[CLS]'), sep: pick('sep', '[SEP]'), pad: pick('pad', '[PAD]'), unk: pick('unk', '[UNK]'), mask: pick('mask', '[MASK]') };
}

/**
 * How many tokens at the end of a tokenized prefix of a text may differ from
 * the whole text's tokens at those positions: BertNormalizer works character
 * by character and BertPreTokenizer splits words, so a prefix cut inside a
 * word changes that word's tokens only (at most max_input_chars_per_word
 * pieces, or one [UNK]) plus those of an added token cut short (at most its
 * length). Everything before them is the whole text's.
 */
function prefixMargin(spec: WordPieceTokenizerSpec): number {
  return spec.model.max_input_chars_per_word + spec.added_tokens.reduce((m, t) => Math.max(m, t.content.length), 0);
}

/** Build the WordPiece spec from tokenizer.json, or explain why it cannot express that file. */
function specFromTokenizerJson(tj: any, path: string): WordPieceTokenizerSpec | string {
  if (tj?.model?.type !== 'WordPiece') return `${path}: model type '${tj?.model?.type}' is not WordPiece`;
  const n = tj.normalizer;
  if (n != null && n.type !== 'BertNormalizer') return `${path}: normalizer '${n.type}' is not BertNormalizer`;
  if (tj.pre_tokenizer != null && tj.pre_tokenizer.type !== 'BertPreTokenizer') {
    return `${path}: pre_tokenizer '${tj.pre_tokenizer.type}' is not BertPreTokenizer`;
  }
  const normalizer: BertNormalizerOptions | null = n
    ? { clean_text: n.clean_text ?? true, handle_chinese_chars: n.handle_chinese_chars ?? true, strip_accents: n.strip_accents ?? null, lowercase: n.lowercase ?? true }
    : null;
  return {
    vocab: new Map(Object.entries(tj.model.vocab as Record<string, number>)),
    normalizer,
    model: {
      unk_token: tj.model.unk_token ?? '[UNK]',
      continuing_subword_prefix: tj.model.continuing_subword_prefix ?? '##',
      max_input_chars_per_word: tj.model.max_input_chars_per_word ?? 100,
    },
    added_tokens: (tj.added_tokens ?? []) as AddedTokenSpec[],
  };
}

/** Build the WordPiece spec from vocab.txt + tokenizer_config.json the way transformers' BertConverter does. */
function specFromVocab(vocab: Map<string, number>, cfg: TokenizerConfigJson, specials: SpecialTokens, addedJson?: Record<string, number>): WordPieceTokenizerSpec {
  const lowercase = cfg.do_lower_case ?? true;
  const added: AddedTokenSpec[] = [];
  const add = (content: string, id: number | undefined, extra: Partial<AddedTokenSpec> = {}) => {
    if (id === undefined || added.some((t) => t.content === content)) return;
    added.push({ content, id, special: true, normalized: false, ...extra });
  };
  for (const [id, t] of Object.entries(cfg.added_tokens_decoder ?? {})) {
    add(t.content, Number(id), { special: t.special ?? false, normalized: t.normalized ?? !t.special, lstrip: t.lstrip, rstrip: t.rstrip, single_word: t.single_word });
    vocab.set(t.content, Number(id));
  }
  for (const [content, id] of Object.entries(addedJson ?? {})) {
    add(content, id, { special: false, normalized: true });
    vocab.set(content, id);
  }
  for (const tok of [specials.pad, specials.unk, specials.cls, specials.sep, specials.mask, ...(cfg.additional_special_tokens ?? []).map(tokenContent)]) {
    if (tok) add(tok, vocab.get(tok));
  }
  return {
    vocab,
    normalizer: { clean_text: true, handle_chinese_chars: cfg.tokenize_chinese_chars ?? true, strip_accents: cfg.strip_accents ?? null, lowercase },
    model: { unk_token: specials.unk, continuing_subword_prefix: '##', max_input_chars_per_word: 100 },
    added_tokens: added,
  };
}

/**
 * Rust `tokenizers` TruncationStrategy::LongestFirst for a pair: lengths
 * (n1, n2) to keep so that n1 + n2 <= budget.
 */
export function longestFirstLengths(n1: number, n2: number, budget: number): [number, number] {
  if (n1 + n2 <= budget) return [n1, n2];
  const swap = n1 > n2;
  let [a, b] = swap ? [n2, n1] : [n1, n2]; // a <= b
  b = a > budget ? a : Math.max(a, budget - a);
  if (a + b > budget) {
    a = Math.floor(budget / 2);
    b = a + (budget % 2);
  }
  return swap ? [b, a] : [a, b];
}

/** BERT tokenizer loaded from a Hugging Face model folder. */
export class BertTokenizer {
  /** Number of ids (vocabulary plus added tokens). */
  readonly vocabSize: number;
  readonly padTokenId: number;
  readonly clsTokenId: number;
  readonly sepTokenId: number;
  readonly unkTokenId: number;
  /** The [MASK] token's id (masked-LM pre-training), or undefined when the vocabulary lacks it. */
  readonly maskTokenId: number | undefined;
  private readonly idToToken: string[];
  private readonly specialIds: Set<number>;

  private constructor(
    private readonly textToIds: (text: string) => number[],
    private readonly vocab: ReadonlyMap<string, number>,
    specials: SpecialTokens,
    /** Implementation in use. */
    readonly backend: TokenizerBackendName,
    /** Why the backend was chosen when it is not the preferred one (e.g. the fallback reason); undefined otherwise. */
    readonly backendNote: string | undefined,
    /** Hard cap on sequence length (the model's max_position_embeddings); Infinity when unknown. */
    readonly maxPositionEmbeddings: number,
    /** prefixMargin of the pipeline; undefined when it is not the BERT WordPiece pipeline (no early stop, only the cap). */
    private readonly margin: number | undefined,
  ) {
    const id = (tok: string, role: string) => {
      const v = vocab.get(tok);
      if (v === undefined) throw new Error(`${role} '${tok}' is not in the tokenizer vocabulary`);
      return v;
    };
    this.padTokenId = id(specials.pad, 'pad_token');
    this.clsTokenId = id(specials.cls, 'cls_token');
    this.sepTokenId = id(specials.sep, 'sep_token');
    this.unkTokenId = id(specials.unk, 'unk_token');
    this.maskTokenId = vocab.get(specials.mask);
    this.idToToken = [];
    for (const [tok, i] of vocab) this.idToToken[i] = tok;
    this.vocabSize = this.idToToken.length;
    this.specialIds = new Set([specials.pad, specials.cls, specials.sep, specials.unk, specials.mask].map((t) => vocab.get(t)).filter((v): v is number => v !== undefined));
  }

  /**
   * Load from a model folder: tokenizer.json (through @huggingface/tokenizers,
   * or the WordPiece port when that library disagrees with the Hugging Face crate
   * on the probe strings; see `backendNote`), otherwise vocab.txt +
   * tokenizer_config.json (do_lower_case, strip_accents, tokenize_chinese_chars).
   *
   * @throws Error naming the folder when neither tokenizer.json nor vocab.txt
   *   exists, a JSON file is invalid, or a special token is not in the vocabulary.
   */
  static async fromFolder(folder: string, opts: BertTokenizerOptions = {}): Promise<BertTokenizer> {
    const maxPos = opts.maxPositionEmbeddings ?? Infinity;
    const want = opts.backend ?? 'auto';
    const cfg = (await readJsonIfExists<TokenizerConfigJson>(join(folder, 'tokenizer_config.json'))) ?? {};
    const specials = specialTokensFrom(cfg, await readJsonIfExists<TokenizerConfigJson>(join(folder, 'special_tokens_map.json')));
    const tjPath = join(folder, 'tokenizer.json');
    if (existsSync(tjPath) && want !== 'wordpiece') {
      return BertTokenizer.fromTokenizerJson(tjPath, await readJson<any>(tjPath), cfg, specials, want, maxPos);
    }
    if (want === 'tokenizers') throw new Error(`${folder}: backend 'tokenizers' needs tokenizer.json, which is missing`);
    const vocabPath = join(folder, 'vocab.txt');
    if (!existsSync(vocabPath)) throw new Error(`${folder}: no tokenizer found (expected tokenizer.json or vocab.txt)`);
    const vocab = parseVocabTxt(await readFile(vocabPath, 'utf8'));
    const addedJson = await readJsonIfExists<Record<string, number>>(join(folder, 'added_tokens.json'));
    const wp = new WordPieceTokenizer(specFromVocab(vocab, cfg, specials, addedJson));
    return new BertTokenizer((t) => wp.encode(t), wp.spec.vocab, specials, 'wordpiece', undefined, maxPos, prefixMargin(wp.spec));
  }

  /** tokenizer.json through @huggingface/tokenizers, or the WordPiece port when the library fails or disagrees. */
  private static fromTokenizerJson(
    tjPath: string,
    tj: any,
    cfg: TokenizerConfigJson,
    specials: SpecialTokens,
    want: 'auto' | TokenizerBackendName,
    maxPos: number,
  ): BertTokenizer {
    const spec = specFromTokenizerJson(tj, tjPath);
    const mirror = typeof spec === 'string' ? null : new WordPieceTokenizer(spec);
    let lib: HFTokenizer | null = null;
    let reason: string | undefined;
    try {
      lib = new HFTokenizer(tj, cfg);
    } catch (err) {
      reason = `@huggingface/tokenizers could not load ${tjPath}: ${(err as Error).message}`;
    }
    if (lib && mirror && want === 'auto') reason = probeDisagreement(lib, mirror);
    if (lib && (!reason || want === 'tokenizers')) {
      const hf = lib;
      const note = typeof spec === 'string' ? `no WordPiece cross-check: ${spec}` : undefined;
      const margin = typeof spec === 'string' ? undefined : prefixMargin(spec);
      return new BertTokenizer((t) => hf.encode(t, { add_special_tokens: false }).ids, hf.get_vocab(true), specials, 'tokenizers', note, maxPos, margin);
    }
    if (want === 'tokenizers') throw new Error(reason);
    if (!mirror) throw new Error(`${reason}; and the built-in WordPiece tokenizer cannot stand in: ${spec}`);
    const note = `${reason}; using the built-in WordPiece tokenizer with the vocabulary of ${tjPath}`;
    return new BertTokenizer((t) => mirror.encode(t), mirror.spec.vocab, specials, 'wordpiece', note, maxPos, prefixMargin(mirror.spec));
  }

  /** Token ids of `text` without special tokens. */
  encodeText(text: string): number[] {
    return this.textToIds(text);
  }

  /** Token strings of `text` without special tokens. */
  tokenize(text: string): string[] {
    return this.convertIdsToTokens(this.textToIds(text));
  }

  /**
   * Encode one text or text pair: `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`,
   * token_type_ids 0 for the first segment and 1 for the second, truncated
   * longest-first (Rust tokenizers semantics) so the result has at most
   * min(maxLength, max_position_embeddings) tokens. No padding. An empty
   * `textPair` counts as no pair, as in transformers.
   *
   * The work is bounded by maxLength, not by the text: a long text is
   * tokenized from a prefix just long enough to give the tokens kept (the
   * same tokens as the whole text; see prefixMargin), and never beyond its
   * first MAX_CHARS_PER_TOKEN × (maxLength + margin) characters — a text
   * needing more than that to fill maxLength is treated as cut there.
   *
   * @throws Error when that limit leaves no room for the special tokens.
   */
  encode(text: string, textPair?: string | null, opts: EncodeOptions = {}): Encoding {
    const limit = Math.min(opts.maxLength ?? 128, this.maxPositionEmbeddings);
    // transformers tests `if text_pair`, so an empty second text means "no pair".
    const hasPair = textPair != null && textPair !== '';
    const special = hasPair ? 3 : 2;
    if (!(limit >= special)) throw new Error(`maxLength ${limit} leaves no room for the ${special} special tokens`);
    const budget = limit - special;
    let a: number[];
    let b: number[] | null = null;
    if (hasPair) {
      [a, b] = this.pairIds(text, textPair, budget, limit);
    } else {
      a = this.leadingIds(text, budget, limit).ids.slice(0, budget);
    }
    const input_ids = [this.clsTokenId, ...a, this.sepTokenId];
    const token_type_ids = new Array<number>(input_ids.length).fill(0);
    if (b) {
      input_ids.push(...b, this.sepTokenId);
      for (let i = 0; i <= b.length; i++) token_type_ids.push(1);
    }
    return { input_ids, token_type_ids, attention_mask: new Array<number>(input_ids.length).fill(1) };
  }

  /**
   * The first `need` or more tokens of `text` (its first tokens, exactly), or
   * all of them (`all`), reading as little of the text as it can: prefixes of
   * doubling length until one gives `need` tokens beyond the margin, the
   * whole text, or the character cap for `limit`.
   */
  private leadingIds(text: string, need: number, limit: number): { ids: number[]; all: boolean } {
    const margin = this.margin ?? 0;
    const cap = MAX_CHARS_PER_TOKEN * (limit + (this.margin ?? 100));
    let window = this.margin === undefined ? cap : 4 * (need + margin) + 64;
    for (;;) {
      if (window >= text.length || window >= cap) return { ids: this.textToIds(prefix(text, cap)), all: true };
      const ids = this.textToIds(prefix(text, window));
      if (ids.length >= need + margin) return { ids: ids.slice(0, ids.length - margin), all: false };
      window *= 2;
    }
  }

  /**
   * Both texts' tokens as longest-first truncation keeps them. That depends on
   * the shorter text's length and on which is longer, so a text is read
   * further only while that is still open.
   */
  private pairIds(text: string, pair: string, budget: number, limit: number): [number[], number[]] {
    // budget + 1 tokens show a text is longer than the budget
    let a = this.leadingIds(text, budget + 1, limit);
    let b = this.leadingIds(pair, budget + 1, limit);
    // with both over budget, only which is longer matters, and only for an odd budget
    if (!a.all && !b.all && budget % 2 === 1) {
      a = this.leadingIds(text, Infinity, limit);
      b = this.leadingIds(pair, Infinity, limit);
    }
    // one known length n, the other at least m: read on until m > n or it is all read
    if (a.all && !b.all && b.ids.length <= a.ids.length) b = this.leadingIds(pair, a.ids.length + 1, limit);
    if (b.all && !a.all && a.ids.length <= b.ids.length) a = this.leadingIds(text, b.ids.length + 1, limit);
    const [n1, n2] = longestFirstLengths(a.ids.length, b.ids.length, budget);
    return [a.ids.slice(0, n1), b.ids.slice(0, n2)];
  }

  /**
   * Encode a batch and pad on the right to the longest example: input_ids with
   * the pad id, attention_mask and token_type_ids with 0. Output (B, T)
   * row-major Int32Arrays.
   *
   * @throws Error when `pairs` is given with a different length than `texts`.
   */
  encodeBatch(texts: readonly string[], pairs?: ReadonlyArray<string | null> | null, opts: EncodeOptions = {}): BatchEncoding {
    if (pairs && pairs.length !== texts.length) throw new Error(`encodeBatch: ${texts.length} texts but ${pairs.length} pairs`);
    const encs = texts.map((t, i) => this.encode(t, pairs?.[i] ?? null, opts));
    const B = encs.length;
    const T = encs.reduce((m, e) => Math.max(m, e.input_ids.length), 0);
    const input_ids = new Int32Array(B * T).fill(this.padTokenId);
    const attention_mask = new Int32Array(B * T);
    const token_type_ids = new Int32Array(B * T);
    encs.forEach((e, b) => {
      input_ids.set(e.input_ids, b * T);
      attention_mask.set(e.attention_mask, b * T);
      token_type_ids.set(e.token_type_ids, b * T);
    });
    return { input_ids, attention_mask, token_type_ids, batchSize: B, seqLen: T };
  }

  /** @throws Error naming the first id outside the vocabulary. */
  convertIdsToTokens(ids: Iterable<number>): string[] {
    const out: string[] = [];
    for (const id of ids) {
      const tok = this.idToToken[id];
      if (tok === undefined) throw new Error(`token id ${id} is outside the vocabulary (size ${this.vocabSize})`);
      out.push(tok);
    }
    return out;
  }

  /** Ids of the special tokens ([PAD], [CLS], [SEP], [UNK], [MASK]), as transformers' all_special_ids. */
  get allSpecialIds(): number[] {
    return [...this.specialIds].sort((a, b) => a - b);
  }

  /** Token id of a token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.vocab.get(token);
  }

  /**
   * Ids → text, for debugging: WordPiece decoder (join with spaces, glue "##"
   * pieces) with transformers' clean_up_tokenization. Lowercasing and accent
   * stripping are not undone.
   */
  decode(ids: Iterable<number>, opts: { skipSpecialTokens?: boolean } = {}): string {
    const toks = this.convertIdsToTokens([...ids].filter((id) => !(opts.skipSpecialTokens && this.specialIds.has(id))));
    let text = toks.map((t, i) => (i > 0 && t.startsWith('##') ? t.slice(2) : i > 0 ? ` ${t}` : t)).join('');
    for (const [from, to] of CLEANUP) text = text.split(from).join(to);
    return text;
  }
}

/** The first `n` UTF-16 units of `text`, one fewer rather than half a surrogate pair. */
function prefix(text: string, n: number): string {
  if (n >= text.length) return text;
  const last = text.charCodeAt(n - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? n - 1 : n);
}

const CLEANUP: Array<[string, string]> = [
  [' .', '.'], [' ?', '?'], [' !', '!'], [' ,', ','], [" ' ", "'"], [" n't", "n't"], [" 'm", "'m"], [" 's", "'s"], [" 've", "'ve"], [" 're", "'re"],
];

/** First probe on which the library and the WordPiece port disagree, as a message; undefined when they agree. */
function probeDisagreement(lib: HFTokenizer, mirror: WordPieceTokenizer): string | undefined {
  for (const probe of PROBES) {
    const got: number[] = lib.encode(probe, { add_special_tokens: false }).ids;
    const want = mirror.encode(probe);
    if (got.length !== want.length || got.some((v, i) => v !== want[i])) {
      return (
        `@huggingface/tokenizers tokenizes ${JSON.stringify(probe)} as [${got.join(', ')}] ` +
        `but the Hugging Face tokenizers crate gives [${want.join(', ')}]`
      );
    }
  }
  return undefined;
}
