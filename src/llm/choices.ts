/**
 * Constrained decoding to a fixed set of strings (`choices`): a trie over each choice's token ids,
 * used as a generateIds TokenConstraint. Like outlines' `generate.choice` and llama.cpp grammars of
 * alternatives, but over one tokenization per choice rather than every token sequence that spells it.
 */
import type { TokenConstraint } from './generate.js';

interface Node {
  next: Map<number, Node>;
  /** A choice ends here. */
  end: boolean;
}

/**
 * A TokenConstraint that only lets a row spell one of `choices`.
 *
 * Each choice is the token ids of its text alone, tokenized without special tokens: after a prompt
 * a byte-level BPE might merge the choice's first characters with what precedes them differently,
 * but the prompt here ends at a token boundary (a chat template's generation prompt, or the user's
 * raw text), so the choice's own encoding is the one the model was trained to produce there.
 * Where a choice ends and a longer one continues ("yes" / "yes please"), the eos ids are allowed
 * too, so the model can end there; where a choice ends and nothing continues, the allowed set is
 * empty and the row ends at once (generateIds' finish 'constraint').
 */
export class ChoiceConstraint implements TokenConstraint {
  private readonly root: Node = { next: new Map(), end: false };
  /** Longest choice, in tokens (maxNewTokens must leave room for it and an eos). */
  readonly maxTokens: number;

  /**
   * @param encoded each choice's token ids (non-empty).
   * @param eosTokenIds ids that may end a row where a choice ends but a longer one continues.
   * @throws Error when there is no choice, or a choice has no tokens (naming its index).
   */
  constructor(encoded: ReadonlyArray<readonly number[]>, private readonly eosTokenIds: readonly number[]) {
    if (encoded.length === 0) throw new Error('choices must name at least one string');
    let longest = 0;
    encoded.forEach((ids, i) => {
      if (ids.length === 0) throw new Error(`choices[${i}] is empty: a choice must be at least one token of text`);
      let node = this.root;
      for (const id of ids) {
        let child = node.next.get(id);
        if (!child) node.next.set(id, (child = { next: new Map(), end: false }));
        node = child;
      }
      node.end = true;
      longest = Math.max(longest, ids.length);
    });
    this.maxTokens = longest;
  }

  allowed(generated: readonly number[]): ReadonlySet<number> {
    let node: Node | undefined = this.root;
    for (const id of generated) {
      node = node.next.get(id);
      // Off the trie: only an eos at a choice's end gets here (the row is already finished).
      if (!node) return new Set();
    }
    if (node.next.size === 0) return new Set();
    const ids = new Set(node.next.keys());
    if (node.end) for (const e of this.eosTokenIds) ids.add(e);
    return ids;
  }
}
