/**
 * A Hugging Face tokenizer.json built from a GGUF file's tokenizer.ggml.* metadata, the way
 * transformers builds one (integrations/gguf/gguf_tokenizer_mapping.py: byte_level_tokenizer,
 * add_gguf_special_tokens, set_split_regex) and the way llama.cpp reads the same keys
 * (src/llama-vocab.cpp: llama_vocab::impl::load, llm_tokenizer_bpe).
 *
 * Only byte-level BPE (tokenizer.ggml.model "gpt2") is supported: SmolLM2, Llama 3, Qwen2/2.5
 * and most recent decoders. tokenizer.ggml.pre names the pre-tokenizer; the names accepted here
 * are llama.cpp's spellings, grouped by the regex llama.cpp gives them.
 */

/** GGUF token types (llama.h llama_token_type / gguf-py TokenType). */
export const GGUF_TOKEN_TYPE = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/**
 * GGUF metadata as the GGUF reader returns it (`Map<string, GgufValue>`, values `{ type, value }`
 * with arrays as `{ itemType, items }`), or plain values (`string`, `number`, `bigint`,
 * `boolean`, `string[]`, numeric arrays or typed arrays), in a Map or a plain object.
 */
export type GgufMetadataLike = Map<string, unknown> | Record<string, unknown>;

/** The GPT-2 split regex (the Rust `tokenizers` ByteLevel pre-tokenizer's, and llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2). */
export const GPT2_SPLIT_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/** Llama 3's split regex, as its tokenizer.json and transformers' GGUF converter spell it. */
export const LLAMA3_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** Qwen2's split regex (transformers models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX). */
export const QWEN2_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

type PreTokenizerKind = 'gpt2' | 'digits-gpt2' | 'llama3' | 'qwen2';

/**
 * tokenizer.ggml.pre → pre-tokenizer. The groups follow llama.cpp's llm_tokenizer_bpe: 'gpt2'
 * is its GPT2 regex alone; 'digits-gpt2' is its SMOLLM/STARCODER/REFACT/CODESHELL pair (every
 * \p{N} split off first, then the GPT-2 regex), which is what SmolLM2's own tokenizer.json says
 * with Digits(individual_digits) + ByteLevel; 'llama3' and 'qwen2' are the regexes of those
 * tokenizer.json files.
 */
const PRE_TOKENIZERS: Record<string, PreTokenizerKind> = {
  'gpt-2': 'gpt2',
  'phi-2': 'gpt2',
  mpt: 'gpt2',
  olmo: 'gpt2',
  smollm: 'digits-gpt2',
  starcoder: 'digits-gpt2',
  refact: 'digits-gpt2',
  codeshell: 'digits-gpt2',
  llama3: 'llama3',
  'llama-v3': 'llama3',
  'llama-bpe': 'llama3',
  falcon3: 'llama3',
  dbrx: 'llama3',
  'smaug-bpe': 'llama3',
  qwen2: 'qwen2',
  'deepseek-r1-qwen': 'qwen2',
  megrez: 'qwen2',
  stablelm2: 'qwen2',
};

/** The tokenizer.ggml.pre values fromGgufMetadata accepts. */
export const SUPPORTED_GGUF_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_TOKENIZERS);

function byteLevel(useRegex: boolean): Record<string, unknown> {
  return { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex };
}

function splitRegex(regex: string): Record<string, unknown> {
  return { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false };
}

function preTokenizerJson(kind: PreTokenizerKind): Record<string, unknown> {
  switch (kind) {
    case 'gpt2':
      return byteLevel(true);
    case 'digits-gpt2':
      return { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)] };
    case 'llama3':
      return { type: 'Sequence', pretokenizers: [splitRegex(LLAMA3_SPLIT_REGEX), byteLevel(false)] };
    case 'qwen2':
      return { type: 'Sequence', pretokenizers: [splitRegex(QWEN2_SPLIT_REGEX), byteLevel(false)] };
  }
}

/** One metadata value with any GgufValue / GgufArray wrapping removed. */
export function ggufMetaValue(meta: GgufMetadataLike, key: string): unknown {
  let v: unknown = meta instanceof Map ? meta.get(key) : (meta as Record<string, unknown>)[key];
  if (v !== null && typeof v === 'object' && 'type' in v && 'value' in v && typeof (v as { type: unknown }).type === 'string') {
    v = (v as { value: unknown }).value;
  }
  if (v !== null && typeof v === 'object' && 'itemType' in v && 'items' in v) {
    v = (v as { items: unknown }).items;
  }
  return v;
}

function metaString(meta: GgufMetadataLike, key: string, required: true): string;
function metaString(meta: GgufMetadataLike, key: string, required: false): string | undefined;
function metaString(meta: GgufMetadataLike, key: string, required: boolean): string | undefined {
  const v = ggufMetaValue(meta, key);
  if (v === undefined) {
    if (required) throw new Error(`GGUF metadata: ${key} is missing`);
    return undefined;
  }
  if (typeof v !== 'string') throw new Error(`GGUF metadata: ${key} must be a string, got ${describe(v)}`);
  return v;
}

function metaStringArray(meta: GgufMetadataLike, key: string, required: boolean): string[] | undefined {
  const v = ggufMetaValue(meta, key);
  if (v === undefined) {
    if (required) throw new Error(`GGUF metadata: ${key} is missing`);
    return undefined;
  }
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw new Error(`GGUF metadata: ${key} must be an array of strings, got ${describe(v)}`);
  }
  return v as string[];
}

function metaIntArray(meta: GgufMetadataLike, key: string): number[] | undefined {
  const v = ggufMetaValue(meta, key);
  if (v === undefined) return undefined;
  const arr = ArrayBuffer.isView(v) ? Array.from(v as unknown as ArrayLike<number | bigint>) : v;
  if (!Array.isArray(arr)) throw new Error(`GGUF metadata: ${key} must be an integer array, got ${describe(v)}`);
  return arr.map((x, i) => {
    const n = typeof x === 'bigint' ? Number(x) : x;
    if (typeof n !== 'number' || !Number.isInteger(n)) throw new Error(`GGUF metadata: ${key}[${i}] must be an integer, got ${describe(x)}`);
    return n;
  });
}

/** An optional token id key: absent → undefined; present → an integer in [0, nTokens). */
export function ggufTokenId(meta: GgufMetadataLike, key: string, nTokens: number): number | undefined {
  const v = ggufMetaValue(meta, key);
  if (v === undefined) return undefined;
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw new Error(`GGUF metadata: ${key} must be an integer token id, got ${describe(v)}`);
  // llama.cpp ignores an out-of-range id with a warning; a silent fallback would tokenize wrongly, so refuse.
  if (n < 0 || n >= nTokens) throw new Error(`GGUF metadata: ${key} = ${n} is outside the vocabulary (0..${nTokens - 1})`);
  return n;
}

export function ggufBool(meta: GgufMetadataLike, key: string): boolean | undefined {
  const v = ggufMetaValue(meta, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new Error(`GGUF metadata: ${key} must be a boolean, got ${describe(v)}`);
  return v;
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  return v === null ? 'null' : typeof v === 'object' ? (v.constructor?.name ?? 'object') : `${typeof v} ${String(v)}`;
}

/** GPT-2's byte → printable character table (bytes_to_unicode in transformers / tokenizers). */
export const BYTES_TO_UNICODE: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const table: string[] = new Array(256);
  for (const b of bs) table[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++);
  }
  return table;
})();

/** The inverse of BYTES_TO_UNICODE: printable character → byte. */
export const UNICODE_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTES_TO_UNICODE.map((c, b) => [c, b]));

/** A token spelled in the byte alphabet (what transformers' byte_level_tokenizer does to tokens outside it). */
function byteSpelling(token: string): string {
  for (const ch of token) {
    if (!UNICODE_TO_BYTE.has(ch)) {
      return Array.from(Buffer.from(token, 'utf8'), (b) => BYTES_TO_UNICODE[b]).join('');
    }
  }
  return token;
}

function inByteAlphabet(token: string): boolean {
  for (const ch of token) if (!UNICODE_TO_BYTE.has(ch)) return false;
  return true;
}

/** What tokenizerJsonFromGguf returns: the two files a Hugging Face folder would hold, and the ids. */
export interface GgufTokenizerFiles {
  /** tokenizer.json content (Rust `tokenizers` format). */
  tokenizerJson: Record<string, unknown>;
  /** tokenizer_config.json content: bos/eos/pad/unk_token, add_bos_token, add_eos_token, chat_template, clean_up_tokenization_spaces. */
  tokenizerConfig: Record<string, unknown>;
  /** Special token ids from tokenizer.ggml.*_token_id (undefined when the key is absent). */
  ids: { bos?: number; eos?: number; pad?: number; unk?: number; eot?: number; eom?: number };
  /** tokenizer.ggml.pre as given. */
  pre: string;
}

/**
 * Build tokenizer.json (+ tokenizer_config.json) from a GGUF file's tokenizer metadata.
 *
 * Keys read: tokenizer.ggml.model (must be "gpt2"), tokenizer.ggml.pre (one of
 * SUPPORTED_GGUF_PRE_TOKENIZERS), tokenizer.ggml.tokens, tokenizer.ggml.merges,
 * tokenizer.ggml.token_type (optional), tokenizer.ggml.{bos,eos,padding,unknown,eot,eom}_token_id,
 * tokenizer.ggml.add_bos_token / add_eos_token (absent = false), tokenizer.chat_template and
 * tokenizer.chat_template.<name>.
 *
 * Follows transformers' GGUF conversion: vocab = tokens (respelled into the byte alphabet where a
 * token is not already), merges as given, tokens of type 3 (control) added as special tokens
 * (skipped if not in the byte alphabet: a llama.cpp mislabel), type 4 (user-defined) as
 * non-special added tokens (only if present in the vocab as spelled), ByteLevel decoder. Where the
 * converter in transformers 5 has no entry for the pre-tokenizer name (gpt-2, smollm, ...) it keeps
 * GPT-2's ByteLevel regex; this follows llama.cpp instead, which for 'smollm' also splits every
 * digit first, as SmolLM2's published tokenizer.json (Digits + ByteLevel) does.
 *
 * BOS/EOS are added by a TemplateProcessing post-processor when add_bos_token / add_eos_token say so.
 *
 * @throws Error naming the key and value: tokenizer.ggml.model other than "gpt2", a missing or
 *   unknown tokenizer.ggml.pre, missing tokens or merges, a malformed merge, token_type of the wrong
 *   length, a special token id outside the vocabulary, duplicate tokens.
 */
export function tokenizerJsonFromGguf(meta: GgufMetadataLike): GgufTokenizerFiles {
  const model = metaString(meta, 'tokenizer.ggml.model', true);
  if (model !== 'gpt2') {
    throw new Error(
      `GGUF metadata: tokenizer.ggml.model = ${JSON.stringify(model)} is not supported (only "gpt2", byte-level BPE; ` +
        `"llama" is SentencePiece, "bert" WordPiece, "t5" Unigram)`,
    );
  }
  const preName = metaString(meta, 'tokenizer.ggml.pre', false);
  if (preName === undefined) {
    throw new Error(
      'GGUF metadata: tokenizer.ggml.pre is missing (a GGUF converted before llama.cpp recorded its pre-tokenizer; ' +
        'reconvert it with a recent convert_hf_to_gguf.py)',
    );
  }
  const kind = PRE_TOKENIZERS[preName];
  if (kind === undefined) {
    throw new Error(
      `GGUF metadata: tokenizer.ggml.pre = ${JSON.stringify(preName)} is not a supported pre-tokenizer ` +
        `(supported: ${SUPPORTED_GGUF_PRE_TOKENIZERS.join(', ')})`,
    );
  }
  const tokens = metaStringArray(meta, 'tokenizer.ggml.tokens', true)!;
  const n = tokens.length;
  if (n === 0) throw new Error('GGUF metadata: tokenizer.ggml.tokens is empty');
  const merges = metaStringArray(meta, 'tokenizer.ggml.merges', false);
  if (merges === undefined) throw new Error('GGUF metadata: tokenizer.ggml.merges is missing (a byte-level BPE vocabulary needs its merges)');
  const types = metaIntArray(meta, 'tokenizer.ggml.token_type');
  if (types !== undefined && types.length !== n) {
    throw new Error(`GGUF metadata: tokenizer.ggml.token_type has ${types.length} entries, tokenizer.ggml.tokens has ${n}`);
  }

  const vocab: Record<string, number> = Object.create(null);
  for (let i = 0; i < n; i++) {
    const t = byteSpelling(tokens[i]);
    if (t in vocab) throw new Error(`GGUF metadata: tokenizer.ggml.tokens[${i}] = ${JSON.stringify(tokens[i])} repeats token ${vocab[t]}`);
    vocab[t] = i;
  }
  const mergePairs: [string, string][] = merges.map((m, i) => {
    // llama.cpp splits at the first space after position 0, so a merge whose left part is a space still parses.
    const at = m.indexOf(' ', 1);
    if (at < 0 || at === m.length - 1) throw new Error(`GGUF metadata: tokenizer.ggml.merges[${i}] = ${JSON.stringify(m)} is not "left right"`);
    return [m.slice(0, at), m.slice(at + 1)];
  });

  const addedTokens: Record<string, unknown>[] = [];
  if (types !== undefined) {
    for (let i = 0; i < n; i++) {
      const t = tokens[i];
      const special = types[i] === GGUF_TOKEN_TYPE.CONTROL;
      if (special && !inByteAlphabet(t)) continue;
      if (types[i] === GGUF_TOKEN_TYPE.USER_DEFINED && !(t in vocab)) continue;
      if (special || types[i] === GGUF_TOKEN_TYPE.USER_DEFINED) {
        addedTokens.push({ id: i, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
      }
    }
  }

  const ids = {
    bos: ggufTokenId(meta, 'tokenizer.ggml.bos_token_id', n),
    eos: ggufTokenId(meta, 'tokenizer.ggml.eos_token_id', n),
    pad: ggufTokenId(meta, 'tokenizer.ggml.padding_token_id', n),
    unk: ggufTokenId(meta, 'tokenizer.ggml.unknown_token_id', n),
    eot: ggufTokenId(meta, 'tokenizer.ggml.eot_token_id', n),
    eom: ggufTokenId(meta, 'tokenizer.ggml.eom_token_id', n),
  };
  const addBos = ggufBool(meta, 'tokenizer.ggml.add_bos_token') ?? false;
  const addEos = ggufBool(meta, 'tokenizer.ggml.add_eos_token') ?? false;
  if (addBos && ids.bos === undefined) throw new Error('GGUF metadata: tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing');
  if (addEos && ids.eos === undefined) throw new Error('GGUF metadata: tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing');

  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: preTokenizerJson(kind),
    post_processor: templateProcessing(addBos ? { id: ids.bos!, token: tokens[ids.bos!] } : undefined, addEos ? { id: ids.eos!, token: tokens[ids.eos!] } : undefined),
    decoder: byteLevel(true),
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: mergePairs,
    },
  };

  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: addBos,
    add_eos_token: addEos,
    bos_token: ids.bos === undefined ? null : tokens[ids.bos],
    eos_token: ids.eos === undefined ? null : tokens[ids.eos],
    pad_token: ids.pad === undefined ? null : tokens[ids.pad],
    unk_token: ids.unk === undefined ? null : tokens[ids.unk],
    clean_up_tokenization_spaces: false,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  const chat = ggufChatTemplates(meta);
  if (chat !== undefined) tokenizerConfig.chat_template = chat;
  return { tokenizerJson, tokenizerConfig, ids, pre: preName };
}

function templateProcessing(bos?: { id: number; token: string }, eos?: { id: number; token: string }): Record<string, unknown> {
  const single: unknown[] = [];
  const pair: unknown[] = [];
  const special: Record<string, unknown> = {};
  if (bos) {
    single.push({ SpecialToken: { id: bos.token, type_id: 0 } });
    pair.push({ SpecialToken: { id: bos.token, type_id: 0 } });
    special[bos.token] = { id: bos.token, ids: [bos.id], tokens: [bos.token] };
  }
  single.push({ Sequence: { id: 'A', type_id: 0 } });
  pair.push({ Sequence: { id: 'A', type_id: 0 } });
  if (eos) {
    single.push({ SpecialToken: { id: eos.token, type_id: 0 } });
    pair.push({ SpecialToken: { id: eos.token, type_id: 0 } });
  }
  if (bos) pair.push({ SpecialToken: { id: bos.token, type_id: 1 } });
  pair.push({ Sequence: { id: 'B', type_id: 1 } });
  if (eos) {
    pair.push({ SpecialToken: { id: eos.token, type_id: 1 } });
    special[eos.token] = { id: eos.token, ids: [eos.id], tokens: [eos.token] };
  }
  return { type: 'TemplateProcessing', single, pair, special_tokens: special };
}

/**
 * tokenizer.chat_template (and tokenizer.chat_template.<name>, which llama.cpp's converter writes
 * for tokenizer_config.json's named templates) in tokenizer_config.json's shape: the default
 * template alone as a string, or a list of { name, template } when there are named ones.
 */
export function ggufChatTemplates(meta: GgufMetadataLike): string | { name: string; template: string }[] | undefined {
  const main = metaString(meta, 'tokenizer.chat_template', false);
  const keys = meta instanceof Map ? [...meta.keys()] : Object.keys(meta);
  const named = keys
    .filter((k) => k.startsWith('tokenizer.chat_template.'))
    .map((k) => ({ name: k.slice('tokenizer.chat_template.'.length), template: metaString(meta, k, true) }));
  if (named.length === 0) return main;
  return [...(main === undefined ? [] : [{ name: 'default', template: main }]), ...named];
}
