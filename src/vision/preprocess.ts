// Slightly over 250 lines, on purpose: one pipeline from image header to tensor, with the four resize modes and the
// coordinate mapping each reports side by side, so a transform can be checked against the resize that made it.
import sharp from 'sharp';
import type { Metadata, OutputInfo, Sharp } from 'sharp';
import { ErrorCode, GatewayError } from '../errors.ts';
import { floatToHalf, type DType, type PixelInput, type Tensor, type TensorInfo } from '../engine/types.ts';
import type { ModelConfig, PreprocessingConfig } from '../repository/model-config.ts';
import { applyRgbTransform, embeddedProfile, type EmbeddedProfile, type RgbTransform } from './icc.ts';
import { jpegScans, readJpegHeader, type JpegHeader } from './jpeg-header.ts';
import { DEFAULT_IMAGE_FORMATS } from './formats.ts';

// libvips' operation cache (sharp's default: 100 operations, "50 MB") keeps what it has loaded with its metadata, which
// its memory limit does not count: a PNG of 140 KB whose iCCP chunk inflates to a 52 MB profile left ~200 MB held per
// request, 2.4 GB after 12 of them (a replica of the Kubernetes manifest has 2.5 GiB). Every image here is new bytes:
// nothing is ever found in that cache.
sharp.cache(false);

/** How a point of the model input maps back to the original image: x_input = x_orig * scaleX + offsetX. */
export interface ImageTransform {
  width: number;
  height: number;
  inputWidth: number;
  inputHeight: number;
  scaleX: number;
  scaleY: number;
  offsetX: number;
  offsetY: number;
}

/** Model input pixels -> normalized (0..1) coordinates of the original image, clipped. */
export function toOriginalNormalized(t: ImageTransform, x: number, y: number): [number, number] {
  const ox = (x - t.offsetX) / t.scaleX / t.width;
  const oy = (y - t.offsetY) / t.scaleY / t.height;
  return [Math.min(1, Math.max(0, ox)), Math.min(1, Math.max(0, oy))];
}

/** What the preprocessing of one model version produces, resolved once from model.json and the model's input. */
export interface InputPlan {
  input: string;
  layout: 'NCHW' | 'NHWC';
  channels: 1 | 3;
  dtype: 'float32' | 'float16' | 'uint8';
  /** Fixed target size, or for NETWORK the largest size (null: the image's own). */
  width: number | null;
  height: number | null;
  pre: PreprocessingConfig;
  mean: { shape: number[]; data: Float32Array } | null;
  /** The engine took over the per-pixel work: feed it the decoded pixels (uint8 NHWC) under this input name. */
  pixelInput?: string | null;
}

const invalidConfig = (field: string, msg: string) =>
  new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `preprocessing.${field}: ${msg}`, { field: `preprocessing.${field}` });

export function guessLayout(shape: readonly (number | null)[]): 'NCHW' | 'NHWC' | null {
  if (shape.length !== 4) return null;
  if (shape[1] === 1 || shape[1] === 3) return 'NCHW';
  if (shape[3] === 1 || shape[3] === 3) return 'NHWC';
  return null;
}

export function planInput(config: ModelConfig, inputs: readonly TensorInfo[], mean: InputPlan['mean'] = null): InputPlan {
  const pre = config.preprocessing;
  const info = pre.input ? inputs.find((i) => i.name === pre.input) : inputs[0];
  if (!info)
    throw invalidConfig('input', `the model has no input ${JSON.stringify(pre.input)} (inputs: ${inputs.map((i) => i.name).join(', ')})`);
  const shape = `[${info.shape.map((d) => d ?? '?').join(',')}]`;
  if (info.shape.length !== 4) throw invalidConfig('input', `input ${info.name} has shape ${shape}; an image input has 4 dimensions`);
  const layout = pre.dimensionOrder ?? guessLayout(info.shape) ?? 'NCHW';
  const dims = (l: 'NCHW' | 'NHWC') =>
    l === 'NCHW' ? [info.shape[2], info.shape[3], info.shape[1]] : [info.shape[1], info.shape[2], info.shape[3]];
  const [h, w, c] = dims(layout);
  const channels = pre.colorChannels === 'L' ? 1 : 3;
  if (c !== null && c !== channels) {
    const other = layout === 'NCHW' ? 'NHWC' : 'NCHW';
    if (pre.dimensionOrder && dims(other)[2] === channels) {
      throw invalidConfig(
        'dimensionOrder',
        `input ${info.name} has shape ${shape}, which is ${other} (channels ${other === 'NHWC' ? 'last' : 'first'}); dimensionOrder says ${layout}`,
      );
    }
    throw invalidConfig(
      'colorChannels',
      `${pre.colorChannels} gives ${channels} channel(s) but input ${info.name} (${shape}, ${layout}) has ${c}`,
    );
  }
  const wanted = pre.dataType?.toLowerCase() as DType | undefined;
  if (wanted && wanted !== info.dtype)
    throw invalidConfig('dataType', `input ${info.name} is ${info.dtype.toUpperCase()}; dataType says ${pre.dataType}`);
  const dtype = info.dtype;
  if (dtype !== 'float32' && dtype !== 'float16' && dtype !== 'uint8')
    throw invalidConfig('dataType', `input ${info.name} is ${info.dtype}; images feed FLOAT32, FLOAT16 or UINT8`);
  if (
    pre.resizeType !== 'NETWORK' &&
    pre.targetSize &&
    ((w !== null && w !== pre.targetSize.width) || (h !== null && h !== pre.targetSize.height))
  ) {
    throw invalidConfig(
      'targetSize',
      `input ${info.name} is fixed at ${w ?? '?'}x${h ?? '?'} (${shape}); targetSize says ${pre.targetSize.width}x${pre.targetSize.height} (remove it, or make it match)`,
    );
  }
  if (pre.resizeType === 'NETWORK' && w !== null && h !== null) {
    throw invalidConfig(
      'resizeType',
      `NETWORK sizes the input after each image, but input ${info.name} is fixed at ${w}x${h}: use SQUASH, CROP or FILL`,
    );
  }
  let width = pre.targetSize?.width ?? w;
  let height = pre.targetSize?.height ?? h;
  if (pre.resizeType !== 'NETWORK' && (width === null || height === null)) {
    throw invalidConfig('targetSize', `input ${info.name} has dynamic spatial dimensions: set targetSize or use resizeType NETWORK`);
  }
  if (pre.resizeType === 'NETWORK' && (w !== null || h !== null) && !pre.targetSize) {
    width = w;
    height = h;
  }
  if (mean && !(mean.data.length === channels || mean.data.length === channels * (width ?? 0) * (height ?? 0))) {
    throw invalidConfig('meanFile', `holds ${mean.data.length} values; expected ${channels} or ${channels}x${height}x${width}`);
  }
  // a mean image is read channel by channel, [C,H,W]: one written channels-last ([H,W,C], as numpy keeps images) holds
  // as many values and was read as scrambled channels
  if (mean && channels > 1 && mean.data.length !== channels) {
    let dims = mean.shape;
    while (dims.length > 3 && dims[0] === 1) dims = dims.slice(1);
    if (dims.join('x') !== `${channels}x${height}x${width}`)
      throw invalidConfig(
        'meanFile',
        `has shape [${mean.shape.join(',')}]; a mean image is [${channels},${height},${width}] (channels first${dims.at(-1) === channels ? ': transpose a channels-last [H,W,C] array to [C,H,W]' : ''})`,
      );
  }
  return { input: info.name, layout, channels, dtype, width, height, pre, mean };
}

/** Pixels already decoded and oriented (a crop of a photo the server decoded itself): 1 to 4 interleaved 8-bit channels. */
export interface RawImage {
  pixels: Uint8Array;
  width: number;
  height: number;
  channels: 1 | 2 | 3 | 4;
}

/** Only an object that carries its pixels counts as raw: anything else is read as a file (and its format checked). */
export const isRawImage = (v: unknown): v is RawImage =>
  typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && (v as RawImage).pixels instanceof Uint8Array;

export interface DecodedImage {
  /** The original bytes (crops and drawings start from them), or the pixels when `raw` says their layout. */
  bytes: Uint8Array;
  /** Set when `bytes` are decoded pixels (a RawImage) rather than an encoded file. */
  raw?: { width: number; height: number; channels: 1 | 2 | 3 | 4 };
  /** Size after EXIF orientation. */
  width: number;
  height: number;
  /** From the header: what the resize pipeline must do besides resizing (each step skipped costs nothing). */
  /** EXIF orientation, 1 (as stored) to 8. */
  orientation: number;
  /** The embedded ICC profile is sRGB: its colour transform would change nothing, so it is skipped. */
  srgbProfile: boolean;
  /**
   * The embedded profile is another RGB matrix/shaper profile (Display P3, Adobe RGB...): its transform to sRGB,
   * applied here to the resized pixels instead of by libvips (see icc.ts). Null for every other image.
   */
  rgbProfile: RgbTransform | null;
  hasAlpha: boolean;
  isGrey: boolean;
  isSrgb: boolean;
}

/** How images may be read: the pixel limit (checked from the header), the formats accepted, a time limit. */
export interface ImageLimits {
  maxPixels: number;
  /** Formats accepted (see imageFormat); default DEFAULT_IMAGE_FORMATS. */
  formats?: readonly string[];
  /** Longest decode and resize of one image, in ms (sharp's timeout has a granularity of one second). */
  timeoutMs?: number;
}

const limitsOf = (l: number | ImageLimits): ImageLimits => (typeof l === 'number' ? { maxPixels: l } : l);

/**
 * The format of an image from its first bytes (magic numbers), before any decoder sees it, so that formats nobody
 * asked for (SVG, whose rendering can be made arbitrarily costly by nested <use>) never reach one.
 */
export function imageFormat(b: Uint8Array): string | null {
  const at = (i: number, s: string) => [...s].every((c, k) => b[i + k] === c.charCodeAt(0));
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b[0] === 0x89 && at(1, 'PNG')) return 'png';
  if (at(0, 'GIF8')) return 'gif';
  if (at(0, 'RIFF') && at(8, 'WEBP')) return 'webp';
  if (at(0, 'II*\0') || at(0, 'MM\0*')) return 'tiff';
  if (at(4, 'ftyp')) return at(8, 'avif') || at(8, 'avis') ? 'avif' : 'heif';
  const head = Buffer.from(b.subarray(0, 256)).toString('utf8').trimStart().toLowerCase();
  if (head.startsWith('<svg') || head.startsWith('<?xml')) return 'svg';
  return null;
}

/**
 * Read the header only: size and format, before anything is decoded. Pixels the server decoded itself (RawImage) have
 * no header and no format to check; their size is checked all the same.
 */
export async function probeImage(input: Uint8Array | RawImage, limits: number | ImageLimits): Promise<DecodedImage> {
  const { maxPixels, formats = DEFAULT_IMAGE_FORMATS } = limitsOf(limits);
  if (isRawImage(input)) return fromRaw(input, maxPixels);
  const bytes = input;
  const format = imageFormat(bytes);
  if (!format) throw new GatewayError(ErrorCode.INVALID_IMAGE, `not an image this server reads (${formats.join(', ')})`);
  if (!formats.includes(format))
    throw new GatewayError(ErrorCode.INVALID_IMAGE, `${format} images are not accepted here (IMAGE_FORMATS: ${formats.join(', ')})`);
  if (format === 'jpeg') checkScans(bytes);
  const header = format === 'jpeg' ? readJpegHeader(bytes) : null;
  const probed = header ? fromJpegHeader(header) : await probeWithSharp(bytes, format);
  const { width, height } = probed;
  checkPixels(width, height, maxPixels);
  return { bytes, ...probed };
}

/** Scans one JPEG may hold (see jpegScans): real ones have 1 to about 10; 100 empty ones cost ~0.4 s at 36 MP. */
const MAX_JPEG_SCANS = 100;

/** A JPEG of more scans than MAX_JPEG_SCANS is refused before libjpeg reads them (it cannot be stopped meanwhile). */
function checkScans(bytes: Uint8Array): void {
  const scans = jpegScans(bytes, MAX_JPEG_SCANS);
  if (scans > MAX_JPEG_SCANS)
    throw new GatewayError(
      ErrorCode.INVALID_IMAGE,
      `a JPEG of more than ${MAX_JPEG_SCANS} scans is not decoded here (photos have 1 to about 10, and each costs a pass over the whole photo): re-encode it`,
      { maxScans: MAX_JPEG_SCANS },
    );
}

/** The pixel limit, checked from the header's (or the pixels') size before anything is decoded. */
function checkPixels(width: number, height: number, maxPixels: number): void {
  if (width * height > maxPixels)
    throw new GatewayError(
      ErrorCode.IMAGE_TOO_LARGE,
      `image is ${width}x${height} (${width * height} pixels); the limit is ${maxPixels} pixels`,
      { width, height, maxPixels },
    );
}

/**
 * What a failed decode (or drawing: `doing`) tells the client: past DECODE_TIMEOUT_MS the image is too costly,
 * otherwise it is unreadable.
 */
export function decodeError(e: unknown, timeoutMs: number, doing = 'decoding the image'): GatewayError {
  if (/timeout/i.test(String((e as Error)?.message)))
    return new GatewayError(ErrorCode.IMAGE_TOO_LARGE, `${doing} took longer than ${timeoutMs} ms (DECODE_TIMEOUT_MS)`);
  // libvips keeps one error buffer for all threads: under concurrent failures sharp can find it emptied
  const reason = firstSentence(e).replace(/:$/, '').trim();
  return new GatewayError(
    ErrorCode.INVALID_IMAGE,
    `cannot decode the image: ${!reason || /^unknown error$|^\S+$/i.test(reason) ? 'it is damaged, truncated, or not the format its first bytes say' : reason}`,
  );
}

function fromRaw({ pixels, width, height, channels }: RawImage, maxPixels: number): DecodedImage {
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0) || pixels.length !== width * height * channels)
    throw new GatewayError(ErrorCode.INVALID_IMAGE, `raw pixels: ${pixels.length} bytes for ${width}x${height}x${channels}`);
  checkPixels(width, height, maxPixels);
  return {
    bytes: pixels,
    raw: { width, height, channels },
    width,
    height,
    orientation: 1,
    srgbProfile: false,
    rgbProfile: null,
    hasAlpha: channels === 2 || channels === 4,
    isGrey: channels <= 2,
    isSrgb: channels >= 3,
  };
}

/** Size after orientation: 5 to 8 turn the picture a quarter. */
const oriented = (w: number, h: number, orientation: number | undefined) => {
  const o = orientation && orientation >= 1 && orientation <= 8 ? orientation : 1;
  return o >= 5 ? { width: h, height: w, orientation: o } : { width: w, height: h, orientation: o };
};

function fromJpegHeader(h: JpegHeader): Omit<DecodedImage, 'bytes'> {
  return {
    ...oriented(h.width, h.height, h.orientation),
    ...profileOf(h.icc),
    hasAlpha: false,
    isGrey: h.components === 1,
    isSrgb: h.components === 3,
  };
}

/** Every other format, and JPEGs the header reader leaves to libvips: sharp's metadata() (the header only). */
async function probeWithSharp(bytes: Uint8Array, format: string): Promise<Omit<DecodedImage, 'bytes'>> {
  let meta: Metadata;
  try {
    // the size check is the caller's, with the real numbers in the message
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (e) {
    throw new GatewayError(ErrorCode.INVALID_IMAGE, `not a readable ${format} image: ${firstSentence(e)}`);
  }
  if (!meta.width || !meta.height) throw new GatewayError(ErrorCode.INVALID_IMAGE, 'the image has no size');
  return {
    ...oriented(meta.width, meta.height, meta.orientation),
    ...profileOf(meta.icc),
    hasAlpha: meta.hasAlpha === true,
    isGrey: meta.space === 'b-w' || meta.space === 'grey16' || meta.channels === 1 || (meta.channels === 2 && meta.hasAlpha === true),
    isSrgb: meta.space === 'srgb' && (meta.channels === 3 || meta.channels === 4),
  };
}

const profileOf = (icc: Uint8Array | null | undefined): EmbeddedProfile =>
  icc ? embeddedProfile(icc) : { srgbProfile: false, rgbProfile: null };

/**
 * The EXIF orientation applied after a reduction (and before any crop or padding), so that a JPEG still shrinks on
 * load: reducing first in the stored orientation, then turning the small result, gives the same pixels as turning the
 * full photo first (which decodes it whole: 7x the CPU for a 12-megapixel phone photo taken sideways). Not so for an
 * enlargement, which turns first (resizeImage).
 */
function orient(s: Sharp, orientation: number): Sharp {
  switch (orientation) {
    case 2:
      return s.flop();
    case 3:
      return s.rotate(180);
    case 4:
      return s.flip();
    case 5:
      return s.flip().rotate(90);
    case 6:
      return s.rotate(90);
    case 7:
      return s.flop().rotate(90);
    case 8:
      return s.rotate(270);
    default:
      return s;
  }
}

/** sharp on an image, with what every decode here keeps to: its pixel limit, errors as errors, a time limit. */
const open = (img: DecodedImage, ignoreIcc: boolean, maxPixels: number, timeoutMs: number): Sharp =>
  sharp(img.bytes, { limitInputPixels: maxPixels, failOn: 'error', ignoreIcc, ...(img.raw ? { raw: img.raw } : {}) }).timeout({
    seconds: Math.max(1, Math.ceil(timeoutMs / 1000)),
  });

/**
 * The photo turned upright, as 8-bit sRGB pixels (alpha kept), with the colour as resizeImage would have read it: its
 * own profile transform still to come when `ignoreIcc` kept libvips from applying it.
 */
async function upright(img: DecodedImage, ignoreIcc: boolean, maxPixels: number, timeoutMs: number): Promise<DecodedImage> {
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await open(img, ignoreIcc, maxPixels, timeoutMs).autoOrient().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw decodeError(e, timeoutMs);
  }
  const { width, height, channels } = out.info;
  if (width !== img.width || height !== img.height || (channels !== 3 && channels !== 4)) {
    throw new GatewayError(ErrorCode.INVALID_IMAGE, `unexpected decoded image ${width}x${height}x${channels}`);
  }
  return {
    bytes: out.data,
    raw: { width, height, channels },
    width,
    height,
    orientation: 1,
    srgbProfile: ignoreIcc && img.srgbProfile,
    rgbProfile: ignoreIcc ? img.rgbProfile : null,
    hasAlpha: channels === 4,
    isGrey: false,
    isSrgb: true,
  };
}

/**
 * A resize on the way to the model's size must stay a sane image (a 1x390000 strip cannot be center-cropped to 224x224).
 * Up to 4 times what is kept is sane whatever the limit: a CROP of 1024x1024 failed its load's warm-up (a 96x64 image,
 * limit 1e6 pixels) as "too extreme an aspect ratio".
 */
function checkIntermediate(rw: number, rh: number, w: number, h: number, maxPixels: number, kept: number): void {
  if (rw > 65_535 || rh > 65_535 || rw * rh > Math.max(maxPixels, 1_000_000, 4 * kept)) {
    throw new GatewayError(
      ErrorCode.INVALID_IMAGE,
      `an image of ${w}x${h} has too extreme an aspect ratio for this model's resize (it would be ${rw}x${rh} before cropping)`,
    );
  }
}

function roundTo(v: number, multiple: number, offset: number): number {
  return Math.max(1, Math.round((v - offset) / multiple)) * multiple + offset;
}

/**
 * The first line of a libvips error, without the names of its decoders ("VipsJpeg: premature end of JPEG image" ->
 * "premature end of JPEG image"; "Input buffer has corrupt header: webp: unable to parse image" -> "Input buffer has
 * corrupt header: unable to parse image") and without paths.
 */
function firstSentence(e: unknown): string {
  const parts = String((e as Error)?.message ?? e)
    .split('\n')[0]
    .split(': ')
    .filter((p, i, all) => i === all.length - 1 || /\s/.test(p)); // a part without a space is a decoder's name
  return parts
    .join(': ')
    .replace(/(^|\s)\/\S*/g, '$1<path>')
    .slice(0, 120);
}

/** Resize as the plan says; returns raw interleaved pixels (HWC, 1 or 3 channels) and the transform. */
/**
 * model.json's interpolation as sharp's resize kernel. libvips shrinks by whole factors with a box filter first, so
 * LINEAR on a large photo still averages every source pixel (no aliasing). The default is sharp's own (lanczos3);
 * LINEAR is what torchvision's and Keras's Resize, OpenCV's default and OpenVINO's PrePostProcessor use, and costs
 * less: 2.5 against 3.4 ms CPU per small photo here (bench/).
 */
const KERNELS = { LINEAR: 'linear', CUBIC: 'cubic', LANCZOS3: 'lanczos3', NEAREST: 'nearest' } as const;

export async function resizeImage(
  img: DecodedImage,
  plan: InputPlan,
  limits: number | ImageLimits,
): Promise<{ pixels: Buffer; transform: ImageTransform }> {
  const { maxPixels, timeoutMs = 10_000 } = limitsOf(limits);
  const { width: W0, height: H0 } = img;
  const pre = plan.pre;
  // a matrix/shaper profile's transform is ours, on the resized pixels (an RGB result without alpha only)
  const ownTransform = img.rgbProfile && img.isSrgb && !img.hasAlpha && plan.channels === 3 ? img.rgbProfile : null;
  const ignoreIcc = img.srgbProfile || ownTransform !== null;
  /** The resize to (w, h) in the displayed orientation, and what follows it (a crop or padding), done below. */
  let resized: [number, number] = [0, 0];
  let finish = (p: Sharp) => p;
  const resize = (w: number, h: number, after: (p: Sharp) => Sharp = (p) => p) => {
    resized = [w, h];
    finish = after;
  };
  let tw: number;
  let th: number;
  /** Where the image lies in the result (FILL pads it with a colour that is sRGB already). */
  let region: { left: number; top: number; width: number; height: number } | undefined;
  let scaleX: number;
  let scaleY: number;
  let offsetX = 0;
  let offsetY = 0;
  const background = { r: pre.fillColor[0], g: pre.fillColor[1], b: pre.fillColor[2], alpha: 1 };
  switch (pre.resizeType) {
    case 'SQUASH': {
      tw = plan.width!;
      th = plan.height!;
      resize(tw, th);
      scaleX = tw / W0;
      scaleY = th / H0;
      break;
    }
    case 'CROP': {
      tw = plan.width!;
      th = plan.height!;
      const scale = Math.max(tw / W0, th / H0) / pre.cropFraction;
      const rw = Math.max(tw, Math.round(W0 * scale));
      const rh = Math.max(th, Math.round(H0 * scale));
      checkIntermediate(rw, rh, W0, H0, maxPixels, (tw * th) / pre.cropFraction ** 2);
      const left = Math.floor((rw - tw) / 2);
      const top = Math.floor((rh - th) / 2);
      resize(rw, rh, (p) => p.extract({ left, top, width: tw, height: th })); // extract after resize: one pipeline
      scaleX = rw / W0;
      scaleY = rh / H0;
      offsetX = -left;
      offsetY = -top;
      break;
    }
    case 'FILL': {
      tw = plan.width!;
      th = plan.height!;
      const scale = Math.min(tw / W0, th / H0);
      const rw = Math.max(1, Math.min(tw, Math.round(W0 * scale)));
      const rh = Math.max(1, Math.min(th, Math.round(H0 * scale)));
      const left = pre.fillAlign === 'center' ? Math.floor((tw - rw) / 2) : 0;
      const top = pre.fillAlign === 'center' ? Math.floor((th - rh) / 2) : 0;
      resize(rw, rh, (p) => p.extend({ top, left, bottom: th - rh - top, right: tw - rw - left, background }));
      region = { left, top, width: rw, height: rh };
      scaleX = rw / W0;
      scaleY = rh / H0;
      offsetX = left;
      offsetY = top;
      break;
    }
    case 'NETWORK': {
      const limit = Math.min(1, (plan.width ?? Infinity) / W0, (plan.height ?? Infinity) / H0);
      tw = roundTo(W0 * limit, pre.sizeMultiple, pre.sizeOffset);
      th = roundTo(H0 * limit, pre.sizeMultiple, pre.sizeOffset);
      resize(tw, th);
      scaleX = tw / W0;
      scaleY = th / H0;
      break;
    }
  }
  const [rw, rh] = resized;
  // geometry is computed in the displayed orientation; a reduction runs in the stored one, then the result is turned
  // (see orient); an enlargement (on either axis) starts from the photo turned upright: libvips enlarges with pixel
  // positions that are not mirror-symmetric, so a turned enlargement put every detail a pixel off (stripes 15-20
  // levels apart on average), and sharp mirrors after resizing whatever the order of the calls. One more sharp call,
  // on a photo small enough to be made larger.
  if (img.orientation !== 1 && (rw > W0 || rh > H0)) return resizeImage(await upright(img, ignoreIcc, maxPixels, timeoutMs), plan, limits);
  const swap = img.orientation >= 5;
  let s = finish(
    orient(
      open(img, ignoreIcc, maxPixels, timeoutMs).resize(swap ? rh : rw, swap ? rw : rh, {
        fit: 'fill',
        kernel: KERNELS[pre.interpolation],
      }),
      img.orientation,
    ),
  );
  // alpha is dropped (flattened on white); grey images become three channels where the model wants three, and any
  // image one channel where the model wants one (a grey image with alpha or a palette would otherwise come out 3)
  if (img.hasAlpha) s = s.flatten({ background: '#ffffff' });
  if (plan.channels === 1) s = s.grayscale();
  else if (!img.isSrgb || img.hasAlpha) s = s.toColourspace('srgb');
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await s.raw().toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw decodeError(e, timeoutMs);
  }
  if (out.info.channels !== plan.channels || out.info.width !== tw || out.info.height !== th) {
    throw new GatewayError(ErrorCode.INVALID_IMAGE, `unexpected decoded image ${out.info.width}x${out.info.height}x${out.info.channels}`);
  }
  if (ownTransform) applyRgbTransform(ownTransform, out.data, tw, region);
  return { pixels: out.data, transform: { width: W0, height: H0, inputWidth: tw, inputHeight: th, scaleX, scaleY, offsetX, offsetY } };
}

/**
 * What the engine would have to do per pixel to take over pixelsToTensor (see PixelInput), or null where it stays
 * here: a per-pixel mean image, or a uint8 input that is scaled (its rounding and clamping are ours).
 */
export function pixelInputSpec(plan: InputPlan): PixelInput | null {
  const C = plan.channels;
  if (plan.mean && plan.mean.data.length !== C) return null;
  const pre = plan.pre;
  const k = pre.pixelScaling / 255;
  const std = pre.std ?? new Array<number>(C).fill(1);
  const mean = Array.from({ length: C }, (_, c) => (plan.mean ? plan.mean.data[c] : (pre.mean?.[c] ?? 0)));
  const scale = std.map((s) => k / s);
  const bias = mean.map((m, c) => -m / std[c]);
  if (plan.dtype === 'uint8' && (scale.some((s) => s !== 1) || bias.some((b) => b !== 0))) return null;
  return {
    input: plan.input,
    layout: plan.layout,
    channels: plan.channels,
    bgr: pre.colorChannels === 'BGR',
    scale,
    bias,
    dtype: plan.dtype,
  };
}

/** Interleaved 8-bit pixels -> the model's tensor (batch 1): channel order, scaling, mean/std, layout, dtype. */
export function pixelsToTensor(pixels: Uint8Array, width: number, height: number, plan: InputPlan): Tensor {
  const C = plan.channels;
  const hw = width * height;
  const pre = plan.pre;
  const k = pre.pixelScaling / 255;
  const meanImage = plan.mean && plan.mean.data.length !== C ? plan.mean.data : null;
  const meanOf = (c: number) => (plan.mean && !meanImage ? plan.mean.data[c] : (pre.mean?.[c] ?? 0));
  const std = pre.std ?? new Array(C).fill(1);
  const bgr = pre.colorChannels === 'BGR';
  const n = hw * C;
  const data = plan.dtype === 'float32' ? new Float32Array(n) : plan.dtype === 'float16' ? new Uint16Array(n) : new Uint8Array(n);
  const nchw = plan.layout === 'NCHW';
  // value = (pixel * k - mean) / std = pixel * a + b, one multiply-add per sample
  for (let c = 0; c < C; c++) {
    const src = bgr ? 2 - c : c;
    const a = k / std[c];
    const b = -meanOf(c) / std[c];
    const inv = 1 / std[c];
    const base = nchw ? c * hw : c;
    const step = nchw ? 1 : C;
    if (data instanceof Float32Array && !meanImage) {
      for (let p = 0, i = src, o = base; p < hw; p++, i += C, o += step) data[o] = pixels[i] * a + b;
      continue;
    }
    for (let p = 0, i = src, o = base; p < hw; p++, i += C, o += step) {
      const v = meanImage ? (pixels[i] * k - meanImage[c * hw + p]) * inv : pixels[i] * a + b;
      if (data instanceof Float32Array) data[o] = v;
      else if (data instanceof Uint16Array) data[o] = floatToHalf(v);
      else data[o] = v < 0 ? 0 : v > 255 ? 255 : Math.round(v);
    }
  }
  const shape = nchw ? [1, C, height, width] : [1, height, width, C];
  return { dtype: plan.dtype, shape, data };
}

/** probe -> resize -> tensor. */
export async function preprocess(
  img: DecodedImage,
  plan: InputPlan,
  limits: number | ImageLimits,
): Promise<{ tensor: Tensor; transform: ImageTransform; input: string }> {
  const { pixels, transform } = await resizeImage(img, plan, limits);
  if (plan.pixelInput) {
    // no per-pixel work here: the decoder's buffer goes to the engine as it is
    const data = new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength);
    return {
      tensor: { dtype: 'uint8', shape: [1, transform.inputHeight, transform.inputWidth, plan.channels], data },
      transform,
      input: plan.pixelInput,
    };
  }
  return { tensor: pixelsToTensor(pixels, transform.inputWidth, transform.inputHeight, plan), transform, input: plan.input };
}
