import sharp from 'sharp';
import { toFloat32, type Session, type Tensor } from '../engine/types.ts';
import { ErrorCode, GatewayError, errorMessage, isGatewayError } from '../errors.ts';
import { parseModelConfig, postprocessingOf } from '../repository/model-config.ts';
import type { ModelFiles } from '../repository/model.ts';
import { largestId } from '../repository/labels.ts';
import { classify } from '../vision/classification.ts';
import { detect } from '../vision/detection.ts';
import { planInput, preprocess, probeImage, type InputPlan } from '../vision/preprocess.ts';
import { prepareImageInput } from './plans.ts';
import { toClassMap } from '../vision/segmentation.ts';

/**
 * The load-time check of an image model (TensorFlow Serving's warm-up, made mandatory): before a version is
 * AVAILABLE, one synthetic image goes through the whole path (preprocess, engine, postprocess), so what would fail
 * every request fails the load instead, with INVALID_MODEL_CONFIG naming the field. It also warms the session up.
 * Raw models take tensors as they are: only a preprocessing written out for them is checked, against the input.
 * Returns warnings for settings that look inconsistent but cannot be proven wrong.
 */
let synthetic: Promise<Buffer> | null = null;

/** A 96x64 colour gradient: every channel varies, so no decoder sees a degenerate input. */
function syntheticImage(): Promise<Buffer> {
  synthetic ??= (() => {
    const w = 96;
    const h = 64;
    const px = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) px.set([(x * 255) / w, (y * 255) / h, ((x + y) * 255) / (w + h)], (y * w + x) * 3);
    return sharp(px, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toBuffer();
  })();
  return synthetic;
}

/** The preprocessing of a model.json that gives none, as JSON. */
let defaultPreprocessing: string | null = null;

export async function checkModel(files: ModelFiles, session: Session, options: { fusePreprocessing?: boolean } = {}): Promise<string[]> {
  const config = files.config;
  if (config.task === 'raw') {
    // a raw model takes tensors, and encoded images (KServe BYTES) through its preprocessing: written out, that must fit
    // the input as any task's does (colorChannels L on a 3-channel input loaded, and every image sent to it failed)
    defaultPreprocessing ??= JSON.stringify(parseModelConfig({}).preprocessing);
    if (JSON.stringify(config.preprocessing) !== defaultPreprocessing) planInput(config, session.inputs, files.mean);
    // a model put in the repository without its model.json (a first upload of model.onnx alone): said at load
    return files.defaults
      ? [
          'no model.json: served as task "raw" (infer takes and gives tensors); for classify, detect or segment add a model.json with its "task" (for example {"task": "classification"}) and the preprocessing it was trained with',
        ]
      : [];
  }
  const plan = await prepareImageInput(files, session, { fuse: options.fusePreprocessing });
  const image = await probeImage(await syntheticImage(), 1_000_000);
  const { tensor, transform, input } = await preprocess(image, plan, 1_000_000);
  // one call per engine instance, side by side (each takes the one with the fewest in hand): every copy has run once
  // before the version serves, and a copy that cannot run fails the load here
  const copies = Array.from({ length: Math.max(1, session.instances ?? 1) - 1 }, () => ({ ...tensor, data: tensor.data.slice() }));
  const [outputs] = await Promise.all([tensor, ...copies].map((t) => session.run({ [input]: t }))).catch((e: unknown) => {
    throw sizeNotTaken(e, plan, session);
  });
  if (config.task === 'classification') classify(outputs, postprocessingOf(config, 'classification'), files.labels, 1);
  else if (config.task === 'detection') {
    const post = postprocessingOf(config, 'detection');
    detect(outputs, post, transform, files.labels, post);
  } else {
    const post = postprocessingOf(config, 'segmentation');
    checkClassMap(outputs, post.output ?? Object.keys(outputs)[0]);
    toClassMap(outputs, post, plan.layout);
  }
  return [...warnings(files, plan), ...labelWarnings(files, outputs)];
}

/**
 * The engine's refusal of the input, when targetSize chose its size (a dynamic input, resized to it): said as a mistake
 * of targetSize, with the engine's reason (text-detection takes multiples of 32; at 100x100 ONNX Runtime said only
 * "Attempting to broadcast an axis by a dimension other than 1. 7 by 8"). Anything else as it is.
 */
function sizeNotTaken(e: unknown, plan: InputPlan, session: Session): unknown {
  const size = plan.pre.targetSize;
  const shape = session.inputs.find((i) => i.name === plan.input)?.shape ?? [];
  const spatial = plan.layout === 'NCHW' ? shape.slice(2, 4) : shape.slice(1, 3);
  const chosen = size && plan.pre.resizeType !== 'NETWORK' && spatial.some((d) => d === null);
  if (!chosen || (isGatewayError(e) && e.code !== ErrorCode.INFERENCE_FAILED)) return e;
  return new GatewayError(
    ErrorCode.INVALID_MODEL_CONFIG,
    `preprocessing.targetSize: the model did not run on the ${size.width}x${size.height} input it gives (the size may be the cause): ${errorMessage(e)}; give a size the model takes (many take multiples of 32)`,
    { field: 'preprocessing.targetSize' },
  );
}

/**
 * Segmentation reads a 3-D output ([N,H,W]) as class ids. A float one that holds other numbers than whole ones is no
 * class map (YOLOX's raw predictions [1,3549,85], BlazeFace's scores [1,512,1], a probability map without its channel
 * dimension): read as ids, every answer would be made-up classes, so the load says so.
 */
function checkClassMap(outputs: Record<string, Tensor>, name: string): void {
  const t = outputs[name];
  if (!t || t.shape.length !== 3 || (t.dtype !== 'float32' && t.dtype !== 'float16')) return;
  const v = toFloat32(t);
  const odd = v.findIndex((x) => !Number.isInteger(x));
  if (odd >= 0)
    throw new GatewayError(
      ErrorCode.INVALID_MODEL_CONFIG,
      `task: output ${name} has shape [${t.shape.join(',')}], which segmentation reads as class ids, but holds ${v[odd]}: it is no class map; segmentation takes scores [N,C,H,W] / [N,H,W,C] or a map of class ids [N,H,W]`,
      { field: 'task' },
    );
}

/**
 * A labels file that does not fit the classes the model computes: the wrong file (another model's, a shortened one)
 * gives answers with `label: null`, or names classes that never come. Told from the warm-up's outputs, where their
 * shape says the number of classes: a classifier's [N,C], YOLOX's [N,A,5+C]. Labels with ids (a label map) may leave
 * gaps; a list names every class from 0.
 */
function labelWarnings({ config, labels }: ModelFiles, outputs: Record<string, Tensor>): string[] {
  if (!labels || labels.size === 0) return [];
  let name: string;
  let classes: number;
  if (config.task === 'classification') {
    name = postprocessingOf(config, 'classification').output ?? Object.keys(outputs)[0];
    classes = outputs[name]?.shape[1] ?? 0;
  } else if (config.task === 'detection' && postprocessingOf(config, 'detection').format === 'yolox') {
    const post = postprocessingOf(config, 'detection') as { output?: string };
    name = post.output ?? Object.keys(outputs)[0];
    classes = (outputs[name]?.shape.at(-1) ?? 0) - 5;
  } else return [];
  if (!(classes > 0)) return [];
  const ask = "is it this model's labels file?";
  const largest = largestId(labels);
  if (largest >= classes)
    return [`labels: class ${largest} is named, but output ${JSON.stringify(name)} has ${classes} classes (0 to ${classes - 1}): ${ask}`];
  if (labels.size === largest + 1 && labels.size < classes)
    return [
      `labels: ${labels.size} labels for the ${classes} classes of output ${JSON.stringify(name)}: classes ${labels.size} to ${classes - 1} have no label (null in answers); ${ask}`,
    ];
  return [];
}

/** Settings that look inconsistent (each can be right for some model, so they are warnings, not errors). */
function warnings({ config }: ModelFiles, plan: InputPlan): string[] {
  const pre = config.preprocessing;
  const out: string[] = [];
  const small = (v: number[] | undefined) => v !== undefined && v.every((x) => Math.abs(x) <= 1.5);
  const large = (v: number[] | undefined) => v !== undefined && v.some((x) => Math.abs(x) > 2);
  if (plan.dtype !== 'uint8' && pre.pixelScaling > 2 && small(pre.mean) && (pre.std === undefined || small(pre.std))) {
    out.push(
      `preprocessing: mean and std look like 0..1 statistics but pixelScaling is ${pre.pixelScaling}, so the model sees values far outside them; ` +
        'for 0..1 statistics set pixelScaling to 1 (or give mean and std in 0..255 units)',
    );
  }
  if (plan.dtype !== 'uint8' && pre.pixelScaling <= 2 && (large(pre.mean) || large(pre.std))) {
    out.push(
      `preprocessing: mean or std look like 0..255 statistics but pixelScaling is ${pre.pixelScaling}; set pixelScaling to 255 (or give them in 0..1 units)`,
    );
  }
  if (config.task === 'classification' && plan.dtype !== 'uint8' && !pre.mean && !pre.meanFile && !pre.std) {
    out.push(
      'preprocessing: no mean or std: the model gets pixels 0..pixelScaling as they are; most classifiers are trained on normalized input',
    );
  }
  return out;
}
