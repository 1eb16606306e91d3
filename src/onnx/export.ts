/**
 * ONNX export of a BertForSequenceClassification model: graph building
 * (bert-graph.ts), ModelProto assembly, and ONNX external data for models
 * beyond protobuf's 2 GB message limit (onnx/docs/ExternalData.md).
 */
import { readFileSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BertConfig } from '../config.js';
import { writeFileAtomic } from '../io/atomic.js';
import { buildBertGraph, type WeightMap } from './bert-graph.js';
import { DataLocation, encodeModel, type GraphProto, type ModelProto, type TensorProto } from './schema.js';

/** IR version released with each supported opset (onnx/docs/Versioning.md). */
const IR_VERSION_FOR_OPSET: Record<number, number> = { 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11 };

/** Opsets the exporter writes (ONNX's LayerNormalization needs 17). */
export const SUPPORTED_OPSETS: readonly number[] = Object.keys(IR_VERSION_FOR_OPSET).map(Number);

/** @throws Error "opset 16 is not supported (expected 17-23)" for an opset outside SUPPORTED_OPSETS. */
export function checkOpset(opset: number): void {
  if (!SUPPORTED_OPSETS.includes(opset)) {
    throw new Error(`opset ${opset} is not supported (expected ${SUPPORTED_OPSETS[0]}-${SUPPORTED_OPSETS.at(-1)})`);
  }
}

/** Protobuf messages cannot exceed 2 GiB; keep headroom for the graph itself. */
export const DEFAULT_EXTERNAL_DATA_THRESHOLD = 1.8 * 2 ** 30;

/** Tensors smaller than this stay inline even in external-data mode (as onnx's own size_threshold). */
const EXTERNAL_MIN_TENSOR_BYTES = 1024;

/** External tensors start at multiples of the page size so readers can mmap them. */
const EXTERNAL_ALIGNMENT = 4096;

export interface ExportOptions {
  /** ONNX opset of the default domain, 17–23 (default 17). */
  opset?: number;
  /**
   * Total initializer bytes above which weights go to `<model file>_data`
   * (default 1.8 GiB). Set 0 to force external data (tests, tools).
   */
  externalDataThreshold?: number;
}

export interface ExportResult {
  /** The .onnx file written. */
  modelPath: string;
  /** The external data file, when weights were stored outside the protobuf. */
  externalDataPath?: string;
  opset: number;
  irVersion: number;
  /** Size of the .onnx file in bytes. */
  modelBytes: number;
}

function producerVersion(): string {
  try {
    const pkg = fileURLToPath(new URL('../../../package.json', import.meta.url));
    return String(JSON.parse(readFileSync(pkg, 'utf8')).version);
  } catch {
    return 'unknown';
  }
}

function labelMap(config: BertConfig): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < config.num_labels; i++) out[String(i)] = config.id2label?.[String(i)] ?? `LABEL_${i}`;
  return out;
}

function modelProto(config: BertConfig, graph: GraphProto, opset: number): ModelProto {
  return {
    ir_version: IR_VERSION_FOR_OPSET[opset],
    opset_import: [{ domain: '', version: opset }],
    producer_name: 'nodetune',
    producer_version: producerVersion(),
    graph,
    metadata_props: [
      { key: 'producer', value: 'nodetune' },
      { key: 'model_type', value: config.model_type ?? 'bert' },
      { key: 'num_labels', value: String(config.num_labels) },
      { key: 'id2label', value: JSON.stringify(labelMap(config)) },
    ],
  };
}

/**
 * Move the raw data of every initializer of at least EXTERNAL_MIN_TENSOR_BYTES
 * into one list of chunks for `location`, page-aligned, and point each
 * TensorProto at it with location/offset/length entries.
 */
function externalize(tensors: TensorProto[], location: string): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const data = t.raw_data;
    if (!data || data.byteLength < EXTERNAL_MIN_TENSOR_BYTES) continue;
    const pad = (EXTERNAL_ALIGNMENT - (offset % EXTERNAL_ALIGNMENT)) % EXTERNAL_ALIGNMENT;
    if (pad) chunks.push(new Uint8Array(pad));
    offset += pad;
    chunks.push(data);
    t.external_data = [
      { key: 'location', value: location },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(data.byteLength) },
    ];
    t.data_location = DataLocation.EXTERNAL;
    delete t.raw_data;
    offset += data.byteLength;
  }
  return chunks;
}

/**
 * Export a BertForSequenceClassification to an ONNX file that onnxruntime and
 * transformers.js load.
 *
 * Graph inputs: input_ids, attention_mask, token_type_ids — int64 (B, T) with
 * symbolic dims `batch_size`, `sequence_length`. Output: logits float32
 * (B, num_labels). Weights are float32 initializers with raw little-endian
 * data. LayerNormalization uses config.layer_norm_eps; GELU is the exact erf
 * form (Gelu op from opset 20). metadata_props carry producer and id2label.
 * When the initializers exceed `externalDataThreshold` bytes they go to
 * `<outPath>_data` (e.g. model.onnx_data) next to the model.
 *
 * @param model   `{config, weights}`: HF BertConfig and float32 weights by HF key.
 * @param outPath destination .onnx path; its folder must exist.
 * @throws Error for an unsupported opset, an unsupported config value, or a
 *         missing/mis-sized weight (named), or when a file cannot be written.
 */
export async function exportOnnx(
  model: { config: BertConfig; weights: WeightMap },
  outPath: string,
  options: ExportOptions = {},
): Promise<ExportResult> {
  const opset = options.opset ?? 17;
  checkOpset(opset);
  const irVersion = IR_VERSION_FOR_OPSET[opset];
  const graph = buildBertGraph(model.config, model.weights, opset);
  const total = graph.initializer.reduce((n, t) => n + (t.raw_data?.byteLength ?? 0), 0);
  const dataPath = `${outPath}_data`;
  const external = total > (options.externalDataThreshold ?? DEFAULT_EXTERNAL_DATA_THRESHOLD);
  if (external) {
    await writeFileAtomic(dataPath, externalize(graph.initializer, basename(dataPath)));
  } else {
    // A stale data file from an earlier external export would mislead readers.
    await unlink(dataPath).catch(() => undefined);
  }
  const bytes = encodeModel(modelProto(model.config, graph, opset));
  await writeFileAtomic(outPath, bytes);
  return { modelPath: outPath, externalDataPath: external ? dataPath : undefined, opset, irVersion, modelBytes: bytes.byteLength };
}
