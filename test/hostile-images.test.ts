import { readFile } from 'node:fs/promises';
import { crc32, deflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { readJpegHeader } from '../src/vision/jpeg-header.ts';
import { errorCode, fixture, image, startGateway, type TestGateway } from './helpers.ts';

/** A marker segment: 0xFF, the marker, its length (itself included), the payload. */
const segment = (marker: number, payload: Buffer) =>
  Buffer.concat([Buffer.from([0xff, marker, (payload.length + 2) >> 8, (payload.length + 2) & 0xff]), payload]);

/** The JPEG without its APPn segments (so that what a test adds is all there is). */
function withoutApp(jpeg: Buffer): Buffer {
  const out = [jpeg.subarray(0, 2)];
  for (let at = 2; ;) {
    const marker = jpeg[at + 1];
    if (marker === 0xda) return Buffer.concat([...out, jpeg.subarray(at)]);
    const end = at + 2 + jpeg.readUInt16BE(at + 2);
    if (!(marker >= 0xe0 && marker <= 0xef)) out.push(jpeg.subarray(at, end));
    at = end;
  }
}

const afterSoi = (jpeg: Buffer, ...segments: Buffer[]) => Buffer.concat([jpeg.subarray(0, 2), ...segments, jpeg.subarray(2)]);

/** An APP1 EXIF segment (little-endian TIFF, IFD0 holding the orientation), after `prefix` ("Exif\0\0" in a real one). */
function exif(orientation: number, prefix = 'Exif\0\0'): Buffer {
  const tiff = Buffer.alloc(8 + 2 + 12 + 4);
  tiff.write('II*\0', 0, 'latin1');
  tiff.writeUInt32LE(8, 4);
  tiff.writeUInt16LE(1, 8);
  tiff.writeUInt16LE(0x0112, 10);
  tiff.writeUInt16LE(3, 12);
  tiff.writeUInt32LE(1, 14);
  tiff.writeUInt16LE(orientation, 18);
  return segment(0xe1, Buffer.concat([Buffer.from(prefix, 'latin1'), tiff]));
}

/** APP2 ICC_PROFILE chunks of a profile (sequence 1 to n of n), after `prefix` ("ICC_PROFILE\0" in a real one). */
function iccSegments(icc: Buffer, prefix = 'ICC_PROFILE\0'): Buffer[] {
  const n = Math.ceil(icc.length / 65519);
  return Array.from({ length: n }, (_, i) =>
    segment(0xe2, Buffer.concat([Buffer.from(prefix, 'latin1'), Buffer.from([i + 1, n]), icc.subarray(i * 65519, (i + 1) * 65519)])),
  );
}

/** One of libvips' built-in profiles ('srgb', 'p3'), as sharp embeds it. */
const builtinProfile = async (name: string) =>
  Buffer.from(
    (
      await sharp(
        await sharp({ create: { width: 8, height: 8, channels: 3, background: '#888' } })
          .withIccProfile(name)
          .jpeg()
          .toBuffer(),
      ).metadata()
    ).icc!,
  );

/**
 * A progressive JPEG of size x size whose real scans are followed by `scans` AC scans of the first component that hold
 * nothing (one end-of-band run over every block): a few dozen bytes each, and each costs the decoder a pass over every
 * block of the photo.
 */
async function emptyScans(size: number, scans: number): Promise<Buffer> {
  const progressive = await sharp({ create: { width: size, height: size, channels: 3, background: '#7a9' } })
    .jpeg({ progressive: true, quality: 50 })
    .toBuffer();
  // an AC table (class 1, id 3) of one code, "0", for EOB14: a run of 2^14 + 14 extra bits of blocks
  const dht = Buffer.from([0xff, 0xc4, 0x00, 0x14, 0x13, 1, ...new Array(15).fill(0), 0xe0]);
  let bits = '';
  for (let left = Math.ceil(size / 8) ** 2; left > 0; left -= 32767) bits += '0' + '1'.repeat(14);
  while (bits.length % 8) bits += '1';
  const data: number[] = [];
  for (let i = 0; i < bits.length; i += 8) {
    const v = parseInt(bits.slice(i, i + 8), 2);
    data.push(...(v === 0xff ? [0xff, 0] : [v]));
  }
  // component 1, AC table 3, spectral band 1..63, no successive approximation
  const scan = Buffer.from([0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x03, 1, 63, 0x00, ...data]);
  return Buffer.concat([progressive.subarray(0, -2), dht, ...new Array(scans).fill(scan), Buffer.from([0xff, 0xd9])]);
}

const CLASSIFY = `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { label confidence } } }`;

describe('hostile images against the decoding path', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet'), yolox: fixture('yolox') } });
  });
  afterAll(async () => {
    await gw?.close();
  });
  const top1 = async (bytes: Uint8Array) => {
    const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: bytes } });
    expect(r.errors).toBeUndefined();
    return r.data.classify.predictions[0] as { label: string; confidence: number };
  };

  it('a progressive JPEG of thousands of empty scans (300 KB) does not hold a decoding thread past DECODE_TIMEOUT_MS, nor another client behind it', async () => {
    const bomb = await emptyScans(6000, 1500); // 36 MP: under MAX_IMAGE_PIXELS
    expect(bomb.length).toBeLessThan(400_000);
    const t0 = performance.now();
    const attack = gw.gql(CLASSIFY, { f: null }, { files: { f: bomb } }).then((r) => ({ r, ms: performance.now() - t0 }));
    await new Promise((r) => setTimeout(r, 200));
    const t1 = performance.now();
    // another client's photo, while the attack is being decoded
    expect((await top1(await readFile(image('bee.jpeg')))).label).toBe('bee');
    const otherMs = performance.now() - t1;
    const { r, ms } = await attack;
    // refused (or answered) at once: the scans cost the decoder ~4 ms each at 36 MP, and libvips cannot be stopped
    // while it reads them (DECODE_TIMEOUT_MS is checked once they are read)
    expect(ms, `attack answered after ${Math.round(ms)} ms: ${JSON.stringify(r.errors ?? r.data)}`).toBeLessThan(3000);
    expect(otherMs).toBeLessThan(3000);
    if (r.errors) expect(['INVALID_IMAGE', 'IMAGE_TOO_LARGE']).toContain(errorCode(r));
  });

  it('an APP1 that libvips reads as the EXIF block ("Exif" and two other bytes) before a real one: boxes, crops and the drawing agree on the orientation', async () => {
    const dog = withoutApp(await readFile(image('dog.jpg')));
    // libvips takes the first APP1 that starts with "Exif" (which holds no orientation it can read): orientation 1
    const photo = afterSoi(dog, exif(1, 'Exif\0\x01'), exif(6));
    const libvips = await sharp(photo).metadata();
    const DETECT = `mutation($f: File!) { detect(model: "yolox", image: { file: $f }) {
      imageWidth imageHeight objects { label classify(model: "mobilenet", topK: 1) { predictions { label } } } annotatedImage } }`;
    const r = await gw.gql(DETECT, { f: null }, { files: { f: photo } });
    expect(r.errors, JSON.stringify(r.errors)).toBeUndefined();
    const { imageWidth, imageHeight, annotatedImage } = r.data.detect;
    expect([imageWidth, imageHeight]).toEqual([libvips.autoOrient.width, libvips.autoOrient.height]);
    const drawn = await sharp(Buffer.from(annotatedImage, 'base64')).metadata();
    expect([drawn.width, drawn.height]).toEqual([imageWidth, imageHeight]);
    // the crops are cut where the boxes are: the same labels as on the photo without the EXIF blocks
    const plain = await gw.gql(DETECT, { f: null }, { files: { f: dog } });
    const labels = (d: any) => d.detect.objects.map((o: any) => `${o.label}: ${o.classify.predictions[0].label}`);
    expect(labels(r.data)).toEqual(labels(plain.data));
  });

  it('the JPEG header reader reads the ICC profile libvips reads, or leaves it to libvips (APP2 chunks libvips takes and it did not)', async () => {
    const bee = withoutApp(await readFile(image('bee.jpeg')));
    const [srgb, p3] = await Promise.all([builtinProfile('srgb'), builtinProfile('p3')]);
    const half = Math.floor(p3.length / 2);
    const chunk = (seq: number, count: number, data: Buffer, prefix = 'ICC_PROFILE\0') =>
      segment(0xe2, Buffer.concat([Buffer.from(prefix, 'latin1'), Buffer.from([seq, count]), data]));
    const photos = {
      // "ICC_PROFILE" and another byte: libvips reads it as a chunk (the later sequence 1 wins)
      'a second sequence 1 after "ICC_PROFILE\\x01"': afterSoi(bee, ...iccSegments(srgb), ...iccSegments(p3, 'ICC_PROFILE\x01')),
      // a chunk of no data: libvips ignores it, and joins the chunks before the gap
      'an empty chunk 2 of 3': afterSoi(
        bee,
        chunk(1, 3, p3.subarray(0, half)),
        chunk(2, 3, Buffer.alloc(0)),
        chunk(3, 3, p3.subarray(half)),
      ),
    };
    for (const [name, photo] of Object.entries(photos)) {
      const read = readJpegHeader(photo);
      if (!read) continue; // left to libvips
      const theirs = (await sharp(photo).metadata()).icc;
      expect(read.icc ? Buffer.from(read.icc).toString('hex') : null, name).toEqual(theirs ? theirs.toString('hex') : null);
    }
  });

  it('a linear-light profile whose name says sRGB ("GIMP built-in Linear sRGB") is converted like the same profile of another name', async () => {
    // libvips' sRGB profile with a tone curve of gamma 1.0 (linear light), under a name of our choice
    const srgb = await builtinProfile('srgb');
    const linearProfile = (description: string) => {
      const text = Buffer.from(description, 'utf16le').swap16();
      const desc = Buffer.alloc(28 + text.length + ((4 - (text.length % 4)) % 4));
      desc.write('mluc', 0, 'latin1');
      desc.writeUInt32BE(1, 8);
      desc.writeUInt32BE(12, 12);
      desc.write('enUS', 16, 'latin1');
      desc.writeUInt32BE(text.length, 20);
      desc.writeUInt32BE(28, 24);
      text.copy(desc, 28);
      const icc = Buffer.concat([srgb, desc]);
      expect(icc.toString('latin1', 132, 136)).toBe('desc');
      icc.writeUInt32BE(srgb.length, 136);
      icc.writeUInt32BE(28 + text.length, 140);
      icc.writeUInt32BE(icc.length, 0);
      const trc = icc.indexOf('para', 128, 'latin1');
      icc.writeUInt16BE(0, trc + 8); // function 0: y = x^g
      icc.writeInt32BE(65536, trc + 12); // g = 1.0
      return icc;
    };
    // the photo's pixels in linear light, as an editor working in linear light exports them
    const { data, info } = await sharp(await readFile(image('peacock.jpeg')))
      .raw()
      .toBuffer({ resolveWithObject: true });
    const toLinear = (v: number) => Math.round(255 * (v / 255 <= 0.04045 ? v / 255 / 12.92 : ((v / 255 + 0.055) / 1.055) ** 2.4));
    const linear = await sharp(Buffer.from(data.map(toLinear)), { raw: { width: info.width, height: info.height, channels: 3 } })
      .jpeg({ quality: 95 })
      .toBuffer();
    const tagged = (name: string) => afterSoi(withoutApp(linear), ...iccSegments(linearProfile(name)));
    const other = await top1(tagged('Linear RGB'));
    expect(other.label).toBe('peacock');
    for (const name of ['GIMP built-in Linear sRGB', 'sRGB-elle-V4-g10.icc']) {
      const got = await top1(tagged(name));
      expect(got.label, name).toBe(other.label);
      expect(Math.abs(got.confidence - other.confidence), `${name}: ${got.confidence} against ${other.confidence}`).toBeLessThan(0.02);
    }
  });

  it('a profile whose tone curves Little CMS reads differently (gamma 0 or below, values below black) is converted as libvips converts it', async () => {
    const p3 = await builtinProfile('p3');
    /** Display P3 with its three tone curves replaced by one parametric curve (function, parameters). */
    const withCurve = (fn: number, ...params: number[]) => {
      const trc = Buffer.alloc(12 + 4 * params.length);
      trc.write('para', 0, 'latin1');
      trc.writeUInt16BE(fn, 8);
      params.forEach((v, i) => trc.writeInt32BE(Math.round(v * 65536), 12 + 4 * i));
      const icc = Buffer.concat([p3, trc]);
      for (let i = 0; i < icc.readUInt32BE(128); i++) {
        const at = 132 + 12 * i;
        if (!/^[rgb]TRC$/.test(icc.toString('latin1', at, at + 4))) continue;
        icc.writeUInt32BE(p3.length, at + 4);
        icc.writeUInt32BE(trc.length, at + 8);
      }
      icc.writeUInt32BE(icc.length, 0);
      return icc;
    };
    const bee = withoutApp(await readFile(image('bee.jpeg')));
    const curves: [string, Buffer][] = [
      ['y = x^0 (Little CMS: 1 at black too)', withCurve(0, 0)],
      ['y = x^-1', withCurve(0, -1)],
      ['y = (x)^2.2 - 0.2 (below black)', withCurve(2, 2.2, 1, 0, -0.2)],
    ];
    for (const [name, icc] of curves) {
      const photo = afterSoi(bee, ...iccSegments(icc));
      // libvips' reading of the photo: its colours through the profile, in sRGB, without loss
      const byLibvips = await sharp(photo).png().toBuffer();
      const [got, want] = [await top1(photo), await top1(byLibvips)];
      expect(got.label, name).toBe(want.label);
      expect(Math.abs(got.confidence - want.confidence), name).toBeLessThan(0.05);
    }
  });

  it('PNGs of 140 KB whose iCCP chunk inflates to a 52 MB profile do not leave gigabytes of memory held', async () => {
    const png = await sharp(await readFile(image('bee.jpeg')))
      .png()
      .toBuffer();
    const p3 = await builtinProfile('p3');
    const crc = (b: Uint8Array) => crc32(b); // PNG's chunk CRC
    // Display P3, padded with zeros to 52 MB (its size field says so), compressed: what libspng still inflates
    const profile = Buffer.alloc(52_000_000);
    p3.copy(profile);
    profile.writeUInt32BE(profile.length, 0);
    const body = Buffer.concat([Buffer.from('iCCPx\0\0', 'latin1'), deflateSync(profile, { level: 9 })]);
    const iccp = Buffer.alloc(body.length + 8);
    iccp.writeUInt32BE(body.length - 4, 0);
    body.copy(iccp, 4);
    iccp.writeUInt32BE(crc(body), body.length + 4);
    const bomb = Buffer.concat([png.subarray(0, 33), iccp, png.subarray(33)]); // after IHDR
    expect(bomb.length).toBeLessThan(160_000);
    expect((await sharp(bomb).metadata()).icc?.length).toBe(52_000_000);
    const before = process.memoryUsage().rss;
    for (let round = 0; round < 4; round++) {
      const answers = await Promise.all([0, 1, 2].map(() => gw.gql(CLASSIFY, { f: null }, { files: { f: bomb } })));
      for (const r of answers) expect(r.data?.classify?.predictions[0].label ?? errorCode(r)).toBe('bee');
    }
    const grown = (process.memoryUsage().rss - before) / 1e6;
    // 12 requests, 1.7 MB sent in all
    expect(grown, `RSS grew ${Math.round(grown)} MB`).toBeLessThan(600);
  }, 60_000);
});
