/**
 * Masking for masked-language-model training, as Hugging Face's DataCollatorForLanguageModeling
 * (and, with whole_word_mask, DataCollatorForWholeWordMask) defines it: each maskable position is
 * chosen with probability mlm_probability (default 0.15); a chosen position's label is its
 * original id (every other label is -100) and its input becomes [MASK] with probability 0.8, a
 * uniformly random token id with probability 0.1, and stays unchanged with probability 0.1.
 * Special tokens ([CLS], [SEP], [PAD], [UNK], [MASK]) and padding are never chosen. Whole-word
 * masking chooses WordPiece words instead ("##" pieces follow the piece before them) and masks all
 * of a chosen word's pieces, each then replaced by the 80/10/10 rule.
 *
 * Unlike the collators (torch's global RNG), every draw here is keyed by (seed, epoch, example
 * index): an example is masked anew each epoch (dynamic masking, as run_mlm.py) and identically
 * in a run that resumed, and an evaluation masks the same way every time it runs.
 */
import { deriveSeed, mulberry32, randomInt } from '../../data/index.js';

/** One tokenized text: [CLS] pieces [SEP], no padding. */
export interface TextExample {
  input_ids: number[];
  /** Its position in the dataset: with the seed and the epoch, it keys the example's masks. */
  index: number;
  /** 1-based line of the source file (for messages). */
  line: number;
}

export interface MaskingOptions {
  /** Probability of choosing a position (or, with whole_word_mask, a word); default 0.15. */
  mlm_probability: number;
  whole_word_mask: boolean;
  seed: number;
  /** Ids never chosen: the tokenizer's special ids. */
  specialIds: ReadonlySet<number>;
  /** Replacement for a masked position (80%). */
  maskTokenId: number;
  /** Random replacements are drawn from [0, vocabSize). */
  vocabSize: number;
  /** Per id: whether the token continues the word before it (WordPiece "##"); used by whole_word_mask. */
  isContinuation?: (id: number) => boolean;
}

/** An example's masked input and its labels (-100 where no loss is taken). */
export interface MaskedExample {
  input_ids: Int32Array;
  labels: Int32Array;
  /** Positions chosen (labels != -100). */
  masked: number;
}

/** The stream salt of masking (data order uses others), and the epoch an evaluation masks as. */
const MASK_STREAM = 0x6d4c4d31; // "mLM1"
export const EVAL_EPOCH = 0xffffffff;

/** The 80/10/10 replacement of one chosen position. */
function replace(original: number, rng: () => number, o: MaskingOptions): number {
  const r = rng();
  if (r < 0.8) return o.maskTokenId;
  if (r < 0.9) return randomInt(rng, o.vocabSize);
  return original;
}

/**
 * Masks one example for `epoch` (see the file comment); pure: the same arguments give the same
 * result.
 */
export function maskExample(e: TextExample, epoch: number, o: MaskingOptions): MaskedExample {
  const rng = mulberry32(deriveSeed(o.seed, MASK_STREAM, epoch, e.index));
  const n = e.input_ids.length;
  const input_ids = Int32Array.from(e.input_ids);
  const labels = new Int32Array(n).fill(-100);
  let masked = 0;
  let wordChosen = false;
  for (let t = 0; t < n; t++) {
    const id = e.input_ids[t];
    if (o.specialIds.has(id)) {
      wordChosen = false;
      continue;
    }
    // Whole words: a word's first piece draws for the word; its "##" pieces follow that draw.
    const draws = !o.whole_word_mask || !(t > 0 && !o.specialIds.has(e.input_ids[t - 1]) && o.isContinuation?.(id));
    const chosen: boolean = draws ? rng() < o.mlm_probability : wordChosen;
    wordChosen = chosen;
    if (!chosen) continue;
    labels[t] = id;
    input_ids[t] = replace(id, rng, o);
    masked++;
  }
  return { input_ids, labels, masked };
}
