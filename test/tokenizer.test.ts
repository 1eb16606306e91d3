/**
 * BertTokenizer against Hugging Face reference ids:
 * test/fixtures/tokenizer/corpus.json (scripts/reference/tokenizer_corpus.py: the fast
 * tokenizer AutoTokenizer returns for all-MiniLM-L6-v2) and the padded batch of
 * test/fixtures/minilm-head/sentences.json (scripts/reference/minilm_head.py).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BertTokenizer, bertNormalize, bertPreTokenize, isBertPunctuation, isChineseChar, longestFirstLengths } from '../src/tokenizer/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MINILM = join(ROOT, '.cache/models/all-MiniLM-L6-v2');
const FIXTURES = join(ROOT, 'test/fixtures');

function requireModel(): void {
  assert.ok(existsSync(join(MINILM, 'vocab.txt')), `all-MiniLM-L6-v2 missing at ${MINILM}: run scripts/fetch-model.sh`);
}

interface CorpusCase {
  id: number;
  group: string;
  text: string;
  text_pair: string | null;
  max_length: number;
  fast: { input_ids: number[]; token_type_ids: number[]; attention_mask: number[]; tokens: string[] };
}

async function corpus(): Promise<CorpusCase[]> {
  const data = JSON.parse(await readFile(join(FIXTURES, 'tokenizer/corpus.json'), 'utf8'));
  assert.ok(data.cases.length >= 100, 'corpus.json has too few cases');
  return data.cases;
}

/** A folder with only vocab.txt + tokenizer_config.json + special_tokens_map.json, as older BERT repos ship. */
async function vocabOnlyFolder(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'nodetune-vocab-'));
  for (const f of ['vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json']) await copyFile(join(MINILM, f), join(dir, f));
  return dir;
}

function checkCorpus(tok: BertTokenizer, cases: CorpusCase[]): void {
  const failures: string[] = [];
  for (const c of cases) {
    const got = tok.encode(c.text, c.text_pair, { maxLength: c.max_length });
    const same =
      JSON.stringify(got.input_ids) === JSON.stringify(c.fast.input_ids) &&
      JSON.stringify(got.token_type_ids) === JSON.stringify(c.fast.token_type_ids) &&
      JSON.stringify(got.attention_mask) === JSON.stringify(c.fast.attention_mask) &&
      JSON.stringify(tok.convertIdsToTokens(got.input_ids)) === JSON.stringify(c.fast.tokens);
    if (!same) failures.push(`case ${c.id} (${c.group}) ${JSON.stringify(c.text).slice(0, 60)}: got ${JSON.stringify(tok.convertIdsToTokens(got.input_ids)).slice(0, 200)}, HF ${JSON.stringify(c.fast.tokens).slice(0, 200)}`);
  }
  assert.deepEqual(failures, []);
}

test('tokenizer.json path: every corpus case gives HF fast ids, token_type_ids, attention_mask and tokens', async () => {
  requireModel();
  const tok = await BertTokenizer.fromFolder(MINILM, { maxPositionEmbeddings: 512 });
  assert.equal(tok.vocabSize, 30522);
  assert.equal(tok.padTokenId, 0);
  checkCorpus(tok, await corpus());
});

test('vocab.txt-only path: every corpus case gives HF fast ids', async () => {
  requireModel();
  const dir = await vocabOnlyFolder();
  try {
    const tok = await BertTokenizer.fromFolder(dir, { maxPositionEmbeddings: 512 });
    assert.equal(tok.backend, 'wordpiece');
    assert.equal(tok.vocabSize, 30522);
    checkCorpus(tok, await corpus());
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('auto backend falls back from @huggingface/tokenizers with the reason when it disagrees with HF', async () => {
  requireModel();
  const tok = await BertTokenizer.fromFolder(MINILM);
  const lib = await BertTokenizer.fromFolder(MINILM, { backend: 'tokenizers' });
  // HF (Rust) lowercases per code point: 'ΣΑΣ' → σ ##α ##σ (corpus case 19); the JS library applies final-sigma.
  const hf = (await corpus()).find((c) => c.text === 'ΣΑΣ')!;
  const libIds = lib.encode('ΣΑΣ').input_ids;
  if (JSON.stringify(libIds) !== JSON.stringify(hf.fast.input_ids)) {
    assert.equal(tok.backend, 'wordpiece');
    assert.match(tok.backendNote ?? '', /@huggingface\/tokenizers tokenizes .* but the Hugging Face tokenizers crate gives/);
  } else {
    // The library got fixed: the auto mode must then prefer it unless another probe still disagrees.
    assert.ok(tok.backend === 'tokenizers' || /tokenizes/.test(tok.backendNote ?? ''));
  }
  assert.deepEqual(tok.encode('ΣΑΣ').input_ids, hf.fast.input_ids);
});

test('forced @huggingface/tokenizers backend only differs from HF on final sigma', async () => {
  requireModel();
  const lib = await BertTokenizer.fromFolder(MINILM, { backend: 'tokenizers', maxPositionEmbeddings: 512 });
  assert.equal(lib.backend, 'tokenizers');
  const bad = (await corpus()).filter((c) => {
    const got = lib.encode(c.text, c.text_pair, { maxLength: c.max_length });
    return JSON.stringify(got.input_ids) !== JSON.stringify(c.fast.input_ids);
  });
  for (const c of bad) assert.match(c.text + (c.text_pair ?? ''), /Σ/, `unexpected library mismatch on case ${c.id}`);
});

test('minilm-head sentences: padded batch equals the HF batch (29 x 128)', async () => {
  requireModel();
  const fx = JSON.parse(await readFile(join(FIXTURES, 'minilm-head/sentences.json'), 'utf8'));
  const sentences: Array<{ text: string; input_ids: number[]; attention_mask: number[]; token_type_ids: number[] }> = fx.sentences;
  assert.ok(sentences.length >= 20);
  for (const folder of [MINILM, await vocabOnlyFolder()]) {
    const tok = await BertTokenizer.fromFolder(folder, { maxPositionEmbeddings: 512 });
    const batch = tok.encodeBatch(sentences.map((s) => s.text), null, { maxLength: fx.tokenizer_call.max_length });
    assert.deepEqual([batch.batchSize, batch.seqLen], fx.shape);
    assert.deepEqual(Array.from(batch.input_ids), sentences.flatMap((s) => s.input_ids));
    assert.deepEqual(Array.from(batch.attention_mask), sentences.flatMap((s) => s.attention_mask));
    assert.deepEqual(Array.from(batch.token_type_ids), sentences.flatMap((s) => s.token_type_ids));
    if (folder !== MINILM) await rm(folder, { recursive: true, force: true });
  }
});

test('encodeBatch pads to the longest example with the pad id, pairs get token_type_ids 1', async () => {
  requireModel();
  const tok = await BertTokenizer.fromFolder(MINILM);
  const b = tok.encodeBatch(['hello world', 'hi'], ['a pair', null]);
  assert.equal(b.batchSize, 2);
  assert.equal(b.seqLen, 7); // [CLS] hello world [SEP] a pair [SEP]
  assert.deepEqual(Array.from(b.input_ids), [101, 7592, 2088, 102, 1037, 3940, 102, 101, 7632, 102, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(b.token_type_ids), [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(b.attention_mask), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
  assert.throws(() => tok.encodeBatch(['a', 'b'], ['c']), /2 texts but 1 pairs/);
});

test('maxLength is capped at max_position_embeddings', async () => {
  requireModel();
  const tok = await BertTokenizer.fromFolder(MINILM, { maxPositionEmbeddings: 16 });
  // corpus case with max_length 16 on a long text gives the HF reference for the capped length.
  const c = (await corpus()).find((x) => x.max_length === 16 && x.text_pair === null && x.fast.input_ids.length === 16)!;
  assert.deepEqual(tok.encode(c.text, null, { maxLength: 512 }).input_ids, c.fast.input_ids);
  assert.throws(() => tok.encode('x', 'y', { maxLength: 2 }), /maxLength 2 leaves no room for the 3 special tokens/);
});

test('longest_first truncation lengths follow the Rust tokenizers rule', () => {
  // (n1, n2, budget) → lengths observed from transformers 5.24 / tokenizers 0.23 fast BertTokenizer.
  assert.deepEqual(longestFirstLengths(4, 4, 5), [2, 3]);
  assert.deepEqual(longestFirstLengths(4, 3, 5), [3, 2]);
  assert.deepEqual(longestFirstLengths(3, 4, 5), [2, 3]);
  assert.deepEqual(longestFirstLengths(8, 3, 6), [3, 3]);
  assert.deepEqual(longestFirstLengths(2, 10, 5), [2, 3]);
  assert.deepEqual(longestFirstLengths(2, 2, 5), [2, 2]);
});

test('character classes match the tokenizers crate on characters where Unicode versions differ', () => {
  // Observed with tokenizers 0.23.3: U+2E4F (Po since Unicode 11) is not split, U+2E42 is;
  // U+2B820 is outside the crate's CJK ranges, U+2B920 inside; unassigned U+0378 is kept.
  assert.equal(isBertPunctuation(0x2e4f), false);
  assert.equal(isBertPunctuation(0x2e42), true);
  assert.equal(isChineseChar(0x2b820), false);
  assert.equal(isChineseChar(0x2b920), true);
  const uncased = { clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true };
  assert.equal(bertNormalize('a\u0378\u00ad\u200bb\u3000Ç', uncased), 'a\u0378b c');
  assert.equal(bertNormalize('ΟΔΟΣ', uncased), 'οδοσ');
  assert.deepEqual(bertPreTokenize("don't stop!"), ['don', "'", 't', 'stop', '!']);
});

test('decode glues word pieces; convertIdsToTokens rejects unknown ids; missing tokenizer is an error', async () => {
  requireModel();
  const tok = await BertTokenizer.fromFolder(MINILM);
  const enc = tok.encode('Tokenization, unaffable!');
  assert.equal(tok.decode(enc.input_ids, { skipSpecialTokens: true }), 'tokenization, unaffable!');
  assert.equal(tok.decode(enc.input_ids), '[CLS] tokenization, unaffable! [SEP]');
  assert.throws(() => tok.convertIdsToTokens([30522]), /token id 30522 is outside the vocabulary \(size 30522\)/);
  const empty = await mkdtemp(join(tmpdir(), 'nodetune-empty-'));
  try {
    await assert.rejects(BertTokenizer.fromFolder(empty), new RegExp(`${empty}: no tokenizer found \\(expected tokenizer.json or vocab.txt\\)`));
  } finally {
    await rm(empty, { recursive: true, force: true });
  }
});
