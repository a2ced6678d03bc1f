/**
 * Accuracy and speed of a classification model over a labelled folder in the ImageFolder layout (`DIR/<label>/*.jpg`,
 * as torchvision reads it), through the gateway: what OpenVINO Model Server's and Triton's example clients print.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileError, GatewayClientError, type GatewayClient } from './client.ts';

const IMAGE_EXTENSIONS = /\.(jpe?g|png|webp|gif|bmp|tiff?|avif)$/i;

export interface LabelledImage {
  file: string;
  /** The folder name. */
  folder: string;
  classId: number;
}

export interface ClassReport {
  folder: string;
  classId: number;
  label: string;
  images: number;
  top1: number;
  top5: number;
}

export interface EvalReport {
  model: string;
  dir: string;
  images: number;
  /** Images answered (the others failed: see errors). */
  answered: number;
  /** Fractions of all images (a failed image counts as wrong). */
  top1: number;
  top5: number;
  top1Correct: number;
  top5Correct: number;
  concurrency: number;
  seconds: number;
  /** Images answered per second (failures are not counted). */
  imagesPerSecond: number;
  /** Round-trip time per request answered as the client sees it, in milliseconds; null when none was answered. */
  latencyMs: { mean: number; p50: number; p90: number; p95: number; p99: number; max: number } | null;
  errors: { code: string; count: number; example: string }[];
  classes: ClassReport[];
}

const normalize = (s: string) =>
  s
    .toLowerCase()
    .replace(/[_\-\s]+/g, ' ')
    .trim();

/**
 * The class a folder name stands for: a class id ("340"), a whole label ("tiger cat", "tiger_cat"), or one of the
 * comma-separated names of a label ("zebra"; "great_white_shark" for "great white shark, white shark, ..."). A name
 * two classes share (ImageNet has two "crane"s) is refused: name the folder by class id instead.
 */
export function matchLabel(folder: string, labels: readonly string[]): number {
  if (/^\d+$/.test(folder)) {
    const id = Number(folder);
    if (id < labels.length) return id;
    throw new GatewayClientError('UNKNOWN_LABEL', `folder ${folder}: the model has no class ${id} (it has ${labels.length})`);
  }
  const want = normalize(folder);
  const whole = labels.flatMap((l, i) => (normalize(l) === want ? [i] : []));
  const byName = whole.length ? whole : labels.flatMap((l, i) => (l.split(',').some((n) => normalize(n) === want) ? [i] : []));
  if (byName.length === 1) return byName[0];
  if (byName.length > 1)
    throw new GatewayClientError(
      'AMBIGUOUS_LABEL',
      `folder ${folder} matches classes ${byName.join(', ')} (${byName.map((i) => JSON.stringify(labels[i])).join(', ')}): name it by class id`,
    );
  throw new GatewayClientError('UNKNOWN_LABEL', `folder ${folder} matches none of the model's ${labels.length} labels`);
}

/** Every image of DIR/<label>/, with the class its folder stands for. Unmatched folders fail, naming all of them. */
export async function scanImageFolder(dir: string, labels: readonly string[]): Promise<LabelledImage[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    const words = {
      ENOENT: 'no such folder',
      ENOTDIR: 'not a folder: --dir takes a folder of <label>/ folders',
      EACCES: 'permission denied',
      EPERM: 'permission denied',
    };
    throw new GatewayClientError('UNREADABLE_FILE', `cannot read ${dir}: ${fileError(e, words)}`);
  }
  const folders = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name);
  const problems: string[] = [];
  const images: LabelledImage[] = [];
  for (const folder of folders.sort()) {
    let classId: number;
    try {
      classId = matchLabel(folder, labels);
    } catch (e) {
      problems.push((e as Error).message);
      continue;
    }
    const files = (await readdir(path.join(dir, folder), { withFileTypes: true }))
      .filter((f) => f.isFile() && IMAGE_EXTENSIONS.test(f.name))
      .map((f) => f.name)
      .sort();
    for (const f of files) images.push({ file: path.join(dir, folder, f), folder, classId });
  }
  if (problems.length) throw new GatewayClientError('UNKNOWN_LABEL', problems.join('\n'));
  if (!images.length) throw new GatewayClientError('NO_IMAGES', `no images in ${dir}/<label>/ (expected the ImageFolder layout)`);
  return images;
}

/** Nearest-rank percentile of ascending values. */
export function percentile(sorted: readonly number[], p: number): number {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export interface EvalOptions {
  model: string;
  dir: string;
  /** Requests in flight at once. */
  concurrency?: number;
  /** Stop after this many images (taken in folder order). */
  limit?: number;
  version?: number | null;
  /** Called after each image. */
  onProgress?: (done: number, total: number, top1Correct: number) => void;
}

export async function evaluate(
  client: GatewayClient,
  { model, dir, concurrency = 4, limit = Infinity, version = null, onProgress = () => {} }: EvalOptions,
): Promise<EvalReport> {
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new GatewayClientError('INVALID_ARGUMENT', 'concurrency must be a positive integer');
  const info = await client.model(model);
  if (!info) throw new GatewayClientError('MODEL_NOT_FOUND', `the gateway has no model ${model}`);
  if (info.task !== 'classification')
    throw new GatewayClientError('INVALID_INPUT', `${model} is a ${info.task} model; eval needs classification`);
  if (!info.labels?.length) throw new GatewayClientError('UNKNOWN_LABEL', `${model} has no labels to match folder names against`);
  const labels = info.labels;
  const images = (await scanImageFolder(dir, labels)).slice(0, limit);

  const latencies: number[] = [];
  const errors = new Map<string, { count: number; example: string }>();
  const classes = new Map<string, ClassReport>();
  for (const img of images) {
    const c = classes.get(img.folder) ?? {
      folder: img.folder,
      classId: img.classId,
      label: labels[img.classId],
      images: 0,
      top1: 0,
      top5: 0,
    };
    c.images++;
    classes.set(img.folder, c);
  }
  let next = 0;
  let done = 0;
  let top1 = 0;
  let top5 = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < images.length) {
      const img = images[next++];
      const c = classes.get(img.folder)!;
      const start = performance.now();
      try {
        const { predictions } = await client.classify(model, img.file, { topK: 5, minConfidence: 0, version });
        latencies.push(performance.now() - start);
        const ids = predictions.map((p) => p.classId);
        if (ids[0] === img.classId) {
          top1++;
          c.top1++;
        }
        if (ids.slice(0, 5).includes(img.classId)) {
          top5++;
          c.top5++;
        }
      } catch (e) {
        const code = e instanceof GatewayClientError ? e.code : 'CLIENT_ERROR';
        const seen = errors.get(code) ?? { count: 0, example: `${img.file}: ${(e as Error).message}` };
        seen.count++;
        errors.set(code, seen);
        if (code === 'UNREACHABLE') throw e;
      }
      onProgress(++done, images.length, top1);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, images.length) }, worker));
  const seconds = (performance.now() - t0) / 1000;

  const sorted = [...latencies].sort((a, b) => a - b);
  const round = (x: number) => Math.round(x * 100) / 100;
  return {
    model,
    dir,
    images: images.length,
    answered: latencies.length,
    top1: top1 / images.length,
    top5: top5 / images.length,
    top1Correct: top1,
    top5Correct: top5,
    concurrency,
    seconds: round(seconds),
    imagesPerSecond: round(latencies.length / seconds),
    latencyMs:
      (sorted.length && {
        mean: round(sorted.reduce((a, b) => a + b, 0) / sorted.length),
        p50: round(percentile(sorted, 50)),
        p90: round(percentile(sorted, 90)),
        p95: round(percentile(sorted, 95)),
        p99: round(percentile(sorted, 99)),
        max: round(sorted.at(-1)!),
      }) ||
      null,
    errors: [...errors].map(([code, e]) => ({ code, ...e })),
    classes: [...classes.values()],
  };
}
