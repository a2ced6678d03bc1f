import sharp from 'sharp';
import type { DetectedObject } from './detection.ts';
import { decodeError, type DecodedImage, type RawImage } from './preprocess.ts';
import { SLICE, yieldToEventLoop, type ClassMap } from './segmentation.ts';

/** A fixed, distinct colour per class id (golden-angle hues). */
export function classColor(id: number): [number, number, number] {
  const h = (id * 137.508) % 360;
  const s = 0.75;
  const l = 0.5;
  const f = (n: number) => {
    const k = (n + h / 30) % 12;
    return Math.round(255 * (l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

/** Longest label drawn (in characters); the rest is cut, with an ellipsis. */
const MAX_LABEL_CHARS = 64;

/**
 * A label as SVG text: characters XML cannot hold (control characters, lone surrogates, U+FFFE/U+FFFF) written as
 * `\u001b`-style escapes, markup escaped, cut at MAX_LABEL_CHARS (librsvg lays out every character it is given).
 */
export function svgText(label: string): string {
  const chars = [...label];
  const text = chars.length > MAX_LABEL_CHARS ? `${chars.slice(0, MAX_LABEL_CHARS - 1).join('')}…` : label;
  return text
    .replace(/[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu, (c) => `\\u${c.codePointAt(0)!.toString(16).padStart(4, '0')}`)
    .replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * sharp on the photo as it was decoded for inference (a damaged file that decoded then draws, rather than fail on
 * libvips' warning), EXIF orientation applied, within the decode time limit. Its size was checked when it was probed.
 */
const openOriented = (image: DecodedImage, timeoutMs: number) =>
  sharp(image.bytes, { limitInputPixels: false, failOn: 'error', ...(image.raw ? { raw: image.raw } : {}) })
    .timeout({ seconds: Math.max(1, Math.ceil(timeoutMs / 1000)) })
    .rotate();

/** What a drawing's libvips call threw, as the decode's errors are told (INVALID_IMAGE; past DECODE_TIMEOUT_MS, drawing). */
async function drawn(draw: () => Promise<Buffer>, timeoutMs: number): Promise<Buffer> {
  try {
    return await draw();
  } catch (e) {
    throw decodeError(e, timeoutMs, 'drawing the image');
  }
}

/** The photo (EXIF-rotated) with labelled boxes, as PNG. */
export async function drawDetections(
  image: DecodedImage,
  objects: DetectedObject[],
  { timeoutMs = 10_000 }: { timeoutMs?: number } = {},
): Promise<Buffer> {
  const { width, height } = image;
  const stroke = Math.max(2, Math.round(Math.min(width, height) / 200));
  const font = Math.max(12, Math.round(Math.min(width, height) / 30));
  const parts = objects.map((o) => {
    const [r, g, b] = classColor(o.classId);
    const x = o.box.xMin * width;
    const y = o.box.yMin * height;
    const w = (o.box.xMax - o.box.xMin) * width;
    const h = (o.box.yMax - o.box.yMin) * height;
    const text = `${svgText(o.label ?? String(o.classId))} ${(o.confidence * 100).toFixed(0)}%`;
    const ty = y > font + 4 ? y - 4 : y + font + 2;
    return (
      `<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="none" stroke="rgb(${r},${g},${b})" stroke-width="${stroke}"/>` +
      `<text x="${x + 2}" y="${ty}" font-family="sans-serif" font-size="${font}" fill="rgb(${r},${g},${b})" stroke="black" stroke-width="0.5">${text}</text>`
    );
  });
  const svg = Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${parts.join('')}</svg>`);
  return drawn(
    () =>
      openOriented(image, timeoutMs)
        .composite([{ input: svg, top: 0, left: 0 }])
        .png()
        .toBuffer(),
    timeoutMs,
  );
}

/** The class map in colour (background transparent) over the photo, as PNG. */
export async function drawOverlay(
  image: DecodedImage,
  map: ClassMap,
  { alpha = 0.5, timeoutMs = 10_000 }: { alpha?: number; timeoutMs?: number } = {},
): Promise<Buffer> {
  const rgba = Buffer.alloc(map.width * map.height * 4);
  const a = Math.round(alpha * 255);
  const cache = new Map<number, [number, number, number]>();
  for (let i = 0; i < map.ids.length; i++) {
    if ((i + 1) % SLICE === 0) await yieldToEventLoop(); // a whole photo: never hold the event loop for long
    const id = map.ids[i];
    if (id === 0) continue;
    let c = cache.get(id);
    if (!c) cache.set(id, (c = classColor(id)));
    rgba[i * 4] = c[0];
    rgba[i * 4 + 1] = c[1];
    rgba[i * 4 + 2] = c[2];
    rgba[i * 4 + 3] = a;
  }
  // the layer goes in raw: encoding it as PNG only for composite() to decode it again cost a full-size PNG per overlay
  const layer = { input: rgba, raw: { width: map.width, height: map.height, channels: 4 as const }, top: 0, left: 0 };
  return drawn(() => openOriented(image, timeoutMs).composite([layer]).png().toBuffer(), timeoutMs);
}

/**
 * The photo decoded once, EXIF orientation applied and colour in sRGB, for crops: a detection answer whose boxes are
 * each classified decodes its photo once, not once per box.
 */
export async function decodeOriented(image: DecodedImage, { timeoutMs = 10_000 }: { timeoutMs?: number } = {}): Promise<RawImage> {
  if (image.raw) return { pixels: image.bytes, ...image.raw };
  try {
    // the size was checked when the image was probed; the same decode rules as the resize (a damaged file is an error)
    const { data, info } = await openOriented(image, timeoutMs).raw().toBuffer({ resolveWithObject: true });
    return { pixels: data, width: info.width, height: info.height, channels: info.channels as RawImage['channels'] };
  } catch (e) {
    throw decodeError(e, timeoutMs);
  }
}

/** A normalized box cut out of decoded pixels, as pixels (at least one pixel, inside the picture). */
export function cropRaw(image: RawImage, box: { xMin: number; yMin: number; xMax: number; yMax: number }): RawImage {
  const { width, height, channels } = image;
  const left = Math.max(0, Math.min(width - 1, Math.floor(box.xMin * width)));
  const top = Math.max(0, Math.min(height - 1, Math.floor(box.yMin * height)));
  const right = Math.max(left + 1, Math.min(width, Math.ceil(box.xMax * width)));
  const bottom = Math.max(top + 1, Math.min(height, Math.ceil(box.yMax * height)));
  const w = right - left;
  const h = bottom - top;
  const pixels = Buffer.allocUnsafe(w * h * channels);
  const src = Buffer.from(image.pixels.buffer, image.pixels.byteOffset, image.pixels.byteLength);
  for (let y = 0; y < h; y++) {
    const from = ((top + y) * width + left) * channels;
    src.copy(pixels, y * w * channels, from, from + w * channels);
  }
  return { pixels, width: w, height: h, channels };
}
