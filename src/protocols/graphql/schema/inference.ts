import { decodeBase64, whyNotBase64 } from '../../../base64.ts';
import { ErrorCode, GatewayError } from '../../../errors.ts';
import { toBytes } from '../../../engine/types.ts';
import { imageSource, type ImageInput as ImageArg, type ImageSource } from '../../../inference/images.ts';
import { builder } from './builder.ts';
import { ClassificationRef, DetectionRef, InferResultRef, MIN_CONFIDENCE_DOC, SegmentationRef, TensorInput } from './results.ts';
import { runOptions, type Context } from '../context.ts';

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

/**
 * The sources of images; they count toward the request's image limit, and their bytes toward its input bytes, before
 * any is read (a file under IMAGE_ROOTS when its size is known). An upload or a base64 variable named by several items
 * counts once for each item: each is decoded.
 */
function imageSources(images: readonly ArgImage[], ctx: Context): ImageSource[] {
  ctx.budget.takeImages(images.length);
  ctx.budget.takeInputBytes(
    images.reduce((n, image) => n + (image.file?.size ?? 0) + Math.floor(((image.base64?.length ?? 0) * 3) / 4), 0),
  );
  const takeBytes = (n: number) => ctx.budget.takeFileBytes(n);
  return images.map((image) => imageSource(image, ctx.imageLimits, takeBytes));
}
type ArgImage = ArgImageShape & ImageArg;
type ArgImageShape = { file?: File | null; base64?: string | null; path?: string | null };

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
const classifyArgs = (t: ArgBuilder) => ({
  topK: t.int({ description: 'Default 5.' }),
  minConfidence: t.float({ description: MIN_CONFIDENCE_DOC }),
});
const detectArgs = (t: ArgBuilder) => ({ minConfidence: t.float(), iouThreshold: t.float(), maxDetections: t.int() });

/**
 * A list field's items: a failure of the call as a whole (unknown model, wrong task, too many images) becomes the
 * error of every item, so the list keeps its place in `data` and each item says why it is null. A list longer than
 * a request may hold at all (MAX_IMAGES_PER_REQUEST) is refused once, as the field's error: answered item by item, a
 * 420 KB list of 30,000 held the event loop 3 s for a 6 MB answer of the same error, and aliases multiplied it.
 */
function perItem<T>(ctx: Context, count: number, run: () => Promise<T>[]): Promise<T>[] {
  try {
    return run();
  } catch (e) {
    if (count > ctx.budget.limits.maxImages) throw e;
    return Array.from({ length: count }, () => Promise.reject(e));
  }
}

function tensorBytes(data: string, name: string): Uint8Array {
  const bytes = decodeBase64(data);
  if (!bytes) throw new GatewayError(ErrorCode.INVALID_INPUT, `input ${name}: data is not base64: ${whyNotBase64(data)}`);
  return bytes;
}

// Inference runs as mutations (the product's API contract: load, unload, classify, detect, segment, infer). Top-level
// mutation fields run one after another, so several images of one request go in the list fields (classifyBatch, ...),
// whose images reach the batcher together. Root fields are nullable: one failing field or item does not null the rest.
builder.mutationFields((t) => ({
  classify: t.field({
    type: ClassificationRef,
    nullable: true,
    args: { ...imageArgs(t.arg), ...classifyArgs(t.arg) },
    resolve: async (_, args, ctx, info) => {
      const [predictions] = ctx.service.classify(args.model, args.version, imageSources([args.image], ctx), {
        ...args,
        ...runOptions(ctx, info),
      });
      return { predictions: await predictions };
    },
  }),
  classifyBatch: t.field({
    type: [ClassificationRef],
    nullable: { list: false, items: true },
    description:
      'Classify several images in one call (they share engine calls). A failing image is null with its own error (path [field, index]); a failure of the whole call (unknown model, wrong task) is the error of every item.',
    args: { ...imagesArgs(t.arg), ...classifyArgs(t.arg) },
    resolve: (_, args, ctx, info) =>
      perItem(ctx, args.images.length, () =>
        ctx.service.classify(args.model, args.version, imageSources(args.images, ctx), { ...args, ...runOptions(ctx, info) }),
      ).map(async (p) => ({ predictions: await p })),
  }),
  detect: t.field({
    type: DetectionRef,
    nullable: true,
    args: { ...imageArgs(t.arg), ...detectArgs(t.arg) },
    resolve: (_, args, ctx, info) =>
      ctx.service.detect(args.model, args.version, imageSources([args.image], ctx), { ...args, ...runOptions(ctx, info) })[0],
  }),
  detectBatch: t.field({
    type: [DetectionRef],
    nullable: { list: false, items: true },
    description: 'Detect objects in several images in one call; a failing image is null with its own error.',
    args: { ...imagesArgs(t.arg), ...detectArgs(t.arg) },
    resolve: (_, args, ctx, info) =>
      perItem(ctx, args.images.length, () =>
        ctx.service.detect(args.model, args.version, imageSources(args.images, ctx), { ...args, ...runOptions(ctx, info) }),
      ),
  }),
  segment: t.field({
    type: SegmentationRef,
    nullable: true,
    args: imageArgs(t.arg),
    resolve: (_, args, ctx, info) =>
      ctx.service.segment(args.model, args.version, imageSources([args.image], ctx), runOptions(ctx, info))[0],
  }),
  segmentBatch: t.field({
    type: [SegmentationRef],
    nullable: { list: false, items: true },
    description: 'Segment several images in one call; a failing image is null with its own error.',
    args: imagesArgs(t.arg),
    resolve: (_, args, ctx, info) =>
      perItem(ctx, args.images.length, () =>
        ctx.service.segment(args.model, args.version, imageSources(args.images, ctx), runOptions(ctx, info)),
      ),
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
    resolve: async (_, args, ctx, info) => {
      ctx.budget.takeImages(1);
      // counted before anything is decoded: aliases sharing one large variable each take their share
      ctx.budget.takeInputBytes(args.inputs.reduce((n, i) => n + Math.floor((i.data.length * 3) / 4), 0));
      const inputs = args.inputs.map((i) => ({ name: i.name, dtype: i.dtype, shape: i.shape, data: tensorBytes(i.data, i.name) }));
      const outputs = await ctx.service.infer(args.model, args.version, inputs, args.outputs, runOptions(ctx, info));
      const tensors = Object.entries(outputs).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: toBytes(t.data) }));
      ctx.budget.takeResponseBytes(tensors.reduce((n, o) => n + Math.ceil(o.data.length / 3) * 4, 0));
      return { outputs: tensors };
    },
  }),
}));
