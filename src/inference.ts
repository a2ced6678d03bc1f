import { ErrorCode, GatewayError } from './errors.ts';
import { DTYPES, bytesPerElement, elementCount, fromBytes, toBytes, type DType, type Session, type Tensor } from './engine/types.ts';
import type { Admission, Feeds } from './batching/batcher.ts';
import type { Model, ModelRepository } from './repository/repository.ts';
import type { ModelVersion } from './repository/version.ts';
import type { Task } from './repository/model-config.ts';
import { planInput, preprocess, probeImage, type DecodedImage, type ImageTransform, type InputPlan } from './vision/preprocess.ts';
import { classify, type Prediction } from './vision/classification.ts';
import { detect, type DetectedObject } from './vision/detection.ts';
import { toClassMap, type ClassMap } from './vision/segmentation.ts';

/**
 * The inference service: admit -> preprocess -> batched engine call -> postprocess. The GraphQL layer calls these;
 * they know nothing of GraphQL.
 */
export interface InferenceLimits {
  maxImagePixels: number;
}

const plans = new WeakMap<Session, InputPlan>();

function planFor(model: Model, version: ModelVersion): InputPlan {
  const session = version.session;
  if (!session) throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${model.name} version ${version.version} is ${version.state}`);
  let plan = plans.get(session);
  if (!plan) {
    plan = planInput(model.config, session.inputs, model.mean);
    plans.set(session, plan);
  }
  return plan;
}

/**
 * At load: an image task's preprocessing must fit the model's input (channels, data type, a target size where the
 * input's spatial size is dynamic, a mean file of the right size). Raw models take tensors as they are.
 */
export function checkImageInput(model: Model, session: Session): void {
  if (model.config.task !== 'raw') planInput(model.config, session.inputs, model.mean);
}

function checkTask(model: Model, task: Task): void {
  if (model.config.task !== task) {
    throw new GatewayError(ErrorCode.INVALID_INPUT, `model ${model.name} is a ${model.config.task} model, not ${task}`);
  }
}

/** Admission covers the whole request, preprocessing included, and is released when the answer is ready. */
async function admitted<T>(version: ModelVersion, fn: (infer: (feeds: Feeds) => Promise<Feeds>) => Promise<T>): Promise<T> {
  const admission = version.admit();
  const t0 = performance.now();
  try {
    const r = await fn(admission.infer);
    recordSuccess(version, t0);
    return r;
  } catch (e) {
    recordFailure(version, e);
    throw e;
  } finally {
    admission.release();
  }
}

function recordSuccess(version: ModelVersion, t0: number): void {
  version.stats.requests++;
  version.stats.requestTime.observe((performance.now() - t0) * 1000);
}

function recordFailure(version: ModelVersion, e: unknown): void {
  version.stats.recordError(e instanceof GatewayError ? e.code : ErrorCode.INFERENCE_FAILED);
}

/** Where an image's bytes come from: called once, after the image has been admitted. */
export type ImageSource = () => Promise<Uint8Array>;

interface ImageRun {
  model: Model;
  version: ModelVersion;
  image: DecodedImage;
  transform: ImageTransform;
  plan: InputPlan;
  outputs: Feeds;
}

/**
 * Several images of one request, run together: each is admitted at once (so the batcher knows they are coming), then
 * read, decoded and preprocessed in parallel; once every one is ready or has failed, the ready ones reach the batcher
 * in the same tick and share an engine call. One promise per image: a failing image fails alone. An unknown model or
 * a model of another task fails the call as a whole.
 */
function runImages(repo: ModelRepository, task: Task, name: string, versionNo: number | null | undefined, sources: readonly ImageSource[], limits: InferenceLimits): Promise<ImageRun>[] {
  const version = repo.resolve(name, versionNo);
  const model = repo.require(name);
  checkTask(model, task);
  const plan = planFor(model, version);
  const items = sources.map((source) => {
    const t0 = performance.now();
    let admission: Admission;
    try {
      admission = version.admit();
    } catch (e) {
      return { t0, admission: null, prepared: Promise.reject(e) as Promise<never> };
    }
    const prepared = (async () => {
      const image = await probeImage(await source(), limits.maxImagePixels);
      return { image, ...(await preprocess(image, plan, limits.maxImagePixels)) };
    })();
    return { t0, admission, prepared };
  });
  const allSettled = Promise.allSettled(items.map((i) => i.prepared));
  return items.map(async ({ t0, admission, prepared }) => {
    try {
      if (!admission) return await prepared; // rethrows the admission error
      await allSettled;
      const { image, tensor, transform } = await prepared;
      const outputs = await admission.infer({ [plan.input]: tensor });
      recordSuccess(version, t0);
      return { model, version, image, transform, plan, outputs };
    } catch (e) {
      recordFailure(version, e);
      throw e;
    } finally {
      admission?.release();
    }
  });
}

export interface ClassifyOptions { topK?: number | null; minConfidence?: number | null }

/** Classify images (one promise per image, see runImages). */
export function classifyImages(
  repo: ModelRepository, name: string, version: number | null | undefined, sources: readonly ImageSource[], limits: InferenceLimits,
  opts: ClassifyOptions = {},
): Promise<Prediction[]>[] {
  const topK = opts.topK ?? 5;
  const minConfidence = opts.minConfidence ?? 0;
  if (!Number.isInteger(topK) || topK < 1 || topK > 1000) throw new GatewayError(ErrorCode.INVALID_INPUT, 'topK must be 1..1000');
  return runImages(repo, 'classification', name, version, sources, limits).map(async (r) => {
    const run = await r;
    return classify(run.outputs, run.model.config.classification, run.model.labels, topK, minConfidence);
  });
}

export interface DetectionResult { image: DecodedImage; objects: DetectedObject[] }

export interface DetectOptions { minConfidence?: number | null; iouThreshold?: number | null; maxDetections?: number | null }

/** Detect objects in images (one promise per image, see runImages). */
export function detectObjects(
  repo: ModelRepository, name: string, version: number | null | undefined, sources: readonly ImageSource[], limits: InferenceLimits,
  opts: DetectOptions = {},
): Promise<DetectionResult>[] {
  const inRange = (v: number | null | undefined, what: string) => {
    if (v !== undefined && v !== null && !(v >= 0 && v <= 1)) throw new GatewayError(ErrorCode.INVALID_INPUT, `${what} must be 0..1`);
  };
  inRange(opts.minConfidence, 'minConfidence');
  inRange(opts.iouThreshold, 'iouThreshold');
  if (opts.maxDetections !== undefined && opts.maxDetections !== null && !(opts.maxDetections >= 1 && opts.maxDetections <= 10_000)) {
    throw new GatewayError(ErrorCode.INVALID_INPUT, 'maxDetections must be 1..10000');
  }
  return runImages(repo, 'detection', name, version, sources, limits).map(async (r) => {
    const run = await r;
    const cfg = run.model.config.detection;
    const objects = detect(run.outputs, cfg, run.transform, run.model.labels, {
      minConfidence: opts.minConfidence ?? cfg.minConfidence,
      iouThreshold: opts.iouThreshold ?? cfg.iouThreshold,
      maxDetections: opts.maxDetections ?? cfg.maxDetections,
    });
    return { image: run.image, objects };
  });
}

export interface SegmentationRun { image: DecodedImage; transform: ImageTransform; map: ClassMap; model: Model }

/** Segment images (one promise per image, see runImages). */
export function segmentImages(
  repo: ModelRepository, name: string, version: number | null | undefined, sources: readonly ImageSource[], limits: InferenceLimits,
): Promise<SegmentationRun>[] {
  return runImages(repo, 'segmentation', name, version, sources, limits).map(async (r) => {
    const run = await r;
    return { image: run.image, transform: run.transform, map: toClassMap(run.outputs, run.model.config.segmentation, run.plan.layout), model: run.model };
  });
}

export interface TensorInputArg { name: string; dtype: string; shape: readonly number[]; data: string }
export interface TensorOutput { name: string; dtype: DType; shape: number[]; data: string }

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/** Raw tensors in, raw tensors out: validated against the model's inputs, then batched like images. */
export async function inferTensors(
  repo: ModelRepository, name: string, versionNo: number | null | undefined, inputs: readonly TensorInputArg[], outputNames?: readonly string[] | null,
): Promise<TensorOutput[]> {
  const version = repo.resolve(name, versionNo);
  const session = version.session!;
  const feeds: Record<string, Tensor> = {};
  const bad = (msg: string) => new GatewayError(ErrorCode.INVALID_INPUT, msg);
  for (const input of inputs) {
    const info = session.inputs.find((i) => i.name === input.name);
    if (!info) throw bad(`model ${name} has no input ${JSON.stringify(input.name)} (inputs: ${session.inputs.map((i) => i.name).join(', ')})`);
    if (feeds[input.name]) throw bad(`input ${input.name} given twice`);
    const dtype = input.dtype.toLowerCase() as DType;
    if (!DTYPES.includes(dtype)) throw bad(`dtype ${input.dtype} is not one of ${DTYPES.map((d) => d.toUpperCase()).join(', ')}`);
    if (dtype !== info.dtype) throw bad(`input ${input.name} is ${info.dtype.toUpperCase()}, got ${input.dtype}`);
    const shape = [...input.shape];
    if (shape.length !== info.shape.length || shape.some((d, i) => !Number.isInteger(d) || d < 0 || (info.shape[i] !== null && info.shape[i] !== d))) {
      throw bad(`input ${input.name} has shape [${info.shape.map((d) => d ?? -1).join(',')}], got [${shape.join(',')}]`);
    }
    if (shape[0] !== 1 && shape.length > 0) throw bad(`input ${input.name}: send one item (batch dimension 1) per tensor; the gateway batches requests itself`);
    const expected = elementCount(shape) * bytesPerElement[dtype];
    if (expected > 256 * 1024 * 1024) throw bad(`input ${input.name} would be ${expected} bytes`);
    if (!BASE64_RE.test(input.data) || input.data.length % 4 === 1) throw bad(`input ${input.name}: data is not base64`);
    const bytes = Buffer.from(input.data, 'base64');
    if (bytes.length !== expected) throw bad(`input ${input.name}: ${bytes.length} bytes of data for shape [${shape.join(',')}] ${dtype.toUpperCase()} (expected ${expected})`);
    feeds[input.name] = { dtype, shape, data: fromBytes(dtype, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)) };
  }
  for (const info of session.inputs) if (!feeds[info.name]) throw bad(`input ${info.name} is missing`);
  const known = session.outputs.map((o) => o.name);
  for (const o of outputNames ?? []) if (!known.includes(o)) throw bad(`model ${name} has no output ${JSON.stringify(o)} (outputs: ${known.join(', ')})`);
  const outputs = await admitted(version, (infer) => infer(feeds));
  const wanted = outputNames?.length ? outputNames : known;
  return wanted.map((n) => {
    const t = outputs[n];
    return { name: n, dtype: t.dtype, shape: t.shape, data: Buffer.from(toBytes(t.data)).toString('base64') };
  });
}
