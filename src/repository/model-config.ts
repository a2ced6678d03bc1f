import { ErrorCode, GatewayError } from '../errors.ts';

/**
 * model.json: everything the gateway needs to serve a model without code. Parsed and validated here; every error
 * names the field (`INVALID_MODEL_CONFIG: preprocessing.mean: expected 3 numbers`).
 */
export type Task = 'classification' | 'detection' | 'segmentation' | 'raw';
export type ResizeType = 'SQUASH' | 'CROP' | 'FILL' | 'NETWORK';
export type Activation = 'softmax' | 'sigmoid' | 'none';

export type VersionPolicy = { latest: number } | { all: true } | { specific: number[] };

export interface BatchingConfig {
  maxBatchSize: number;
  maxDelayMs: number;
  maxQueueSize: number;
  /** Engine calls that may run at once for one version. */
  maxConcurrentBatches: number;
  /** How long a request may wait for its batch to start; 0 = no deadline. */
  timeoutMs: number;
}

export interface PreprocessingConfig {
  input?: string;
  dimensionOrder?: 'NCHW' | 'NHWC';
  targetSize?: { width: number; height: number };
  resizeType: ResizeType;
  fillColor: [number, number, number];
  fillAlign: 'center' | 'topLeft';
  /** CROP: fraction of the shorter side kept by the center crop (0.875 = resize 256, crop 224). */
  cropFraction: number;
  /** NETWORK: each side becomes a multiple of this, plus sizeOffset (bodypix wants 16k+1). */
  sizeMultiple: number;
  sizeOffset: number;
  colorChannels: 'RGB' | 'BGR' | 'L';
  pixelScaling: number;
  mean?: number[];
  meanFile?: string;
  std?: number[];
  dataType?: 'FLOAT32' | 'FLOAT16' | 'UINT8';
}

export type DetectionFormat = 'boxes_scores' | 'ssd' | 'tf' | 'yolox' | 'anchors';

export interface AnchorLayer {
  scores: string;
  boxes: string;
  grid: number;
  anchorsPerCell: number;
}

export interface DetectionConfig {
  format: DetectionFormat;
  minConfidence: number;
  iouThreshold: number;
  maxDetections: number;
  /** boxes_scores */
  boxes?: string;
  scores?: string;
  backgroundClass?: number;
  /** ssd / yolox: the single output */
  output?: string;
  /** tf */
  classes?: string;
  numDetections?: string;
  /** tf label maps are 1-based: class id = value - labelOffset */
  labelOffset: number;
  /** yolox */
  strides: number[];
  /** yolox / anchors: activation of raw scores */
  activation: Activation;
  /** anchors */
  layers?: AnchorLayer[];
  boxScale?: number;
}

export interface ClassificationConfig {
  output?: string;
  activation: Activation;
}
export interface SegmentationConfig {
  output?: string;
  activation: Activation;
  threshold: number;
  layout?: 'NCHW' | 'NHWC';
}

export interface ModelConfig {
  task: Task;
  description: string;
  metadata: Record<string, unknown>;
  labels?: string | string[] | Record<string, string>;
  versionPolicy: VersionPolicy;
  batching: BatchingConfig;
  preprocessing: PreprocessingConfig;
  classification: ClassificationConfig;
  detection: DetectionConfig;
  segmentation: SegmentationConfig;
}

export const TASKS: readonly Task[] = ['classification', 'detection', 'segmentation', 'raw'];

export const defaultBatching: BatchingConfig = {
  maxBatchSize: 16,
  maxDelayMs: 2,
  maxQueueSize: 256,
  maxConcurrentBatches: 1,
  timeoutMs: 30_000,
};

class Reader {
  constructor(private readonly source: string) {}
  fail(field: string, message: string): never {
    throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${this.source}: ${field}: ${message}`, { field });
  }
  object(v: unknown, field: string): Record<string, unknown> {
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(field, 'expected an object');
    return v as Record<string, unknown>;
  }
  string(v: unknown, field: string): string | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') this.fail(field, 'expected a string');
    return v;
  }
  oneOf<T extends string>(v: unknown, field: string, values: readonly T[], fallback: T): T;
  oneOf<T extends string>(v: unknown, field: string, values: readonly T[]): T | undefined;
  oneOf<T extends string>(v: unknown, field: string, values: readonly T[], fallback?: T): T | undefined {
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string' || !values.includes(v as T))
      this.fail(field, `expected one of ${values.join(', ')}, got ${JSON.stringify(v)}`);
    return v as T;
  }
  number(v: unknown, field: string, fallback: number, opts: { min?: number; max?: number; integer?: boolean } = {}): number {
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `expected a number, got ${JSON.stringify(v)}`);
    if (opts.integer && !Number.isInteger(v)) this.fail(field, `expected an integer, got ${v}`);
    if (opts.min !== undefined && v < opts.min) this.fail(field, `must be >= ${opts.min}, got ${v}`);
    if (opts.max !== undefined && v > opts.max) this.fail(field, `must be <= ${opts.max}, got ${v}`);
    return v;
  }
  numbers(v: unknown, field: string, length?: number): number[] | undefined {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) this.fail(field, 'expected an array of numbers');
    if (length !== undefined && v.length !== length) this.fail(field, `expected ${length} numbers, got ${v.length}`);
    return v as number[];
  }
  size(v: unknown, field: string): { width: number; height: number } | undefined {
    if (v === undefined || v === null) return undefined;
    const m = typeof v === 'string' ? /^(\d{1,5})x(\d{1,5})$/.exec(v) : null;
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) this.fail(field, `expected "WxH" such as "224x224", got ${JSON.stringify(v)}`);
    return { width: Number(m[1]), height: Number(m[2]) };
  }
}

const versionOf = (r: Reader, v: unknown, field: string): number => r.number(v, field, 1, { min: 1, integer: true });

function parseVersionPolicy(r: Reader, v: unknown): VersionPolicy {
  const o = r.object(v, 'versionPolicy');
  const keys = Object.keys(o);
  if (keys.length === 0) return { latest: 1 };
  if (keys.length > 1) r.fail('versionPolicy', `expected exactly one of latest, all, specific; got ${keys.join(', ')}`);
  if ('latest' in o) return { latest: r.number(o.latest, 'versionPolicy.latest', 1, { min: 1, integer: true }) };
  if ('all' in o) {
    if (o.all !== true) r.fail('versionPolicy.all', 'expected true');
    return { all: true };
  }
  if ('specific' in o) {
    if (!Array.isArray(o.specific) || o.specific.length === 0) r.fail('versionPolicy.specific', 'expected a non-empty array of versions');
    return { specific: o.specific.map((x, i) => versionOf(r, x, `versionPolicy.specific[${i}]`)) };
  }
  return r.fail('versionPolicy', `unknown policy ${keys[0]}; expected latest, all or specific`);
}

function parseLabels(r: Reader, v: unknown): ModelConfig['labels'] {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') {
    if (!/^[\w.-]+$/.test(v) || v.startsWith('.')) r.fail('labels', 'a labels file must be a plain file name beside model.json');
    return v;
  }
  if (Array.isArray(v)) {
    if (v.some((x) => typeof x !== 'string')) r.fail('labels', 'expected an array of strings');
    return v as string[];
  }
  const o = r.object(v, 'labels');
  for (const [k, name] of Object.entries(o)) {
    if (!/^\d+$/.test(k) || typeof name !== 'string') r.fail(`labels.${k}`, 'expected class id -> name');
  }
  return o as Record<string, string>;
}

export function parseModelConfig(raw: unknown, source = 'model.json'): ModelConfig {
  const r: Reader = new Reader(source);
  const o = r.object(raw, '(root)');
  const known = ['task', 'description', 'metadata', 'labels', 'versionPolicy', 'batching', 'preprocessing', 'postprocessing'];
  for (const k of Object.keys(o)) if (!known.includes(k)) r.fail(k, `unknown field; expected one of ${known.join(', ')}`);

  const task = r.oneOf(o.task, 'task', TASKS, 'raw');
  const b = r.object(o.batching, 'batching');
  const batching: BatchingConfig = {
    maxBatchSize: r.number(b.maxBatchSize, 'batching.maxBatchSize', defaultBatching.maxBatchSize, { min: 1, max: 1024, integer: true }),
    maxDelayMs: r.number(b.maxDelayMs, 'batching.maxDelayMs', defaultBatching.maxDelayMs, { min: 0, max: 10_000 }),
    maxQueueSize: r.number(b.maxQueueSize, 'batching.maxQueueSize', defaultBatching.maxQueueSize, {
      min: 1,
      max: 1_000_000,
      integer: true,
    }),
    maxConcurrentBatches: r.number(b.maxConcurrentBatches, 'batching.maxConcurrentBatches', 1, { min: 1, max: 64, integer: true }),
    timeoutMs: r.number(b.timeoutMs, 'batching.timeoutMs', defaultBatching.timeoutMs, { min: 0, max: 3_600_000 }),
  };

  const p = r.object(o.preprocessing, 'preprocessing');
  const colorChannels = r.oneOf(p.colorChannels, 'preprocessing.colorChannels', ['RGB', 'BGR', 'L'] as const, 'RGB');
  const channels = colorChannels === 'L' ? 1 : 3;
  const mean = p.mean === undefined ? undefined : r.numbers(p.mean, 'preprocessing.mean', channels);
  const meanFile = r.string(p.meanFile, 'preprocessing.meanFile');
  if (mean && meanFile) r.fail('preprocessing.meanFile', 'give mean or meanFile, not both');
  if (meanFile !== undefined && (!/^[\w.-]+\.npy$/.test(meanFile) || meanFile.startsWith('.')))
    r.fail('preprocessing.meanFile', 'expected a .npy file name beside model.json');
  const std = r.numbers(p.std, 'preprocessing.std', channels);
  if (std?.some((s) => s === 0)) r.fail('preprocessing.std', 'must not contain 0');
  const fill = r.numbers(p.fillColor, 'preprocessing.fillColor', 3) ?? [0, 0, 0];
  if (fill.some((c) => c < 0 || c > 255)) r.fail('preprocessing.fillColor', 'expected 0..255');
  const preprocessing: PreprocessingConfig = {
    input: r.string(p.input, 'preprocessing.input'),
    dimensionOrder: r.oneOf(p.dimensionOrder, 'preprocessing.dimensionOrder', ['NCHW', 'NHWC'] as const),
    targetSize: r.size(p.targetSize, 'preprocessing.targetSize'),
    resizeType: r.oneOf(p.resizeType, 'preprocessing.resizeType', ['SQUASH', 'CROP', 'FILL', 'NETWORK'] as const, 'SQUASH'),
    fillColor: fill as [number, number, number],
    fillAlign: r.oneOf(p.fillAlign, 'preprocessing.fillAlign', ['center', 'topLeft'] as const, 'center'),
    cropFraction: r.number(p.cropFraction, 'preprocessing.cropFraction', 1, { min: 0.05, max: 1 }),
    sizeMultiple: r.number(p.sizeMultiple, 'preprocessing.sizeMultiple', 1, { min: 1, max: 1024, integer: true }),
    sizeOffset: r.number(p.sizeOffset, 'preprocessing.sizeOffset', 0, { min: 0, max: 1024, integer: true }),
    colorChannels,
    pixelScaling: r.number(p.pixelScaling, 'preprocessing.pixelScaling', 255, { min: 1e-6 }),
    mean,
    meanFile,
    std,
    dataType: r.oneOf(p.dataType, 'preprocessing.dataType', ['FLOAT32', 'FLOAT16', 'UINT8'] as const),
  };
  for (const k of Object.keys(p)) if (!(k in preprocessing)) r.fail(`preprocessing.${k}`, 'unknown field');

  const post = r.object(o.postprocessing, 'postprocessing');
  const activations = ['softmax', 'sigmoid', 'none'] as const;
  const classification: ClassificationConfig = {
    output: r.string(post.output, 'postprocessing.output'),
    activation: r.oneOf(post.activation, 'postprocessing.activation', activations, 'softmax'),
  };
  const segmentation: SegmentationConfig = {
    output: r.string(post.output, 'postprocessing.output'),
    activation: r.oneOf(post.activation, 'postprocessing.activation', activations, 'none'),
    threshold: r.number(post.threshold, 'postprocessing.threshold', 0.5),
    layout: r.oneOf(post.layout, 'postprocessing.layout', ['NCHW', 'NHWC'] as const),
  };
  const formats = ['boxes_scores', 'ssd', 'tf', 'yolox', 'anchors'] as const;
  const detection: DetectionConfig = {
    format: r.oneOf(post.format, 'postprocessing.format', formats, 'boxes_scores'),
    minConfidence: r.number(post.minConfidence, 'postprocessing.minConfidence', 0.5, { min: 0, max: 1 }),
    iouThreshold: r.number(post.iouThreshold, 'postprocessing.iouThreshold', 0.45, { min: 0, max: 1 }),
    maxDetections: r.number(post.maxDetections, 'postprocessing.maxDetections', 100, { min: 1, max: 10_000, integer: true }),
    boxes: r.string(post.boxes, 'postprocessing.boxes'),
    scores: r.string(post.scores, 'postprocessing.scores'),
    backgroundClass:
      post.backgroundClass === undefined
        ? undefined
        : r.number(post.backgroundClass, 'postprocessing.backgroundClass', 0, { min: 0, integer: true }),
    output: r.string(post.output, 'postprocessing.output'),
    classes: r.string(post.classes, 'postprocessing.classes'),
    numDetections: r.string(post.numDetections, 'postprocessing.numDetections'),
    labelOffset: r.number(post.labelOffset, 'postprocessing.labelOffset', 0, { integer: true }),
    strides: r.numbers(post.strides, 'postprocessing.strides') ?? [8, 16, 32],
    activation: r.oneOf(
      post.activation,
      'postprocessing.activation',
      activations,
      task === 'detection' && post.format === 'anchors' ? 'sigmoid' : 'none',
    ),
    boxScale: post.boxScale === undefined ? undefined : r.number(post.boxScale, 'postprocessing.boxScale', 1, { min: 1e-6 }),
  };
  if (detection.strides.some((s) => !Number.isInteger(s) || s < 1)) r.fail('postprocessing.strides', 'expected positive integers');
  if (post.layers !== undefined) {
    if (!Array.isArray(post.layers) || post.layers.length === 0) r.fail('postprocessing.layers', 'expected a non-empty array');
    detection.layers = post.layers.map((l, i) => {
      const f = `postprocessing.layers[${i}]`;
      const lo = r.object(l, f);
      const scores = r.string(lo.scores, `${f}.scores`);
      const boxes = r.string(lo.boxes, `${f}.boxes`);
      if (!scores || !boxes) r.fail(f, 'needs scores and boxes output names');
      return {
        scores,
        boxes,
        grid: r.number(lo.grid, `${f}.grid`, 0, { min: 1, integer: true }),
        anchorsPerCell: r.number(lo.anchorsPerCell, `${f}.anchorsPerCell`, 1, { min: 1, integer: true }),
      };
    });
  }
  if (task === 'detection') {
    if (detection.format === 'anchors' && !detection.layers) r.fail('postprocessing.layers', 'the anchors format needs layers');
    if (detection.format === 'boxes_scores' && !detection.boxes !== !detection.scores)
      r.fail('postprocessing.boxes', 'give both boxes and scores output names, or neither');
  }
  if (task === 'segmentation' && post.threshold !== undefined && (segmentation.threshold < 0 || segmentation.threshold > 1))
    r.fail('postprocessing.threshold', 'expected 0..1');

  const description = r.string(o.description, 'description') ?? '';
  const metadata = r.object(o.metadata, 'metadata');
  return {
    task,
    description,
    metadata,
    labels: parseLabels(r, o.labels),
    versionPolicy: parseVersionPolicy(r, o.versionPolicy),
    batching,
    preprocessing,
    classification,
    detection,
    segmentation,
  };
}

/** Parse model.json text; bad JSON is an INVALID_MODEL_CONFIG error too. */
export function parseModelConfigText(text: string, source = 'model.json'): ModelConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${source}: not valid JSON (${(e as Error).message})`);
  }
  return parseModelConfig(raw, source);
}
