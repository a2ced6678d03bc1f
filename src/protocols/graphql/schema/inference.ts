import { ErrorCode, GatewayError } from '../../../errors.ts';
import { DTYPES, toBytes } from '../../../engine/types.ts';
import { imageSource, type ImageInput as ImageArg, type ImageSource } from '../../../inference/images.ts';
import type { SegmentationRun } from '../../../inference/service.ts';
import type { Prediction } from '../../../vision/classification.ts';
import type { Box, DetectedObject } from '../../../vision/detection.ts';
import {
  classHistogram,
  maskPng,
  regions,
  toOriginalSize,
  type ClassMap,
  type Region,
  type SegmentClass,
} from '../../../vision/segmentation.ts';
import { cropImage, drawDetections, drawOverlay } from '../../../vision/draw.ts';
import type { DecodedImage } from '../../../vision/preprocess.ts';
import { builder } from './builder.ts';
import type { Context } from '../context.ts';

type ArgBuilder = Parameters<Parameters<typeof builder.mutationFields>[0]>[0]['arg'];

// ---- images in ----

const ImageInput = builder.inputType('ImageInput', {
  description: 'Exactly one of: an uploaded file, base64 bytes, or a server path under IMAGE_ROOTS.',
  fields: (t) => ({
    file: t.field({ type: 'File' }),
    base64: t.string(),
    path: t.string(),
  }),
});

/** The sources of images; they count toward the request's image limit before any is read. */
function imageSources(images: readonly ArgImage[], ctx: Context): ImageSource[] {
  ctx.budget.takeImages(images.length);
  return images.map((image) => imageSource(image, ctx.imageLimits));
}
type ArgImage = ArgImageShape & ImageArg;
type ArgImageShape = { file?: File | null; base64?: string | null; path?: string | null };

// ---- results out ----

const BoxRef = builder.objectRef<Box>('Box').implement({
  description: 'Normalized to 0..1 of the original image.',
  fields: (t) => ({ xMin: t.exposeFloat('xMin'), yMin: t.exposeFloat('yMin'), xMax: t.exposeFloat('xMax'), yMax: t.exposeFloat('yMax') }),
});

const PredictionRef = builder.objectRef<Prediction>('Prediction').implement({
  fields: (t) => ({
    classId: t.exposeInt('classId'),
    label: t.string({ nullable: true, resolve: (p) => p.label }),
    confidence: t.exposeFloat('confidence'),
  }),
});

const ClassificationRef = builder.objectRef<{ predictions: Prediction[] }>('Classification').implement({
  fields: (t) => ({ predictions: t.field({ type: [PredictionRef], description: 'Best first.', resolve: (c) => c.predictions }) }),
});

type ObjectSource = { object: DetectedObject; image: DecodedImage };

const DetectedObjectRef = builder.objectRef<ObjectSource>('DetectedObject').implement({
  fields: (t) => ({
    classId: t.int({ resolve: (o) => o.object.classId }),
    label: t.string({ nullable: true, resolve: (o) => o.object.label }),
    confidence: t.float({ resolve: (o) => o.object.confidence }),
    box: t.field({ type: BoxRef, resolve: (o) => o.object.box }),
    classify: t.field({
      type: ClassificationRef,
      description: 'Crop this box from the original photo and classify it: a pipeline in one query.',
      args: { model: t.arg.string({ required: true }), version: t.arg.int(), topK: t.arg.int(), minConfidence: t.arg.float() },
      resolve: async (o, args, ctx) => {
        ctx.budget.takeImages(1);
        const crop = () => cropImage(o.image.bytes, o.image.width, o.image.height, o.object.box);
        const [predictions] = ctx.service.classify(args.model, args.version, [crop], args);
        return { predictions: await predictions };
      },
    }),
  }),
});

const DetectionRef = builder.objectRef<{ image: DecodedImage; objects: DetectedObject[] }>('Detection').implement({
  fields: (t) => ({
    imageWidth: t.int({ resolve: (d) => d.image.width }),
    imageHeight: t.int({ resolve: (d) => d.image.height }),
    objects: t.field({
      type: [DetectedObjectRef],
      description: 'Best first.',
      resolve: (d) => d.objects.map((object) => ({ object, image: d.image })),
    }),
    annotatedImage: t.string({
      description: 'The photo with labelled boxes: base64 PNG (computed only when selected).',
      resolve: async (d) => (await drawDetections(d.image.bytes, d.image.width, d.image.height, d.objects)).toString('base64'),
    }),
  }),
});

const SegmentClassRef = builder.objectRef<SegmentClass>('SegmentClass').implement({
  fields: (t) => ({
    classId: t.exposeInt('classId'),
    label: t.string({ nullable: true, resolve: (c) => c.label }),
    pixelFraction: t.exposeFloat('pixelFraction'),
  }),
});

const RegionRef = builder.objectRef<Region>('Region').implement({
  description: 'A connected area of one class (e.g. one word of a text detector).',
  fields: (t) => ({
    classId: t.exposeInt('classId'),
    label: t.string({ nullable: true, resolve: (r) => r.label }),
    pixels: t.int({ description: 'Size at the model output resolution.', resolve: (r) => r.pixels }),
    box: t.field({ type: BoxRef, resolve: (r) => r.box }),
  }),
});

type SegSource = SegmentationRun & { full?: ClassMap };
const fullMap = (s: SegSource) => (s.full ??= toOriginalSize(s.map, s.transform));

const SegmentationRef = builder.objectRef<SegSource>('Segmentation').implement({
  fields: (t) => ({
    width: t.int({ description: 'Of the original image.', resolve: (s) => s.image.width }),
    height: t.int({ resolve: (s) => s.image.height }),
    classes: t.field({
      type: [SegmentClassRef],
      description: 'Classes present, with their share of the image.',
      resolve: (s) => classHistogram(fullMap(s), s.model.labels),
    }),
    mask: t.string({
      description: 'Base64 PNG at the image size, one class id per pixel.',
      resolve: async (s) => (await maskPng(fullMap(s))).toString('base64'),
    }),
    overlay: t.string({
      description: 'The mask in colour over the photo: base64 PNG (computed only when selected).',
      resolve: async (s) => (await drawOverlay(s.image.bytes, fullMap(s))).toString('base64'),
    }),
    regions: t.field({
      type: [RegionRef],
      args: { minPixels: t.arg.int({ description: 'Smallest region kept, in output pixels (default 16).' }) },
      resolve: (s, args) => regions(s.map, s.transform, s.model.labels, Math.max(1, args.minPixels ?? 16)),
    }),
  }),
});

const DTypeEnum = builder.enumType('DType', { values: DTYPES.map((d) => d.toUpperCase()) as [string, ...string[]] });

const TensorInput = builder.inputType('TensorInput', {
  fields: (t) => ({
    name: t.string({ required: true }),
    dtype: t.field({ type: DTypeEnum, required: true }),
    shape: t.intList({ required: true }),
    data: t.string({ required: true, description: 'Base64 of the little-endian bytes.' }),
  }),
});

interface TensorOutput {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

const TensorOutputRef = builder.objectRef<TensorOutput>('Tensor').implement({
  fields: (t) => ({
    name: t.exposeString('name'),
    dtype: t.field({ type: DTypeEnum, resolve: (o) => o.dtype.toUpperCase() }),
    shape: t.intList({ resolve: (o) => o.shape }),
    data: t.string({
      description: 'Base64 of the little-endian bytes.',
      resolve: (o) => Buffer.from(o.data.buffer, o.data.byteOffset, o.data.byteLength).toString('base64'),
    }),
  }),
});

const InferResultRef = builder.objectRef<{ outputs: TensorOutput[] }>('InferResult').implement({
  fields: (t) => ({ outputs: t.field({ type: [TensorOutputRef], resolve: (r) => r.outputs }) }),
});

const imageArgs = (t: ArgBuilder) => ({
  model: t.string({ required: true }),
  version: t.int({ description: 'Default: the highest AVAILABLE version.' }),
  image: t({ type: ImageInput, required: true }),
});
const imagesArgs = (t: ArgBuilder) => ({
  model: t.string({ required: true }),
  version: t.int({ description: 'Default: the highest AVAILABLE version.' }),
  images: t({ type: [ImageInput], required: true, description: 'Run together: they share engine calls.' }),
});
const classifyArgs = (t: ArgBuilder) => ({ topK: t.int({ description: 'Default 5.' }), minConfidence: t.float() });
const detectArgs = (t: ArgBuilder) => ({ minConfidence: t.float(), iouThreshold: t.float(), maxDetections: t.int() });

/**
 * A list field's items: a failure of the call as a whole (unknown model, wrong task, too many images) becomes the
 * error of every item, so the list keeps its place in `data` and each item says why it is null.
 */
function perItem<T>(count: number, run: () => Promise<T>[]): Promise<T>[] {
  try {
    return run();
  } catch (e) {
    return Array.from({ length: count }, () => Promise.reject(e));
  }
}

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

function decodeBase64(data: string, name: string): Uint8Array {
  if (!BASE64_RE.test(data) || data.length % 4 === 1) throw new GatewayError(ErrorCode.INVALID_INPUT, `input ${name}: data is not base64`);
  const b = Buffer.from(data, 'base64');
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

// Inference runs as mutations (the product's API contract: load, unload, classify, detect, segment, infer). Top-level
// mutation fields run one after another, so several images of one request go in the list fields (classifyBatch, ...),
// whose images reach the batcher together. Root fields are nullable: one failing field or item does not null the rest.
builder.mutationFields((t) => ({
  classify: t.field({
    type: ClassificationRef,
    nullable: true,
    args: { ...imageArgs(t.arg), ...classifyArgs(t.arg) },
    resolve: async (_, args, ctx) => {
      const [predictions] = ctx.service.classify(args.model, args.version, imageSources([args.image], ctx), args);
      return { predictions: await predictions };
    },
  }),
  classifyBatch: t.field({
    type: [ClassificationRef],
    nullable: { list: false, items: true },
    description:
      'Classify several images in one call (they share engine calls). A failing image is null with its own error (path [field, index]); a failure of the whole call (unknown model, wrong task) is the error of every item.',
    args: { ...imagesArgs(t.arg), ...classifyArgs(t.arg) },
    resolve: (_, args, ctx) =>
      perItem(args.images.length, () => ctx.service.classify(args.model, args.version, imageSources(args.images, ctx), args)).map(
        async (p) => ({ predictions: await p }),
      ),
  }),
  detect: t.field({
    type: DetectionRef,
    nullable: true,
    args: { ...imageArgs(t.arg), ...detectArgs(t.arg) },
    resolve: (_, args, ctx) => ctx.service.detect(args.model, args.version, imageSources([args.image], ctx), args)[0],
  }),
  detectBatch: t.field({
    type: [DetectionRef],
    nullable: { list: false, items: true },
    description: 'Detect objects in several images in one call; a failing image is null with its own error.',
    args: { ...imagesArgs(t.arg), ...detectArgs(t.arg) },
    resolve: (_, args, ctx) =>
      perItem(args.images.length, () => ctx.service.detect(args.model, args.version, imageSources(args.images, ctx), args)),
  }),
  segment: t.field({
    type: SegmentationRef,
    nullable: true,
    args: imageArgs(t.arg),
    resolve: (_, args, ctx) => ctx.service.segment(args.model, args.version, imageSources([args.image], ctx))[0],
  }),
  segmentBatch: t.field({
    type: [SegmentationRef],
    nullable: { list: false, items: true },
    description: 'Segment several images in one call; a failing image is null with its own error.',
    args: imagesArgs(t.arg),
    resolve: (_, args, ctx) =>
      perItem(args.images.length, () => ctx.service.segment(args.model, args.version, imageSources(args.images, ctx))),
  }),
  infer: t.field({
    type: InferResultRef,
    nullable: true,
    description: 'Raw tensors in, raw tensors out (only the outputs asked for; all when omitted).',
    args: {
      model: t.arg.string({ required: true }),
      version: t.arg.int(),
      inputs: t.arg({ type: [TensorInput], required: true }),
      outputs: t.arg.stringList(),
    },
    resolve: async (_, args, ctx) => {
      ctx.budget.takeImages(1);
      const inputs = args.inputs.map((i) => ({ name: i.name, dtype: i.dtype, shape: i.shape, data: decodeBase64(i.data, i.name) }));
      const outputs = await ctx.service.infer(args.model, args.version, inputs, args.outputs);
      return { outputs: Object.entries(outputs).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: toBytes(t.data) })) };
    },
  }),
}));
