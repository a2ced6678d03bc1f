/**
 * Colour conversion of RGB photos whose embedded ICC profile is a matrix/shaper profile (Display P3 from every iPhone,
 * Adobe RGB, Apple's Generic RGB, ProPhoto...) to sRGB, done here instead of by libvips. libvips hands each image to
 * Little CMS, which builds a new transform per call: ~5 ms of CPU per photo (pow() over its curve tables) however small
 * the photo, more than decoding and resizing one. The transform of such a profile is three tone curves, a 3x3 matrix
 * and sRGB's curve: built once per profile (cached), and applied to the model's input pixels (224x224: ~0.2 ms) after
 * the resize. Profiles of any other kind (LUT-based, grey, CMYK, Lab) and any that does not parse cleanly return null
 * and keep libvips' transform.
 *
 * sharp asks Little CMS for the perceptual intent, which a matrix/shaper profile serves with its colorimetric matrix;
 * Little CMS adds black point compensation for v4 profiles, which changes nothing when the profile's black is 0 (its
 * curves start at 0). A profile whose black is not 0, or that is odd in any way (a tag twice), stays with libvips.
 * Tests compare the result with libvips' on P3 and Generic RGB photos.
 */

/** An RGB -> sRGB transform: three input curves (8-bit code -> linear light), a matrix, sRGB's output curve. */
export interface RgbTransform {
  /** 3 x 256 linear values, red then green then blue. */
  readonly curves: Float32Array;
  /** Row-major 3x3: linear source RGB -> linear sRGB (both relative to the D50 PCS). */
  readonly matrix: Float64Array;
}

/** sRGB as the ICC profiles state it: colorants adapted to D50 (rXYZ, gXYZ, bXYZ columns). */
const SRGB_TO_XYZ = [0.4360747, 0.3850649, 0.1430804, 0.2225045, 0.7168786, 0.0606169, 0.0139322, 0.0971045, 0.7141733];

const OUT_STEPS = 4096;
/** Linear light (0..1 in OUT_STEPS steps) -> 8-bit sRGB code. */
const SRGB_ENCODE = (() => {
  const t = new Uint8Array(OUT_STEPS + 1);
  for (let i = 0; i <= OUT_STEPS; i++) {
    const v = i / OUT_STEPS;
    const e = v <= 0.0031308 ? 12.92 * v : 1.055 * Math.pow(v, 1 / 2.4) - 0.055;
    t[i] = Math.round(Math.min(1, Math.max(0, e)) * 255);
  }
  return t;
})();

/** What an embedded profile asks of the decoder: nothing (sRGB), our transform, or libvips' (neither). */
export interface EmbeddedProfile {
  /** sRGB: its transform would change nothing, so it is skipped. */
  srgbProfile: boolean;
  /** Another matrix/shaper RGB profile: its transform, applied by the gateway after the resize. */
  rgbProfile: RgbTransform | null;
}

const cache = new Map<string, EmbeddedProfile>();
const CACHE_SIZE = 32;
/** Matrix/shaper profiles take 0.5 to a few KB (a curve table of 4096 entries: 8 KB); a larger one goes to libvips. */
const MAX_PROFILE_BYTES = 64 * 1024;

/** Worked out once per distinct profile (the 32 most recent kept): an image's profile costs a lookup. */
export function embeddedProfile(icc: Uint8Array): EmbeddedProfile {
  if (icc.length > MAX_PROFILE_BYTES) return { srgbProfile: isSrgbProfile(icc), rgbProfile: null }; // keys stay small
  const key = Buffer.from(icc.buffer, icc.byteOffset, icc.byteLength).toString('latin1');
  const hit = cache.get(key);
  if (hit !== undefined) {
    cache.delete(key); // most recently used last
    cache.set(key, hit);
    return hit;
  }
  // a name that says sRGB is not enough: "GIMP built-in Linear sRGB" or Elle Stone's "sRGB-elle-V4-g10" are sRGB's
  // primaries in linear light, whose transform changes every level; a profile we can read is skipped only when its
  // transform changes nothing (one that does not parse, a LUT-based sRGB profile, is taken at its name as before)
  const transform = rgbTransformOf(icc);
  const srgbProfile = isSrgbProfile(icc) && (transform === null || changesNothing(transform));
  const found = { srgbProfile, rgbProfile: srgbProfile ? null : transform };
  cache.set(key, found);
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value!);
  return found;
}

/** The transform for this profile, or null when libvips must do it. */
export function rgbTransformOf(icc: Uint8Array): RgbTransform | null {
  if (icc.length > MAX_PROFILE_BYTES) return null;
  try {
    return parse(icc);
  } catch {
    return null;
  }
}

/** Converts interleaved 8-bit RGB pixels in place: all of them, or a rectangle of an image `width` pixels wide. */
export function applyRgbTransform(
  t: RgbTransform,
  pixels: Uint8Array,
  width = pixels.length / 3,
  rect = { left: 0, top: 0, width, height: pixels.length / 3 / width },
): void {
  const { curves: c, matrix: m } = t;
  const [m0, m1, m2, m3, m4, m5, m6, m7, m8] = m.map((v) => v * OUT_STEPS);
  const enc = SRGB_ENCODE;
  for (let y = rect.top; y < rect.top + rect.height; y++) {
    const end = (y * width + rect.left + rect.width) * 3;
    for (let i = (y * width + rect.left) * 3; i < end; i += 3) {
      const r = c[pixels[i]];
      const g = c[256 + pixels[i + 1]];
      const b = c[512 + pixels[i + 2]];
      pixels[i] = enc[clampStep(m0 * r + m1 * g + m2 * b)];
      pixels[i + 1] = enc[clampStep(m3 * r + m4 * g + m5 * b)];
      pixels[i + 2] = enc[clampStep(m6 * r + m7 * g + m8 * b)];
    }
  }
}

/** Does the transform leave 8-bit colours as they are (within one level), on a grid through the RGB cube? */
function changesNothing(t: RgbTransform): boolean {
  const levels = Array.from({ length: 18 }, (_, i) => i * 15);
  const px = new Uint8Array(levels.length ** 3 * 3);
  let i = 0;
  for (const r of levels) for (const g of levels) for (const b of levels) px.set([r, g, b], i++ * 3);
  const out = px.slice();
  applyRgbTransform(t, out);
  return out.every((v, k) => Math.abs(v - px[k]) <= 1);
}

function clampStep(v: number): number {
  return v <= 0 ? 0 : v >= OUT_STEPS ? OUT_STEPS : (v + 0.5) | 0;
}

const tagName = (b: Uint8Array, at: number) => String.fromCharCode(b[at], b[at + 1], b[at + 2], b[at + 3]);

/**
 * Is an ICC profile sRGB? Read from its description tag ('desc' in ICC v2, 'mluc' in v4): the profiles cameras and
 * editors embed say "sRGB IEC61966-2.1" (or a variant). Anything else keeps its colour transform.
 */
function isSrgbProfile(icc: Uint8Array): boolean {
  const tag = readTags(icc)?.get('desc');
  if (!tag) return false;
  // 'desc': ASCII after an 8-byte type header and a 4-byte count; 'mluc': UTF-16BE records
  // (UTF-16 of an even length: an odd last byte, which a damaged profile may have, is no character)
  const text =
    tagName(tag, 0) === 'mluc'
      ? Buffer.from(tag.subarray(16, tag.length - (tag.length % 2)))
          .swap16()
          .toString('utf16le')
      : Buffer.from(tag.subarray(12)).toString('latin1');
  return /\bsRGB\b/.test(text.replace(/\0/g, ''));
}

/** The tag table (signature -> its bytes), or null if it is malformed or names a tag twice (Little CMS reads the first). */
function readTags(icc: Uint8Array): Map<string, Uint8Array> | null {
  if (icc.length < 132) return null;
  const view = new DataView(icc.buffer, icc.byteOffset, icc.byteLength);
  const count = view.getUint32(128);
  if (count > 100 || 132 + count * 12 > icc.length) return null;
  const tags = new Map<string, Uint8Array>();
  for (let i = 0; i < count; i++) {
    const at = 132 + i * 12;
    const offset = view.getUint32(at + 4);
    const size = view.getUint32(at + 8);
    if (offset + size > icc.length || size < 8) return null;
    const name = tagName(icc, at);
    if (tags.has(name)) return null;
    tags.set(name, icc.subarray(offset, offset + size));
  }
  return tags;
}

function parse(icc: Uint8Array): RgbTransform | null {
  if (icc.length < 132) return null;
  const view = new DataView(icc.buffer, icc.byteOffset, icc.byteLength);
  if (view.getUint32(0) > icc.length) return null; // cut short
  if (tagName(icc, 16) !== 'RGB ' || tagName(icc, 20) !== 'XYZ ' || tagName(icc, 36) !== 'acsp') return null;
  const tags = readTags(icc);
  if (!tags) return null;
  // a LUT-based profile is what Little CMS would use for it: leave it to libvips
  for (const lut of ['A2B0', 'A2B1', 'A2B2', 'D2B0', 'D2B1', 'D2B2']) if (tags.has(lut)) return null;
  const colorants = ['rXYZ', 'gXYZ', 'bXYZ'].map((n) => xyz(tags.get(n)));
  const trcs = ['rTRC', 'gTRC', 'bTRC'].map((n) => tags.get(n));
  if (colorants.some((c) => c === null) || trcs.some((t) => t === undefined)) return null;
  const curves = new Float32Array(768);
  for (let ch = 0; ch < 3; ch++) {
    const curve = toneCurve(trcs[ch]!);
    if (!curve) return null;
    for (let v = 0; v < 256; v++) {
      const y = curve(v / 255);
      // Little CMS does not clamp a curve before the matrix: one that leaves 0..1 is its to apply
      if (!Number.isFinite(y) || y < -1e-6 || y > 1 + 1e-6) return null;
      curves[ch * 256 + v] = Math.min(1, Math.max(0, y));
    }
    if (curves[ch * 256] > 0) return null; // black is not 0: Little CMS would compensate (v4), leave it to libvips
  }
  // source RGB -> XYZ: the colorants are the columns
  const src = [0, 1, 2].flatMap((row) => [0, 1, 2].map((col) => colorants[col]![row]));
  const toSrgb = invert3(SRGB_TO_XYZ);
  if (!toSrgb) return null;
  const matrix = new Float64Array(multiply3(toSrgb, src));
  if (!matrix.every(Number.isFinite)) return null;
  return { curves, matrix };
}

function s15Fixed16(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(at) / 65536;
}

function xyz(tag: Uint8Array | undefined): number[] | null {
  if (!tag || tag.length < 20 || tagName(tag, 0) !== 'XYZ ') return null;
  return [s15Fixed16(tag, 8), s15Fixed16(tag, 12), s15Fixed16(tag, 16)];
}

/** An ICC tone curve ('curv' or 'para') as a function on 0..1. */
function toneCurve(tag: Uint8Array): ((x: number) => number) | null {
  const view = new DataView(tag.buffer, tag.byteOffset, tag.byteLength);
  const type = tagName(tag, 0);
  if (type === 'curv') {
    if (tag.length < 12) return null;
    const n = view.getUint32(8);
    if (tag.length < 12 + 2 * n) return null;
    if (n === 0) return (x) => x;
    if (n === 1) {
      const gamma = view.getUint16(12) / 256;
      return gamma > 0 ? (x) => Math.pow(x, gamma) : null;
    }
    // read only the two entries each sample needs (a crafted table of 32K entries costs no more than a real one)
    const at = (i: number) => view.getUint16(12 + 2 * i) / 65535;
    return (x) => {
      const p = x * (n - 1);
      const i = Math.min(n - 2, Math.floor(p));
      return at(i) + (at(i + 1) - at(i)) * (p - i);
    };
  }
  if (type === 'para') {
    if (tag.length < 12) return null;
    const fn = view.getUint16(8);
    const needs = [1, 3, 4, 5, 7][fn];
    if (needs === undefined || tag.length < 12 + 4 * needs) return null;
    const [g, a = 0, b = 0, c = 0, d = 0, e = 0, f = 0] = Array.from({ length: needs }, (_, i) => s15Fixed16(tag, 12 + 4 * i));
    const pw = (v: number) => (v <= 0 ? 0 : Math.pow(v, g));
    switch (fn) {
      case 0:
        // as Little CMS: x^g at 0 too (1 when g is 0, which then is no black at 0)
        return (x) => (x < 0 ? 0 : Math.pow(x, g));
      case 1:
        return a === 0 ? null : (x) => (x >= -b / a ? pw(a * x + b) : 0);
      case 2:
        return a === 0 ? null : (x) => (x >= -b / a ? pw(a * x + b) + c : c);
      case 3:
        return (x) => (x >= d ? pw(a * x + b) : c * x);
      case 4:
        return (x) => (x >= d ? pw(a * x + b) + e : c * x + f);
    }
  }
  return null;
}

function multiply3(a: number[], b: number[]): number[] {
  const r: number[] = [];
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) r.push(a[i * 3] * b[j] + a[i * 3 + 1] * b[3 + j] + a[i * 3 + 2] * b[6 + j]);
  return r;
}

function invert3(m: number[]): number[] | null {
  const [a, b, c, d, e, f, g, h, i] = m;
  const A = e * i - f * h;
  const B = -(d * i - f * g);
  const C = d * h - e * g;
  const det = a * A + b * B + c * C;
  if (!det) return null;
  return [A, -(b * i - c * h), b * f - c * e, B, a * i - c * g, -(a * f - c * d), C, -(a * h - b * g), a * e - b * d].map((v) => v / det);
}
