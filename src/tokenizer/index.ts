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
