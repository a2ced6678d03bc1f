/**
 * Builds tiny ONNX models for unit tests (the project's own, no downloads): a protobuf writer for just the fields
 * of ModelProto, GraphProto, NodeProto, ValueInfoProto and AttributeProto that these graphs use.
 */
import { concat, lengthDelimited, varintField } from '../src/engine/onnx/protobuf.ts';
import { ElemType, encodeNode, encodeTensor, encodeValueInfo, type NodeSpec, type ValueInfo } from '../src/engine/onnx/onnx-proto.ts';

export { ElemType, type NodeSpec, type ValueInfo };

const enc = new TextEncoder();
const bytesField = lengthDelimited;
const strField = (no: number, str: string) => lengthDelimited(no, enc.encode(str));
const intField = varintField;
const valueInfo = encodeValueInfo;
const node = (n: NodeSpec, i: number) => encodeNode(n, `n${i}`);

export interface Initializer {
  name: string;
  elemType: number;
  dims: number[];
  /** raw_data, little-endian */
  raw: Uint8Array;
}

export function buildModel(spec: {
  nodes: NodeSpec[];
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  opset?: number;
  initializers?: Initializer[];
  /** IR version (default 8); old exports (IR 3) also list every initializer among the graph's inputs. */
  ir?: number;
}): Uint8Array {
  const graph = concat([
    ...spec.nodes.map((n, i) => bytesField(1, node(n, i))),
    strField(2, 'test-graph'),
    ...(spec.initializers ?? []).map((t) => bytesField(5, encodeTensor(t.name, t.elemType, t.dims, t.raw))),
    ...spec.inputs.map((v) => bytesField(11, valueInfo(v))),
    ...spec.outputs.map((v) => bytesField(12, valueInfo(v))),
  ]);
  const opset = concat([strField(1, ''), intField(2, spec.opset ?? 13)]);
  return concat([intField(1, spec.ir ?? 8), strField(2, 'gateway-tests'), bytesField(7, graph), bytesField(8, opset)]);
}

/** Mean colour classifier: image [N,3,8,8] -> [N,3] channel means. Input/output types as given. */
/** A one-element initializer (an INT64 or FLOAT scalar operand of an operator, as NonMaxSuppression takes them). */
export const scalarInitializer = (name: string, elemType: number, v: bigint | number): Initializer => ({
  name,
  elemType,
  dims: [1],
  raw: new Uint8Array((typeof v === 'bigint' ? BigInt64Array.from([v]) : Float32Array.from([v])).buffer),
});

export function meanColourModel(inType: number, outType: number): Uint8Array {
  const nodes: NodeSpec[] = [];
  let x = 'image';
  if (inType !== ElemType.FLOAT) {
    nodes.push({ op: 'Cast', inputs: [x], outputs: ['f'], attrs: { to: ElemType.FLOAT } });
    x = 'f';
  }
  nodes.push({ op: 'GlobalAveragePool', inputs: [x], outputs: ['pooled'] });
  nodes.push({ op: 'Flatten', inputs: ['pooled'], outputs: [outType === ElemType.FLOAT ? 'scores' : 'flat'], attrs: { axis: 1 } });
  if (outType !== ElemType.FLOAT) nodes.push({ op: 'Cast', inputs: ['flat'], outputs: ['scores'], attrs: { to: outType } });
  return buildModel({
    nodes,
    inputs: [{ name: 'image', elemType: inType, shape: ['N', 3, 8, 8] }],
    outputs: [{ name: 'scores', elemType: outType, shape: ['N', 3] }],
  });
}

/** Identity over one tensor of any type. */
export function identityModel(elemType: number, shape: (number | string)[]): Uint8Array {
  return buildModel({
    nodes: [{ op: 'Identity', inputs: ['x'], outputs: ['y'] }],
    inputs: [{ name: 'x', elemType, shape }],
    outputs: [{ name: 'y', elemType, shape }],
  });
}

/** x [N,4] -> t [4,N]: a batch dimension on its input and none on its output, so it runs one item at a time. */
export function transposedModel(): Uint8Array {
  return buildModel({
    nodes: [{ op: 'Transpose', inputs: ['x'], outputs: ['t'], attrs: { perm: [1, 0] } }],
    inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 4] }],
    outputs: [{ name: 't', elemType: ElemType.FLOAT, shape: [4, 'N'] }],
  });
}

/** Per-pixel argmax over channels: image [N,3,H,W] float -> int64 class map [N,H,W]. */
export function argmaxSegmenter(): Uint8Array {
  return buildModel({
    nodes: [{ op: 'ArgMax', inputs: ['image'], outputs: ['classes'], attrs: { axis: 1, keepdims: 0 } }],
    inputs: [{ name: 'image', elemType: ElemType.FLOAT, shape: ['N', 3, 'H', 'W'] }],
    outputs: [{ name: 'classes', elemType: ElemType.INT64, shape: ['N', 'H', 'W'] }],
  });
}

/**
 * Every `stride`-th pixel's argmax over channels: image [N,3,H,W] float -> int64 class map [N,(H-1)/stride+1,...], its
 * cells centred on input pixels 0, stride, 2 x stride, ... (the align-corners grid of BodyPix and other TensorFlow
 * models fed k x stride + 1 pixels).
 */
export function stridedSegmenter(stride: number): Uint8Array {
  const ints = (name: string, v: bigint[]): Initializer => ({
    name,
    elemType: ElemType.INT64,
    dims: [v.length],
    raw: new Uint8Array(BigInt64Array.from(v).buffer),
  });
  const big = 2n ** 62n;
  return buildModel({
    nodes: [
      { op: 'Slice', inputs: ['image', 'starts', 'ends', 'axes', 'steps'], outputs: ['sampled'] },
      { op: 'ArgMax', inputs: ['sampled'], outputs: ['classes'], attrs: { axis: 1, keepdims: 0 } },
    ],
    initializers: [
      ints('starts', [0n, 0n]),
      ints('ends', [big, big]),
      ints('axes', [2n, 3n]),
      ints('steps', [BigInt(stride), BigInt(stride)]),
    ],
    inputs: [{ name: 'image', elemType: ElemType.FLOAT, shape: ['N', 3, 'H', 'W'] }],
    outputs: [{ name: 'classes', elemType: ElemType.INT64, shape: ['N', 'h', 'w'] }],
  });
}

/** A float32 initializer: bytes inline, or in an external file named `location` (relative to the model file). */
function initializer(name: string, dims: number[], values: number[] | null, location?: string): Uint8Array {
  const parts: Uint8Array[] = [...dims.map((d) => intField(1, d)), intField(2, ElemType.FLOAT), strField(8, name)];
  if (location !== undefined) {
    for (const [k, v] of [
      ['location', location],
      ['offset', '0'],
      ['length', String(dims.reduce((a, b) => a * b, 1) * 4)],
    ]) {
      parts.push(bytesField(13, concat([strField(1, k), strField(2, v)])));
    }
    parts.push(intField(14, 1)); // data_location: EXTERNAL
  } else parts.push(bytesField(9, new Uint8Array(Float32Array.from(values ?? []).buffer)));
  return concat(parts);
}

/**
 * y = x + w with w [4] float32 kept in an external data file at `location` (as models over 2 GB keep their weights).
 * Write the 16 bytes of w to that file beside model.onnx for the model to load.
 */
export function externalDataModel(location: string): Uint8Array {
  const graph = concat([
    bytesField(1, node({ op: 'Add', inputs: ['x', 'w'], outputs: ['y'] }, 0)),
    strField(2, 'external-data'),
    bytesField(5, initializer('w', [4], null, location)),
    bytesField(11, valueInfo({ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 4] })),
    bytesField(12, valueInfo({ name: 'y', elemType: ElemType.FLOAT, shape: ['N', 4] })),
  ]);
  const opset = concat([strField(1, ''), intField(2, 13)]);
  return concat([intField(1, 8), strField(2, 'gateway-tests'), bytesField(7, graph), bytesField(8, opset)]);
}

/** A one-channel (greyscale) classifier: image [N,1,8,8] -> its mean, [N,1]. */
export function greyModel(): Uint8Array {
  return buildModel({
    nodes: [
      { op: 'GlobalAveragePool', inputs: ['image'], outputs: ['pooled'] },
      { op: 'Flatten', inputs: ['pooled'], outputs: ['scores'], attrs: { axis: 1 } },
    ],
    inputs: [{ name: 'image', elemType: ElemType.FLOAT, shape: ['N', 1, 8, 8] }],
    outputs: [{ name: 'scores', elemType: ElemType.FLOAT, shape: ['N', 1] }],
  });
}

/**
 * A model whose cost is set by its input's values, not its shape: ConstantOfShape(shape [1, 2]) makes a [rows, 512]
 * float tensor, which goes through twelve 512x512 MatMuls, summed to y [1, 1]. shape [[10, 512]] costs
 * nothing; [[10000, 512]] keeps one CPU thread busy for seconds: an engine call that does not come back in time.
 */
/** slowModel's input for a [rows, 512] tensor, as the base64 of its int64 shape (the data of an infer mutation). */
export const slowModelInput = (rows: number): string => Buffer.from(BigInt64Array.from([BigInt(rows), 512n]).buffer).toString('base64');

export function slowModel(): Uint8Array {
  const K = 12;
  const D = 512;
  const w = new Float32Array(D * D).fill(1 / D);
  return buildModel({
    nodes: [
      { op: 'Reshape', inputs: ['shape', 'flat'], outputs: ['dims'] },
      { op: 'ConstantOfShape', inputs: ['dims'], outputs: ['a0'] },
      ...Array.from({ length: K }, (_, i) => ({ op: 'MatMul', inputs: [`a${i}`, 'w'], outputs: [`a${i + 1}`] })),
      { op: 'ReduceSum', inputs: [`a${K}`], outputs: ['y'] },
    ],
    inputs: [{ name: 'shape', elemType: ElemType.INT64, shape: [1, 2] }],
    outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: [1, 1] }],
    initializers: [
      { name: 'w', elemType: ElemType.FLOAT, dims: [D, D], raw: new Uint8Array(w.buffer) },
      { name: 'flat', elemType: ElemType.INT64, dims: [1], raw: new Uint8Array(BigInt64Array.from([-1n]).buffer) },
    ],
    opset: 13,
  });
}
