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

const escapeXml = (s: string) => s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** The photo (EXIF-rotated) with labelled boxes, as PNG. */
export async function drawDetections(image: Uint8Array, width: number, height: number, objects: DetectedObject[]): Promise<Buffer> {
  const stroke = Math.max(2, Math.round(Math.min(width, height) / 200));
  const font = Math.max(12, Math.round(Math.min(width, height) / 30));
  const parts = objects.map((o) => {
    const [r, g, b] = classColor(o.classId);
    const x = o.box.xMin * width;
    const y = o.box.yMin * height;
    const w = (o.box.xMax - o.box.xMin) * width;
    const h = (o.box.yMax - o.box.yMin) * height;
    const text = escapeXml(`${o.label ?? o.classId} ${(o.confidence * 100).toFixed(0)}%`);
    const ty = y > font + 4 ? y - 4 : y + font + 2;
    return (
      `<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="none" stroke="rgb(${r},${g},${b})" stroke-width="${stroke}"/>` +
      `<text x="${x + 2}" y="${ty}" font-family="sans-serif" font-size="${font}" fill="rgb(${r},${g},${b})" stroke="black" stroke-width="0.5">${text}</text>`
    );
  });
  const svg = Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${parts.join('')}</svg>`);
  return sharp(image)
    .rotate()
    .composite([{ input: svg, top: 0, left: 0 }])
    .png()
    .toBuffer();
}

/** The class map in colour (background transparent) over the photo, as PNG. */
export async function drawOverlay(image: Uint8Array, map: ClassMap, alpha = 0.5): Promise<Buffer> {
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
  return sharp(image)
    .rotate()
    .composite([{ input: rgba, raw: { width: map.width, height: map.height, channels: 4 }, top: 0, left: 0 }])
    .png()
    .toBuffer();
}

/**
 * The photo decoded once, EXIF orientation applied and colour in sRGB, for crops: a detection answer whose boxes are
 * each classified decodes its photo once, not once per box.
 */
export async function decodeOriented(image: DecodedImage, { timeoutMs = 10_000 }: { timeoutMs?: number } = {}): Promise<RawImage> {
  if (image.raw) return { pixels: image.bytes, ...image.raw };
  try {
    // the size was checked when the image was probed; the same decode rules as the resize (a damaged file is an error)
    const { data, info } = await sharp(image.bytes, { limitInputPixels: false, failOn: 'error' })
      .timeout({ seconds: Math.max(1, Math.ceil(timeoutMs / 1000)) })
      .rotate()
      .raw()
      .toBuffer({ resolveWithObject: true });
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
