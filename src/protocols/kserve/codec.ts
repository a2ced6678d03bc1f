import { elementCount, floatToHalf, halfToFloat, toBytes, type DType, type Tensor, type TensorData } from '../../engine/types.ts';
import { decodeBase64, whyNotBase64 } from '../../base64.ts';
import { invalid } from './errors.ts';
import { ANY_SIZE } from '../../inference/tensors.ts';
import { ErrorCode, GatewayError, quoted } from '../../errors.ts';
import { imageFormat } from '../../vision/preprocess.ts';

/**
 * Tensor data of the Open Inference Protocol: the v2 data type names, JSON element lists, the length-prefixed layout
 * of BYTES elements, and gRPC's typed `contents`. Shared by the REST and gRPC adapters. The engine carries data as
 * little-endian bytes (float16 as raw half bits), so raw and binary data pass through without conversion.
 */

/** v2 data type names of the engine's data types. */
/** Triton's shared-memory extension (its regions are registered with calls this server does not have): refused, not ignored. */
export const NO_SHARED_MEMORY = 'shared memory (shared_memory_region) is not supported here';

export const V2_DATATYPE: Record<DType, string> = {
  float32: 'FP32',
  float16: 'FP16',
  int64: 'INT64',
  int32: 'INT32',
  int8: 'INT8',
  uint8: 'UINT8',
  bool: 'BOOL',
};
const FROM_V2 = new Map(Object.entries(V2_DATATYPE).map(([d, v]) => [v, d as DType]));
/** v2 types the spec has and the engines here do not carry (named in the error, so a client knows it is not a typo). */
const UNSUPPORTED = ['UINT16', 'UINT32', 'UINT64', 'INT16', 'FP64', 'BF16'];

/** The engine data type of a v2 name (BYTES is not one: it is handled as encoded images). */
export function engineDtype(datatype: string, name: string): DType {
  const d = FROM_V2.get(datatype);
  if (d) return d;
  if (UNSUPPORTED.includes(datatype)) throw invalid(`input ${name}: datatype ${datatype} is not supported by this gateway's engines`);
  throw invalid(`input ${name}: unknown datatype ${quoted(datatype)} (use ${[...FROM_V2.keys(), 'BYTES'].join(', ')})`);
}

/** A shape as clients send it (JSON numbers, or gRPC int64 as strings): non-negative safe integers. */
export function parseShape(shape: unknown, name: string): number[] {
  if (!Array.isArray(shape)) throw invalid(`input ${name}: shape must be an array`);
  return shape.map((d) => {
    const n = typeof d === 'string' && /^\d+$/.test(d) ? Number(d) : d;
    // past 2^53 - 1 a dimension is no exact number here (a JSON number past 1e308 is read as Infinity: not shown)
    if (typeof n === 'number' && n > Number.MAX_SAFE_INTEGER) {
      const text = typeof d === 'string' ? d : String(d);
      const shown = text.length <= 24 && text !== 'Infinity' ? ` (${text})` : '';
      throw invalid(`input ${name}: a shape dimension is too large${shown}: at most ${Number.MAX_SAFE_INTEGER} (2^53 - 1)`);
    }
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      // (gRPC's int64 dimensions arrive as text: shown as the numbers they are)
      const shown = `[${shape.map((x) => (typeof x === 'string' && /^-?\d{1,20}$/.test(x) ? x : JSON.stringify(x))).join(',')}]`;
      // -1 is how a model's shape is written where it takes any size (its metadata), not a size to send
      const any = d === -1 || d === '-1' ? `: -1 in a model's shape ${ANY_SIZE}` : '';
      throw invalid(`input ${name}: shape must hold non-negative integers, got ${shown}${any}`);
    }
    return n;
  });
}

const INT_RANGE: Partial<Record<DType, [number, number]>> = {
  int32: [-(2 ** 31), 2 ** 31 - 1],
  int8: [-128, 127],
  uint8: [0, 255],
};

/** Non-finite floats, which JSON has no number for: written and read as these strings (numpy reads them too). */
const NON_FINITE = new Map([
  ['NaN', NaN],
  ['Infinity', Infinity],
  ['-Infinity', -Infinity],
]);

/** A float element: a number within the type's range (or NaN, an infinity: gRPC carries them), or a non-finite string. */
function floatValue(v: unknown, half: boolean): number | null {
  if (typeof v === 'string') return NON_FINITE.get(v) ?? null;
  if (typeof v !== 'number') return null;
  if (!Number.isFinite(v)) return v;
  // a finite number the type cannot hold would silently become an infinity
  const stored = half ? halfToFloat(floatToHalf(v)) : Math.fround(v);
  return Number.isFinite(stored) ? v : null;
}

/**
 * Element values (from JSON `data`, flattened, or gRPC `contents`) as little-endian bytes of the engine type. INT64
 * elements may be numbers (up to 2^53, where JSON numbers stay exact) or decimal strings (gRPC's int64, and any
 * value in JSON); float elements may be "NaN", "Infinity" or "-Infinity".
 */
export function valuesToBytes(dtype: DType, values: readonly unknown[], name: string): Uint8Array {
  const shown = (v: unknown) => (typeof v === 'number' ? String(v) : JSON.stringify(v));
  const bad = (v: unknown, why = '') => invalid(`input ${name}: ${shown(v)} is not a ${V2_DATATYPE[dtype]} value${why}`);
  const n = values.length;
  let out: TensorData;
  switch (dtype) {
    case 'float32':
    case 'float16': {
      const half = dtype === 'float16';
      const f = half ? new Uint16Array(n) : new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const v = floatValue(values[i], half);
        if (v === null) throw bad(values[i], typeof values[i] === 'number' ? ' (past the range of the type)' : '');
        f[i] = half ? floatToHalf(v) : v;
      }
      out = f;
      break;
    }
    case 'int64': {
      const b = new BigInt64Array(n);
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (typeof v === 'number' && Number.isSafeInteger(v)) b[i] = BigInt(v);
        else if (typeof v === 'string' && /^-?\d{1,19}$/.test(v) && BigInt.asIntN(64, BigInt(v)) === BigInt(v)) b[i] = BigInt(v);
        else if (typeof v === 'number' && Number.isInteger(v))
          // JSON.parse has already rounded it: the number read is not the one sent
          throw bad(
            v,
            ' exactly: a JSON number past 2^53 loses its last digits; send INT64 values past 2^53 as a string ("9007199254740993") or in binary',
          );
        else throw bad(v);
      }
      out = b;
      break;
    }
    case 'bool': {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (typeof v === 'boolean') b[i] = v ? 1 : 0;
        else if (v === 0 || v === 1) b[i] = v;
        else throw bad(v);
      }
      out = b;
      break;
    }
    default: {
      const [lo, hi] = INT_RANGE[dtype]!;
      const t = dtype === 'int32' ? new Int32Array(n) : dtype === 'int8' ? new Int8Array(n) : new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) throw bad(v);
        t[i] = v;
      }
      out = t;
    }
  }
  return toBytes(out);
}

/**
 * The MAX_JSON_VALUES refusal. Tensor values as JSON (REST) or gRPC typed contents are decoded and encoded one by one
 * on the event loop (0.1-0.5 us a value here), where every other client waits; binary data and raw contents are copied
 * as they are.
 */
export function tooManyValues(what: string, max: number, instead: string): GatewayError {
  return new GatewayError(
    ErrorCode.LIMIT_EXCEEDED,
    `${what} holds more than ${max} values (MAX_JSON_VALUES): values as JSON or gRPC typed contents are decoded and encoded one by one on the server's event loop; ${instead}`,
  );
}

/**
 * A tensor's elements as JSON text: numbers (float16 decoded; int64 as its exact digits, which no JavaScript number
 * could carry past 2^53, as Triton writes them), "NaN" / "Infinity" / "-Infinity" for non-finite floats, booleans for
 * BOOL.
 */
export function tensorToJson(t: Tensor): string {
  const d = t.data;
  if (t.dtype === 'int64') return `[${(d as BigInt64Array).join(',')}]`;
  if (t.dtype === 'bool') return `[${Array.from(d as Uint8Array, (v) => v !== 0).join(',')}]`;
  if (t.dtype !== 'float32' && t.dtype !== 'float16') return `[${(d as ArrayLike<number> & { join(s: string): string }).join(',')}]`;
  const half = t.dtype === 'float16';
  const out = new Array<string | number>(d.length);
  for (let i = 0; i < d.length; i++) {
    const v = half ? halfToFloat(d[i] as number) : (d[i] as number);
    // -0 keeps its sign, as the binary forms do: "-0.0", a float to every reader (JSON.stringify writes 0, and Python
    // reads "-0" as the integer 0)
    out[i] = Object.is(v, -0) ? '-0.0' : Number.isFinite(v) ? v : `"${v}"`;
  }
  return `[${out.join(',')}]`;
}

/** Element count of a shape, with the data's count checked against it. */
export function checkCount(name: string, shape: readonly number[], count: number): void {
  const expected = elementCount(shape);
  if (count !== expected) throw invalid(`input ${name}: ${count} elements for shape [${shape.join(',')}] (expected ${expected})`);
}

// ---- BYTES ----

/** BYTES elements in their binary layout: each a 4-byte little-endian length, then its bytes. */
export function serializeBytes(elements: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(elements.reduce((n, e) => n + 4 + e.length, 0));
  const view = new DataView(out.buffer);
  let at = 0;
  for (const e of elements) {
    view.setUint32(at, e.length, true);
    out.set(e, at + 4);
    at += 4 + e.length;
  }
  return out;
}

/**
 * BYTES elements from their binary layout. A single element may also come as the bare bytes (OpenVINO Model Server
 * accepts one image without its length prefix): a buffer that does not parse as length-prefixed elements, when one
 * element is expected, is that element. An encoded image never parses as one (its first four bytes make a length
 * far past the end).
 */
export function parseBytes(buf: Uint8Array, expected: number, name: string): Uint8Array[] {
  const elements: Uint8Array[] = [];
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let at = 0;
  // no more than the shape says: a buffer of zeros is as many empty elements as it has 4-byte groups
  while (at + 4 <= buf.length && elements.length <= expected) {
    const len = view.getUint32(at, true);
    if (at + 4 + len > buf.length) break;
    elements.push(buf.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  if (at === buf.length && elements.length === expected) return elements;
  if (expected === 1 && buf.length > 0) return [buf];
  throw invalid(`input ${name}: BYTES data does not hold ${expected} length-prefixed elements`);
}

/**
 * The count of BYTES elements a shape says, refused past the items one request may carry (MAX_IMAGES_PER_REQUEST)
 * before any element is read.
 */
export function bytesCount(shape: readonly number[], name: string, maxItems: number): number {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n > maxItems)
    throw new GatewayError(
      ErrorCode.LIMIT_EXCEEDED,
      `input ${name}: ${n} BYTES elements, more than ${maxItems} images or inferences in one request (MAX_IMAGES_PER_REQUEST): send the others in another request`,
    );
  return n;
}

/** BYTES elements from JSON: strings (their UTF-8 bytes) or `{"b64": "<base64>"}` (for binary data such as photos). */
export function jsonBytesElement(v: unknown, name: string): Uint8Array {
  if (typeof v === 'string') return new TextEncoder().encode(v);
  if (v && typeof v === 'object' && typeof (v as { b64?: unknown }).b64 === 'string') {
    const text = (v as { b64: string }).b64;
    const bytes = decodeBase64(text);
    if (!bytes) throw invalid(`input ${name}: b64 is not base64: ${whyNotBase64(text)}`);
    return bytes;
  }
  throw invalid(`input ${name}: a BYTES element is a string or {"b64": "..."}`);
}

/** A base64 character (the standard alphabet, as decodeBase64 reads it), or a line break. */
const isBase64Char = (c: number) =>
  (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 43 || c === 47 || c === 10 || c === 13;

/**
 * What a BYTES element that is no image is, when it is an image as text (the JSON string of a photo's base64 not
 * wrapped in {"b64": ...}, or base64 sent where the bytes go): "is a data: URL ...", "is base64 text of a JPEG image"
 * (the first bytes it decodes to are an image's), "looks like base64 text"; null for anything else. Only its first
 * characters are decoded, and nothing of it is returned (messages never repeat data).
 */
export function imageAsText(e: Uint8Array): string | null {
  if (imageFormat(e)) return null;
  const head = Buffer.from(e.subarray(0, 256)).toString('latin1');
  if (/^data:[^,]*;base64,/i.test(head)) return 'is a data: URL (the image is the base64 after its comma)';
  let end = e.length;
  while (end > 0 && e[end - 1] === 61 /* = */) end--;
  if (end < 16 || e.length - end > 2) return null;
  for (let i = 0; i < end; i++) if (!isBase64Char(e[i])) return null;
  const format = imageFormat(Buffer.from(head.slice(0, 64), 'base64'));
  return format ? `is base64 text of a ${format.toUpperCase()} image` : 'looks like base64 text';
}

// ---- gRPC typed contents ----

/** The field of InferTensorContents that carries each type. */
const CONTENTS_FIELD: Record<DType, string | null> = {
  float32: 'fp32_contents',
  float16: null, // no 16-bit field: FP16 travels as raw contents only
  int64: 'int64_contents',
  int32: 'int_contents',
  int8: 'int_contents',
  uint8: 'uint_contents',
  bool: 'bool_contents',
};

export type Contents = Partial<Record<string, unknown[]>>;

/** The typed contents field of a data type (null: none, FP16). */
export const contentsField = (dtype: DType): string | null => CONTENTS_FIELD[dtype];

/** Element values of an input's typed contents. */
export function contentsValues(dtype: DType, contents: Contents | null | undefined, name: string): unknown[] {
  const field = CONTENTS_FIELD[dtype];
  if (!field) throw invalid(`input ${name}: FP16 has no typed contents field; send it in raw_input_contents`);
  return contents?.[field] ?? [];
}

/** A tensor as typed contents, or null when its type has no field (FP16: the response goes raw). */
export function tensorToContents(t: Tensor): Contents | null {
  const field = CONTENTS_FIELD[t.dtype];
  if (!field) return null;
  if (t.dtype === 'int64') return { [field]: Array.from(t.data as BigInt64Array, String) };
  if (t.dtype === 'bool') return { [field]: Array.from(t.data as Uint8Array, (v) => v !== 0) };
  return { [field]: Array.from(t.data as ArrayLike<number>) };
}

// ---- classification extension ----

/**
 * The classification extension (Triton): the top `count` elements of each batch item of an output, by value, as
 * `"<value>:<index>[:<label>]"` strings (value with six decimals, as Triton prints it); shape [batch, count]. A model
 * without a batch dimension (`batched` false: Triton's max_batch_size 0) has one ranking of the whole output, shape
 * [count], as Triton gives it.
 */
export function classifyOutput(
  t: Tensor,
  count: number,
  labels: ReadonlyMap<number, string> | null,
  batched = true,
): { shape: number[]; elements: Uint8Array[] } {
  const rows = batched && t.shape.length ? t.shape[0] : 1;
  const per = rows ? t.data.length / rows : 0;
  const k = Math.min(count, per);
  const enc = new TextEncoder();
  // INT64 values stay bigints: as numbers, values past 2^53 would be ordered and written rounded
  const value = (i: number): number | bigint =>
    t.dtype === 'float16' ? halfToFloat(t.data[i] as number) : t.dtype === 'int64' ? (t.data[i] as bigint) : Number(t.data[i]);
  const isFloat = t.dtype === 'float32' || t.dtype === 'float16';
  const elements: Uint8Array[] = [];
  for (let r = 0; r < rows; r++) {
    const base = r * per;
    for (const idx of topIndices(per, k, (i) => value(base + i))) {
      const v = value(base + idx);
      const label = labels?.get(idx);
      elements.push(enc.encode(`${isFloat ? (v as number).toFixed(6) : v}:${idx}${label ? `:${label}` : ''}`));
    }
  }
  return { shape: batched ? [rows, k] : [k], elements };
}

/**
 * The indices of the k largest values of 0..n-1, highest first (ties: lower index first), NaN last. A bounded heap:
 * O(n log k), not a sort of the whole row (a row of millions of values asked for its top 5 sorted them all on the
 * event loop).
 */
function topIndices(n: number, k: number, value: (i: number) => number | bigint): number[] {
  /** Does i come before j in the answer? */
  const before = (i: number, j: number) => {
    const a = value(i);
    const b = value(j);
    const aNaN = typeof a === 'number' && Number.isNaN(a);
    const bNaN = typeof b === 'number' && Number.isNaN(b);
    if (aNaN !== bNaN) return bNaN;
    if (!aNaN && a !== b) return a > b;
    return i < j;
  };
  const heap: number[] = []; // a min-heap by "before": its root is the one that would leave first
  const worse = (a: number, b: number) => before(b, a);
  const up = (i: number) => {
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!worse(heap[i], heap[p])) break;
      [heap[i], heap[p]] = [heap[p], heap[i]];
      i = p;
    }
  };
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && worse(heap[l], heap[m])) m = l;
      if (r < heap.length && worse(heap[r], heap[m])) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m], heap[i]];
      i = m;
    }
  };
  for (let i = 0; i < n && k > 0; i++) {
    if (heap.length < k) {
      heap.push(i);
      up(heap.length - 1);
    } else if (before(i, heap[0])) {
      heap[0] = i;
      down(0);
    }
  }
  return heap.sort((a, b) => (before(a, b) ? -1 : 1));
}
