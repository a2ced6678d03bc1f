import { ErrorCode, GatewayError } from '../errors.ts';
import type { Tensor } from '../engine/types.ts';
import type { Feeds } from '../batching/batcher.ts';
import { postprocessingOf, type Task } from '../repository/model-config.ts';
import type { Model, ModelFiles } from '../repository/model.ts';
import type { ModelManager } from '../repository/manager.ts';
import type { Admission, ModelVersion } from '../repository/version.ts';
import { preprocess, probeImage, type DecodedImage, type ImageTransform, type InputPlan } from '../vision/preprocess.ts';
import { planFor } from './plans.ts';
import { classify, type Prediction } from '../vision/classification.ts';
import { detect, type DetectedObject } from '../vision/detection.ts';
import { toClassMap, type ClassMap } from '../vision/segmentation.ts';
import type { ImageSource } from './images.ts';
import { selectOutputs, tensorFeeds, type TensorInput } from './tensors.ts';

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
}

/** A request's own: it stops the work not yet started when the client has gone away. */
export interface RunOptions {
  signal?: AbortSignal;
}

const cancelled = () => new GatewayError(ErrorCode.CANCELLED, 'the client went away');

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

const bad = (msg: string) => new GatewayError(ErrorCode.INVALID_INPUT, msg);

export class InferenceService {
  constructor(
    readonly models: ModelManager,
    readonly limits: InferenceLimits,
  ) {}

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
    return this.runImages('classification', name, version, sources, opts).map(async (r) => {
      const run = await r;
      return classify(run.outputs, postprocessingOf(run.files.config, 'classification'), run.files.labels, topK, minConfidence);
    });
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
      const objects = detect(run.outputs, cfg, run.transform, run.files.labels, {
        minConfidence: opts.minConfidence ?? cfg.minConfidence,
        iouThreshold: opts.iouThreshold ?? cfg.iouThreshold,
        maxDetections: opts.maxDetections ?? cfg.maxDetections,
      });
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
      return {
        image: run.image,
        transform: run.transform,
        map: toClassMap(run.outputs, postprocessingOf(run.files.config, 'segmentation'), run.plan.layout),
        labels: run.files.labels,
      };
    });
  }

  /** Raw tensors in, raw tensors out (only the outputs asked for; all when none are named), batched like images. */
  async infer(
    name: string,
    versionNo: number | null | undefined,
    inputs: readonly TensorInput[],
    outputNames?: readonly string[] | null,
    { signal }: RunOptions = {},
  ): Promise<Record<string, Tensor>> {
    const { version } = this.models.resolve(name, versionNo);
    const feeds = tensorFeeds(name, version.inputs, inputs);
    const wanted = selectOutputs(name, version.outputs, outputNames);
    const admission = version.admit();
    const t0 = performance.now();
    try {
      if (signal?.aborted) throw cancelled();
      const outputs = await admission.infer(feeds, signal);
      version.stats.recordRequest((performance.now() - t0) * 1000);
      return Object.fromEntries(wanted.map((n) => [n, outputs[n]]));
    } catch (e) {
      version.stats.recordError(e instanceof GatewayError ? e.code : ErrorCode.INFERENCE_FAILED);
      throw e;
    } finally {
      admission.release();
    }
  }

  /**
   * Several images of one request, run together: each is admitted at once (so the batcher knows they are coming),
   * then read, decoded and preprocessed in parallel; once every one is ready or has failed, the ready ones reach the
   * batcher in the same tick and share an engine call. One promise per image: a failing image fails alone. An unknown
   * model or a model of another task fails the call as a whole (it throws).
   */
  runImages(
    task: Task,
    name: string,
    versionNo: number | null | undefined,
    sources: readonly ImageSource[],
    { signal }: RunOptions = {},
  ): Promise<ImageRun>[] {
    const { model, version } = this.models.resolve(name, versionNo);
    const config = version.config ?? model.config;
    if (config.task !== task) throw bad(`model ${model.name} is a ${config.task} model, not ${task}`);
    const { plan, files } = planFor(model, version);
    const limits = { maxPixels: this.limits.maxImagePixels, formats: this.limits.imageFormats, timeoutMs: this.limits.decodeTimeoutMs };
    const items = sources.map((source) => {
      const t0 = performance.now();
      let admission: Admission;
      try {
        admission = version.admit();
      } catch (e) {
        return { t0, admission: null, prepared: Promise.reject(e) as Promise<never> };
      }
      const prepared = (async () => {
        if (signal?.aborted) throw cancelled();
        const image = await probeImage(await source(), limits);
        return { image, ...(await preprocess(image, plan, limits)) };
      })();
      return { t0, admission, prepared };
    });
    const allSettled = Promise.allSettled(items.map((i) => i.prepared));
    return items.map(async ({ t0, admission, prepared }) => {
      try {
        if (!admission) return await prepared; // rethrows the admission error
        await allSettled;
        const { image, tensor, transform, input } = await prepared;
        const outputs = await admission.infer({ [input]: tensor }, signal);
        version.stats.recordRequest((performance.now() - t0) * 1000);
        return { model, version, files, image, transform, plan, outputs };
      } catch (e) {
        version.stats.recordError(e instanceof GatewayError ? e.code : ErrorCode.INFERENCE_FAILED);
        throw e;
      } finally {
        admission?.release();
      }
    });
  }
}
