// Shared fixtures for the training and CLI tests: a small random BERT model
// folder (the real all-MiniLM-L6-v2 tokenizer, random weights) and a synthetic
// intent dataset that such a model can learn in a few seconds.
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BERT_DEFAULTS, parameterShapes, type BertConfig } from '../../src/config.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { SeededRng } from '../../src/io/rng.js';
import { mulberry32, randomInt, type Rng } from '../../src/data/rng.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
export const MINILM_DIR = join(ROOT, '.cache/models/all-MiniLM-L6-v2');
export const CLI = join(ROOT, 'dist/src/cli/main.js');
const TOKENIZER_FILES = ['tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json'];

export interface TinyModelOptions {
  /** hidden_dropout_prob and attention_probs_dropout_prob = 0.1 when true, 0 when false. Default false. */
  dropout?: boolean;
  /** Keys without the `bert.` prefix, as a bare BertModel (sentence-transformers) checkpoint. Default false. */
  bare?: boolean;
  /** Seed of the random weights. Default 1. */
  seed?: number;
  num_hidden_layers?: number;
  /** Default 32 (intermediate_size is twice it, num_attention_heads 4). */
  hidden_size?: number;
  max_position_embeddings?: number;
}

/** The config.json of the tiny model: BERT, L2 H32 A4 I64 by default, the real uncased vocab (30522). */
export function tinyConfig(o: TinyModelOptions = {}): Record<string, unknown> {
  const p = o.dropout ? 0.1 : 0;
  return {
    architectures: ['BertModel'],
    model_type: 'bert',
    vocab_size: 30522,
    hidden_size: o.hidden_size ?? 32,
    num_hidden_layers: o.num_hidden_layers ?? 2,
    num_attention_heads: 4,
    intermediate_size: 2 * (o.hidden_size ?? 32),
    max_position_embeddings: o.max_position_embeddings ?? 64,
    type_vocab_size: 2,
    hidden_act: 'gelu',
    hidden_dropout_prob: p,
    attention_probs_dropout_prob: p,
    layer_norm_eps: 1e-12,
    initializer_range: 0.02,
    pad_token_id: 0,
    position_embedding_type: 'absolute',
  };
}

/**
 * Writes a pretrained-style encoder folder into `dir` (created): config.json,
 * model.safetensors holding the encoder and pooler (no classifier, so loading
 * initialises a new head), weights N(0, 0.02²), LayerNorm weights 1 and biases
 * 0 as BertPreTrainedModel._init_weights, plus the real MiniLM tokenizer files.
 * @returns `dir`.
 */
export async function writeTinyModel(dir: string, o: TinyModelOptions = {}): Promise<string> {
  await mkdir(dir, { recursive: true });
  const json = tinyConfig(o);
  const config = { ...BERT_DEFAULTS, ...json, num_labels: 2 } as BertConfig;
  const rng = new SeededRng(o.seed ?? 1);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of parameterShapes(config)) {
    if (name.startsWith('classifier.')) continue;
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('LayerNorm.weight')) data.fill(1);
    else if (!name.endsWith('.bias')) rng.fillNormal(data, 0, 0.02);
    tensors.set(o.bare ? name.replace(/^bert\./, '') : name, { shape, data });
  }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  await writeFile(join(dir, 'config.json'), JSON.stringify(json, null, 2));
  for (const f of TOKENIZER_FILES) await copyFile(join(MINILM_DIR, f), join(dir, f));
  return dir;
}

/** The intents of the synthetic dataset and the words that give each away. */
export const INTENTS: Record<string, string[]> = {
  refund: ['refund', 'reimburse'],
  card: ['card', 'visa'],
  transfer: ['transfer', 'wire'],
  password: ['password', 'login'],
};

const FILLER = (
  'i would like to please help me with my account today the bank app it is not working can you check what happened ' +
  'yesterday why does this take so long thanks hello there quick question about an issue again since last week'
).split(' ');

export interface IntentRow {
  text: string;
  category: string;
}

/**
 * `n` labelled rows: random filler sentences (1–5 words) with one keyword of
 * the row's intent at a random position; intents cycle, so the classes are
 * balanced. Deterministic for `seed`.
 */
export function intentRows(n: number, seed: number): IntentRow[] {
  const rng: Rng = mulberry32(seed);
  const names = Object.keys(INTENTS);
  const pick = <T>(xs: T[]): T => xs[randomInt(rng, xs.length)];
  const rows: IntentRow[] = [];
  for (let i = 0; i < n; i++) {
    const category = names[i % names.length];
    const words = Array.from({ length: 1 + randomInt(rng, 5) }, () => pick(FILLER));
    words.splice(randomInt(rng, words.length + 1), 0, pick(INTENTS[category]));
    rows.push({ text: words.join(' '), category });
  }
  return rows;
}

/** RFC 4180 field: quoted when it holds a comma, quote or line break. */
function csvField(s: string): string {
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/**
 * Writes rows as CSV with header `text,category`. Every 7th text gets a comma
 * and every 11th an embedded "quoted" word, so the file needs RFC 4180 quoting.
 * @returns the rows as written.
 */
export async function writeIntentCsv(path: string, rows: IntentRow[]): Promise<IntentRow[]> {
  const out = rows.map((r, i) => {
    let text = r.text;
    if (i % 7 === 3) text = text.replace(' ', ', ');
    if (i % 11 === 5) text = `${text} "asap"`;
    return { text, category: r.category };
  });
  await writeFile(path, ['text,category', ...out.map((r) => `${csvField(r.text)},${csvField(r.category)}`)].join('\n') + '\n');
  return out;
}
