/**
 * What the probe of an upload needs from a JPEG, read from its markers in JavaScript: size, components, EXIF
 * orientation and the embedded ICC profile. sharp's metadata() gives the same, but as a round trip through the libuv
 * pool (0.2 ms of CPU and of latency per image, as much as the rest of the main thread's work on a small photo).
 *
 * Hand-written because it is part of the product's preprocessing and no maintained library reads all four (image-size
 * has no ICC). It answers only when the file is unambiguous; anything unusual (a second SOF, EXIF block or orientation, CMYK,
 * lossless or 12-bit coding, ICC chunks out of order, a malformed EXIF directory, a marker running past the end) returns
 * null and the caller asks libvips, so a strange file is judged by the decoder that will decode it. The decode itself
 * still checks the pixel limit from its own reading of the header (limitInputPixels).
 */
export interface JpegHeader {
  width: number;
  height: number;
  /** 1 (grey) or 3 (YCbCr / RGB). */
  components: 1 | 3;
  /** EXIF orientation, 1 when absent or not one of 1 to 8 (as libvips reads it). */
  orientation: number;
  /** The ICC profile, its chunks joined, or null. */
  icc: Uint8Array | null;
}

const ascii = (b: Uint8Array, at: number, s: string) => {
  if (at + s.length > b.length) return false;
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s.charCodeAt(i)) return false;
  return true;
};

/** The EXIF orientation in an APP1 "Exif\0\0" payload (a TIFF structure), or null when it cannot be read plainly. */
function exifOrientation(b: Uint8Array, start: number, end: number): number | null {
  const tiff = start + 6;
  if (tiff + 8 > end) return null;
  const little = ascii(b, tiff, 'II*\0');
  if (!little && !ascii(b, tiff, 'MM\0*')) return null;
  const u16 = (at: number) => (little ? b[at] | (b[at + 1] << 8) : (b[at] << 8) | b[at + 1]);
  const u32 = (at: number) => (little ? u16(at) + u16(at + 2) * 0x10000 : u16(at) * 0x10000 + u16(at + 2));
  const ifd = tiff + u32(tiff + 4);
  if (ifd < tiff + 8 || ifd + 2 > end) return null;
  const count = u16(ifd);
  if (ifd + 2 + count * 12 > end) return null;
  let orientation = 1;
  let seen = false;
  for (let i = 0; i < count; i++) {
    const entry = ifd + 2 + i * 12;
    if (u16(entry) !== 0x0112) continue;
    // SHORT, one value, stored in the entry itself; named once (twice: libvips decides which counts)
    if (seen || u16(entry + 2) !== 3 || u32(entry + 4) !== 1) return null;
    seen = true;
    orientation = u16(entry + 8);
  }
  return orientation >= 1 && orientation <= 8 ? orientation : 1;
}

export function readJpegHeader(b: Uint8Array): JpegHeader | null {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return null;
  let sof: { width: number; height: number; components: number } | null = null;
  let orientation: number | null = 1;
  let exifSeen = false;
  const icc: Uint8Array[] = [];
  let iccCount = 0;
  let at = 2;
  for (;;) {
    if (at >= b.length || b[at] !== 0xff) return null;
    while (at < b.length && b[at] === 0xff) at++; // fill bytes
    if (at >= b.length) return null;
    const marker = b[at++];
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) continue; // no payload
    if (marker === 0xd8 || marker === 0xd9) return null; // a second SOI, or EOI before any scan
    if (at + 2 > b.length) return null;
    const length = (b[at] << 8) | b[at + 1];
    const start = at + 2;
    const end = at + length;
    if (length < 2 || end > b.length) return null;
    if (marker === 0xda) break; // start of scan: the header is complete
    if (marker === 0xc0 || marker === 0xc1 || marker === 0xc2) {
      // baseline, extended or progressive Huffman: precision, height, width, components
      // one frame header, 8-bit, and a length that fits its component count (libjpeg refuses any other)
      if (sof || length < 8 || b[start] !== 8 || length !== 8 + 3 * b[start + 5]) return null;
      sof = { height: (b[start + 1] << 8) | b[start + 2], width: (b[start + 3] << 8) | b[start + 4], components: b[start + 5] };
    } else if (marker >= 0xc3 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return null; // lossless, hierarchical or arithmetic coding: libvips decides
    } else if (marker === 0xe1 && length > 6 && ascii(b, start, 'Exif')) {
      // libvips takes the first APP1 of more than 4 bytes that starts with "Exif" as the EXIF block, whatever the two
      // bytes after it: one that is not "Exif\0\0" (libexif then reads no orientation) is libvips' to judge, or the
      // boxes would be turned one way and the crops and drawings, which libvips turns, the other
      if (exifSeen || !ascii(b, start, 'Exif\0\0')) return null;
      exifSeen = true;
      orientation = exifOrientation(b, start, end);
      if (orientation === null) return null;
    } else if (marker === 0xe2 && ascii(b, start, 'ICC_PROFILE')) {
      // libvips takes every APP2 that starts with "ICC_PROFILE" and holds more than 14 bytes as a chunk (by its sequence
      // number, a later one replacing an earlier one) and ignores a shorter one: anything but a plain chunk is its to judge
      if (length <= 16 || b[start + 11] !== 0) return null;
      const seq = b[start + 12];
      const count = b[start + 13];
      if (count === 0 || (iccCount !== 0 && count !== iccCount) || seq !== icc.length + 1) return null;
      iccCount = count;
      icc.push(b.subarray(start + 14, end));
    }
    at = end;
  }
  if (!sof || sof.width === 0 || sof.height === 0) return null;
  if (sof.components !== 1 && sof.components !== 3) return null;
  if (icc.length !== iccCount) return null;
  const profile = icc.length === 0 ? null : icc.length === 1 ? icc[0] : Buffer.concat(icc);
  return { width: sof.width, height: sof.height, components: sof.components, orientation, icc: profile };
}

/**
 * The scans of a JPEG, counted up to `limit + 1` from its first start of scan on: a progressive JPEG can hold any
 * number, and libjpeg reads every one over every block of the photo before libvips can stop it (DECODE_TIMEOUT_MS is
 * checked once they are read). An empty AC scan takes a few dozen bytes and ~4 ms at 36 MP: 300 KB of them held a
 * decoding thread 13-40 s. Entropy-coded data holds no 0xFF 0xDA (a 0xFF there is followed by 0x00 or a restart
 * marker), so each one past the first start of scan is another scan (or, by chance, two bytes of a table segment
 * between scans: an over-count, never an under-count). Real photos have 1 (baseline) to about 10 (progressive).
 */
export function jpegScans(b: Uint8Array, limit: number): number {
  const buffer = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const sos = Buffer.from([0xff, 0xda]);
  // the header segments first, by their lengths (an APP segment may hold anything, an EXIF thumbnail's scans too)
  let first = -1;
  let sequential = false;
  for (let at = 2; at + 1 < b.length && b[at] === 0xff;) {
    while (at + 2 < b.length && b[at + 1] === 0xff) at++; // fill bytes
    const marker = b[at + 1];
    if (marker === 0xda) {
      first = at;
      break;
    }
    // a sequential (baseline or extended Huffman) frame: each component is in one scan, and libjpeg reads no scan past
    // the last one its output needs. Not counted: the count's pass over the file (0.3 ms per MB on the event loop) is
    // for progressive and other frames only
    if (marker === 0xc0 || marker === 0xc1) sequential = true;
    else if (marker >= 0xc2 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) sequential = false;
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01)
      at += 2; // no payload
    else if (at + 4 > b.length) break;
    else at += 2 + ((b[at + 2] << 8) | b[at + 3]);
  }
  if (first >= 0 && sequential) return 1;
  // a header that does not walk plainly (libjpeg skips bytes between markers): every 0xFF 0xDA counts
  if (first < 0) first = buffer.indexOf(sos, 2);
  let scans = 0;
  for (let at = first; at >= 0 && scans <= limit; at = buffer.indexOf(sos, at + 2)) scans++;
  return scans;
}
