/**
 * The inference graph of Hugging Face `BertForSequenceClassification`
 * (transformers/models/bert/modeling_bert.py) in ONNX operators.
 *
 * Inputs (int64, dynamic `batch_size` × `sequence_length`): input_ids,
 * attention_mask, token_type_ids. Output: logits (float32, B × num_labels).
 * Dropout is the identity at inference and is left out.
 */
import { parameterShapes, type BertConfig } from '../config.js';
import { GraphBuilder, tensorValueInfo } from './graph.js';
import { DataType, type GraphProto } from './schema.js';

/** Weights by Hugging Face checkpoint key (`bert.` prefix + `classifier.*`). */
export type WeightMap = Map<string, Float32Array>;

/** Opset from which ONNX has a Gelu operator (exact erf form by default). */
const GELU_OPSET = 20;

/** Most negative float32; HF fills masked attention scores with torch.finfo(float32).min. */
const FLOAT32_MIN = -3.4028234663852886e38;

/**
 * Check every parameter of `parameterShapes(config)` is in `weights` with the
 * right element count. Throws naming the first missing/mis-sized tensor.
 */
export function checkWeights(config: BertConfig, weights: WeightMap): void {
  for (const [key, shape] of parameterShapes(config)) {
    const data = weights.get(key);
    const size = shape.reduce((a, b) => a * b, 1);
    if (!data) throw new Error(`ONNX export: weight '${key}' is missing (expected shape [${shape}])`);
    if (data.length !== size) {
      throw new Error(`ONNX export: weight '${key}' has ${data.length} elements, expected shape [${shape}] = ${size}`);
    }
  }
}

function checkConfig(config: BertConfig): void {
  const act = config.hidden_act ?? 'gelu';
  if (act !== 'gelu') throw new Error(`ONNX export: config hidden_act '${act}' is not supported (expected 'gelu')`);
  const pos = config.position_embedding_type ?? 'absolute';
  if (pos !== 'absolute') {
    throw new Error(`ONNX export: config position_embedding_type '${pos}' is not supported (expected 'absolute')`);
  }
  if (config.hidden_size % config.num_attention_heads !== 0) {
    throw new Error(
      `ONNX export: config hidden_size ${config.hidden_size} is not a multiple of num_attention_heads ${config.num_attention_heads}`,
    );
  }
}

/** (rows, cols) row-major → (cols, rows): nn.Linear stores (out, in); MatMul wants (in, out). */
function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}

/** Builds the graph; holds the config, weights and the builder. */
class BertGraph {
  readonly g = new GraphBuilder();
  constructor(
    readonly config: BertConfig,
    readonly weights: WeightMap,
    readonly opset: number,
  ) {}

  private weight(key: string, dims: number[]): string {
    return this.g.addFloat(key, dims, this.weights.get(key)!);
  }

  /** y = x W^T + b for nn.Linear `prefix` with weight (out, in); x (..., in) → (..., out). */
  linear(x: string, prefix: string, inFeatures: number, outFeatures: number): string {
    const key = `${prefix}.weight`;
    const wT = this.g.addFloat(`${key}.T`, [inFeatures, outFeatures], transpose(this.weights.get(key)!, outFeatures, inFeatures));
    const y = this.g.op1('MatMul', [x, wT]);
    return this.g.op1('Add', [y, this.weight(`${prefix}.bias`, [outFeatures])]);
  }

  /** LayerNormalization over the last axis with the config's epsilon (opset 17). */
  layerNorm(x: string, prefix: string): string {
    const C = this.config.hidden_size;
    const scale = this.weight(`${prefix}.weight`, [C]);
    const bias = this.weight(`${prefix}.bias`, [C]);
    return this.g.op1('LayerNormalization', [x, scale, bias], { axis: { int: -1 }, epsilon: { float: this.config.layer_norm_eps } });
  }

  /** GELU, exact: x · ½ · (1 + erf(x / √2)) (Hendrycks & Gimpel 2016; HF `gelu`). */
  gelu(x: string): string {
    const g = this.g;
    if (this.opset >= GELU_OPSET) return g.op1('Gelu', [x], { approximate: { string: 'none' } });
    const erf = g.op1('Erf', [g.op1('Div', [x, g.floatConst(Math.SQRT2)])]);
    const half = g.op1('Mul', [x, g.floatConst(0.5)]);
    return g.op1('Mul', [half, g.op1('Add', [erf, g.floatConst(1)])]);
  }

  /** BertEmbeddings: word + absolute position (0..T-1) + token type, then LayerNorm. (B, T) → (B, T, C). */
  embeddings(): string {
    const g = this.g;
    const { hidden_size: C, vocab_size: V, max_position_embeddings: P, type_vocab_size: TV } = this.config;
    const pre = 'bert.embeddings';
    const words = g.op1('Gather', [this.weight(`${pre}.word_embeddings.weight`, [V, C]), 'input_ids']);
    const seqLen = g.op1('Gather', [g.op1('Shape', ['input_ids']), g.int64Const(1)], { axis: { int: 0 } });
    const positionIds = g.op1('Range', [g.int64Const(0), seqLen, g.int64Const(1)]);
    const positions = g.op1('Gather', [this.weight(`${pre}.position_embeddings.weight`, [P, C]), positionIds]);
    const types = g.op1('Gather', [this.weight(`${pre}.token_type_embeddings.weight`, [TV, C]), 'token_type_ids']);
    const sum = g.op1('Add', [g.op1('Add', [words, types]), positions]);
    return this.layerNorm(sum, `${pre}.LayerNorm`);
  }

  /** Additive mask (B, 1, 1, T): 0 where attention_mask = 1, float32 min where 0, so padding never leaks. */
  additiveMask(): string {
    const g = this.g;
    const mask = g.op1('Cast', ['attention_mask'], { to: { int: DataType.FLOAT } });
    const inverted = g.op1('Sub', [g.floatConst(1), mask]);
    const additive = g.op1('Mul', [inverted, g.floatConst(FLOAT32_MIN)]);
    return g.op1('Unsqueeze', [additive, g.int64Const([1, 2])]);
  }

  /** BertSelfAttention + BertSelfOutput: (B, T, C) → (B, T, C). */
  attention(x: string, mask: string, prefix: string): string {
    const g = this.g;
    const { hidden_size: C, num_attention_heads: NH } = this.config;
    const HS = C / NH;
    const heads = (t: string, perm: number[]) =>
      g.op1('Transpose', [g.op1('Reshape', [t, g.int64Const([0, 0, NH, HS])])], { perm: { ints: perm } });
    const q = heads(this.linear(x, `${prefix}.self.query`, C, C), [0, 2, 1, 3]); // (B, NH, T, HS)
    const kT = heads(this.linear(x, `${prefix}.self.key`, C, C), [0, 2, 3, 1]); // (B, NH, HS, T)
    const v = heads(this.linear(x, `${prefix}.self.value`, C, C), [0, 2, 1, 3]); // (B, NH, T, HS)
    const scores = g.op1('Mul', [g.op1('MatMul', [q, kT]), g.floatConst(1 / Math.sqrt(HS))]);
    const probs = g.op1('Softmax', [g.op1('Add', [scores, mask])], { axis: { int: -1 } }); // (B, NH, T, T)
    const context = g.op1('Transpose', [g.op1('MatMul', [probs, v])], { perm: { ints: [0, 2, 1, 3] } });
    const merged = g.op1('Reshape', [context, g.int64Const([0, 0, C])]); // (B, T, C)
    const out = this.linear(merged, `${prefix}.output.dense`, C, C);
    return this.layerNorm(g.op1('Add', [out, x]), `${prefix}.output.LayerNorm`);
  }

  /** BertLayer: attention, then the GELU feed-forward with its residual + LayerNorm. */
  layer(x: string, mask: string, l: number): string {
    const { hidden_size: C, intermediate_size: I } = this.config;
    const pre = `bert.encoder.layer.${l}`;
    const h = this.attention(x, mask, `${pre}.attention`);
    const inner = this.gelu(this.linear(h, `${pre}.intermediate.dense`, C, I));
    const out = this.linear(inner, `${pre}.output.dense`, I, C);
    return this.layerNorm(this.g.op1('Add', [out, h]), `${pre}.output.LayerNorm`);
  }

  /** BertPooler (tanh(dense(h[:, 0]))) and the classifier: (B, T, C) → logits (B, num_labels). */
  head(hidden: string): void {
    const g = this.g;
    const C = this.config.hidden_size;
    const first = g.op1('Gather', [hidden, g.int64Const(0)], { axis: { int: 1 } }); // (B, C)
    const pooled = g.op1('Tanh', [this.linear(first, 'bert.pooler.dense', C, C)]);
    const scores = g.op1('MatMul', [pooled, this.transposedClassifier()]);
    g.op('Add', [scores, this.weight('classifier.bias', [this.config.num_labels])], {}, ['logits']);
  }

  private transposedClassifier(): string {
    const { num_labels: L, hidden_size: C } = this.config;
    return this.g.addFloat('classifier.weight.T', [C, L], transpose(this.weights.get('classifier.weight')!, L, C));
  }

  build(): GraphProto {
    const mask = this.additiveMask();
    let h = this.embeddings();
    for (let l = 0; l < this.config.num_hidden_layers; l++) h = this.layer(h, mask, l);
    this.head(h);
    const dims = ['batch_size', 'sequence_length'];
    const inputs = ['input_ids', 'attention_mask', 'token_type_ids'].map((n) => tensorValueInfo(n, DataType.INT64, dims));
    const outputs = [tensorValueInfo('logits', DataType.FLOAT, ['batch_size', this.config.num_labels])];
    return this.g.build('nodetune_bert_sequence_classification', inputs, outputs, 'BertForSequenceClassification (inference)');
  }
}

/**
 * Build the ONNX GraphProto of BertForSequenceClassification.
 *
 * @param config  HF BertConfig (hidden_act 'gelu', absolute positions).
 * @param weights float32 tensors by HF key; linear weights (out, in) are stored
 *                transposed as `<key>.T` (in, out) for MatMul.
 * @param opset   ONNX opset (≥ 17 for LayerNormalization; ≥ 20 uses Gelu).
 * @throws Error naming the config key or weight that is unsupported/missing.
 */
export function buildBertGraph(config: BertConfig, weights: WeightMap, opset: number): GraphProto {
  checkConfig(config);
  checkWeights(config, weights);
  return new BertGraph(config, weights, opset).build();
}
