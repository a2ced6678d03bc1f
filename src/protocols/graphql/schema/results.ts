import type { SegmentationRun } from '../../../inference/service.ts';
import { ErrorCode, GatewayError } from '../../../errors.ts';
import type { Prediction } from '../../../vision/classification.ts';
import type { Box, DetectedObject } from '../../../vision/detection.ts';
import {
  classHistogram,
  maskPng,
  regions,
  toOriginalSizeAsync,
  type ClassMap,
  type Region,
  type SegmentClass,
} from '../../../vision/segmentation.ts';
import { cropRaw } from '../../../vision/draw.ts';
import type { DecodedImage, RawImage } from '../../../vision/preprocess.ts';
import { DTYPES } from '../../../engine/types.ts';
import { builder } from './builder.ts';
import { runOptions, type Context } from '../context.ts';

/** classify's minConfidence, on the mutation and on a detected box. */
export const MIN_CONFIDENCE_DOC =
  'Only classes scoring at least this. Default 0. A probability (0..1) unless the model gives raw scores (postprocessing.activation none).';

// The types inference answers with (images: classification, detection, segmentation; raw tensors). The mutations that
// produce them are in inference.ts.

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

export const ClassificationRef = builder.objectRef<{ predictions: Prediction[] }>('Classification').implement({
  fields: (t) => ({ predictions: t.field({ type: [PredictionRef], description: 'Best first.', resolve: (c) => c.predictions }) }),
});

/** One detected object, and what its answer's objects share: the photo, decoded once for their crops. */
type ObjectSource = { object: DetectedObject; image: DecodedImage; shared: { decoded?: Promise<RawImage> } };

const DetectedObjectRef = builder.objectRef<ObjectSource>('DetectedObject').implement({
  fields: (t) => ({
    classId: t.int({ resolve: (o) => o.object.classId }),
    label: t.string({ nullable: true, resolve: (o) => o.object.label }),
    confidence: t.float({ resolve: (o) => o.object.confidence }),
    box: t.field({ type: BoxRef, resolve: (o) => o.object.box }),
    classify: t.field({
      type: ClassificationRef,
      // a box whose classification fails is null with its own error; the detection and its other boxes stay
      nullable: true,
      description:
        'Crop this box from the original photo and classify it: a pipeline in one query. Null, with its own error, when that fails (the detection stays).',
      args: {
        model: t.arg.string({ required: true }),
        version: t.arg.int(),
        topK: t.arg.int(),
        minConfidence: t.arg.float({ description: MIN_CONFIDENCE_DOC }),
      },
      resolve: async (o, args, ctx, info) => {
        ctx.budget.takeImages(1);
        const run = runOptions(ctx, info);
        // the decoded photo counts as a rendering; the boxes of this answer are cut from it in the same turn, then it goes
        const crop = async () => {
          const pending = (o.shared.decoded ??= (ctx.budget.takeRendered(), ctx.service.decodeForCrops(o.image, run)));
          try {
            return cropRaw(await pending, o.object.box);
          } finally {
            setImmediate(() => {
              if (o.shared.decoded === pending) o.shared.decoded = undefined;
            });
          }
        };
        const [predictions] = ctx.service.classify(args.model, args.version, [crop], { ...args, ...run });
        return { predictions: await predictions };
      },
    }),
  }),
});

export const DetectionRef = builder.objectRef<{ image: DecodedImage; objects: DetectedObject[] }>('Detection').implement({
  fields: (t) => ({
    imageWidth: t.int({ resolve: (d) => d.image.width }),
    imageHeight: t.int({ resolve: (d) => d.image.height }),
    objects: t.field({
      type: [DetectedObjectRef],
      description: 'Best first.',
      resolve: (d) => {
        const shared = {};
        return d.objects.map((object) => ({ object, image: d.image, shared }));
      },
    }),
    annotatedImage: t.string({
      nullable: true,
      description: 'The photo with labelled boxes: base64 PNG (computed only when selected). Null, with its own error, past a limit.',
      resolve: async (d, _, ctx, info) => {
        ctx.budget.takeRendered();
        return base64Within(ctx, await ctx.service.drawDetections(d.image, d.objects, runOptions(ctx, info)));
      },
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

type SegSource = SegmentationRun & {
  full?: Promise<ClassMap>;
  maskPng?: Promise<Buffer>;
  overlayPng?: Promise<Buffer>;
  classes?: SegmentClass[];
  /** regions by minPixels */
  regions?: Map<number, Region[]>;
};

/** Distinct `regions(minPixels:)` asked of one answer: each is a pass over the class map. */
const MAX_REGION_QUERIES = 4;
/** The class map at the photo's size, built once per answer (and a slice at a time), for mask and overlay. */
const fullMap = (s: SegSource) => (s.full ??= toOriginalSizeAsync(s.map, s.transform));
const maxId = (s: SegSource) => s.map.ids.reduce((m, id) => (id > m ? id : m), 0);

/** A rendered image as base64, counted against the response size the request may have. */
function base64Within(ctx: Context, png: Buffer): string {
  ctx.budget.takeResponseBytes(Math.ceil(png.length / 3) * 4);
  return png.toString('base64');
}

export const SegmentationRef = builder.objectRef<SegSource>('Segmentation').implement({
  fields: (t) => ({
    width: t.int({ description: 'Of the original image.', resolve: (s) => s.image.width }),
    height: t.int({ resolve: (s) => s.image.height }),
    classes: t.field({
      type: [SegmentClassRef],
      description: 'Classes present, with their share of the image.',
      // computed once per answer: aliases asking again (a: classes, b: classes ...) get the same list
      resolve: (s) => (s.classes ??= classHistogram(s.map, s.transform, s.labels)),
    }),
    mask: t.string({
      nullable: true,
      description: 'Base64 PNG at the image size, one class id per pixel. Null, with its own error, past a limit.',
      resolve: async (s, _, ctx) => {
        ctx.budget.takeRendered();
        // rendered once per answer: an alias asking again (a: mask) gets the same picture, not a second 12-megapixel one
        return base64Within(ctx, await (s.maskPng ??= fullMap(s).then((m) => maskPng(m, maxId(s)))));
      },
    }),
    overlay: t.string({
      nullable: true,
      description: 'The mask in colour over the photo: base64 PNG (computed only when selected). Null, with its own error, past a limit.',
      resolve: async (s, _, ctx, info) => {
        ctx.budget.takeRendered();
        const run = runOptions(ctx, info);
        return base64Within(ctx, await (s.overlayPng ??= fullMap(s).then((m) => ctx.service.drawOverlay(s.image, m, run))));
      },
    }),
    regions: t.field({
      type: [RegionRef],
      args: { minPixels: t.arg.int({ description: 'Smallest region kept, in output pixels (default 16).' }) },
      resolve: (s, args) => {
        if ((args.minPixels ?? 0) < 0)
          throw new GatewayError(ErrorCode.INVALID_INPUT, `regions: minPixels must be 0 or more, got ${args.minPixels}`);
        const minPixels = Math.max(1, args.minPixels ?? 16); // (every region has a pixel: 0 is 1)
        const known = (s.regions ??= new Map());
        const done = known.get(minPixels);
        if (done) return done;
        if (known.size >= MAX_REGION_QUERIES)
          throw new GatewayError(ErrorCode.LIMIT_EXCEEDED, `more than ${MAX_REGION_QUERIES} different minPixels asked of one segmentation`);
        const found = regions(s.map, s.transform, s.labels, minPixels, s.unclipRatio);
        known.set(minPixels, found);
        return found;
      },
    }),
  }),
});

const DTypeEnum = builder.enumType('DType', { values: DTYPES.map((d) => d.toUpperCase()) as [string, ...string[]] });

export const TensorInput = builder.inputType('TensorInput', {
  fields: (t) => ({
    name: t.string({ required: true }),
    dtype: t.field({ type: DTypeEnum, required: true }),
    shape: t.intList({ required: true }),
    data: t.string({ required: true, description: 'Base64 of the little-endian bytes.' }),
  }),
});

export interface TensorOutput {
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

export const InferResultRef = builder.objectRef<{ outputs: TensorOutput[] }>('InferResult').implement({
  fields: (t) => ({ outputs: t.field({ type: [TensorOutputRef], resolve: (r) => r.outputs }) }),
});
