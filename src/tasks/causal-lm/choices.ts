/**
 * Generation constrained to a fixed set of answers (a label set), for evaluation by generation:
 * a trie over each choice's token ids used as a generateIds TokenConstraint (as outlines'
 * `generate.choice` and llama.cpp grammars of alternatives do), that also ends a row as soon as
 * its choice is decided — once the tokens so far leave one choice possible, the rest of it is
 * forced and needs no more decode steps. With 77 Banking77 labels of 3–8 tokens, the labels
 * mostly part at their first or second token, so a batch ends after two or three steps instead
 * of eight.
 *
 * (src/llm/choices.ts, being written for LLM.generate, constrains the same way without the early
 * end; this file is the evaluation's own so that neither waits on the other.)
 */
import type { TokenConstraint } from '../../llm/generate.js';

interface Node {
  next: Map<number, Node>;
  /** Index of the choice that ends here, or -1. */
  choice: number;
}

/**
 * A trie of choices. Each choice is the token ids of its text alone (no special tokens): the
 * prompt ends at a token boundary (a chat template's generation prompt), where the model was
 * trained to write the answer's own tokens.
 */
export class ChoiceTrie implements TokenConstraint {
  private readonly root: Node = { next: new Map(), choice: -1 };
  /** Tokens of the longest choice. */
  readonly maxTokens: number;

  /**
   * @param choices the answer strings (duplicates are one choice).
   * @param encode a choice's token ids.
   * @param eosTokenIds ids that may end a row where one choice ends and a longer one goes on.
   * @throws Error when there is no choice or a choice encodes to no tokens (naming it).
   */
  constructor(readonly choices: readonly string[], encode: (text: string) => number[], private readonly eosTokenIds: readonly number[]) {
    if (choices.length === 0) throw new Error('choices: expected at least one answer string');
    let longest = 0;
    choices.forEach((text, i) => {
      const ids = encode(text);
      if (ids.length === 0) throw new Error(`choices[${i}] ${JSON.stringify(text)} has no tokens`);
      let node = this.root;
      for (const id of ids) {
        let child = node.next.get(id);
        if (!child) node.next.set(id, (child = { next: new Map(), choice: -1 }));
        node = child;
      }
      if (node.choice < 0) node.choice = i;
      longest = Math.max(longest, ids.length);
    });
    this.maxTokens = longest;
  }

  private walk(generated: readonly number[]): Node | undefined {
    let node: Node | undefined = this.root;
    for (const id of generated) {
      const child: Node | undefined = node.next.get(id);
      if (!child) return this.eosTokenIds.includes(id) && node.choice >= 0 ? node : undefined;
      node = child;
    }
    return node;
  }

  /** The one choice below `node` when no branch is left (the rest is forced), else undefined. */
  private forced(node: Node): number | undefined {
    let n = node;
    for (;;) {
      if (n.choice >= 0 && n.next.size === 0) return n.choice;
      if (n.choice >= 0 || n.next.size !== 1) return undefined;
      n = n.next.values().next().value as Node;
    }
  }

  /** Ids allowed next; the empty set once the row's choice is decided (or it left the trie). */
  allowed(generated: readonly number[]): ReadonlySet<number> {
    const node = this.walk(generated);
    if (!node || generated.length > 0 && this.eosTokenIds.includes(generated[generated.length - 1])) return new Set();
    if (this.forced(node) !== undefined) return new Set();
    const ids = new Set(node.next.keys());
    if (node.choice >= 0) for (const e of this.eosTokenIds) ids.add(e);
    return ids;
  }

  /** The choice a row's tokens decided (the forced rest filled in), or undefined when they decided none. */
  resolve(generated: readonly number[]): string | undefined {
    const node = this.walk(generated);
    if (!node) return undefined;
    const forced = this.forced(node);
    const i = forced ?? node.choice;
    return i >= 0 ? this.choices[i] : undefined;
  }
}
