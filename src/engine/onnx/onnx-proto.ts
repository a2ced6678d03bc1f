/**
 * Encoders (and a reader) for the few ONNX protobuf messages the gateway writes: ValueInfoProto, NodeProto,
 * TensorProto. Used to prepend preprocessing to a graph (fuse.ts) and by the tests to build tiny models.
 */
import { concat, fields, lengthDelimited, readVarint, varintField } from './protobuf.ts';

export const ElemType = { FLOAT: 1, UINT8: 2, INT8: 3, INT32: 6, INT64: 7, BOOL: 9, FLOAT16: 10 } as const;

const enc = new TextEncoder();
const utf8 = new TextDecoder();
const strField = (no: number, str: string) => lengthDelimited(no, enc.encode(str));

export interface ValueInfo {
  name: string;
  elemType: number;
  /** A number (dim_value), or a string (dim_param, a symbolic dimension). */
  shape: (number | string)[];
}

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  /** Integers (INT), integer lists (INTS), or { float } (FLOAT). */
  attrs?: Record<string, number | number[] | { float: number }>;
}

export function encodeValueInfo(v: ValueInfo): Uint8Array {
  const dims = v.shape.map((d) => lengthDelimited(1, typeof d === 'number' ? varintField(1, d) : strField(2, d)));
  const tensorType = concat([varintField(1, v.elemType), lengthDelimited(2, concat(dims))]);
  return concat([strField(1, v.name), lengthDelimited(2, lengthDelimited(1, tensorType))]);
}

export function encodeNode(n: NodeSpec, name: string): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const x of n.inputs) parts.push(strField(1, x));
  for (const x of n.outputs) parts.push(strField(2, x));
  parts.push(strField(3, name), strField(4, n.op));
  for (const [attr, v] of Object.entries(n.attrs ?? {})) {
    const body = Array.isArray(v)
      ? concat([strField(1, attr), ...v.map((x) => varintField(8, x)), varintField(20, 7)]) // INTS
      : typeof v === 'number'
        ? concat([strField(1, attr), varintField(3, v), varintField(20, 2)]) // INT
        : concat([strField(1, attr), fixed32Field(2, v.float), varintField(20, 1)]); // FLOAT
    parts.push(lengthDelimited(5, body));
  }
  return concat(parts);
}

/** A float field (wire type 5: four little-endian bytes). */
function fixed32Field(no: number, value: number): Uint8Array {
  const out = new Uint8Array(5);
  out[0] = (no << 3) | 5;
  new DataView(out.buffer).setFloat32(1, value, true);
  return out;
}

/** A TensorProto with its bytes inline (raw_data, little-endian). */
export function encodeTensor(name: string, elemType: number, dims: number[], raw: Uint8Array): Uint8Array {
  return concat([...dims.map((d) => varintField(1, d)), varintField(2, elemType), strField(8, name), lengthDelimited(9, raw)]);
}

/** Read a ValueInfoProto (name, element type, dimensions; an unknown dimension reads as ''). */
export function readValueInfo(buf: Uint8Array): ValueInfo {
  const v: ValueInfo = { name: '', elemType: 0, shape: [] };
  const sub = (b: Uint8Array, no: number) => {
    const f = fields(b).find((x) => x.no === no && x.wire === 2);
    return f ? b.subarray(f.valueStart, f.end) : null;
  };
  for (const f of fields(buf)) if (f.no === 1 && f.wire === 2) v.name = utf8.decode(buf.subarray(f.valueStart, f.end));
  const tensor = sub(sub(buf, 2) ?? new Uint8Array(), 1); // TypeProto.tensor_type
  if (!tensor) return v;
  for (const f of fields(tensor)) if (f.no === 1 && f.wire === 0) v.elemType = readVarint(tensor, f.valueStart)[0];
  const shape = sub(tensor, 2);
  for (const d of shape ? fields(shape) : []) {
    if (d.no !== 1 || d.wire !== 2) continue;
    const dim = shape!.subarray(d.valueStart, d.end);
    let value: number | string = '';
    for (const x of fields(dim)) {
      if (x.no === 1 && x.wire === 0) value = readVarint(dim, x.valueStart)[0];
      else if (x.no === 2 && x.wire === 2) value = utf8.decode(dim.subarray(x.valueStart, x.end));
    }
    v.shape.push(value);
  }
  return v;
}
