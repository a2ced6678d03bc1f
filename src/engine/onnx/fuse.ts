import type { PixelInput } from '../types.ts';
import { ElemType, encodeNode, encodeTensor, encodeValueInfo, readValueInfo, type NodeSpec } from './onnx-proto.ts';
import { Rope, delimited, fields, lengthDelimited } from './protobuf.ts';

/**
 * Preprocessing fused into the graph, as OpenVINO's PrePostProcessor does: a new graph input takes the decoded image
 * as it comes from the decoder (uint8, NHWC, RGB or grey), and nodes prepended to the graph do what the main thread
 * did per pixel: channel order, the float conversion, (x * scale + bias) per channel (pixelScaling, mean and std
 * folded together), the layout (NHWC -> NCHW) and the input's data type. The original image input becomes an
 * internal value computed by those nodes; everything else of the graph is kept byte for byte.
 */
export const PIXELS_INPUT = '__gateway_pixels';

const f32 = (values: readonly number[]) => new Uint8Array(Float32Array.from(values).buffer);
const i64 = (values: readonly number[]) => new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer);

export function fusePreprocessing(model: Uint8Array, spec: PixelInput): Rope {
  const C = spec.channels;
  const nchw = spec.layout === 'NCHW';
  const nodes: NodeSpec[] = [];
  const initializers: Uint8Array[] = [];
  let x = PIXELS_INPUT;
  const step = (op: string, inputs: string[], attrs?: NodeSpec['attrs']) => {
    const out = `${PIXELS_INPUT}_${nodes.length}`;
    nodes.push({ op, inputs: [x, ...inputs], outputs: [out], attrs });
    x = out;
  };
  if (spec.bgr && C === 3) {
    initializers.push(encodeTensor(`${PIXELS_INPUT}_bgr`, ElemType.INT64, [3], i64([2, 1, 0])));
    step('Gather', [`${PIXELS_INPUT}_bgr`], { axis: 3 });
  }
  if (nchw) step('Transpose', [], { perm: [0, 3, 1, 2] }); // on uint8: a quarter of the bytes of floats to move
  if (spec.dtype !== 'uint8') {
    const dims = [C];
    initializers.push(encodeTensor(`${PIXELS_INPUT}_scale`, ElemType.FLOAT, dims, f32(spec.scale)));
    initializers.push(encodeTensor(`${PIXELS_INPUT}_bias`, ElemType.FLOAT, dims, f32(spec.bias)));
    step('Cast', [], { to: ElemType.FLOAT });
    if (nchw) {
      // the per-channel affine as BatchNormalization (mean 0, variance 1, epsilon 0): onnxruntime runs it plane by
      // plane, where Mul and Add with a [C,1,1] broadcast took 0.45 ms each per 224x224 image (measured with its
      // profiler: the fused graph then cost 0.8 ms more per image than the float one; with this, 0.05 ms)
      initializers.push(encodeTensor(`${PIXELS_INPUT}_zero`, ElemType.FLOAT, [C], f32(new Array(C).fill(0))));
      initializers.push(encodeTensor(`${PIXELS_INPUT}_one`, ElemType.FLOAT, [C], f32(new Array(C).fill(1))));
      step('BatchNormalization', [`${PIXELS_INPUT}_scale`, `${PIXELS_INPUT}_bias`, `${PIXELS_INPUT}_zero`, `${PIXELS_INPUT}_one`], {
        epsilon: { float: 0 },
      });
    } else {
      step('Mul', [`${PIXELS_INPUT}_scale`]);
      step('Add', [`${PIXELS_INPUT}_bias`]);
    }
    if (spec.dtype === 'float16') step('Cast', [], { to: ElemType.FLOAT16 });
  }
  if (nodes.length === 0) step('Identity', []);
  nodes[nodes.length - 1].outputs = [spec.input]; // the last step computes the original input

  const out = new Rope();
  for (const f of fields(model)) {
    if (f.no !== 7 || f.wire !== 2) {
      out.push(model.subarray(f.start, f.end));
      continue;
    }
    const graph = model.subarray(f.valueStart, f.end);
    const parts: Uint8Array[] = nodes.map((n, i) => lengthDelimited(1, encodeNode(n, `${PIXELS_INPUT}_node${i}`)));
    let found = false;
    for (const g of fields(graph)) {
      const body = graph.subarray(g.valueStart, g.end);
      if (g.no === 11 && g.wire === 2 && readValueInfo(body).name === spec.input) {
        const original = readValueInfo(body);
        const dim = (d: number | string | undefined, name: string) => (d === undefined || d === '' ? name : d);
        const [n, a, b, c] = original.shape;
        const [h, w] = nchw ? [b, c] : [a, b];
        const shape = [dim(n, 'batch'), dim(h, 'height'), dim(w, 'width'), C];
        parts.push(lengthDelimited(11, encodeValueInfo({ name: PIXELS_INPUT, elemType: ElemType.UINT8, shape })));
        found = true;
      } else parts.push(graph.subarray(g.start, g.end));
    }
    if (!found) throw new Error(`the graph has no input ${spec.input}`);
    parts.push(...initializers.map((t) => lengthDelimited(5, t)));
    out.push(delimited(7, new Rope(parts)));
  }
  return out; // the graph's own fields as views of the model: written out once, by materialize
}
