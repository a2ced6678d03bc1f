import sharp from 'sharp';
import { ErrorCode, GatewayError } from '../errors.ts';
import { toFloat32, type Tensor } from '../engine/types.ts';
import type { Labels } from '../repository/labels.ts';
import type { SegmentationConfig } from '../repository/model-config.ts';
import { toOriginalNormalized, type ImageTransform } from './preprocess.ts';
import type { Box } from './detection.ts';

/** A class-id map at the model's output resolution. */
export interface ClassMap {
  width: number;
  height: number;
  ids: Uint16Array;
  /** Its cells centred on the input's first and last pixels and evenly between (postprocessing.alignCorners). */
  alignCorners?: boolean;
}

/**
 * Where a map's cells lie on the model's input, along one axis: cell m covers input coordinates [origin + m x size,
 * origin + (m + 1) x size) (pixel i spans [i, i + 1)). By default the cells tile the input from its corner; with
 * alignCorners, cell m is centred on pixel m x (input - 1) / (map - 1), as TensorFlow's resize with align_corners (and
 * BodyPix's own upsampling of its maps) reads them. (perPixel: 1 / size, as the default mapping always computed it.)
 */
function cellsOf(mapSize: number, inputSize: number, alignCorners = false): { size: number; origin: number; perPixel: number } {
  if (!alignCorners || mapSize < 2) return { size: inputSize / mapSize, origin: 0, perPixel: mapSize / inputSize };
  const size = (inputSize - 1) / (mapSize - 1);
  return { size, origin: 0.5 - size / 2, perPixel: (mapSize - 1) / (inputSize - 1) };
}

export interface SegmentClass {
  classId: number;
  label: string | null;
  pixelFraction: number;
}
export interface Region {
  classId: number;
  label: string | null;
  pixels: number;
  box: Box;
}

/**
 * Output -> class ids per output pixel. Several channels: argmax. One channel: foreground where
 * activation(value) >= threshold. A map of class ids ([N,H,W], or an integer [N,1,H,W]): passes through.
 */
export function toClassMap(outputs: Record<string, Tensor>, cfg: SegmentationConfig, inputLayout: 'NCHW' | 'NHWC'): ClassMap {
  const name = cfg.output ?? Object.keys(outputs)[0];
  const t = outputs[name];
  if (!t) {
    throw new GatewayError(
      ErrorCode.INVALID_MODEL_CONFIG,
      `postprocessing.output: the model has no output ${JSON.stringify(name)} (outputs: ${Object.keys(outputs).join(', ')})`,
      { field: 'postprocessing.output' },
    );
  }
  const integer = t.dtype !== 'float32' && t.dtype !== 'float16';
  if (t.shape.length === 3 || (integer && t.shape.length === 4 && (t.shape[1] === 1 || t.shape[3] === 1))) {
    const [h, w] = t.shape.length === 3 ? [t.shape[1], t.shape[2]] : t.shape[1] === 1 ? [t.shape[2], t.shape[3]] : [t.shape[1], t.shape[2]];
    const ids = new Uint16Array(w * h);
    for (let i = 0; i < ids.length; i++) ids[i] = Math.max(0, Math.min(65535, Number(t.data[i])));
    return { width: w, height: h, ids, alignCorners: cfg.alignCorners };
  }
  if (t.shape.length !== 4)
    throw new GatewayError(ErrorCode.INFERENCE_FAILED, `segmentation output ${name} has shape [${t.shape.join(',')}]`);
  const layout = cfg.layout ?? inputLayout;
  const [C, h, w] = layout === 'NCHW' ? [t.shape[1], t.shape[2], t.shape[3]] : [t.shape[3], t.shape[1], t.shape[2]];
  const v = toFloat32(t);
  const hw = h * w;
  const ids = new Uint16Array(hw);
  const at = layout === 'NCHW' ? (c: number, p: number) => v[c * hw + p] : (c: number, p: number) => v[p * C + c];
  if (C === 1) {
    // compare in logit space for sigmoid: sigmoid(x) >= th  <=>  x >= logit(th)
    const th = cfg.activation === 'sigmoid' ? Math.log(cfg.threshold / (1 - cfg.threshold)) : cfg.threshold;
    for (let p = 0; p < hw; p++) ids[p] = at(0, p) >= th ? 1 : 0;
  } else {
    for (let p = 0; p < hw; p++) {
      let best = 0;
      let bv = at(0, p);
      for (let c = 1; c < C; c++) {
        const x = at(c, p);
        if (x > bv) {
          bv = x;
          best = c;
        }
      }
      ids[p] = best;
    }
  }
  return { width: w, height: h, ids, alignCorners: cfg.alignCorners };
}

/** Per-pixel work over a whole photo yields to the event loop every this many pixels (about a millisecond each). */
export const SLICE = 1 << 18;
export const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** For each original column (or row), the map column (row) it falls in; -1 outside the map (padding). */
function axisMapping(size: number, scale: number, offset: number, inputSize: number, mapSize: number, alignCorners?: boolean): Int32Array {
  const cells = cellsOf(mapSize, inputSize, alignCorners);
  const out = new Int32Array(size);
  for (let x = 0; x < size; x++) {
    const m = Math.floor(((x + 0.5) * scale + offset - cells.origin) * cells.perPixel);
    out[x] = m >= 0 && m < mapSize ? m : -1;
  }
  return out;
}

/** axisMapping of the columns and of the rows of the original image, onto `map`. */
function axesOf(map: ClassMap, t: ImageTransform): { xs: Int32Array; ys: Int32Array } {
  return {
    xs: axisMapping(t.width, t.scaleX, t.offsetX, t.inputWidth, map.width, map.alignCorners),
    ys: axisMapping(t.height, t.scaleY, t.offsetY, t.inputHeight, map.height, map.alignCorners),
  };
}

/** Nearest-neighbour map at the original image size; areas outside the model input (padding) are class 0. */
export function toOriginalSize(map: ClassMap, t: ImageTransform): ClassMap {
  const W = t.width;
  const H = t.height;
  const ids = new Uint16Array(W * H);
  const { xs, ys } = axesOf(map, t);
  for (let y = 0; y < H; y++) fillRow(ids, y, W, xs, ys[y], map);
  return { width: W, height: H, ids };
}

function fillRow(ids: Uint16Array, y: number, W: number, xs: Int32Array, my: number, map: ClassMap): void {
  if (my < 0) return;
  const row = my * map.width;
  const o = y * W;
  for (let x = 0; x < W; x++) {
    const mx = xs[x];
    if (mx >= 0) ids[o + x] = map.ids[row + mx];
  }
}

/**
 * toOriginalSize for the request path: the same map, built a slice at a time so that a 36-megapixel photo never holds
 * the event loop (and every other client) for more than about a millisecond at once.
 */
export async function toOriginalSizeAsync(map: ClassMap, t: ImageTransform): Promise<ClassMap> {
  const W = t.width;
  const H = t.height;
  const ids = new Uint16Array(W * H);
  const { xs, ys } = axesOf(map, t);
  const rowsPerSlice = Math.max(1, Math.floor(SLICE / Math.max(1, W)));
  for (let y = 0; y < H; y++) {
    fillRow(ids, y, W, xs, ys[y], map);
    if ((y + 1) % rowsPerSlice === 0) await yieldToEventLoop();
  }
  return { width: W, height: H, ids };
}

/**
 * The classes present and their share of the original image, exactly as toOriginalSize would count them but without
 * building it: the mapping is separable, so each map cell covers (original columns on it) x (original rows on it)
 * pixels, and the work is the size of the map plus the width and height of the photo.
 */
export function classHistogram(map: ClassMap, t: ImageTransform, labels: Labels | null): SegmentClass[] {
  const colWeight = new Float64Array(map.width);
  const rowWeight = new Float64Array(map.height);
  const { xs, ys } = axesOf(map, t);
  for (const mx of xs) if (mx >= 0) colWeight[mx]++;
  for (const my of ys) if (my >= 0) rowWeight[my]++;
  const counts = new Map<number, number>();
  let covered = 0;
  for (let my = 0; my < map.height; my++) {
    if (rowWeight[my] === 0) continue;
    for (let mx = 0; mx < map.width; mx++) {
      const n = rowWeight[my] * colWeight[mx];
      if (n === 0) continue;
      const id = map.ids[my * map.width + mx];
      counts.set(id, (counts.get(id) ?? 0) + n);
      covered += n;
    }
  }
  const total = t.width * t.height;
  if (covered < total) counts.set(0, (counts.get(0) ?? 0) + (total - covered)); // padding is background
  return [...counts.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([classId, n]) => ({ classId, label: labels?.get(classId) ?? null, pixelFraction: n / total }));
}

/** Connected regions (8-neighbour) of each non-background class, at the model's output resolution. */
export function regions(map: ClassMap, t: ImageTransform, labels: Labels | null, minPixels: number, unclipRatio = 0): Region[] {
  const { width: w, height: h, ids } = map;
  const seen = new Uint8Array(w * h);
  const stack: number[] = [];
  const out: Region[] = [];
  const cx = cellsOf(w, t.inputWidth, map.alignCorners);
  const cy = cellsOf(h, t.inputHeight, map.alignCorners);
  for (let start = 0; start < ids.length; start++) {
    const cls = ids[start];
    if (cls === 0 || seen[start]) continue;
    let n = 0;
    let x0 = w,
      y0 = h,
      x1 = -1,
      y1 = -1;
    seen[start] = 1;
    stack.push(start);
    while (stack.length) {
      const p = stack.pop()!;
      n++;
      const px = p % w;
      const py = (p - px) / w;
      if (px < x0) x0 = px;
      if (px > x1) x1 = px;
      if (py < y0) y0 = py;
      if (py > y1) y1 = py;
      for (let dy = -1; dy <= 1; dy++) {
        const ny = py + dy;
        if (ny < 0 || ny >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const nx = px + dx;
          if (nx < 0 || nx >= w) continue;
          const q = ny * w + nx;
          if (!seen[q] && ids[q] === cls) {
            seen[q] = 1;
            stack.push(q);
          }
        }
      }
    }
    if (n < minPixels) continue;
    // a DB text detector's map marks a shrunk kernel of each word: its box grown by area x ratio / perimeter on every
    // side (PaddleOCR's unclip, on the box rather than the contour's rotated rectangle), in the model's input pixels
    const bw = (x1 + 1 - x0) * cx.size;
    const bh = (y1 + 1 - y0) * cy.size;
    const grow = unclipRatio > 0 ? (bw * bh * unclipRatio) / (2 * (bw + bh)) : 0;
    const [xMin, yMin] = toOriginalNormalized(
      t,
      Math.max(0, cx.origin + x0 * cx.size - grow),
      Math.max(0, cy.origin + y0 * cy.size - grow),
    );
    const [xMax, yMax] = toOriginalNormalized(
      t,
      Math.min(t.inputWidth, cx.origin + (x1 + 1) * cx.size + grow),
      Math.min(t.inputHeight, cy.origin + (y1 + 1) * cy.size + grow),
    );
    // a region wholly in the padding (FILL) has no area in the photo: no region, as classes and detections say
    if (!(xMax > xMin && yMax > yMin)) continue;
    out.push({ classId: cls, label: labels?.get(cls) ?? null, pixels: n, box: { xMin, yMin, xMax, yMax } });
  }
  return out.sort((a, b) => a.box.yMin - b.box.yMin || a.box.xMin - b.box.xMin);
}

/** The mask as a PNG: one class id per pixel (8-bit grey, 16-bit when ids exceed 255). Sliced like toOriginalSizeAsync. */
export async function maskPng(map: ClassMap, maxId?: number): Promise<Buffer> {
  let max = maxId ?? 0;
  if (maxId === undefined) for (const id of map.ids) if (id > max) max = id;
  if (max <= 255) {
    const px = Buffer.alloc(map.ids.length);
    for (let i = 0; i < px.length; i++) {
      px[i] = map.ids[i];
      if ((i + 1) % SLICE === 0) await yieldToEventLoop();
    }
    return sharp(px, { raw: { width: map.width, height: map.height, channels: 1 } })
      .toColourspace('b-w')
      .png()
      .toBuffer();
  }
  // a Uint16Array raw input is read as 16-bit samples
  return sharp(map.ids, { raw: { width: map.width, height: map.height, channels: 1 } })
    .toColourspace('grey16')
    .png()
    .toBuffer();
}
