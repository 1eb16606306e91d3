export {
  BertTokenizer,
  longestFirstLengths,
  parseVocabTxt,
  type BatchEncoding,
  type BertTokenizerOptions,
  type EncodeOptions,
  type Encoding,
  type TokenizerBackendName,
} from './bert-tokenizer.js';
export {
  WordPieceTokenizer,
  bertNormalize,
  bertPreTokenize,
  isBertPunctuation,
  isChineseChar,
  splitOnAddedTokens,
  wordpiece,
  type AddedTokenSpec,
  type BertNormalizerOptions,
  type TextSegment,
  type WordPieceOptions,
  type WordPieceTokenizerSpec,
} from './wordpiece.js';
export {
  LlmTokenizer,
  type ApplyChatTemplateOptions,
  type LlmDecodeOptions,
  type LlmEncodeOptions,
  type LlmStreamDecoder,
  type LlmTokenizerFiles,
  type NamedChatTemplate,
} from './bpe.js';
export {
  tokenizerJsonFromGguf,
  ggufChatTemplates,
  SUPPORTED_GGUF_PRE_TOKENIZERS,
  GGUF_TOKEN_TYPE,
  type GgufMetadataLike,
  type GgufTokenizerFiles,
} from './gguf-tokenizer.js';
