/**
 * The engine boundary: everything above this talks in these types, never in onnxruntime's or OpenVINO's.
 * Nothing here imports graphql.
 */
export const DTYPES = ['float32', 'float16', 'int64', 'int32', 'int8', 'uint8', 'bool'] as const;
export type DType = (typeof DTYPES)[number];

export type TensorData = Float32Array | Uint16Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;

/** A dense tensor. float16 data is held as the raw half bits in a Uint16Array; bool as 0/1 in a Uint8Array. */
export interface Tensor {
  dtype: DType;
  shape: number[];
  data: TensorData;
}

/** An input or output of a model. Dynamic dimensions are null. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: (number | null)[];
  layout: string | null;
}

/**
 * Preprocessing an engine may take over (fuse.ts for ONNX): the image input is then fed the decoded pixels as they
 * come (uint8, NHWC, RGB or grey) and the engine computes `pixel * scale[c] + bias[c]` per model channel, the channel
 * order, the layout and the data type of `input`.
 */
export interface PixelInput {
  input: string;
  layout: 'NCHW' | 'NHWC';
  channels: 1 | 3;
  /** The model wants BGR: channels are reversed before anything else. */
  bgr: boolean;
  scale: number[];
  bias: number[];
  dtype: 'float32' | 'float16' | 'uint8';
}

export interface Session {
  readonly inputs: TensorInfo[];
  readonly outputs: TensorInfo[];
  /**
   * Can several items run in one call along dimension 0? The engine decides (it knows whether the batch dimension is
   * dynamic, or could be made so); the batcher only batches when it can.
   */
  readonly batchable: boolean;
  /** What loading found or changed, for clients to read (e.g. how the batch dimension was decided). */
  readonly notes: Record<string, unknown>;
  /** Calls it runs side by side (LoadOptions.instances); unset: one. */
  readonly instances?: number;
  run(feeds: Record<string, Tensor>, options?: RunOptions): Promise<Record<string, Tensor>>;
  /**
   * Take over an image input's preprocessing (see PixelInput), where the engine can: resolves to the name of the new
   * input that takes uint8 NHWC pixels (the original input still takes tensors, for raw inference), or null.
   */
  fusePixels?(spec: PixelInput): Promise<string | null>;
  /**
   * Loading is done (fusePixels will not be asked again): let go of what only loading needed, such as the model bytes,
   * and build what serving needs beside (the session for lone calls). Resolves before the version is AVAILABLE.
   */
  loaded?(): Promise<void>;
  close(): Promise<void>;
  /** Called once if the session dies on its own (e.g. its engine thread crashed); it cannot run after that. */
  onFailure?(listener: (error: Error) => void): void;
}

/** What the caller knows about the moment of a call. */
export interface RunOptions {
  /**
   * Nothing else runs or waits: the engine may spend more threads on this call to answer it sooner (see
   * LoadOptions.aloneThreads).
   */
  alone?: boolean;
}

export interface LoadOptions {
  /** Threads for one inference; 0 or unset lets the engine decide (one per core). */
  intraOpThreads?: number;
  /**
   * Copies of the model that run calls side by side (one call at a time each); 1 or unset: one. An engine that cannot
   * (OpenVINO here), or a model it will not copy (ONNX with external data), serves one.
   */
  instances?: number;
  /**
   * Threads for a call that runs alone (RunOptions.alone), in a second session of the graph whose threads spin while
   * they wait for work between operators; 0 or unset: no such session.
   */
  aloneThreads?: number;
  /** Make a batch dimension fixed at 1 dynamic where the engine can prove it safe (default true). */
  dynamicBatch?: boolean;
  /**
   * Quantized models: compute int8 products exactly on CPUs whose int8 kernel saturates (ONNX Runtime on x86-64
   * without VNNI); 'on' on every CPU, 'off' never. Default 'auto'.
   */
  exactInt8?: 'auto' | 'on' | 'off';
  /** The longest a version's load may take (the version's own limit, ENGINE_LOAD_TIMEOUT_MS); 0 or unset: none. */
  timeoutMs?: number;
  /**
   * The longest one call may take while serving (ENGINE_CALL_TIMEOUT_MS): past it the engine gives the session up
   * (its calls fail with DEADLINE_EXCEEDED, onFailure listeners hear it, so the version reloads); 0 or unset: none.
   * An engine that cannot give a session up (OpenVINO here) ignores it.
   */
  callTimeoutMs?: number;
  /**
   * Aborted when the load is given up: the engine stops what it started for it (ONNX Runtime: its workers; an engine
   * that cannot stop, as OpenVINO's compile, finishes, and the version closes the session it then gets).
   */
  signal?: AbortSignal;
}

export interface Engine {
  readonly name: string;
  /** File names (in a version folder) this engine loads, in order of preference. */
  readonly modelFiles: readonly string[];
  /** The tensor data types this engine carries. */
  readonly dtypes: readonly DType[];
  load(modelPath: string, options?: LoadOptions): Promise<Session>;
}

export const bytesPerElement: Record<DType, number> = {
  float32: 4,
  float16: 2,
  int64: 8,
  int32: 4,
  int8: 1,
  uint8: 1,
  bool: 1,
};

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Allocate a zeroed typed array for a dtype. */
export function allocate(dtype: DType, length: number): TensorData {
  switch (dtype) {
    case 'float32':
      return new Float32Array(length);
    case 'float16':
      return new Uint16Array(length);
    case 'int64':
      return new BigInt64Array(length);
    case 'int32':
      return new Int32Array(length);
    case 'int8':
      return new Int8Array(length);
    case 'uint8':
    case 'bool':
      return new Uint8Array(length);
  }
}

/** A typed view over little-endian bytes (copied when unaligned). */
export function fromBytes(dtype: DType, bytes: Uint8Array): TensorData {
  const size = bytesPerElement[dtype];
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset, byteLength } = aligned;
  const n = byteLength / size;
  switch (dtype) {
    case 'float32':
      return new Float32Array(buffer, byteOffset, n);
    case 'float16':
      return new Uint16Array(buffer, byteOffset, n);
    case 'int64':
      return new BigInt64Array(buffer, byteOffset, n);
    case 'int32':
      return new Int32Array(buffer, byteOffset, n);
    case 'int8':
      return new Int8Array(buffer, byteOffset, n);
    case 'uint8':
    case 'bool':
      return new Uint8Array(buffer, byteOffset, n);
  }
}

export function toBytes(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Read element i as a JS number, whatever the dtype (float16 decoded). */
export function readNumber(t: Tensor, i: number): number {
  if (t.dtype === 'float16') return halfToFloat((t.data as Uint16Array)[i]);
  return Number(t.data[i]);
}

/** The tensor as float32 (a view when it already is). */
export function toFloat32(t: Tensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  const out = new Float32Array(t.data.length);
  if (t.dtype === 'float16') {
    const src = t.data as Uint16Array;
    for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]);
  } else {
    for (let i = 0; i < t.data.length; i++) out[i] = Number(t.data[i]);
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE 754 half bits from a float (round to nearest even). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  // a double is rounded once: to a float32 by rounding to odd (an inexact result keeps its last bit set), which the
  // 13 bits dropped below leave exact enough that the half's own rounding is the double's (no double rounding)
  if (f32[0] !== value && Number.isFinite(f32[0]) && (u32[0] & 1) === 0) u32[0] += Math.abs(f32[0]) < Math.abs(value) ? 1 : -1;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = sign | (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return half;
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
