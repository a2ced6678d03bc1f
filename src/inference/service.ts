// Over 250 lines on purpose: the one service every protocol calls; its tensor, batch and image entry points share
// admission, budgets and the joining of results.
import { setMaxListeners } from 'node:events';
import { ErrorCode, GatewayError, clientGone, isGatewayError } from '../errors.ts';
import { bytesPerElement, elementCount, type Tensor, type TensorInfo } from '../engine/types.ts';
import { concatBatch, type Feeds } from '../batching/batcher.ts';
import { RequestTrace } from '../batching/stats.ts';
import { postprocessingOf, type Task } from '../repository/model-config.ts';
import type { Model, ModelFiles } from '../repository/model.ts';
import type { ModelManager } from '../repository/manager.ts';
import type { Admission, ModelVersion } from '../repository/version.ts';
import { preprocess, probeImage, type DecodedImage, type ImageTransform, type InputPlan, type RawImage } from '../vision/preprocess.ts';
import { decodeOriented, drawDetections, drawOverlay } from '../vision/draw.ts';
import { planFor } from './plans.ts';
import { classify, type Prediction } from '../vision/classification.ts';
import { detect, type DetectedObject } from '../vision/detection.ts';
import { toClassMap, type ClassMap } from '../vision/segmentation.ts';
import { inTurn } from '../turns.ts';
import os from 'node:os';
import { FairQueue } from './fair-queue.ts';
import type { ImageSource } from './images.ts';
import { hasBatchDimension, selectOutputs, shapeMismatch, tensorFeeds, type TensorInput } from './tensors.ts';

/**
 * The inference service every protocol calls: admit -> preprocess -> batched engine call -> postprocess. It knows no
 * protocol: images come as sources of bytes, tensors as little-endian bytes, and answers are plain objects.
 */
export interface InferenceLimits {
  maxImagePixels: number;
  /** Image formats accepted (default: the raster formats). */
  imageFormats?: readonly string[];
  /** Longest decode and resize of one image, in ms. */
  decodeTimeoutMs?: number;
  /** Images decoded and resized at once (DECODE_THREADS); the others wait their turn. Default: the cores. */
  decodeThreads?: number;
}

/** A request's own: it stops the work not yet started when the client has gone away. */
export interface RunOptions {
  signal?: AbortSignal;
  /**
   * Who sent it (the protocol's client key, see ClientAddresses): one client may have at most half of a version's
   * maxQueueSize admitted at once. None for the server's own requests.
   */
  client?: string;
  /**
   * What this request has admitted per version and not yet released, when it runs several calls at once (a detection's
   * crops, each its own classify): counted with each call's items against the client's share, so that a request that
   * could never be admitted in full is LIMIT_EXCEEDED, not QUEUE_FULL on an idle server.
   */
  held?: Map<ModelVersion, number>;
}

/** Marks an image of an all-or-none request left unrun because another failed (see runImages). */
const NOT_RUN = Symbol('not run');
const notRun = () =>
  Object.assign(new GatewayError(ErrorCode.CANCELLED, 'not run: another image of the request failed'), { [NOT_RUN]: true });
const wasNotRun = (e: unknown) => (e as { [NOT_RUN]?: boolean } | null)?.[NOT_RUN] === true;
/** What runs a model of each task: the GraphQL mutation, which the command-line client's command is named after. */
const RUNS_TASK: Record<Task, string> = {
  classification: 'classify',
  detection: 'detect',
  segmentation: 'segment',
  raw: 'infer (tensors in and out, or KServe v2)',
};

export interface ClassifyOptions extends RunOptions {
  topK?: number | null;
  minConfidence?: number | null;
}
export interface DetectOptions extends RunOptions {
  minConfidence?: number | null;
  iouThreshold?: number | null;
  maxDetections?: number | null;
}
export interface DetectionResult {
  image: DecodedImage;
  objects: DetectedObject[];
}
export interface SegmentationRun {
  image: DecodedImage;
  transform: ImageTransform;
  map: ClassMap;
  labels: ModelFiles['labels'];
  /** Each region's box grown by this (postprocessing.unclipRatio; 0: as found). */
  unclipRatio: number;
}
export interface ImageRun {
  model: Model;
  version: ModelVersion;
  /** The configuration the version was loaded with. */
  files: ModelFiles;
  image: DecodedImage;
  transform: ImageTransform;
  plan: InputPlan;
  outputs: Feeds;
}

/** A whole batch answered: the version that ran it and the outputs asked for, joined along dimension 0. */
export interface BatchResult {
  model: Model;
  version: ModelVersion;
  outputs: Record<string, Tensor>;
}

const bad = (msg: string) => new GatewayError(ErrorCode.INVALID_INPUT, msg);

export class InferenceService {
  /**
   * Decoding is the other half of the CPU beside the engine: bounded here, not by the size of the libuv pool, which
   * Node reads once when the process starts (before any of our code runs) and which fs and dns share.
   */
  private readonly decodes: FairQueue;
  /** The request of decodes that came without one (no signal). */
  private readonly anonymous = {};

  constructor(
    readonly models: ModelManager,
    readonly limits: InferenceLimits,
  ) {
    this.decodes = new FairQueue(limits.decodeThreads ?? os.availableParallelism());
  }

  /**
   * A photo decoded whole and oriented, to cut boxes from (objects { classify }): on a decoding thread like any image,
   * within the decode time limit; a damaged file is INVALID_IMAGE.
   */
  decodeForCrops(image: DecodedImage, { signal }: RunOptions = {}): Promise<RawImage> {
    return this.onDecodeThread(() => decodeOriented(image, { timeoutMs: this.limits.decodeTimeoutMs }), signal);
  }

  /**
   * The photo with its detections drawn (PNG), on a decoding thread like any image: a photo of tens of megapixels
   * takes seconds to draw and encode, and waits its turn with the decodes rather than take threads from them.
   */
  drawDetections(image: DecodedImage, objects: DetectedObject[], { signal }: RunOptions = {}): Promise<Buffer> {
    return this.onDecodeThread(() => drawDetections(image, objects, { timeoutMs: this.limits.decodeTimeoutMs }), signal);
  }

  /** The class map in colour over the photo (PNG), on a decoding thread (see drawDetections). */
  drawOverlay(image: DecodedImage, map: ClassMap, { signal }: RunOptions = {}): Promise<Buffer> {
    return this.onDecodeThread(() => drawOverlay(image, map, { timeoutMs: this.limits.decodeTimeoutMs }), signal);
  }

  /**
   * Work on a decoding thread (at most DECODE_THREADS at once, shared fairly between requests: a request is known by
   * its signal). A client that leaves while it waits for one lets go at once (CANCELLED), and so of its admissions;
   * the queued task then ends as soon as it starts.
   */
  private onDecodeThread<T>(work: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    return abortable(
      this.decodes.run(signal ?? this.anonymous, async () => {
        if (signal?.aborted) throw clientGone();
        return work();
      }),
      signal,
    );
  }

  /** Images being decoded, and images waiting for a decoding thread. */
  get decoding(): { running: number; waiting: number } {
    return { running: this.decodes.activeCount, waiting: this.decodes.pendingCount };
  }

  /** Classify images (one promise per image, see runImages). */
  classify(
    name: string,
    version: number | null | undefined,
    sources: readonly ImageSource[],
    opts: ClassifyOptions = {},
  ): Promise<Prediction[]>[] {
    const topK = opts.topK ?? 5;
    const minConfidence = opts.minConfidence ?? 0;
    if (!Number.isInteger(topK) || topK < 1 || topK > 1000) throw bad('topK must be 1..1000');
    if (!(minConfidence >= 0 && minConfidence <= 1)) this.checkScoreBound(name, version);
    return this.runImages('classification', name, version, sources, opts).map(async (r) => {
      const run = await r;
      return classify(run.outputs, postprocessingOf(run.files.config, 'classification'), run.files.labels, topK, minConfidence);
    });
  }

  /**
   * A minConfidence outside 0..1 is a mistake for a model whose scores are probabilities (softmax, sigmoid: it would
   * keep every class or none), and a bound like any other for one that gives its raw scores (activation "none").
   */
  private checkScoreBound(name: string, versionNo: number | null | undefined): void {
    const { model, version } = this.models.resolve(name, versionNo);
    const config = version.config ?? model.config;
    if (config.task !== 'classification') return; // runImages says which mutation the model takes
    const { activation } = postprocessingOf(config, 'classification');
    if (activation !== 'none')
      throw bad(`minConfidence must be 0..1: ${model.name} gives probabilities (postprocessing.activation ${activation})`);
  }

  /** Detect objects in images (one promise per image, see runImages). */
  detect(
    name: string,
    version: number | null | undefined,
    sources: readonly ImageSource[],
    opts: DetectOptions = {},
  ): Promise<DetectionResult>[] {
    const inRange = (v: number | null | undefined, what: string) => {
      if (v !== undefined && v !== null && !(v >= 0 && v <= 1)) throw bad(`${what} must be 0..1`);
    };
    inRange(opts.minConfidence, 'minConfidence');
    inRange(opts.iouThreshold, 'iouThreshold');
    if (opts.maxDetections !== undefined && opts.maxDetections !== null && !(opts.maxDetections >= 1 && opts.maxDetections <= 10_000))
      throw bad('maxDetections must be 1..10000');
    return this.runImages('detection', name, version, sources, opts).map(async (r) => {
      const run = await r;
      const cfg = postprocessingOf(run.files.config, 'detection');
      // each image decoded in a turn of the event loop of its own (turns.ts): the images of one engine call were decoded
      // back to back, and at the edges of the arguments (minConfidence 0, iouThreshold 1, maxDetections 10000) one
      // request of 64 photos held the loop 1.6 s on yolox
      const objects = await inTurn(() =>
        detect(run.outputs, cfg, run.transform, run.files.labels, {
          minConfidence: opts.minConfidence ?? cfg.minConfidence,
          iouThreshold: opts.iouThreshold ?? cfg.iouThreshold,
          maxDetections: opts.maxDetections ?? cfg.maxDetections,
        }),
      );
      return { image: run.image, objects };
    });
  }

  /** Segment images (one promise per image, see runImages). */
  segment(
    name: string,
    version: number | null | undefined,
    sources: readonly ImageSource[],
    opts: RunOptions = {},
  ): Promise<SegmentationRun>[] {
    return this.runImages('segmentation', name, version, sources, opts).map(async (r) => {
      const run = await r;
      const cfg = postprocessingOf(run.files.config, 'segmentation');
      return {
        image: run.image,
        transform: run.transform,
        map: toClassMap(run.outputs, cfg, run.plan.layout),
        labels: run.files.labels,
        unclipRatio: cfg.unclipRatio,
      };
    });
  }

  /** Raw tensors in, raw tensors out (only the outputs asked for; all when none are named), batched like images. */
  async infer(
    name: string,
    versionNo: number | null | undefined,
    inputs: readonly TensorInput[],
    outputNames?: readonly string[] | null,
    { signal, client }: RunOptions = {},
  ): Promise<Record<string, Tensor>> {
    const { version } = this.models.resolve(name, versionNo);
    const feeds = tensorFeeds(name, version.inputs, inputs);
    const wanted = selectOutputs(name, version.outputs, outputNames);
    const request = new RequestTrace();
    let admission: Admission;
    try {
      admission = version.admit(client);
    } catch (e) {
      version.stats.recordError(e instanceof GatewayError ? e.code : ErrorCode.INFERENCE_FAILED); // QUEUE_FULL, as for images
      version.stats.recordRequestEnd(request, false);
      throw e;
    }
    const t0 = performance.now();
    try {
      if (signal?.aborted) throw clientGone();
      const outputs = await admission.infer(feeds, signal, request);
      version.stats.recordItem((performance.now() - t0) * 1000);
      version.stats.recordRequestEnd(request, true);
      return Object.fromEntries(wanted.map((n) => [n, outputs[n]]));
    } catch (e) {
      const err = notComputable(name, e, version.inputs, feeds);
      version.stats.recordError(err instanceof GatewayError ? err.code : ErrorCode.INFERENCE_FAILED);
      version.stats.recordRequestEnd(request, false);
      throw err;
    } finally {
      admission.release();
    }
  }

  /**
   * Raw tensors whose dimension 0 is a batch of any size (all inputs the same): each item is admitted and batched like
   * any other request (they reach the batcher in the same tick and share engine calls), and the outputs are joined
   * back along dimension 0. The batch fails as a whole when an item fails (after every item has settled).
   */
  async inferBatch(
    name: string,
    versionNo: number | null | undefined,
    inputs: readonly TensorInput[],
    outputNames?: readonly string[] | null,
    { signal, client }: RunOptions = {},
  ): Promise<BatchResult> {
    const { model, version } = this.models.resolve(name, versionNo);
    const wanted = selectOutputs(name, version.outputs, outputNames);
    // a rank or a fixed dimension that does not fit is said of the shape sent, before it is split into items of batch 1
    for (const i of inputs) {
      const info = version.inputs.find((x) => x.name === i.name);
      if (info && (info.shape.length !== i.shape.length || i.shape.some((d, k) => k > 0 && info.shape[k] !== null && info.shape[k] !== d)))
        throw shapeMismatch(i.name, info.shape, i.shape);
    }
    // a model without a batch dimension takes the request whole, as one item
    const batched = hasBatchDimension(version.inputs);
    const ranked = inputs.filter((i) => i.shape.length > 0);
    const n = ranked.length && batched ? ranked[0].shape[0] : 1;
    if (batched && ranked.some((i) => i.shape[0] !== n)) throw bad('every input must have the same batch size (dimension 0)');
    if (!Number.isInteger(n) || n < 1) throw bad(`batch size (dimension 0) must be at least 1, got ${n}`);
    if (n > 1 && ranked.length !== inputs.length) throw bad('a batch of several items needs a batch dimension on every input');
    for (const i of inputs) {
      const dtype = i.dtype.toLowerCase() as keyof typeof bytesPerElement;
      const size = bytesPerElement[dtype];
      if (size === undefined || i.shape.some((d) => !Number.isInteger(d) || d < 0)) continue; // tensorFeeds says why
      const expected = elementCount(i.shape) * size;
      if (i.data.length !== expected)
        throw bad(`input ${i.name}: ${i.data.length} bytes of data for shape [${i.shape.join(',')}] ${i.dtype} (expected ${expected})`);
    }
    const items = Array.from({ length: n }, (_, k) =>
      tensorFeeds(
        name,
        version.inputs,
        inputs.map((i) => {
          if (n === 1) return i;
          const per = i.data.length / n;
          return { ...i, shape: [1, ...i.shape.slice(1)], data: i.data.subarray(k * per, (k + 1) * per) };
        }),
      ),
    );
    // one request, however many items: counted once when it is answered or has failed
    const request = new RequestTrace();
    let answered = false;
    try {
      checkAdmissible(name, version, n, client);
      const admissions: Admission[] = [];
      try {
        for (let k = 0; k < n; k++) admissions.push(version.admit(client));
      } catch (e) {
        for (const a of admissions) a.release();
        version.stats.recordError(e instanceof GatewayError ? e.code : ErrorCode.INFERENCE_FAILED, n); // QUEUE_FULL: each item
        throw e;
      }
      // every item is admitted before the first reaches the batcher, so the batcher waits for the rest of them
      const runs = admissions.map(async (admission, k) => {
        const t0 = performance.now();
        try {
          if (signal?.aborted) throw clientGone();
          const outputs = await admission.infer(items[k], signal, request);
          version.stats.recordItem((performance.now() - t0) * 1000);
          return outputs;
        } catch (e) {
          const err = n === 1 ? notComputable(name, e, version.inputs, items[k], inputs) : notComputable(name, e, version.inputs, items[k]);
          version.stats.recordError(err instanceof GatewayError ? err.code : ErrorCode.INFERENCE_FAILED);
          throw err;
        } finally {
          admission.release();
        }
      });
      const outputs = joinItems(await settleAll(runs), wanted);
      answered = true;
      return { model, version, outputs };
    } finally {
      version.stats.recordRequestEnd(request, answered);
    }
  }

  /**
   * Encoded images (JPEG, PNG, ...) through the model's own preprocessing (its model.json), whatever its task, and its
   * raw outputs back, joined along dimension 0 (as OpenVINO Model Server does with binary inputs). `inputName`, when
   * given, must be the model's image input. Fails as a whole when an image fails (after every image has settled).
   */
  async inferImages(
    name: string,
    versionNo: number | null | undefined,
    sources: readonly ImageSource[],
    opts: { inputName?: string | null; outputNames?: readonly string[] | null } & RunOptions = {},
  ): Promise<BatchResult> {
    const { model, version } = this.models.resolve(name, versionNo);
    const wanted = selectOutputs(name, version.outputs, opts.outputNames);
    let plan: InputPlan;
    try {
      plan = planFor(model, version).plan;
    } catch (e) {
      if (e instanceof GatewayError && e.code === ErrorCode.INVALID_MODEL_CONFIG)
        throw bad(`model ${name} does not take encoded images: ${e.message}`);
      throw e;
    }
    if (opts.inputName && opts.inputName !== plan.input)
      throw bad(
        `encoded images go to the image input of model ${name}, ${JSON.stringify(plan.input)}, not ${JSON.stringify(opts.inputName)}`,
      );
    if (sources.length === 0) throw bad('no images');
    // one request, counted once when it is answered (its outputs joined) or has failed
    const request = new RequestTrace();
    let answered = false;
    try {
      // the version checked above, not whichever is latest by the time the images run (a reload in between)
      // the request fails as a whole when one image fails: the others are not run (nor counted) once one has failed
      const runs = this.runImages(null, name, version.version, sources, { signal: opts.signal, client: opts.client }, true, request).map(
        async (r) => (await r).outputs,
      );
      const settled = await Promise.allSettled(runs);
      // the image that failed by itself (the others it stopped are marked NOT_RUN)
      const rejected = (r: PromiseSettledResult<Feeds>): r is PromiseRejectedResult => r.status === 'rejected';
      const own = settled.findIndex((r) => rejected(r) && !wasNotRun(r.reason));
      const k = own >= 0 ? own : settled.findIndex(rejected);
      if (k >= 0) {
        const e = (settled[k] as PromiseRejectedResult).reason as unknown;
        // one image of several fails the request: which one
        if (sources.length > 1 && isGatewayError(e) && IMAGE_ERRORS.has(e.code))
          throw new GatewayError(e.code, `the image at index ${k} of ${sources.length}: ${e.message}`, e.details, { cause: e });
        throw e;
      }
      const outputs = joinItems(
        settled.map((r) => (r as PromiseFulfilledResult<Feeds>).value),
        wanted,
      );
      answered = true;
      return { model, version, outputs };
    } finally {
      version.stats.recordRequestEnd(request, answered);
    }
  }

  /**
   * Several images of one request, run together: each is admitted at once (so the batcher knows they are coming),
   * then read, decoded and preprocessed in parallel; once every one is ready or has failed, the ready ones reach the
   * batcher in the same tick and share an engine call. One promise per image: a failing image fails alone. An unknown
   * model or a model of another task (when `task` is given) fails the call as a whole (it throws).
   *
   * `allOrNone`: the caller answers all the images or none (KServe): once one fails, the decodes of the others stop and
   * none of them is run; they reject with an error marked NOT_RUN, counted nowhere (the failing one is counted).
   *
   * The call is one request in the version's statistics (byRequest), answered when every image is, failed when any
   * image fails; `request`: the caller's instead, which the caller counts when it has answered (or failed) it.
   */
  runImages(
    task: Task | null,
    name: string,
    versionNo: number | null | undefined,
    sources: readonly ImageSource[],
    { signal, client, held }: RunOptions = {},
    allOrNone = false,
    request?: RequestTrace,
  ): Promise<ImageRun>[] {
    const { model, version } = this.models.resolve(name, versionNo);
    const config = version.config ?? model.config;
    if (task !== null && config.task !== task)
      throw bad(`model ${model.name} is a ${config.task} model, not ${task}: use ${RUNS_TASK[config.task]} for it`);
    const { plan, files } = planFor(model, version);
    // one request (the caller's, or this call's own, counted once its last image is answered or has failed)
    const trace = request ?? new RequestTrace();
    let left = sources.length;
    let failed = false;
    const itemSettled = (ok: boolean) => {
      failed ||= !ok;
      if (--left === 0 && !request) version.stats.recordRequestEnd(trace, !failed);
    };
    try {
      checkAdmissible(name, version, sources.length, client, held?.get(version) ?? 0);
    } catch (e) {
      if (!request) version.stats.recordRequestEnd(trace, false);
      throw e;
    }
    const limits = { maxPixels: this.limits.maxImagePixels, formats: this.limits.imageFormats, timeoutMs: this.limits.decodeTimeoutMs };
    // allOrNone: which image failed first by itself (not as its client went away), and the signal that stops the rest
    let failedAt = -1;
    const whole = allOrNone && sources.length > 1 ? new AbortController() : null;
    const decoding = whole ? (signal ? AbortSignal.any([signal, whole.signal]) : whole.signal) : signal;
    const stopOthers = (i: number) => {
      if (!whole || failedAt >= 0 || signal?.aborted) return;
      failedAt = i;
      whole.abort();
    };
    const items = sources.map((source, i) => {
      const t0 = performance.now();
      let admission: Admission;
      try {
        admission = version.admit(client);
      } catch (e) {
        stopOthers(i);
        return { t0, admission: null, prepared: Promise.reject(e) as Promise<never> };
      }
      held?.set(version, (held.get(version) ?? 0) + 1);
      const prepared = (async () => {
        if (decoding?.aborted) throw clientGone();
        const bytes = await source();
        // the header is read on a decoding thread too: for most formats it is libvips' metadata(), which can cost as
        // much as the decode (a GIF of a million frames is read whole), so it shares the threads, and the turns, with it
        return this.onDecodeThread(async () => {
          const image = await probeImage(bytes, limits);
          return { image, ...(await preprocess(image, plan, limits)) };
        }, decoding);
      })();
      // (attached before the wait for all below, so that it has run when that wait is over)
      if (whole) prepared.catch(() => stopOthers(i));
      return { t0, admission, prepared };
    });
    const allSettled = Promise.allSettled(items.map((i) => i.prepared));
    return items.map(async ({ t0, admission, prepared }, i) => {
      let ok = false;
      try {
        if (!admission) return await prepared; // rethrows the admission error
        await allSettled;
        if (failedAt >= 0 && failedAt !== i) throw notRun();
        const { image, tensor, transform, input } = await prepared;
        const outputs = await admission.infer({ [input]: tensor }, signal, trace);
        version.stats.recordItem((performance.now() - t0) * 1000);
        ok = true;
        return { model, version, files, image, transform, plan, outputs };
      } catch (e) {
        if (!wasNotRun(e)) version.stats.recordError(e instanceof GatewayError ? e.code : ErrorCode.INFERENCE_FAILED);
        throw e;
      } finally {
        itemSettled(ok);
        if (admission) {
          admission.release();
          const left = (held?.get(version) ?? 1) - 1;
          if (left > 0) held?.set(version, left);
          else held?.delete(version);
        }
      }
    });
  }
}

/**
 * A request of n items (a raw batch, or images) that could never be admitted in full, however long its client waited:
 * LIMIT_EXCEEDED, a mistake to correct, not QUEUE_FULL to retry for ever.
 */
function checkAdmissible(name: string, version: ModelVersion, n: number, client: string | undefined, already = 0): void {
  const queue = version.admissible(); // maxQueueSize
  const most = version.admissible(client);
  if (already + n <= most) return;
  const what = already > 0 ? `${n} more items of a request with ${already} already admitted for it` : `a batch of ${n} items`;
  const message =
    most < queue
      ? `${what} cannot be admitted: one client may have at most ${most} requests of model ${name} admitted at once (half of its maxQueueSize ${queue}, model.json batching.maxQueueSize); send at most ${most} items per request, or raise maxQueueSize`
      : `${what} cannot be admitted: model ${name} takes at most maxQueueSize ${queue} requests at once (model.json batching.maxQueueSize); send at most ${queue} items per request`;
  version.stats.recordError(ErrorCode.LIMIT_EXCEEDED, n);
  throw new GatewayError(ErrorCode.LIMIT_EXCEEDED, message);
}

/** The promise, or CANCELLED as soon as the signal fires. */
function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    const leave = () => reject(clientGone());
    if (signal.aborted) leave();
    else {
      // every image of one request waits on the request's signal at once (up to MAX_IMAGES_PER_REQUEST): not a leak,
      // each listener leaves with its wait; past 10 Node would print a warning (a non-JSON line) on stderr
      setMaxListeners(0, signal);
      signal.addEventListener('abort', leave, { once: true });
    }
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', leave));
  });
}

/** Errors of one image itself (its bytes, size or path), as opposed to the request's or the model's. */
const IMAGE_ERRORS: ReadonlySet<ErrorCode> = new Set([ErrorCode.INVALID_IMAGE, ErrorCode.IMAGE_TOO_LARGE, ErrorCode.FORBIDDEN_PATH]);

/** Wait for every item; then the first failure, if any, is the answer. */
async function settleAll<T>(runs: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(runs);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/**
 * A run that failed on raw tensors whose dynamic dimensions (beyond the batch) the client chose: the model cannot
 * compute that size (a zero-sized dimension, a convolution over no pixels; 33 where its layers need a multiple of 32; a
 * height that must equal the width). That is the client's input, INVALID_INPUT naming it, not the server's failure
 * (an identity model answers the same tensors, so they are not refused before the run); image requests, whose sizes
 * the gateway picks, keep INFERENCE_FAILED. `sent`: the tensors as the client sent them, for the message (default: the
 * item's).
 */
function notComputable(
  model: string,
  e: unknown,
  infos: readonly TensorInfo[],
  feeds: Feeds,
  sent: readonly { name: string; shape: readonly number[] }[] = [],
): unknown {
  // (an operator of the graph that failed, in ONNX Runtime's words; not an engine that died under it)
  if (!isGatewayError(e) || e.code !== ErrorCode.INFERENCE_FAILED || !/Non-zero status code returned while running/.test(e.message))
    return e;
  const reason = e.message.replace(/^inference failed: /, '');
  const empty = Object.entries(feeds).find(([, t]) => t.shape.includes(0));
  if (empty)
    return new GatewayError(
      ErrorCode.INVALID_INPUT,
      `input ${empty[0]} has a zero-sized dimension (shape [${empty[1].shape.join(', ')}]), which this model cannot compute: ${reason}`,
      undefined,
      { cause: e },
    );
  const chosen = infos.find((info) => feeds[info.name] && info.shape.some((d, k) => k > 0 && d === null));
  if (!chosen) return e;
  const shape = sent.find((t) => t.name === chosen.name)?.shape ?? feeds[chosen.name].shape;
  return new GatewayError(
    ErrorCode.INVALID_INPUT,
    `model ${model} cannot compute input ${chosen.name} of shape [${shape.join(',')}] (the model's is [${chosen.shape.map((d) => d ?? -1).join(',')}]): ${reason}; it may take only some sizes there (multiples of its stride, for example)`,
    undefined,
    { cause: e },
  );
}

/** Per-item outputs (batch dimension 1) joined along dimension 0; only the outputs wanted. */
function joinItems(items: Feeds[], wanted: readonly string[]): Record<string, Tensor> {
  const picked = items.map((o) => Object.fromEntries(wanted.map((n) => [n, o[n]])));
  for (const n of wanted) {
    // an output whose dimension 0 is not the item's batch of one (a transposed or reduced output) cannot be joined
    if (items.length > 1 && picked.some((o) => o[n].shape[0] !== 1))
      throw bad(
        `output ${n} has no batch on dimension 0 (shape [${picked[0][n].shape.join(',')}] for one item): send one item per request`,
      );
    const shape = picked[0][n].shape.slice(1).join('x');
    if (picked.some((o) => o[n].shape.slice(1).join('x') !== shape))
      throw bad(`output ${n} has a different shape for each item (images of different sizes?): send them one per request`);
  }
  return concatBatch(picked);
}
