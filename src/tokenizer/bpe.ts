/**
 * LlmTokenizer: the tokenizer of a decoder LLM (byte-level BPE: SmolLM2, Llama 3, Qwen2.5, ...)
 * from a Hugging Face folder (tokenizer.json + tokenizer_config.json + generation_config.json) or
 * from a GGUF file's tokenizer.ggml.* metadata, run by @huggingface/tokenizers (the tokenizer
 * library transformers.js uses). Ids follow Hugging Face's fast tokenizer (the Rust `tokenizers`
 * crate), which is the reference for training; see test/llm-tokenizer.test.ts for the corpus it
 * is checked on, and for where llama.cpp's own tokenization of the same GGUF differs.
 */
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { readGgufHeader } from '../io/gguf.js';
import {
  GPT2_SPLIT_REGEX,
  UNICODE_TO_BYTE,
  ggufChatTemplates,
  tokenizerJsonFromGguf,
  type GgufMetadataLike,
} from './gguf-tokenizer.js';
import { parseChatTemplate, renderChatTemplate, resolveChatTemplate, type ChatMessage } from '../chat/template.js';
import { renderChatWithAssistantSpans, tokenizeChatSpans, type EncodedChat } from '../chat/spans.js';

export interface LlmEncodeOptions {
  /**
   * Add what the tokenizer's post-processor adds (BOS / EOS: tokenizer.json's TemplateProcessing;
   * for a GGUF, tokenizer.ggml.add_bos_token / add_eos_token). Default true, as in transformers'
   * `encode`. Chat templates write their own BOS, so encode rendered chats with false.
   */
  addSpecialTokens?: boolean;
  /**
   * Match special tokens written in the text ("<|im_start|>" → one id). Default true, as
   * transformers and llama.cpp's `parse_special = true` do. False tokenizes their text as
   * ordinary characters (transformers' split_special_tokens=True, llama.cpp parse_special=false);
   * non-special added tokens are still matched.
   */
  parseSpecialTokens?: boolean;
}

export interface LlmDecodeOptions {
  /** Drop special tokens (added tokens marked special: <|im_start|>, <|endoftext|>, ...). Default false. */
  skipSpecialTokens?: boolean;
}

/** Incremental detokenizer for generation; see LlmTokenizer.createStreamDecoder. */
export interface LlmStreamDecoder {
  /**
   * Feed one generated id; returns the text it completes ('' while a multi-byte character is
   * split across byte-level tokens and still incomplete).
   * @throws Error if id is not an integer in [0, vocabSize).
   */
  push(id: number): string;
  /** The text still held back (an incomplete UTF-8 sequence decodes to U+FFFD); resets the decoder. */
  flush(): string;
}

/** A named chat template (tokenizer_config.json's list form, GGUF tokenizer.chat_template.<name>). */
export interface NamedChatTemplate {
  name: string;
  template: string;
}

/** Options of LlmTokenizer.applyChatTemplate / encodeChat (transformers' apply_chat_template names). */
export interface ApplyChatTemplateOptions {
  /** JSON schemas of the tools the model may call. */
  tools?: unknown[] | null;
  documents?: unknown[] | null;
  /** End with the header of an assistant turn, so the model answers next. Default false. */
  add_generation_prompt?: boolean;
  /** A named template of this tokenizer ("tool_use") or a template string; default: see resolveChatTemplate. */
  chat_template?: string;
  /** Extra template variables (enable_thinking, date_string, ...). */
  [key: string]: unknown;
}

/** The files an LlmTokenizer was built from, as a Hugging Face folder would hold them. */
export interface LlmTokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

interface BuildOptions {
  /** Where it came from, for messages: a file path or "GGUF metadata". */
  source: string;
  /** generation_config.json eos_token_id, if any (number or list). */
  generationEos?: unknown;
  /** Extra end-of-generation ids (GGUF eot/eom). */
  extraEos?: number[];
  /** Template files that override tokenizer_config.json's chat_template. */
  chatTemplateOverride?: string | NamedChatTemplate[];
}

/**
 * A byte-level BPE tokenizer for decoder LLMs.
 *
 * Construct with {@link LlmTokenizer.fromTokenizerJson} (a Hugging Face folder),
 * {@link LlmTokenizer.fromGgufMetadata} (a GGUF file's metadata) or
 * {@link LlmTokenizer.fromFiles} (tokenizer.json / tokenizer_config.json objects).
 */
export class LlmTokenizer {
  /** Where the tokenizer came from (a tokenizer.json path, or "GGUF metadata"). */
  readonly source: string;
  /** Number of ids: 1 + the largest id of the vocabulary and the added tokens. */
  readonly vocabSize: number;
  readonly bosToken?: string;
  readonly bosTokenId?: number;
  readonly eosToken?: string;
  readonly eosTokenId?: number;
  readonly padToken?: string;
  readonly padTokenId?: number;
  readonly unkToken?: string;
  readonly unkTokenId?: number;
  /**
   * Ids that end generation: generation_config.json's eos_token_id (an int or a list) when the
   * folder has one, else eos_token_id; for a GGUF, tokenizer.ggml.eos_token_id plus eot/eom ids.
   */
  readonly eosTokenIds: readonly number[];
  /** Whether encode({ addSpecialTokens: true }) puts BOS first / EOS last. */
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  /** The default chat template (tokenizer_config.json chat_template / GGUF tokenizer.chat_template), if any. */
  readonly chatTemplate?: string;
  /** Named chat templates ("default", "tool_use", ...), if the source lists them. */
  readonly chatTemplates: readonly NamedChatTemplate[];
  /** Where the chat template came from when setChatTemplate replaced it (named in render errors). */
  private chatTemplateSource?: string;
  /** Ids of added tokens marked special (skipped by decode({ skipSpecialTokens: true })). */
  readonly specialTokenIds: ReadonlySet<number>;

  private readonly files: LlmTokenizerFiles;
  private readonly hf: HFTokenizer;
  private readonly cleanUpSpaces: boolean;
  private readonly byteLevel: boolean;
  private readonly addedContent = new Map<number, string>();
  private plainHf?: HFTokenizer;
  private affixes?: { prefix: number[]; suffix: number[] };

  private constructor(files: LlmTokenizerFiles, opts: BuildOptions) {
    this.source = opts.source;
    this.files = files;
    const tj = files.tokenizerJson;
    const cfg = files.tokenizerConfig;
    const model = tj.model as Record<string, unknown> | undefined;
    if (model === null || typeof model !== 'object') throw new Error(`${opts.source}: tokenizer.json has no "model" object`);
    if (model.type !== undefined && model.type !== 'BPE') {
      throw new Error(`${opts.source}: model.type is ${JSON.stringify(model.type)}; LlmTokenizer handles BPE tokenizers`);
    }
    this.cleanUpSpaces = cfg.clean_up_tokenization_spaces === true;
    try {
      this.hf = new HFTokenizer(forTokenizersJs(tj), { clean_up_tokenization_spaces: this.cleanUpSpaces });
    } catch (err) {
      throw new Error(`${opts.source}: @huggingface/tokenizers cannot load it: ${(err as Error).message}`, { cause: err });
    }
    const decoder = tj.decoder as Record<string, unknown> | null | undefined;
    this.byteLevel = decoder?.type === 'ByteLevel';

    const special = new Set<number>();
    let maxId = -1;
    const isId = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0;
    for (const [token, id] of Object.entries((model.vocab ?? {}) as Record<string, unknown>)) {
      if (!isId(id)) throw new Error(`${opts.source}: model.vocab[${JSON.stringify(token)}] = ${JSON.stringify(id)} is not a token id`);
      maxId = Math.max(maxId, id);
    }
    if (!Array.isArray(tj.added_tokens)) throw new Error(`${opts.source}: added_tokens must be an array`);
    for (const [i, t] of (tj.added_tokens as { id: unknown; content: unknown; special?: unknown }[]).entries()) {
      if (t === null || typeof t !== 'object' || !isId(t.id) || typeof t.content !== 'string') {
        throw new Error(`${opts.source}: added_tokens[${i}] must have an integer id and a string content`);
      }
      maxId = Math.max(maxId, t.id);
      this.addedContent.set(t.id, t.content);
      if (t.special === true) special.add(t.id);
    }
    this.vocabSize = maxId + 1;
    this.specialTokenIds = special;

    const tokenOf = (key: string): { token?: string; id?: number } => {
      const token = tokenString(cfg[key]);
      if (token === undefined) return {};
      const id = this.tokenToId(token);
      if (id === undefined) throw new Error(`${opts.source}: ${key} ${JSON.stringify(token)} is not in the vocabulary`);
      return { token, id };
    };
    ({ token: this.bosToken, id: this.bosTokenId } = tokenOf('bos_token'));
    ({ token: this.eosToken, id: this.eosTokenId } = tokenOf('eos_token'));
    ({ token: this.padToken, id: this.padTokenId } = tokenOf('pad_token'));
    ({ token: this.unkToken, id: this.unkTokenId } = tokenOf('unk_token'));

    this.eosTokenIds = this.resolveEos(opts);
    const { prefix, suffix } = this.specialAffixes();
    this.addBosToken = this.bosTokenId !== undefined && prefix.includes(this.bosTokenId);
    this.addEosToken = this.eosTokenId !== undefined && suffix.includes(this.eosTokenId);

    const chat = opts.chatTemplateOverride ?? (cfg.chat_template as unknown);
    const { main, named } = parseChatTemplates(chat, opts.source);
    this.chatTemplate = main;
    this.chatTemplates = named;
  }

  private resolveEos(opts: BuildOptions): number[] {
    const g = opts.generationEos;
    let ids: number[];
    if (g === undefined || g === null) {
      ids = this.eosTokenId === undefined ? [] : [this.eosTokenId];
    } else {
      const list = Array.isArray(g) ? g : [g];
      ids = list.map((x, i) => {
        if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x >= this.vocabSize) {
          throw new Error(`${opts.source}: generation_config.json eos_token_id${Array.isArray(g) ? `[${i}]` : ''} = ${JSON.stringify(x)} is not a token id`);
        }
        return x;
      });
    }
    for (const id of opts.extraEos ?? []) if (!ids.includes(id)) ids.push(id);
    return ids;
  }

  /**
   * Load a Hugging Face model folder: tokenizer.json (required), tokenizer_config.json (bos/eos/
   * pad/unk_token, chat_template, clean_up_tokenization_spaces), special_tokens_map.json (special
   * tokens tokenizer_config.json does not name), chat_template.jinja / chat_template.json /
   * additional_chat_templates/*.jinja (which take precedence over tokenizer_config.json, as in
   * transformers), generation_config.json (eos_token_id, an int or a list → eosTokenIds).
   * @throws Error naming the file when one is missing (tokenizer.json), not valid JSON, names a
   *   special token that is not in the vocabulary, or cannot be loaded by @huggingface/tokenizers.
   */
  static async fromTokenizerJson(folder: string): Promise<LlmTokenizer> {
    const tjPath = join(folder, 'tokenizer.json');
    if (!existsSync(tjPath)) throw new Error(`${tjPath}: not found (an LLM tokenizer folder needs tokenizer.json)`);
    const tokenizerJson = await readJson(tjPath);
    const cfgPath = join(folder, 'tokenizer_config.json');
    const tokenizerConfig = existsSync(cfgPath) ? await readJson(cfgPath) : {};
    const stPath = join(folder, 'special_tokens_map.json');
    if (existsSync(stPath)) {
      const st = await readJson(stPath);
      for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
        if (tokenizerConfig[key] === undefined && st[key] !== undefined) tokenizerConfig[key] = st[key];
      }
    }
    const genPath = join(folder, 'generation_config.json');
    const generationEos = existsSync(genPath) ? (await readJson(genPath)).eos_token_id : undefined;
    return new LlmTokenizer(
      { tokenizerJson, tokenizerConfig },
      { source: tjPath, generationEos, chatTemplateOverride: await readChatTemplateFiles(folder) },
    );
  }

  /**
   * Build from a GGUF file's metadata (the tokenizer.ggml.* and tokenizer.chat_template keys);
   * see {@link tokenizerJsonFromGguf} for what is read and how. eosTokenIds holds
   * tokenizer.ggml.eos_token_id and, when present, eot_token_id / eom_token_id.
   * @throws Error naming the key and value for an unsupported tokenizer.ggml.model or
   *   tokenizer.ggml.pre, and for missing or malformed tokenizer keys.
   */
  static fromGgufMetadata(metadata: GgufMetadataLike): LlmTokenizer {
    const files = tokenizerJsonFromGguf(metadata);
    const extraEos = [files.ids.eot, files.ids.eom].filter((x): x is number => x !== undefined);
    return new LlmTokenizer(
      { tokenizerJson: files.tokenizerJson, tokenizerConfig: files.tokenizerConfig },
      { source: 'GGUF metadata', extraEos, chatTemplateOverride: ggufChatTemplates(metadata) },
    );
  }

  /**
   * Read a GGUF file's metadata (src/io/gguf.ts readGgufHeader: no tensor data is read) and build
   * its tokenizer as fromGgufMetadata does.
   * @throws Error naming the file for an unreadable or malformed GGUF, or for tokenizer metadata
   *   fromGgufMetadata refuses.
   */
  static async fromGguf(path: string): Promise<LlmTokenizer> {
    const header = await readGgufHeader(path);
    try {
      return LlmTokenizer.fromGgufMetadata(header.metadata);
    } catch (err) {
      throw new Error(`${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Build from tokenizer.json and tokenizer_config.json contents already in memory.
   * @param source named in error messages.
   * @param generationEos generation_config.json's eos_token_id, if any.
   */
  static fromFiles(files: LlmTokenizerFiles, source = 'tokenizer.json', generationEos?: number | number[]): LlmTokenizer {
    return new LlmTokenizer(files, { source, generationEos });
  }

  /**
   * Replaces the chat template (and any named ones) with `chat`: a template string, or
   * tokenizer_config.json's list of { name, template }. What `--chat-template-file` does — a base
   * model that has none, or training and serving with another — and how a run folder keeps the
   * template it was trained with. toFiles() then writes it as tokenizer_config.json chat_template.
   * @param source where it came from (a file path), named in parse and render errors.
   * @throws Error naming `source` when a template does not parse, or `chat` has another shape.
   */
  setChatTemplate(chat: string | readonly NamedChatTemplate[], source: string): void {
    const { main, named } = parseChatTemplates(chat, source);
    for (const t of [main, ...named.map((n) => n.template)]) if (t !== undefined) parseChatTemplate(t, source);
    const self = this as { chatTemplate?: string; chatTemplates: readonly NamedChatTemplate[] };
    self.chatTemplate = main;
    self.chatTemplates = named;
    this.chatTemplateSource = source;
  }

  /**
   * Resolves and parses the template applyChatTemplate would render with these options, without
   * rendering anything: whether this tokenizer can render conversations at all.
   * @throws Error as applyChatTemplate does for no chat template, or one that does not parse.
   */
  checkChatTemplate(options: Pick<ApplyChatTemplateOptions, 'chat_template' | 'tools'> = {}): void {
    const { template, source } = resolveChatTemplate(this, { template: options.chat_template, tools: options.tools, source: this.chatTemplateSource ?? this.source });
    parseChatTemplate(template, source);
  }

  /** tokenizer.json and tokenizer_config.json as they would be written to a Hugging Face folder. */
  toFiles(): LlmTokenizerFiles {
    const tokenizerConfig = { ...this.files.tokenizerConfig };
    if (this.chatTemplates.length > 0) tokenizerConfig.chat_template = this.chatTemplates.map((t) => ({ ...t }));
    else if (this.chatTemplate !== undefined) tokenizerConfig.chat_template = this.chatTemplate;
    return { tokenizerJson: this.files.tokenizerJson, tokenizerConfig };
  }

  /**
   * Text → ids.
   * @throws TypeError if text is not a string.
   */
  encode(text: string, options: LlmEncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TypeError(`encode: text must be a string, got ${typeof text}`);
    const addSpecial = options.addSpecialTokens ?? true;
    if (options.parseSpecialTokens === false && this.specialTokenIds.size > 0) {
      const ids = text.length === 0 ? [] : this.plain().encode(text, { add_special_tokens: false }).ids;
      if (!addSpecial) return ids;
      const { prefix, suffix } = this.specialAffixes();
      return [...prefix, ...ids, ...suffix];
    }
    return this.hf.encode(text, { add_special_tokens: addSpecial }).ids;
  }

  /**
   * Ids → text (the tokenizer's decoder; clean_up_tokenization_spaces as tokenizer_config.json
   * says, default false as in transformers 5).
   * @throws Error if an id is not an integer in [0, vocabSize), naming its index.
   */
  decode(ids: readonly number[], options: LlmDecodeOptions = {}): string {
    this.checkIds(ids);
    if (ids.length === 0) return '';
    return this.hf.decode(ids as number[], {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.cleanUpSpaces,
    });
  }

  /**
   * A decoder for ids that arrive one at a time. Each push returns the new text; a character
   * whose UTF-8 bytes are split across byte-level tokens is held back until it is complete.
   * The concatenation of every push and the final flush equals decode(all ids).
   *
   * Follows text-generation-inference's decode_token: decode a short window of recent ids and
   * emit what it adds beyond the window's previous text, unless that ends in U+FFFD.
   */
  createStreamDecoder(options: LlmDecodeOptions = {}): LlmStreamDecoder {
    let ids: number[] = [];
    let prefixOffset = 0;
    let readOffset = 0;
    const decode = (from: number, to: number): string => this.decode(ids.slice(from, to), options);
    return {
      push: (id: number): string => {
        this.checkIds([id]);
        ids.push(id);
        const prefixText = decode(prefixOffset, readOffset);
        const newText = decode(prefixOffset, ids.length);
        if (newText.length > prefixText.length && !newText.endsWith('\uFFFD') && newText.startsWith(prefixText)) {
          const delta = newText.slice(prefixText.length);
          // Keep only the ids the next window needs, so a long generation stays O(1) per token.
          ids = ids.slice(readOffset);
          prefixOffset = 0;
          readOffset = ids.length;
          return delta;
        }
        return '';
      },
      flush: (): string => {
        const rest = decode(prefixOffset, ids.length).slice(decode(prefixOffset, readOffset).length);
        ids = [];
        prefixOffset = 0;
        readOffset = 0;
        return rest;
      },
    };
  }

  /** The id of a token string (as the vocabulary spells it: "Ġthe", "<|im_end|>"), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** The token string of an id (as the vocabulary spells it), or undefined outside the vocabulary. */
  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return undefined;
    return this.hf.id_to_token(id);
  }

  /**
   * The UTF-8 bytes token `id` stands for (a byte-level BPE token's bytes; an added token's
   * content).
   * @throws Error if the tokenizer's decoder is not ByteLevel, or id is not in the vocabulary.
   */
  tokenBytes(id: number): Uint8Array {
    this.checkIds([id]);
    const added = this.addedContent.get(id);
    if (added !== undefined) return Buffer.from(added, 'utf8');
    if (!this.byteLevel) throw new Error(`${this.source}: tokenBytes needs a ByteLevel decoder`);
    const tok = this.hf.id_to_token(id);
    if (tok === undefined) throw new Error(`${this.source}: id ${id} has no token`);
    const out = new Uint8Array(tok.length);
    let n = 0;
    for (const ch of tok) {
      const b = UNICODE_TO_BYTE.get(ch);
      if (b === undefined) throw new Error(`${this.source}: token ${id} ${JSON.stringify(tok)} is not spelled in the byte alphabet`);
      out[n++] = b;
    }
    return out.subarray(0, n);
  }

  /**
   * Encode and give each token's [start, end) byte offsets in the UTF-8 text. Byte-level
   * tokenizers only: their tokens' bytes concatenate to the text exactly.
   * @throws Error if the tokenizer normalizes or drops text (the tokens' bytes do not rebuild it).
   */
  encodeWithByteOffsets(text: string, options: LlmEncodeOptions = {}): { ids: number[]; offsets: [number, number][] } {
    const ids = this.encode(text, { ...options, addSpecialTokens: false });
    const offsets: [number, number][] = [];
    const bytes = Buffer.from(text, 'utf8');
    let at = 0;
    for (const id of ids) {
      const tb = this.tokenBytes(id);
      if (at + tb.length > bytes.length || !bytes.subarray(at, at + tb.length).equals(tb)) {
        throw new Error(`${this.source}: the tokens do not spell the text byte for byte at byte ${at} (a normalizer changed it); no offsets`);
      }
      offsets.push([at, at + tb.length]);
      at += tb.length;
    }
    if (at !== bytes.length) throw new Error(`${this.source}: the tokens cover ${at} of ${bytes.length} bytes of the text; no offsets`);
    if (options.addSpecialTokens ?? false) {
      const { prefix, suffix } = this.specialAffixes();
      return {
        ids: [...prefix, ...ids, ...suffix],
        offsets: [...prefix.map((): [number, number] => [0, 0]), ...offsets, ...suffix.map((): [number, number] => [at, at])],
      };
    }
    return { ids, offsets };
  }

  /**
   * Render a conversation with this tokenizer's chat template and special tokens (bos_token,
   * eos_token, pad_token, unk_token), as transformers' apply_chat_template(..., tokenize=False).
   * @throws Error naming the message index for a bad message, naming the template's source and the
   *   Jinja error when rendering fails, or saying there is no chat template.
   */
  applyChatTemplate(messages: ChatMessage[], options: ApplyChatTemplateOptions = {}): string {
    const { template, source, context } = this.chatContext(messages, options);
    return renderChatTemplate(template, context, { source });
  }

  /**
   * Render a conversation, tokenize it (no BOS/EOS added: the template writes them) and mark the
   * assistant turns: assistant_masks is 1 on each assistant message's tokens, its end-of-turn token
   * (any eosTokenIds token, e.g. <|im_end|>) included and what the template writes after it not.
   * See renderChatWithAssistantSpans for how turns are located.
   * @throws as applyChatTemplate, and Error when a turn cannot be located.
   */
  encodeChat(messages: ChatMessage[], options: ApplyChatTemplateOptions = {}): EncodedChat {
    const { template, source, context } = this.chatContext(messages, options);
    const endOfTurn = this.eosTokenIds.map((id) => this.idToToken(id)).filter((t): t is string => t !== undefined);
    const { text, spans } = renderChatWithAssistantSpans(template, context, { source, endOfTurn });
    return tokenizeChatSpans(this, text, spans);
  }

  private chatContext(messages: ChatMessage[], options: ApplyChatTemplateOptions) {
    const { chat_template, tools, ...rest } = options;
    const { template, source } = resolveChatTemplate(this, { template: chat_template, tools, source: this.chatTemplateSource ?? this.source });
    const context = {
      bos_token: this.bosToken ?? null,
      eos_token: this.eosToken ?? null,
      pad_token: this.padToken ?? null,
      unk_token: this.unkToken ?? null,
      ...rest,
      tools: tools ?? null,
      messages,
    };
    return { template, source, context };
  }

  private checkIds(ids: readonly number[]): void {
    if (!Array.isArray(ids)) throw new TypeError(`ids must be an array of token ids`);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(`token id at index ${i} is ${JSON.stringify(id)}, not an integer in [0, ${this.vocabSize})`);
      }
    }
  }

  /** The tokenizer without its special added tokens, for parseSpecialTokens: false. */
  private plain(): HFTokenizer {
    if (this.plainHf === undefined) {
      const tj = this.files.tokenizerJson;
      const added = (tj.added_tokens as { special?: boolean }[]).filter((t) => !t.special);
      this.plainHf = new HFTokenizer(forTokenizersJs({ ...tj, added_tokens: added, post_processor: null }), {
        clean_up_tokenization_spaces: this.cleanUpSpaces,
      });
    }
    return this.plainHf;
  }

  /** What the post-processor puts before and after a single sequence, found by encoding a probe. */
  private specialAffixes(): { prefix: number[]; suffix: number[] } {
    if (this.affixes === undefined) {
      const probe = 'a';
      const bare: number[] = this.hf.encode(probe, { add_special_tokens: false }).ids;
      const full: number[] = this.hf.encode(probe, { add_special_tokens: true }).ids;
      let at = -1;
      for (let i = 0; i + bare.length <= full.length && at < 0; i++) {
        if (bare.every((id, j) => full[i + j] === id)) at = i;
      }
      if (at < 0) throw new Error(`${this.source}: the post-processor changes the tokens of the text itself; unsupported`);
      this.affixes = { prefix: full.slice(0, at), suffix: full.slice(at + bare.length) };
    }
    return this.affixes;
  }
}

/**
 * Rewrite pre-tokenizers that @huggingface/tokenizers 0.2 implements differently from the Rust
 * crate into equivalent ones it implements alike: Digits matches only ASCII \d there (the crate
 * splits on every char::is_numeric, i.e. \p{N}); the ByteLevel regex there uses JavaScript's \s
 * (which adds U+FEFF and misses U+0085), while its Split patterns map \s to \p{White_Space} as
 * the crate's Oniguruma does. The original tokenizer.json is kept for toFiles().
 */
function forTokenizersJs(tj: Record<string, unknown>): Record<string, unknown> {
  const fix = (p: unknown): unknown => {
    if (p === null || typeof p !== 'object') return p;
    const pt = p as Record<string, unknown>;
    if (pt.type === 'Sequence' && Array.isArray(pt.pretokenizers)) return { ...pt, pretokenizers: pt.pretokenizers.map(fix) };
    if (pt.type === 'Digits') {
      return { type: 'Split', pattern: { Regex: pt.individual_digits ? '\\p{N}' : '\\p{N}+' }, behavior: 'Isolated', invert: false };
    }
    if (pt.type === 'ByteLevel' && (pt.use_regex ?? true) && !(pt.add_prefix_space ?? false)) {
      return {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: GPT2_SPLIT_REGEX }, behavior: 'Isolated', invert: false },
          { ...pt, use_regex: false },
        ],
      };
    }
    return p;
  };
  return {
    ...tj,
    normalizer: tj.normalizer ?? null,
    pre_tokenizer: fix(tj.pre_tokenizer ?? null),
    post_processor: tj.post_processor ?? null,
    decoder: tj.decoder ?? null,
  };
}

function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`${path}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${path}: not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** chat_template.jinja, chat_template.json and additional_chat_templates/ (transformers ≥ 4.43 saves templates there). */
async function readChatTemplateFiles(folder: string): Promise<string | NamedChatTemplate[] | undefined> {
  let main: string | undefined;
  const jinja = join(folder, 'chat_template.jinja');
  const json = join(folder, 'chat_template.json');
  if (existsSync(jinja)) main = await readFile(jinja, 'utf8');
  else if (existsSync(json)) {
    const t = (await readJson(json)).chat_template;
    if (typeof t !== 'string') throw new Error(`${json}: chat_template must be a string`);
    main = t;
  }
  const extraDir = join(folder, 'additional_chat_templates');
  const named: NamedChatTemplate[] = [];
  if (existsSync(extraDir)) {
    for (const f of (await readdir(extraDir)).filter((f) => f.endsWith('.jinja')).sort()) {
      named.push({ name: f.slice(0, -'.jinja'.length), template: await readFile(join(extraDir, f), 'utf8') });
    }
  }
  if (named.length === 0) return main;
  return [...(main === undefined ? [] : [{ name: 'default', template: main }]), ...named];
}

/** tokenizer_config.json's chat_template: a string, or a list of { name, template }. */
function parseChatTemplates(v: unknown, source: string): { main?: string; named: NamedChatTemplate[] } {
  if (v === undefined || v === null) return { named: [] };
  if (typeof v === 'string') return { main: v, named: [] };
  if (Array.isArray(v)) {
    const named = v.map((t, i) => {
      const o = t as { name?: unknown; template?: unknown };
      if (o === null || typeof o !== 'object' || typeof o.name !== 'string' || typeof o.template !== 'string') {
        throw new Error(`${source}: chat_template[${i}] must be { name: string, template: string }`);
      }
      return { name: o.name, template: o.template };
    });
    return { main: named.find((t) => t.name === 'default')?.template, named };
  }
  throw new Error(`${source}: chat_template must be a string or a list of { name, template }`);
}
