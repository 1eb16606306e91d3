/**
 * LlmTokenizer (src/tokenizer/bpe.ts, src/tokenizer/gguf-tokenizer.ts) against Hugging Face's
 * fast tokenizer and llama.cpp.
 *
 * References (test/fixtures/llm-tokenizer, made by scripts/reference/llm_tokenizer.py):
 * corpus.json holds a hard corpus (whitespace runs, tabs, \r\n, digits, emoji and ZWJ sequences,
 * CJK, combining marks, RTL scripts, code, special-token text, odd Unicode spaces) with
 * transformers' ids for SmolLM2-135M-Instruct's GGUF and for four small vocab-only GGUFs
 * (tokenizer.ggml.pre = gpt-2, llama-bpe, qwen2, smollm), and the same tokenizers saved as
 * tokenizer.json folders.
 *
 * Which reference: Hugging Face's tokenizer is what training uses. For "smollm" GGUFs,
 * transformers 5.25's GGUF converter keeps GPT-2's ByteLevel regex alone, while SmolLM2's
 * published tokenizer.json first splits every digit (Digits individual_digits), and llama.cpp
 * does the same ("\p{N}" split first); the fixture's "reference" is transformers' tokenizer with
 * that published pre-tokenizer, and the converter's own ids are kept as "hf_gguf" (they differ on
 * a whitespace run before a digit and on non-ASCII digits; see HF_GGUF_DIFFERS below).
 *
 * llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU binary, llama.cpp release recorded by
 * node-llama-cpp as v0.4.0): model.tokenize(text, true) on the real GGUF and on the small ones
 * (vocabOnly) is compared with LlmTokenizer on every corpus text; it agrees everywhere
 * (LLAMA_CPP_DIFFERS is empty), with special-token parsing on and off.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readGgufHeader } from '../src/io/gguf.js';
import { LlmTokenizer } from '../src/tokenizer/bpe.js';
import { SUPPORTED_GGUF_PRE_TOKENIZERS, tokenizerJsonFromGguf } from '../src/tokenizer/gguf-tokenizer.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'test/fixtures/llm-tokenizer');
const SMOLLM2 = join(ROOT, '.cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf');
const skipReal = existsSync(SMOLLM2) ? false : `${SMOLLM2} is absent: run bash scripts/fetch-llm.sh (scripts/setup.sh does)`;

interface SmallRef {
  gguf: string;
  folder: string;
  add_bos_token: boolean;
  reference: number[][];
  hf_gguf: number[][];
  decoded: string[];
}
interface Corpus {
  texts: string[];
  smollm2: {
    reference: number[][];
    hf_gguf: number[][];
    decoded: string[];
    decoded_skip_special: string[];
    reference_vs_hf_gguf: number[];
    special: Record<string, string | number>;
  };
  small: Record<string, SmallRef>;
}
const corpus = JSON.parse(readFileSync(join(FIX, 'corpus.json'), 'utf8')) as Corpus;
const texts = corpus.texts;

/** Texts on which transformers' own GGUF conversion of a "smollm" GGUF differs from the reference (see the header). */
const HF_GGUF_DIFFERS = ['a  1', 'a   12', '  42', '٣٤٥ ١٢', '²³ ½ Ⅻ ⅷ'];
/** Texts on which llama.cpp's tokenization differs from the reference, per GGUF: none found. */
const LLAMA_CPP_DIFFERS: Record<string, string[]> = { smollm2: [], 'gpt-2': [], 'llama-bpe': [], qwen2: [], smollm: [] };

let smollm2: LlmTokenizer | undefined;
async function real(): Promise<LlmTokenizer> {
  smollm2 ??= await LlmTokenizer.fromGguf(SMOLLM2);
  return smollm2;
}

/** Indices of texts where `got` differs from `want`, with a readable report. */
function mismatches(got: (i: number) => number[], want: number[][]): string[] {
  const out: string[] = [];
  texts.forEach((t, i) => {
    const g = got(i);
    if (JSON.stringify(g) !== JSON.stringify(want[i])) out.push(`${JSON.stringify(t)}: got [${g.join(',')}] want [${want[i].join(',')}]`);
  });
  return out;
}

test('SmolLM2 GGUF: ids equal the Hugging Face reference on the whole corpus; special tokens and vocab size as transformers reads them', { skip: skipReal }, async () => {
  const tok = await real();
  assert.deepEqual(mismatches((i) => tok.encode(texts[i]), corpus.smollm2.reference), []);
  const sp = corpus.smollm2.special;
  assert.equal(tok.vocabSize, sp.vocab_size);
  assert.equal(tok.bosToken, sp.bos_token);
  assert.equal(tok.bosTokenId, sp.bos_token_id);
  assert.equal(tok.eosToken, sp.eos_token);
  assert.equal(tok.eosTokenId, sp.eos_token_id);
  assert.equal(tok.padTokenId, sp.pad_token_id);
  assert.equal(tok.unkTokenId, sp.unk_token_id);
  assert.deepEqual(tok.eosTokenIds, [2]);
  assert.equal(tok.addBosToken, false);
  assert.equal(tok.addEosToken, false);
  assert.match(tok.chatTemplate ?? '', /<\|im_start\|>/);
  // add_bos_token is false for SmolLM2, so addSpecialTokens changes nothing.
  assert.deepEqual(tok.encode('Hi', { addSpecialTokens: true }), tok.encode('Hi', { addSpecialTokens: false }));
});

test('SmolLM2 GGUF: decode equals transformers decode, with and without special tokens', { skip: skipReal }, async () => {
  const tok = await real();
  const ref = corpus.smollm2.reference;
  texts.forEach((t, i) => {
    assert.equal(tok.decode(ref[i]), corpus.smollm2.decoded[i], JSON.stringify(t));
    assert.equal(tok.decode(ref[i], { skipSpecialTokens: true }), corpus.smollm2.decoded_skip_special[i], JSON.stringify(t));
  });
  assert.equal(tok.decode([]), '');
});

test("SmolLM2: transformers' own GGUF conversion differs from the reference exactly on the recorded texts (digit splitting)", () => {
  assert.deepEqual(corpus.smollm2.reference_vs_hf_gguf.map((i) => texts[i]), HF_GGUF_DIFFERS);
  // The small "smollm" GGUF (a 2,000-token slice of the same vocabulary) shows a subset of them.
  const small = corpus.small.smollm;
  const differ = texts.filter((_, i) => JSON.stringify(small.reference[i]) !== JSON.stringify(small.hf_gguf[i]));
  assert.ok(differ.length > 0 && differ.every((t) => HF_GGUF_DIFFERS.includes(t)), differ.join(' | '));
  for (const pre of ['gpt-2', 'llama-bpe', 'qwen2']) assert.deepEqual(corpus.small[pre].reference, corpus.small[pre].hf_gguf, pre);
});

for (const pre of Object.keys(corpus.small)) {
  const ref = corpus.small[pre];
  test(`small GGUF with tokenizer.ggml.pre = ${pre}: ids from the GGUF metadata and from its tokenizer.json folder equal transformers'`, async () => {
    const fromGguf = await LlmTokenizer.fromGguf(join(FIX, ref.gguf));
    const fromFolder = await LlmTokenizer.fromTokenizerJson(join(FIX, ref.folder));
    assert.deepEqual(mismatches((i) => fromGguf.encode(texts[i]), ref.reference), [], 'from GGUF');
    assert.deepEqual(mismatches((i) => fromFolder.encode(texts[i]), ref.reference), [], 'from tokenizer.json');
    texts.forEach((t, i) => assert.equal(fromGguf.decode(ref.reference[i]), ref.decoded[i], JSON.stringify(t)));
    assert.equal(fromGguf.addBosToken, ref.add_bos_token);
    assert.equal(fromFolder.addBosToken, ref.add_bos_token);
    // "<think>" is a user-defined (type 4) token: one id, not special, kept by skipSpecialTokens.
    const think = fromGguf.tokenToId('<think>')!;
    assert.equal(think, 2000);
    assert.ok(!fromGguf.specialTokenIds.has(think));
    const ids = fromGguf.encode('<think>x', { addSpecialTokens: false });
    assert.equal(ids[0], think);
    assert.equal(fromGguf.decode(ids, { skipSpecialTokens: true }), '<think>x');
    if (ref.add_bos_token) {
      assert.equal(fromGguf.encode('x')[0], 1);
      assert.notEqual(fromGguf.encode('x', { addSpecialTokens: false })[0], 1);
    }
  });
}

test('generation_config.json eos_token_id (a list) becomes eosTokenIds; tokenizer_config.json names the special tokens', async () => {
  const tok = await LlmTokenizer.fromTokenizerJson(join(FIX, 'small/qwen2'));
  assert.deepEqual(tok.eosTokenIds, [2, 0]);
  assert.equal(tok.eosToken, '<|im_end|>');
  assert.equal(tok.eosTokenId, 2);
  assert.equal(tok.bosToken, '<|im_start|>');
  const gpt2 = await LlmTokenizer.fromTokenizerJson(join(FIX, 'small/gpt-2'));
  assert.deepEqual(gpt2.eosTokenIds, [2]);
});

test('stream decoder: pushes concatenate to decode() on every corpus text, hold back split UTF-8, and never emit U+FFFD', { skip: skipReal }, async () => {
  const tok = await real();
  let heldBack = 0;
  for (const [i, ids] of corpus.smollm2.reference.entries()) {
    for (const skipSpecialTokens of [false, true]) {
      const d = tok.createStreamDecoder({ skipSpecialTokens });
      let out = '';
      for (const id of ids) {
        const piece = d.push(id);
        if (piece === '') heldBack++;
        assert.ok(!piece.includes('\uFFFD'), `${JSON.stringify(texts[i])}: a push emitted U+FFFD`);
        out += piece;
      }
      out += d.flush();
      assert.equal(out, tok.decode(ids, { skipSpecialTokens }), JSON.stringify(texts[i]));
    }
  }
  assert.ok(heldBack > 0);
  // 😀 is 4 bytes; byte-level BPE splits it over tokens: the first pushes give '' until the last.
  const ids = tok.encode('😀');
  assert.ok(ids.length > 1, 'the emoji should span several tokens');
  const d = tok.createStreamDecoder();
  const pieces = ids.map((id) => d.push(id));
  assert.deepEqual(pieces, [...new Array(ids.length - 1).fill(''), '😀']);
  assert.equal(d.flush(), '');
  // An incomplete sequence at the end comes out of flush as U+FFFD, as decode() gives it.
  const d2 = tok.createStreamDecoder();
  assert.equal(d2.push(ids[0]), '');
  assert.equal(d2.flush(), tok.decode([ids[0]]));
  assert.throws(() => d2.push(-1), /token id at index 0 is -1/);
});

test('parseSpecialTokens: false tokenizes special-token text as ordinary text; addSpecialTokens adds BOS to it', async () => {
  const tok = await LlmTokenizer.fromGguf(join(FIX, 'small/llama-bpe.gguf'));
  const parsed = tok.encode('<|im_start|>hi', { addSpecialTokens: false });
  assert.equal(parsed[0], 1);
  const plain = tok.encode('<|im_start|>hi', { addSpecialTokens: false, parseSpecialTokens: false });
  assert.ok(!plain.includes(1) && plain.length > 2, plain.join(','));
  assert.equal(tok.decode(plain), '<|im_start|>hi');
  assert.deepEqual(tok.encode('<|im_start|>hi', { parseSpecialTokens: false }), [1, ...plain]);
  assert.deepEqual(tok.encode('', { parseSpecialTokens: false }), [1]);
});

test('tokenToId / idToToken / tokenBytes / encodeWithByteOffsets', async () => {
  const tok = await LlmTokenizer.fromGguf(join(FIX, 'small/gpt-2.gguf'));
  assert.equal(tok.tokenToId('<|im_end|>'), 2);
  assert.equal(tok.idToToken(2), '<|im_end|>');
  assert.equal(tok.idToToken(216), 'Ġ');
  assert.equal(tok.tokenToId('Ġ'), 216);
  assert.equal(tok.idToToken(tok.vocabSize), undefined);
  assert.equal(tok.idToToken(-1), undefined);
  assert.equal(tok.tokenToId('no such token'), undefined);
  assert.deepEqual([...tok.tokenBytes(216)], [0x20]);
  assert.deepEqual([...tok.tokenBytes(2)], [...Buffer.from('<|im_end|>')]);
  const text = 'héllo 😀 <|im_end|>\n日本';
  const { ids, offsets } = tok.encodeWithByteOffsets(text);
  assert.deepEqual(ids, tok.encode(text, { addSpecialTokens: false }));
  const bytes = Buffer.from(text);
  assert.equal(offsets[0][0], 0);
  assert.equal(offsets.at(-1)![1], bytes.length);
  offsets.forEach(([a, b], j) => {
    assert.deepEqual(bytes.subarray(a, b), Buffer.from(tok.tokenBytes(ids[j])));
    if (j > 0) assert.equal(a, offsets[j - 1][1]);
  });
});

test('toFiles(): the tokenizer.json built from a GGUF, written as a folder and loaded back, tokenizes the corpus the same', { skip: skipReal }, async () => {
  const tok = await real();
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-llm-tok-'));
  try {
    const { tokenizerJson, tokenizerConfig } = tok.toFiles();
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig));
    const back = await LlmTokenizer.fromTokenizerJson(dir);
    assert.deepEqual(mismatches((i) => back.encode(texts[i]), corpus.smollm2.reference), []);
    assert.equal(back.chatTemplate, tok.chatTemplate);
    assert.equal(back.eosTokenId, 2);
    // SmolLM2's published pre-tokenizer, as the Rust crate reads it (not the tokenizers.js rewrite).
    assert.deepEqual((tokenizerJson.pre_tokenizer as { pretokenizers: { type: string }[] }).pretokenizers.map((p) => p.type), ['Digits', 'ByteLevel']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('llama.cpp (node-llama-cpp 3.21.1) tokenizes every corpus text of every GGUF as LlmTokenizer does, parse_special on and off', { skip: skipReal }, async (t) => {
  let llama: import('node-llama-cpp').Llama;
  try {
    const { getLlama } = await import('node-llama-cpp');
    llama = await getLlama({ gpu: false, build: 'never', logLevel: 'disabled' as import('node-llama-cpp').LlamaLogLevel });
  } catch (err) {
    t.skip(`node-llama-cpp does not load here: ${(err as Error).message}`);
    return;
  }
  try {
    const files: [string, string, boolean][] = [['smollm2', SMOLLM2, false]];
    for (const [pre, ref] of Object.entries(corpus.small)) files.push([pre, join(FIX, ref.gguf), true]);
    for (const [name, path, vocabOnly] of files) {
      const model = await llama.loadModel({ modelPath: path, vocabOnly, gpuLayers: 0 });
      try {
        const tok = await LlmTokenizer.fromGguf(path);
        const differs: string[] = [];
        for (const text of texts) {
          // node-llama-cpp never adds BOS (add_special = false); compare without it.
          for (const parseSpecialTokens of [true, false]) {
            const mine = tok.encode(text, { addSpecialTokens: false, parseSpecialTokens });
            const theirs = Array.from(model.tokenize(text, parseSpecialTokens));
            if (JSON.stringify(mine) !== JSON.stringify(theirs)) differs.push(`${JSON.stringify(text)} (parse_special ${parseSpecialTokens}): [${mine}] vs [${theirs}]`);
          }
        }
        const expected = LLAMA_CPP_DIFFERS[name];
        assert.deepEqual(differs.filter((d) => !expected.some((e) => d.startsWith(JSON.stringify(e)))), [], name);
        if (name === 'smollm2') {
          // On the texts where transformers' converter is off, llama.cpp sides with the reference.
          for (const text of HF_GGUF_DIFFERS) assert.deepEqual(Array.from(model.tokenize(text, true)), corpus.smollm2.reference[texts.indexOf(text)]);
        }
      } finally {
        await model.dispose();
      }
    }
  } finally {
    await llama.dispose();
  }
});

test('GGUF tokenizer metadata errors name the key and the value', async () => {
  const meta = (await readGgufHeader(join(FIX, 'small/gpt-2.gguf'))).metadata;
  const with_ = (key: string, value: unknown, ...more: [string, unknown][]): Map<string, unknown> => {
    const m = new Map<string, unknown>(meta);
    for (const [k, v] of [[key, value], ...more] as [string, unknown][]) {
      if (v === undefined) m.delete(k);
      else m.set(k, v);
    }
    return m;
  };
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.model', 'llama')), /tokenizer\.ggml\.model = "llama" is not supported/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.model', undefined)), /tokenizer\.ggml\.model is missing/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.pre', 'gpt2')), /tokenizer\.ggml\.pre = "gpt2" is not a supported pre-tokenizer \(supported: gpt-2,/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.pre', { type: 'string', value: 'tekken' })), /tokenizer\.ggml\.pre = "tekken"/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.pre', undefined)), /tokenizer\.ggml\.pre is missing/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.merges', undefined)), /tokenizer\.ggml\.merges is missing/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.merges', ['a b', 'ab'])), /tokenizer\.ggml\.merges\[1\] = "ab" is not "left right"/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.token_type', [1, 1])), /token_type has 2 entries, tokenizer\.ggml\.tokens has 2001/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.eos_token_id', 5000)), /tokenizer\.ggml\.eos_token_id = 5000 is outside the vocabulary \(0\.\.2000\)/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.tokens', ['a', 'a'], ['tokenizer.ggml.token_type', undefined], ['tokenizer.ggml.bos_token_id', 0], ['tokenizer.ggml.eos_token_id', 0], ['tokenizer.ggml.padding_token_id', 0])), /tokenizer\.ggml\.tokens\[1\] = "a" repeats token 0/);
  assert.throws(() => LlmTokenizer.fromGgufMetadata(with_('tokenizer.ggml.tokens', 7)), /tokenizer\.ggml\.tokens must be an array of strings, got number 7/);
  assert.ok(SUPPORTED_GGUF_PRE_TOKENIZERS.includes('smollm') && SUPPORTED_GGUF_PRE_TOKENIZERS.includes('llama-bpe'));
  // Plain values work as well as the reader's typed ones.
  const plain = Object.fromEntries([...meta].map(([k, v]) => [k, v.type === 'array' ? v.value.items : v.value]));
  assert.deepEqual(LlmTokenizer.fromGgufMetadata(plain).encode('Hello world! 123'), corpus.small['gpt-2'].reference[texts.indexOf('Hello world! 123')]);
  assert.equal(tokenizerJsonFromGguf(plain).pre, 'gpt-2');
  await assert.rejects(LlmTokenizer.fromGguf(join(FIX, 'corpus.json')), /corpus\.json/);
});

test('bad input: ids out of range name their index; a folder without tokenizer.json names the file; encode needs a string', async () => {
  const tok = await LlmTokenizer.fromGguf(join(FIX, 'small/gpt-2.gguf'));
  assert.throws(() => tok.decode([5, 2001]), /token id at index 1 is 2001, not an integer in \[0, 2001\)/);
  assert.throws(() => tok.decode([1.5]), /token id at index 0 is 1\.5/);
  assert.throws(() => tok.encode(undefined as unknown as string), /encode: text must be a string/);
  await assert.rejects(LlmTokenizer.fromTokenizerJson(join(FIX, 'small')), /small\/tokenizer\.json: not found/);
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-llm-tok-'));
  try {
    await writeFile(join(dir, 'tokenizer.json'), '{"model": ');
    await assert.rejects(LlmTokenizer.fromTokenizerJson(dir), /tokenizer\.json: not valid JSON/);
    const files = tok.toFiles();
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify({ ...files.tokenizerJson, added_tokens: [{ id: 'x', content: 'y' }] }));
    await assert.rejects(LlmTokenizer.fromTokenizerJson(dir), /tokenizer\.json: added_tokens\[0\] must have an integer id and a string content/);
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify({ ...files.tokenizerJson, model: { type: 'WordPiece', vocab: {} } }));
    await assert.rejects(LlmTokenizer.fromTokenizerJson(dir), /model\.type is "WordPiece"; LlmTokenizer handles BPE tokenizers/);
    await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(files.tokenizerJson));
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...files.tokenizerConfig, eos_token: '<nope>' }));
    await assert.rejects(LlmTokenizer.fromTokenizerJson(dir), /eos_token "<nope>" is not in the vocabulary/);
    await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(files.tokenizerConfig));
    await writeFile(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [2, 99999] }));
    await assert.rejects(LlmTokenizer.fromTokenizerJson(dir), /generation_config\.json eos_token_id\[1\] = 99999 is not a token id/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
