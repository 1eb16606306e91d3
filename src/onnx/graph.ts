/**
 * A small builder for ONNX GraphProto: named nodes, initializers with raw
 * little-endian data, and de-duplicated scalar/vector constants.
 */
import os from 'node:os';
import {
  AttributeType,
  DataType,
  type AttributeProto,
  type GraphProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from './schema.js';

/** An attribute value, tagged with its ONNX attribute type. */
export type AttrValue = { int: number } | { float: number } | { ints: number[] } | { string: string };

const LITTLE_ENDIAN = os.endianness() === 'LE';

/** Bytes of a typed array in little-endian order (a view when the host is LE). */
export function littleEndianBytes(data: Float32Array | BigInt64Array | Int32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.byteLength);
  const view = new DataView(out.buffer);
  data.forEach((v: number | bigint, i: number) => {
    if (typeof v === 'bigint') view.setBigInt64(i * 8, v, true);
    else if (data instanceof Float32Array) view.setFloat32(i * 4, v, true);
    else view.setInt32(i * 4, v, true);
  });
  return out;
}

function attribute(name: string, value: AttrValue): AttributeProto {
  if ('int' in value) return { name, type: AttributeType.INT, i: value.int };
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ('ints' in value) return { name, type: AttributeType.INTS, ints: value.ints };
  return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value.string) };
}

/** Builds one GraphProto; node outputs get unique names from a counter. */
export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  private readonly constants = new Map<string, string>();
  private counter = 0;

  /**
   * Append a node of `opType` (default ONNX domain) and return its output
   * names. `outputs` is a count of fresh names or explicit names.
   */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputs: number | string[] = 1): string[] {
    const id = this.counter++;
    const names = typeof outputs === 'number' ? Array.from({ length: outputs }, (_, k) => `/${opType}_${id}_${k}`) : outputs;
    const attribute_ = Object.entries(attrs).map(([k, v]) => attribute(k, v));
    this.nodes.push({ name: `${opType}_${id}`, op_type: opType, input: inputs, output: names, attribute: attribute_ });
    return names;
  }

  /** Like `op` for the common one-output case. */
  op1(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    return this.op(opType, inputs, attrs)[0];
  }

  /** Add a float32 initializer of shape `dims` and return its name. */
  addFloat(name: string, dims: number[], data: Float32Array): string {
    this.initializers.push({ name, dims, data_type: DataType.FLOAT, raw_data: littleEndianBytes(data) });
    return name;
  }

  /** A float32 constant (scalar when dims = []), shared between uses. */
  floatConst(value: number, dims: number[] = []): string {
    return this.constant(`float:${value}:${dims}`, () => this.addFloat(`/const/f_${this.constants.size}`, dims, new Float32Array([value])));
  }

  /** An int64 constant: scalar for a number, 1-D for an array. */
  int64Const(value: number | number[]): string {
    const values = Array.isArray(value) ? value : [value];
    const dims = Array.isArray(value) ? [value.length] : [];
    return this.constant(`int64:${JSON.stringify(value)}`, () => {
      const name = `/const/i_${this.constants.size}`;
      const data = BigInt64Array.from(values.map((v) => BigInt(v)));
      this.initializers.push({ name, dims, data_type: DataType.INT64, raw_data: littleEndianBytes(data) });
      return name;
    });
  }

  private constant(key: string, make: () => string): string {
    let name = this.constants.get(key);
    if (name === undefined) {
      name = make();
      this.constants.set(key, name);
    }
    return name;
  }

  /** Finish into a GraphProto with the given graph inputs/outputs. */
  build(name: string, input: ValueInfoProto[], output: ValueInfoProto[], docString?: string): GraphProto {
    return { name, node: this.nodes, initializer: this.initializers, input, output, doc_string: docString };
  }
}

/** A ValueInfoProto for a tensor; string dims are symbolic (dynamic) axes. */
export function tensorValueInfo(name: string, elemType: number, dims: Array<number | string>, doc?: string): ValueInfoProto {
  const dim = dims.map((d) => (typeof d === 'string' ? { dim_param: d } : { dim_value: d }));
  return { name, type: { tensor_type: { elem_type: elemType, shape: { dim } } }, doc_string: doc };
}
