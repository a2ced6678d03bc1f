import { readFileSync } from 'node:fs';
import { concat, fields, lengthDelimited, readVarint } from './protobuf.ts';
import { ElemType, readValueInfo } from './onnx-proto.ts';

/**
 * Exact int8 arithmetic on x86-64 CPUs without VNNI. There, ONNX Runtime multiplies uint8 activations by int8 weights
 * with VPMADDUBSW, which adds pairs of products into 16 bits and saturates: a quantized model answers differently,
 * often much worse, than on a CPU with VNNI (onnxruntime issues #6004, #16105 and PR #24220; the reason its quantizer
 * has `reduce_range`). The int8 MobileNetV2 of the default repository gives a bee 45% on an AVX2-only AMD EPYC
 * against 91% with VNNI.
 *
 * The same model with its int8 weights stored as uint8 (each value + 128, and its zero point + 128) computes exactly
 * the same numbers, and ONNX Runtime runs uint8 x uint8 products with a kernel that widens to 16 bits before adding,
 * so nothing saturates. The rewrite takes the weights of QLinearConv, QLinearMatMul and MatMulInteger whose
 * activations are uint8 (a uint8 zero point, or DynamicQuantizeLinear's), and those of DequantizeLinear (QDQ models)
 * when every QuantizeLinear of the graph is uint8, each with its zero point; a weight with any other use (another
 * node, a graph input or output), in external data, or without a zero point is left as it is, and a model with
 * subgraphs is left whole. Applied at load, only where the CPU needs it; if the rewritten graph does not open, the
 * original is served.
 */

/** Graph inputs that are int8 weights (input index -> its zero point's index), per operator. */
const WEIGHT_SLOTS: Record<string, [weight: number, zeroPoint: number, activationZeroPoint: number | null]> = {
  QLinearConv: [3, 5, 2],
  QLinearMatMul: [3, 5, 2],
  MatMulInteger: [1, 3, 2],
  DequantizeLinear: [0, 2, null],
};

interface Node {
  op: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  /** It holds a subgraph (If, Loop, Scan): names used inside are not listed as its inputs. */
  subgraph: boolean;
}

interface Initializer {
  /** Where the TensorProto lies in the graph message. */
  start: number;
  end: number;
  body: Uint8Array;
  dataType: number;
  /** Its values are inline (raw_data or int32_data), not in external data. */
  inline: boolean;
}

const utf8 = new TextDecoder();

/** Does this CPU saturate int8 products (x86-64 without AVX-VNNI or AVX512-VNNI)? Linux only; elsewhere no. */
export function cpuSaturatesInt8(cpuinfo = readCpuinfo()): boolean {
  if (process.arch !== 'x64' || cpuinfo === null) return false;
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  return flags.includes('avx2') && !flags.includes('avx512_vnni') && !flags.includes('avx_vnni') && !flags.includes('amx_int8');
}

function readCpuinfo(): string | null {
  try {
    return readFileSync('/proc/cpuinfo', 'latin1');
  } catch {
    return null;
  }
}

/** The model with the weights described above made unsigned, and how many tensors changed (0: the model as it was). */
export function unsignedInt8Weights(model: Uint8Array): { model: Uint8Array; tensors: number } {
  const graphField = fields(model).find((f) => f.no === 7 && f.wire === 2);
  if (!graphField) return { model, tensors: 0 };
  const graph = model.subarray(graphField.valueStart, graphField.end);
  const nodes: Node[] = [];
  const inits = new Map<string, Initializer>();
  /** Graph inputs and outputs: an initializer listed there (old exports list them all) keeps its type. */
  const declared = new Set<string>();
  for (const f of fields(graph)) {
    if (f.wire !== 2) continue;
    const body = graph.subarray(f.valueStart, f.end);
    if (f.no === 1) nodes.push(readNode(body));
    else if (f.no === 11 || f.no === 12) declared.add(readValueInfo(body).name);
    else if (f.no === 5) {
      const t = readTensor(body);
      if (t) inits.set(t.name, { start: f.start, end: f.end, body, dataType: t.dataType, inline: t.inline });
    }
  }
  // names read inside a subgraph are not listed anywhere at the top: such a model is left as it is
  if (nodes.some((n) => n.subgraph)) return { model, tensors: 0 };
  // DynamicQuantizeLinear quantizes to uint8: its zero point output is uint8
  const dynamicZeroPoints = new Set(nodes.filter((n) => n.op === 'DynamicQuantizeLinear').map((n) => n.outputs[2]));
  const typeOf = (name: string | undefined) =>
    name === undefined ? undefined : dynamicZeroPoints.has(name) ? ElemType.UINT8 : inits.get(name)?.dataType;
  const qdqUnsigned = nodes.filter((n) => n.op === 'QuantizeLinear').every((n) => typeOf(n.inputs[2]) === ElemType.UINT8);
  // candidates: nodes whose weight and zero point are raw int8 initializers, with uint8 activations
  let candidates = nodes.filter((n) => {
    const slots = n.domain === '' ? WEIGHT_SLOTS[n.op] : undefined;
    if (!slots) return false;
    const [w, zp, azp] = slots;
    const rawInt8 = (name: string | undefined) =>
      name !== undefined && inits.get(name)?.dataType === ElemType.INT8 && inits.get(name)!.inline && !declared.has(name);
    const unsignedActivations = azp === null ? qdqUnsigned : typeOf(n.inputs[azp]) === ElemType.UINT8;
    return rawInt8(n.inputs[w]) && rawInt8(n.inputs[zp]) && unsignedActivations;
  });
  // a tensor changes only if every use of it is such a slot; a node keeps both or neither of its tensors
  for (;;) {
    const slotUses = new Map<string, number>();
    for (const n of candidates) for (const i of WEIGHT_SLOTS[n.op].slice(0, 2)) inc(slotUses, n.inputs[i!]);
    const allUses = new Map<string, number>();
    for (const n of nodes) for (const name of n.inputs) inc(allUses, name);
    const kept = candidates.filter((n) =>
      WEIGHT_SLOTS[n.op].slice(0, 2).every((i) => slotUses.get(n.inputs[i!]) === allUses.get(n.inputs[i!])),
    );
    if (kept.length === candidates.length) break;
    candidates = kept;
  }
  const names = new Set(candidates.flatMap((n) => WEIGHT_SLOTS[n.op].slice(0, 2).map((i) => n.inputs[i!])));
  if (names.size === 0) return { model, tensors: 0 };
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const t of [...names].map((name) => inits.get(name)!).sort((a, b) => a.start - b.start)) {
    parts.push(graph.subarray(at, t.start), lengthDelimited(5, toUnsigned(t.body)));
    at = t.end;
  }
  parts.push(graph.subarray(at));
  const out = concat([model.subarray(0, graphField.start), lengthDelimited(7, concat(parts)), model.subarray(graphField.end)]);
  return { model: out, tensors: names.size };
}

function inc(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}

function readNode(body: Uint8Array): Node {
  const node: Node = { op: '', domain: '', inputs: [], outputs: [], subgraph: false };
  for (const f of fields(body)) {
    if (f.wire !== 2) continue;
    const value = body.subarray(f.valueStart, f.end);
    if (f.no === 5) {
      // AttributeProto: g (6) or graphs (11)
      if (fields(value).some((a) => (a.no === 6 || a.no === 11) && a.wire === 2)) node.subgraph = true;
      continue;
    }
    const s = utf8.decode(value);
    if (f.no === 1) node.inputs.push(s);
    else if (f.no === 2) node.outputs.push(s);
    else if (f.no === 4) node.op = s;
    else if (f.no === 7) node.domain = s === 'ai.onnx' ? '' : s;
  }
  return node;
}

function readTensor(body: Uint8Array): { name: string; dataType: number; inline: boolean } | null {
  let name = '';
  let dataType = 0;
  let external = false;
  for (const f of fields(body)) {
    if (f.no === 8 && f.wire === 2) name = utf8.decode(body.subarray(f.valueStart, f.end));
    else if (f.no === 2 && f.wire === 0) dataType = readVarint(body, f.valueStart)[0];
    else if (f.no === 13 || f.no === 14) external = true; // external_data, data_location
  }
  return name ? { name, dataType, inline: !external } : null;
}

/**
 * The TensorProto as uint8: data_type 2, each value + 128 (for a two's complement byte: its top bit flipped). Values
 * kept in int32_data (as exporters write small tensors such as zero points) are moved to raw_data.
 */
function toUnsigned(body: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  const fromInt32: number[] = [];
  for (const f of fields(body)) {
    if (f.no === 2 && f.wire === 0) parts.push(Uint8Array.of(0x10, ElemType.UINT8));
    else if (f.no === 9 && f.wire === 2) {
      const raw = body.slice(f.valueStart, f.end);
      for (let i = 0; i < raw.length; i++) raw[i] ^= 0x80;
      parts.push(lengthDelimited(9, raw));
    } else if (f.no === 5 && f.wire === 0) fromInt32.push(int32At(body, f.valueStart)[0]);
    else if (f.no === 5 && f.wire === 2) {
      for (let at = f.valueStart; at < f.end;) {
        const [v, next] = int32At(body, at);
        fromInt32.push(v);
        at = next;
      }
    } else parts.push(body.subarray(f.start, f.end));
  }
  if (fromInt32.length > 0)
    parts.push(
      lengthDelimited(
        9,
        Uint8Array.from(fromInt32, (v) => (v + 128) & 0xff),
      ),
    );
  return concat(parts);
}

/** An int32 varint (negative ones take ten bytes; the value is their low 32 bits). */
function int32At(buf: Uint8Array, pos: number): [number, number] {
  let low = 0;
  let shift = 0;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    if (shift < 32) low |= (b & 0x7f) << shift;
    if (b < 0x80) return [low | 0, pos];
    shift += 7;
    if (shift > 63) throw new Error('varint too long');
  }
}
