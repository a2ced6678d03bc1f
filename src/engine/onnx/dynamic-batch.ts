import { Rope, delimited, fields, lengthDelimited, materialize } from './protobuf.ts';
import { allocate, elementCount, type Session, type Tensor, type TensorInfo } from '../types.ts';

/**
 * Dynamic batch for ONNX graphs that fix it at 1. The graph's inputs and outputs get a symbolic first dimension
 * (their intermediate value_info hints are dropped), then a trial run checks that a batch of two gives, item by item,
 * what two single runs give. Only then is the rewritten graph served; otherwise the original, with batch size 1.
 */

/**
 * Rewrite (or drop, with null) length-delimited fields of a message, keeping everything else byte for byte: as views
 * of `buf`, not copies (a Rope).
 */
function rewrite(buf: Uint8Array, fn: (no: number, body: Uint8Array) => Uint8Array | Rope | null | undefined): Rope {
  const out = new Rope();
  for (const f of fields(buf)) {
    if (f.wire !== 2) {
      out.push(buf.subarray(f.start, f.end));
      continue;
    }
    const body = buf.subarray(f.valueStart, f.end);
    const next = fn(f.no, body);
    if (next === null) continue; // dropped
    out.push(next === undefined ? buf.subarray(f.start, f.end) : delimited(f.no, next));
  }
  return out;
}

const utf8 = new TextDecoder();
const BATCH_PARAM = new TextEncoder().encode('batch');

/**
 * Set the first dimension of the named graph inputs/outputs to the symbol "batch"; drop value_info hints. The model
 * is not copied here: what is new is spliced between views of it (see materialize).
 */
export function makeBatchDynamic(model: Uint8Array, names: ReadonlySet<string>): Rope {
  const firstDimDynamic = (shape: Uint8Array) => {
    let first = true;
    return rewrite(shape, (no) => {
      if (no !== 1 || !first) return undefined;
      first = false;
      return lengthDelimited(2, BATCH_PARAM); // Dimension { dim_param: "batch" }
    });
  };
  const valueInfo = (vi: Uint8Array) => {
    const nameField = fields(vi).find((f) => f.no === 1 && f.wire === 2);
    const name = nameField ? utf8.decode(vi.subarray(nameField.valueStart, nameField.end)) : '';
    if (!names.has(name)) return undefined;
    // ValueInfoProto.type(2) -> TypeProto.tensor_type(1) -> Tensor.shape(2)
    return rewrite(vi, (no, type) =>
      no !== 2
        ? undefined
        : rewrite(type, (n2, tensor) =>
            n2 !== 1 ? undefined : rewrite(tensor, (n3, shape) => (n3 === 2 ? firstDimDynamic(shape) : undefined)),
          ),
    );
  };
  // ModelProto.graph(7) -> GraphProto.input(11) / output(12) / value_info(13)
  return rewrite(model, (no, graph) => {
    if (no !== 7) return undefined;
    return rewrite(graph, (gno, body) => {
      if (gno === 11 || gno === 12) return valueInfo(body);
      if (gno === 13) return null;
      return undefined;
    });
  });
}

/**
 * One trial item. The two items differ in their range, not only in their values (their smallest, largest and mean
 * values all differ), so that a graph that mixes the items of a batch (a min, max or mean over the whole tensor,
 * harmless at batch 1) gives the first item another answer beside the second than alone. Item 0: [-1, 1] for floats
 * (1.0 for float16), 0 or 1 for integers (0 for int64); item 1: [1.5, 3.5], up to 3.0, 0 to 7, 1 to 4.
 */
function trialInput(info: TensorInfo, batch: number, item: 0 | 1, size?: number): Tensor | null {
  // other dynamic dims: no safe trial shape, unless a size for them is given
  if (size === undefined && info.shape.slice(1).some((d) => d === null)) return null;
  const shape = [batch, ...info.shape.slice(1).map((d) => d ?? size!)];
  const data = allocate(info.dtype, elementCount(shape));
  let s = item === 0 ? 7 : 99;
  for (let i = 0; i < data.length; i++) {
    // a 32-bit LCG in integer arithmetic (a double product would lose its low bits), read from its high bits
    s = (Math.imul(s, 1103515245) + 12345) & 0x7fffffff;
    const r = s >>> 16; // 0 .. 32767
    if (data instanceof Float32Array) data[i] = (r / 32767) * 2 - 1 + item * 2.5;
    else if (data instanceof BigInt64Array) data[i] = item === 0 ? 0n : BigInt(1 + (r % 4));
    else if (data instanceof Uint16Array)
      data[i] = item === 0 ? 0x3c00 : [0x3800, 0x4000, 0x4200][r % 3]; // float16 1.0; 0.5, 2.0, 3.0
    else if (info.dtype === 'bool') data[i] = r % 2;
    else data[i] = item === 0 ? r % 2 : r % 8;
  }
  return { dtype: info.dtype, shape, data };
}

const closeEnough = (a: Tensor, b: Tensor, offset: number): boolean => {
  const n = a.data.length;
  for (let i = 0; i < n; i++) {
    const x = Number(a.data[i]);
    const y = Number(b.data[offset + i]);
    if (Math.abs(x - y) > 1e-3 * Math.max(1, Math.abs(x))) return false;
  }
  return true;
};

/**
 * Does a batch of two give what two single runs give? With `size` (the other dynamic dimensions of the inputs), or
 * `tolerant`, null when the single runs do not run (at that size, or on the trial's values): no trial there.
 */
async function batchWorks(session: Session, reference: Session, size?: number, tolerant = false): Promise<boolean | null> {
  const one: Record<string, Tensor>[] = [{}, {}];
  const two: Record<string, Tensor> = {};
  for (const info of reference.inputs) {
    const a = trialInput(info, 1, 0, size);
    const b = trialInput(info, 1, 1, size);
    if (!a || !b) return false;
    one[0][info.name] = a;
    one[1][info.name] = b;
    const data = allocate(info.dtype, a.data.length * 2);
    (data as Float32Array).set(a.data as Float32Array, 0);
    (data as Float32Array).set(b.data as Float32Array, a.data.length);
    two[info.name] = { dtype: info.dtype, shape: [2, ...a.shape.slice(1)], data };
  }
  let r0: Record<string, Tensor>, r1: Record<string, Tensor>;
  try {
    [r0, r1] = [await reference.run(one[0]), await reference.run(one[1])];
  } catch (e) {
    if (size === undefined && !tolerant) throw e;
    return null;
  }
  const r2 = await session.run(two);
  for (const name of Object.keys(r0)) {
    const t = r2[name];
    if (!t || t.shape[0] !== 2) return false;
    if (!closeEnough(r0[name], t, 0) || !closeEnough(r1[name], t, r0[name].data.length)) return false;
  }
  return true;
}

const dim0 = (t: TensorInfo) => t.shape[0];
/** Sizes tried for the other dynamic dimensions of a trial (a stride of 32 takes the first two). */
const TRIAL_SIZES = [32, 64, 16, 1];

interface Decidable extends Session {
  batchable: boolean;
  notes: Record<string, unknown>;
  /** The names the graph gives dimension 0 of its tensors, where it names it. */
  dim0Names?: ReadonlyMap<string, string | null>;
}

/**
 * Open an ONNX model and decide how it batches: a dynamic batch dimension batches as is; one fixed at 1 is made
 * dynamic where a trial run shows that is safe (and `dynamicBatch` allows it); anything else runs one item at a time.
 */
export async function withDynamicBatch<S extends Decidable>(
  bytes: Uint8Array,
  open: (bytes: Uint8Array) => Promise<S>,
  dynamicBatch: boolean,
): Promise<S> {
  const session = await open(bytes);
  const all = [...session.inputs, ...session.outputs];
  const decided = (s: S, batchable: boolean, note?: string) => {
    s.batchable = batchable;
    if (note) s.notes = { ...s.notes, dynamicBatch: note };
    return s;
  };
  if (session.inputs.length > 0 && all.every((t) => dim0(t) === null)) {
    // every dimension 0 dynamic: the batch, as the graph says. But an output whose dynamic dimension 0 is another
    // (non-maximum suppression's selected boxes of every item together) would split across clients at random, and a
    // graph that computes over the whole batch (dynamic quantization: one scale for the whole tensor) gives each item an
    // answer that depends on the others of its call, whatever the names say: a batch of two is tried against two
    // single runs. A graph that names dimension 0 alike on every tensor, whose single runs do not run on the trial's
    // values (an index past its range), batches as it is.
    const names = new Set(all.map((t) => session.dim0Names?.get(t.name) ?? null));
    const named = names.size === 1 && !names.has(null);
    // other dynamic dimensions (a box count, an image size): tried at a few sizes for them, the first the model runs
    // alone; where it runs none of them, the model batches as before (exporters name one batch differently per tensor)
    const sized = session.inputs.some((t) => t.shape.slice(1).some((d) => d === null));
    let mixes: boolean | null = null;
    for (const size of sized ? TRIAL_SIZES : [undefined]) {
      try {
        const works = await batchWorks(session, session, size, named);
        if (works === null) continue; // no single run at this size
        mixes = !works;
      } catch {
        mixes = true; // a batch of two that does not run: it does not batch
      }
      break;
    }
    if (mixes === null) return decided(session, true);
    return mixes
      ? decided(
          session,
          false,
          "items mix in a batch (a trial run): an item's answer depends on the others of its call (dimension 0 of an output is not the batch, or a value is computed over the whole batch); items run one after another",
        )
      : decided(session, true);
  }
  if (!dynamicBatch || !all.every((t) => dim0(t) === 1 || dim0(t) === null)) return decided(session, false);
  let candidate: S | null = null;
  try {
    candidate = await open(await materialize(makeBatchDynamic(bytes, new Set(all.map((t) => t.name)))));
    if (await batchWorks(candidate, session)) {
      await session.close();
      return decided(candidate, true, 'rewritten: the batch dimension of this graph was fixed at 1 and was made dynamic after a trial run');
    }
  } catch {
    // the rewrite or its trial failed: serve the original graph one item at a time
  }
  await candidate?.close().catch(() => undefined);
  return decided(session, false, 'fixed at 1: items run one after another');
}
