import { open as openFile } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ErrorCode, GatewayError } from '../../errors.ts';
import {
  DTYPES,
  elementCount,
  type DType,
  type PixelInput,
  type Engine,
  type RunOptions,
  type LoadOptions,
  type Session,
  type Tensor,
  type TensorData,
  type TensorInfo,
} from '../types.ts';
import { withDynamicBatch } from './dynamic-batch.ts';
import { checkExternalData, externalDataLocations } from './external-data.ts';
import { PIXELS_INPUT, fusePreprocessing } from './fuse.ts';
import { materialize } from './protobuf.ts';
import { exactInt8Here, int8Initializers } from './exact-int8.ts';
import { SessionInstances } from '../instances.ts';

/**
 * The default engine: ONNX Runtime on CPU (its binaries ship inside the npm package).
 *
 * onnxruntime-node runs inference synchronously on the JavaScript thread that calls it. Each session therefore lives
 * in its own worker thread, so the main event loop keeps serving HTTP, parsing uploads and decoding images while a
 * batch computes. Tensors cross as transferred ArrayBuffers, without copies.
 */
const fromOrtType: Record<string, DType> = {
  float32: 'float32',
  float16: 'float16',
  int64: 'int64',
  int32: 'int32',
  int8: 'int8',
  uint8: 'uint8',
  bool: 'bool',
};

interface OrtMeta {
  name: string;
  isTensor: boolean;
  type: string;
  shape: (number | string)[];
}

function toInfo(meta: OrtMeta): TensorInfo {
  const dtype = meta.isTensor ? fromOrtType[meta.type] : undefined;
  return {
    name: meta.name,
    // types the gateway cannot carry (string, float64, ...) are reported under ONNX Runtime's name
    dtype: (dtype ?? meta.type ?? 'float32') as DType,
    shape: (meta.shape ?? []).map((d) => (typeof d === 'number' && d >= 0 ? d : null)),
    layout: null,
  };
}

/**
 * ONNX Runtime's message without where in its own sources it was raised ("/onnxruntime_src/.../element_wise_ops.h:563
 * void onnxruntime::BroadcastIterator::Init(ptrdiff_t, ptrdiff_t)"), which says nothing to a client; the node and the
 * reason stay. The whole text is kept as the error's cause.
 */
export function engineWords(message: string): string {
  return message
    .replace(/\S*\.(?:h|hpp|cc|cpp):\d+\s*/g, '')
    .replace(/(?:[\w:<>*&]+\s+)?onnxruntime::[\w:<>~]+\([^)]*\)\s*(?:const\s*)?/g, '')
    .trim();
}

const owns = (d: ArrayBufferView) => d.byteOffset === 0 && d.byteLength === d.buffer.byteLength && !(d.buffer instanceof SharedArrayBuffer);

export class WorkerSession implements Session {
  inputs: TensorInfo[] = [];
  outputs: TensorInfo[] = [];
  batchable = false;
  notes: Record<string, unknown> = {};
  /** The names the graph gives dimension 0 of its inputs and outputs, by tensor (null: a number, or unnamed). */
  dim0Names = new Map<string, string | null>();
  /** The graph this session was loaded from (for a second graph with fused preprocessing), and how. */
  private source: Uint8Array | null = null;
  private sessionOptions: Record<string, unknown> = {};
  private aloneThreads = 0;
  private ranAlone = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private dead: Error | null = null;
  private closing = false;
  private failureListeners: ((e: Error) => void)[] = [];
  private readonly fail: (e: Error) => void;
  /** Requests the worker has not answered yet (still counted after a kill: the worker may still be computing them). */
  private inWorker = 0;
  /** Resolved each time the worker has answered everything it was sent. */
  private idle: (() => void)[] = [];
  /** The longest one call may take (LoadOptions.callTimeoutMs); 0: no limit. */
  private callTimeoutMs = 0;
  /** Requests posted and not answered, in the order the worker takes them (one at a time, each answered in turn). */
  private readonly order: number[] = [];
  /** Runs with a time limit, by id: each is timed from when the worker starts it (everything before it answered). */
  private readonly limits = new Map<number, number>();
  /** The timer of the run the worker is computing, if it has a limit. */
  private timer: { id: number; handle: NodeJS.Timeout } | null = null;

  constructor(
    private readonly worker: Worker,
    /** Set to 1 when the worker is given up: it answers what is still queued with an error instead of computing it. */
    private readonly cancelled: Int32Array,
  ) {
    worker.on('message', (msg: { id: number; ok: boolean; error?: string }) => {
      // close() waiting for the worker to finish: rare, so nothing is allocated per answer otherwise
      if (--this.inWorker === 0 && this.idle.length > 0) for (const resolve of this.idle.splice(0)) resolve();
      this.answered(msg.id);
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg);
      else p.reject(new Error(engineWords(msg.error ?? 'engine error'), { cause: msg.error }));
    });
    const fail = (this.fail = (e: Error) => {
      if (this.dead) return;
      this.dead = e;
      this.limits.clear();
      if (this.timer) clearTimeout(this.timer.handle);
      this.timer = null;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
      if (!this.closing) for (const l of this.failureListeners) l(e);
    });
    worker.on('error', (e) => fail(new Error(`engine worker failed: ${e.message}`)));
    worker.on('exit', (code) => {
      fail(new Error(`engine worker exited (${code})`));
      // it will answer nothing more: close() has nothing to wait for
      this.inWorker = 0;
      this.order.length = 0;
      for (const resolve of this.idle.splice(0)) resolve();
    });
  }

  /** Post a request; limitMs > 0 (a run): it fails the session if the worker computes it longer (see timeNext). */
  request<T>(msg: Record<string, unknown>, transfer: ArrayBuffer[] = [], limitMs = 0): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: (v) => resolve(v as T), reject });
      try {
        this.worker.postMessage({ ...msg, id }, transfer);
        this.inWorker++;
        this.order.push(id);
        if (limitMs > 0) {
          this.limits.set(id, limitMs);
          if (this.order.length === 1) this.timeNext();
        }
      } catch (e) {
        this.pending.delete(id);
        reject(e);
      }
    });
  }

  /** The worker answered `id`: the request after it is the one it computes now. */
  private answered(id: number): void {
    if (this.order[0] === id) this.order.shift();
    else {
      const at = this.order.indexOf(id);
      if (at >= 0) this.order.splice(at, 1);
    }
    this.limits.delete(id);
    if (this.timer?.id === id) {
      clearTimeout(this.timer.handle);
      this.timer = null;
    }
    if (this.order.length > 0) this.timeNext();
  }

  /**
   * Arm the time limit of the request the worker computes now, if it has one: a run is timed from when the worker
   * starts it, not from when it was posted, so a call waiting behind another (maxConcurrentBatches) is not charged
   * for the one before it. Past its limit the session is given up (kill): it and every call queued behind it fail with
   * DEADLINE_EXCEEDED, and the failure listeners hear it (the version goes down and loads itself again once this
   * worker has ended, see close()).
   */
  private timeNext(): void {
    const id = this.order[0];
    const limitMs = this.limits.get(id);
    if (limitMs === undefined || this.timer?.id === id) return;
    const handle = setTimeout(
      () =>
        this.kill(
          new GatewayError(
            ErrorCode.DEADLINE_EXCEEDED,
            `an engine call took longer than ${limitMs} ms (ENGINE_CALL_TIMEOUT_MS); the model's engine is restarted`,
          ),
        ),
      limitMs,
    );
    this.timer = { id, handle };
  }

  /** Load from bytes, or from a file path (a model with external data: onnxruntime reads it beside the file). */
  async load(source: Uint8Array | string, options: LoadOptions = {}): Promise<void> {
    const sessionOptions = {
      executionProviders: ['cpu'],
      graphOptimizationLevel: 'all',
      // ONNX Runtime writes its own log lines (not JSON) to stderr: old exports print harmless "initializer appears in
      // graph inputs" warnings, and a failing run (the dynamic-batch trial) prints a red error line. Every failure also
      // comes back to us as an exception, which we report in our log; so ONNX Runtime logs only what is fatal.
      logSeverityLevel: 4,
      ...(options.intraOpThreads ? { intraOpNumThreads: options.intraOpThreads } : {}),
      // ONNX Runtime's threads spin while they wait for work by default. The gateway decodes and resizes images on
      // the same cores while a batch runs, so spinning steals their CPU (measured: -29% throughput at concurrency 16
      // on 2 cores, see bench/). Threads sleep instead.
      extra: {
        session: {
          intra_op: { allow_spinning: '0' },
          inter_op: { allow_spinning: '0' },
          // int8 products computed exactly where the CPU's int8 kernel saturates (exact-int8.ts, ENGINE_EXACT_INT8)
          ...(exactInt8Here(options.exactInt8) ? { x64quantprecision: '1' } : {}),
        },
      },
    };
    this.source = typeof source === 'string' ? null : source;
    this.sessionOptions = sessionOptions;
    this.aloneThreads = options.aloneThreads ?? 0;
    this.callTimeoutMs = options.callTimeoutMs ?? 0;
    const message =
      typeof source === 'string'
        ? { type: 'load', path: source, options: sessionOptions }
        : { type: 'load', bytes: source, options: sessionOptions };
    const r = await this.request<{ inputs: OrtMeta[]; outputs: OrtMeta[] }>(message);
    this.inputs = r.inputs.map(toInfo);
    this.outputs = r.outputs.map(toInfo);
    for (const m of [...r.inputs, ...r.outputs])
      this.dim0Names.set(m.name, typeof m.shape?.[0] === 'string' && m.shape[0] ? m.shape[0] : null);
  }

  async run(feeds: Record<string, Tensor>, options: RunOptions = {}): Promise<Record<string, Tensor>> {
    const msgFeeds: Record<string, { type: string; dims: number[]; data: TensorData }> = {};
    const transfer: ArrayBuffer[] = [];
    for (const [name, t] of Object.entries(feeds)) {
      // a buffer handed over already (a tensor run twice) reads as empty; posted again, the message would be lost and
      // the call never answered
      if (t.data.length !== elementCount(t.shape))
        throw new Error(`${name}: ${t.data.length} values for shape [${t.shape.join(',')}] (${elementCount(t.shape)})`);
      msgFeeds[name] = { type: t.dtype, dims: t.shape, data: t.data };
      // A batch tensor (or a preprocessed image) owns its buffer: hand it over. Views into shared or pooled
      // memory are copied by structured clone instead. An empty buffer is never handed over: a detached one in the
      // transfer list makes postMessage drop the message without a word.
      if (owns(t.data) && t.data.byteLength > 0 && !transfer.includes(t.data.buffer as ArrayBuffer))
        transfer.push(t.data.buffer as ArrayBuffer);
    }
    const r = await this.request<{ outputs: Record<string, { type: string; dims: number[]; data: TensorData }>; alone: boolean }>(
      { type: 'run', feeds: msgFeeds, alone: options.alone === true },
      transfer,
      this.callTimeoutMs,
    );
    if (r.alone) this.ranAlone++;
    const out: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(r.outputs)) {
      const dtype = fromOrtType[t.type];
      if (!dtype) throw new Error(`output ${name} has type ${t.type}, which the gateway does not carry`);
      out[name] = { dtype, shape: [...t.dims], data: t.data };
    }
    return out;
  }

  /**
   * A second graph in the same worker, with the image input's preprocessing prepended (fuse.ts); runs whose feeds name
   * the pixel input go to it, the others (raw inference) to the original graph.
   */
  async fusePixels(spec: PixelInput): Promise<string | null> {
    if (!this.source) return null; // loaded from its path (external data): served as it is
    await this.request({
      type: 'fuse',
      bytes: await fusedGraph(this.source, spec),
      pixelInput: PIXELS_INPUT,
      options: this.sessionOptions,
    });
    this.notes = { ...this.notes, preprocessing: 'fused into the graph: the engine takes the decoded pixels' };
    return PIXELS_INPUT;
  }

  /** Calls that ran on the session for lone calls (loaded()). */
  get aloneRuns(): number {
    return this.ranAlone;
  }

  async loaded(): Promise<void> {
    this.source = null; // the model's bytes: the worker holds its sessions, and fusing is over
    // The session for lone calls: the graph that serves images, more threads, which spin between operators (ONNX
    // Runtime's default, as a naive server has it) and stop when the call returns, so they take nothing from the
    // decoders afterwards. Built in the worker from the bytes it kept, which it then lets go.
    const threads = this.aloneThreads;
    const options =
      threads > 1
        ? {
            ...this.sessionOptions,
            intraOpNumThreads: threads,
            extra: {
              session: {
                ...(this.sessionOptions.extra as { session: object }).session,
                intra_op: { allow_spinning: '1' },
                force_spinning_stop: '1',
              },
            },
          }
        : null;
    const r = await this.request<{ built: boolean }>({ type: 'alone', options });
    if (r.built) this.notes = { ...this.notes, aloneThreads: threads };
  }

  onFailure(listener: (error: Error) => void): void {
    this.failureListeners.push(listener);
  }

  /**
   * Give the session up now: the calls in hand fail with `reason`, what is queued in the worker is answered with an
   * error instead of computed, and the failure listeners hear it. The worker is not stopped while it computes: ending
   * a worker inside an ONNX Runtime call aborts the whole process when the call returns (seen: "terminate called after
   * throwing an instance of 'Napi::Error'"); close() ends it once it has answered.
   */
  kill(reason: Error): void {
    Atomics.store(this.cancelled, 0, 1);
    this.fail(reason);
  }

  /** Is the worker computing something (a load, a run)? */
  get busy(): boolean {
    return this.inWorker > 0;
  }

  /** Ends the worker once it has answered everything it was sent (a call in progress is never cut short). */
  async close(): Promise<void> {
    this.closing = true;
    if (!this.dead) await this.request({ type: 'close' }).catch(() => undefined);
    if (this.inWorker > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    await this.worker.terminate();
  }
}

/**
 * The graph with the preprocessing fused in, made once for all the instances of a version: they load from the same
 * bytes. Rewriting the graph runs on the main thread, but copies nothing of the model until it is written out once,
 * in slices, into shared memory (materialize), which the workers share: a 300 MB model held the event loop for
 * seconds when each rewrite copied it and each worker was sent a clone. It goes with the model's bytes once loading
 * is over.
 */
const fusedGraphs = new WeakMap<Uint8Array, { spec: string; graph: Promise<Uint8Array> }>();
function fusedGraph(source: Uint8Array, spec: PixelInput): Promise<Uint8Array> {
  const key = JSON.stringify(spec);
  const made = fusedGraphs.get(source);
  if (made?.spec === key) return made.graph;
  const graph = materialize(fusePreprocessing(source, spec));
  fusedGraphs.set(source, { spec: key, graph });
  return graph;
}

/**
 * A model file read straight into shared memory: each engine worker it is posted to shares it (structured clone of a
 * SharedArrayBuffer copies nothing), and nothing of it is copied on the main thread.
 */
async function readShared(file: string): Promise<Uint8Array> {
  const handle = await openFile(file, 'r');
  try {
    const size = (await handle.stat()).size;
    const bytes = new Uint8Array(new SharedArrayBuffer(size));
    let at = 0;
    while (at < size) {
      const { bytesRead } = await handle.read(bytes, at, Math.min(size - at, 64 * 1024 * 1024), at);
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    return at === size ? bytes : bytes.subarray(0, at);
  } finally {
    await handle.close();
  }
}

async function open(source: Uint8Array | string, options?: LoadOptions): Promise<WorkerSession> {
  options?.signal?.throwIfAborted(); // a load given up starts no worker
  const cancelled = new SharedArrayBuffer(4);
  const worker = new Worker(new URL('./worker.mjs', import.meta.url), { workerData: { cancelled } });
  worker.unref();
  const session = new WorkerSession(worker, new Int32Array(cancelled));
  // a load given up (ENGINE_LOAD_TIMEOUT_MS) ends the worker: every call it owes fails; one that is computing is ended
  // once it answers (see kill(), close()). The signal belongs to one load, and the version never aborts it once done.
  options?.signal?.addEventListener(
    'abort',
    () => (session.busy ? session.kill(options.signal!.reason ?? new Error('the load was given up')) : void worker.terminate()),
    { once: true },
  );
  try {
    await session.load(source, options);
  } catch (e) {
    await session.close();
    throw e;
  }
  return session;
}

/**
 * The first instance and `instances - 1` copies of the graph it settled on (without a session for lone calls: the
 * first one has it). One instance is served as it is.
 */
async function instancesOf(first: WorkerSession, graph: Uint8Array, options: LoadOptions): Promise<Session> {
  const n = Math.max(1, options.instances ?? 1);
  if (n === 1) return first;
  const copies: WorkerSession[] = [];
  try {
    for (let i = 1; i < n; i++) {
      const copy = await open(graph, { ...options, aloneThreads: 0 });
      copy.batchable = first.batchable;
      copies.push(copy);
    }
  } catch (e) {
    await Promise.all([first, ...copies].map((s) => s.close().catch(() => undefined)));
    throw e;
  }
  return new SessionInstances([first, ...copies]);
}

export function createOnnxRuntimeEngine(): Engine {
  return {
    name: 'onnxruntime',
    modelFiles: ['model.onnx'],
    dtypes: DTYPES,
    async load(modelPath, options = {}) {
      const file = await readShared(modelPath);
      let external: string[];
      try {
        external = externalDataLocations(file);
      } catch (e) {
        // the first read of its fields: a file that is no protobuf at all (a README uploaded as model.onnx)
        throw new Error(
          `${path.basename(modelPath)} is not an ONNX model: it does not read as ONNX's protobuf format (${(e as Error).message})`,
        );
      }
      const int8 =
        exactInt8Here(options.exactInt8) && int8Initializers(file) > 0
          ? {
              int8: 'exact products asked of ONNX Runtime (session.x64quantprecision, ENGINE_EXACT_INT8): it stores constant int8 weights as uint8',
            }
          : {};
      if (external.length === 0) {
        const opened = new WeakMap<WorkerSession, Uint8Array>();
        const first = await withDynamicBatch(
          file,
          async (x) => {
            const s = await open(x, options);
            opened.set(s, x);
            return s;
          },
          options.dynamicBatch ?? true,
        );
        first.notes = { ...first.notes, ...int8 };
        return instancesOf(first, opened.get(first)!, options);
      }
      // Weights in files beside the model (models over 2 GB): every location must be a file of the version folder,
      // checked before onnxruntime sees the model, which then loads it from its path (so it resolves them there, not
      // against the server's working directory). The graph is served as it is: no dynamic-batch rewrite.
      await checkExternalData(external, path.dirname(modelPath));
      const session = await open(modelPath, options);
      session.batchable = session.inputs.length > 0 && [...session.inputs, ...session.outputs].every((i) => i.shape[0] === null);
      session.notes = {
        ...int8,
        externalData: external,
        dynamicBatch: session.batchable ? undefined : 'not rewritten: the model keeps its weights in external data',
      };
      return session;
    },
  };
}
