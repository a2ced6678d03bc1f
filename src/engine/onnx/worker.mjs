// @ts-check
// One ONNX Runtime session per worker thread. onnxruntime-node runs inference synchronously on the calling JS
// thread, so the gateway keeps it off the main event loop: HTTP, multipart parsing, GraphQL and image decoding go on
// while a batch computes. Tensors cross the thread boundary as transferred ArrayBuffers (no copies).
import { parentPort, workerData } from 'node:worker_threads';
import ort from 'onnxruntime-node';

if (!parentPort) throw new Error('worker.mjs must run in a worker thread');
// errors come back as exceptions (reported in the gateway's JSON log); ONNX Runtime's own log stays quiet
ort.env.logLevel = 'fatal';
const port = parentPort;
/** Set by the gateway when it gave up on this worker (a call took too long): what is still queued is not computed. */
const cancelled = new Int32Array(/** @type {SharedArrayBuffer} */ (workerData.cancelled));

/** @type {import('onnxruntime-node').InferenceSession | null} */
let session = null;
/** The same graph with its image preprocessing prepended (fuse.ts), and the name of its pixel input. */
/** @type {import('onnxruntime-node').InferenceSession | null} */
let fused = null;
let pixelInput = '';
/** The graph that serves images, kept until the session for lone calls is built from it. */
/** @type {Uint8Array | null} */
let imageGraph = null;
/** That graph again with more threads, which spin while it runs: for calls that run alone. */
/** @type {import('onnxruntime-node').InferenceSession | null} */
let alone = null;

/** @param {any} m */
function meta(m) {
  return { name: m.name, isTensor: m.isTensor, type: m.type, shape: m.shape };
}

/** @param {ArrayBufferView} data */
function transferable(data) {
  // only buffers the view owns entirely may be transferred; others are copied by structured clone
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? [data.buffer] : [];
}

/**
 * Model bytes as onnxruntime takes them: the main thread sends them in shared memory (no clone made on its thread),
 * which onnxruntime-node does not accept (it wants an ArrayBuffer): copied here, on this thread.
 * @param {Uint8Array} bytes
 */
function own(bytes) {
  return bytes.buffer instanceof SharedArrayBuffer ? new Uint8Array(bytes) : bytes;
}

port.on('message', async (/** @type {any} */ msg) => {
  try {
    if (Atomics.load(cancelled, 0) === 1 && msg.type !== 'close') throw new Error('cancelled: the engine was given up');
    if (msg.type === 'load') {
      session = await ort.InferenceSession.create(msg.bytes ? own(msg.bytes) : msg.path, msg.options);
      // a model loaded from its path keeps its weights in external data (over 2 GB): no second copy of it
      imageGraph = msg.bytes ?? null;
      port.postMessage({ id: msg.id, ok: true, inputs: session.inputMetadata.map(meta), outputs: session.outputMetadata.map(meta) });
    } else if (msg.type === 'fuse') {
      fused = await ort.InferenceSession.create(own(msg.bytes), msg.options);
      pixelInput = msg.pixelInput;
      imageGraph = msg.bytes;
      port.postMessage({ id: msg.id, ok: true });
    } else if (msg.type === 'alone') {
      const graph = imageGraph;
      imageGraph = null;
      // without it, lone calls take the ordinary session: a failure here (memory) costs latency, not service
      if (msg.options && graph) alone = await ort.InferenceSession.create(own(graph), msg.options).catch(() => null);
      port.postMessage({ id: msg.id, ok: true, built: alone !== null });
    } else if (msg.type === 'run') {
      const images = fused !== null && pixelInput in msg.feeds;
      // the session for lone calls copies the graph that serves images: the fused one when there is one, else the only one
      const target = msg.alone && alone && images === (fused !== null) ? alone : images ? fused : session;
      if (!target) throw new Error('no session loaded');
      /** @type {Record<string, import('onnxruntime-node').Tensor>} */
      const feeds = {};
      for (const [name, t] of Object.entries(msg.feeds)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
      const opts = { logSeverityLevel: /** @type {4} */ (4) };
      const result = await target.run(feeds, opts);
      /** @type {Record<string, {type: string, dims: readonly number[], data: any}>} */
      const out = {};
      /** @type {ArrayBuffer[]} */
      const transfer = [];
      for (const [name, t] of Object.entries(result)) {
        out[name] = { type: t.type, dims: t.dims, data: t.data };
        transfer.push(.../** @type {ArrayBuffer[]} */ (transferable(/** @type {ArrayBufferView} */ (t.data))));
      }
      port.postMessage({ id: msg.id, ok: true, outputs: out, alone: target === alone }, transfer);
    } else if (msg.type === 'close') {
      await session?.release();
      await fused?.release();
      await alone?.release();
      session = null;
      fused = null;
      alone = null;
      port.postMessage({ id: msg.id, ok: true });
    }
  } catch (e) {
    port.postMessage({ id: msg.id, ok: false, error: e instanceof Error ? e.message : String(e) });
  }
});
