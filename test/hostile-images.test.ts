import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { errorCode, fixture, image, startGateway, type TestGateway } from './helpers.ts';

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

});
