import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import sharp from 'sharp';
import { readJpegHeader } from '../src/vision/jpeg-header.ts';
import { decodeBase64, whyNotBase64 } from '../src/base64.ts';
import { GatewayError } from '../src/errors.ts';
import { parseModelConfig, parseModelConfigText } from '../src/repository/model-config.ts';
import { parseLabelsFile, parseNpy } from '../src/repository/labels.ts';
import { planInput, preprocess, probeImage } from '../src/vision/preprocess.ts';
import { ElemType, identityModel } from './onnx-builder.ts';
import { floatToHalf, halfToFloat } from '../src/engine/types.ts';
import { image, startGateway, type TestGateway } from './helpers.ts';

/** Runs fn; passes when it returns or throws a GatewayError with one of the codes. Anything else fails. */
async function onlyTyped(codes: string[], fn: () => unknown | Promise<unknown>, limitMs = 5000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${limitMs} ms`)), limitMs)));
  try {
    await Promise.race([Promise.resolve().then(fn), hang]);
  } catch (e) {
    if (!(e instanceof GatewayError)) throw new Error(`untyped error: ${(e as Error)?.stack ?? e}`);
    expect(codes).toContain(e.code);
  } finally {
    clearTimeout(timer);
  }
}

const plan = planInput(parseModelConfig({ task: 'classification', preprocessing: { resizeType: 'FILL', targetSize: '32x32' } }), [
  { name: 'x', dtype: 'float32', shape: [1, 3, 32, 32], layout: null },
]);

describe('property: float16', () => {
  it('a double becomes the nearest half (ties to even), as a correctly rounded conversion gives', () => {
    // the reference: of the halves on either side (by their bits), the nearer; on a tie the even one
    const nearest = (v: number): number => {
      const h = floatToHalf(v);
      let best = h;
      for (const c of [h - 1, h + 1]) {
        if (c < 0 || c > 0xffff || (c & 0x7c00) === 0x7c00 || (c ^ h) & 0x8000) continue; // out of range, infinite, other sign
        const [dc, db] = [Math.abs(halfToFloat(c) - v), Math.abs(halfToFloat(best) - v)];
        if (dc < db || (dc === db && (c & 1) === 0)) best = c;
      }
      return best;
    };
    fc.assert(
      fc.property(fc.double({ min: -65000, max: 65000, noNaN: true }), (v) => floatToHalf(v) === nearest(v)),
      { numRuns: 20_000 },
    );
    for (const v of [1.0004882812500009, 2049.0000000000005, 2049, 1 + 2 ** -11, 6e-8, 3e-8, -0, 0])
      expect(floatToHalf(v)).toBe(nearest(v));
  });
});

describe('property: image bytes', () => {
  it('JPEG headers with bytes flipped: the header reader never throws, and what it reads libvips reads alike', async () => {
    const bee = await readFile(image('bee.jpeg'));
    const photos = [
      bee,
      await readFile(image('face1.jpg')),
      await sharp(bee).jpeg().withMetadata({ orientation: 6 }).withIccProfile('p3').toBuffer(),
    ];
    // flips inside the header (up to the start of scan), where the reader looks
    const mutated = fc
      .tuple(fc.constantFrom(...photos), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }))
      .map(([photo, flips]) => {
        const b = Buffer.from(photo);
        const sos = b.indexOf(Buffer.from([0xff, 0xda]));
        for (const [at, v] of flips) b[at % sos] = v;
        return b;
      });
    let compared = 0;
    await fc.assert(
      fc.asyncProperty(mutated, async (bytes) => {
        const read = readJpegHeader(bytes);
        if (!read) return;
        const meta = await sharp(bytes)
          .metadata()
          .catch(() => null);
        if (!meta) return;
        compared++;
        expect([read.width, read.height, read.components, read.orientation]).toEqual([
          meta.width,
          meta.height,
          meta.channels,
          meta.orientation ?? 1,
        ]);
      }),
      { numRuns: 400 },
    );
    expect(compared).toBeGreaterThan(100);
  });

  it('random bytes give a tensor or INVALID_IMAGE / IMAGE_TOO_LARGE', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 4096 }), async (bytes) => {
        await onlyTyped(['INVALID_IMAGE', 'IMAGE_TOO_LARGE'], async () => preprocess(await probeImage(bytes, 1e6), plan, 1e6));
      }),
      { numRuns: 150 },
    );
  });

  it('real photos with bytes flipped, cut or spliced give a tensor or a typed error', async () => {
    const photos = await Promise.all(['bee.jpeg', 'face1.jpg'].map((p) => readFile(image(p))));
    const mutated = fc
      .tuple(
        fc.constantFrom(...photos),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 20 }),
        fc.option(fc.nat()),
      )
      .map(([photo, flips, cut]) => {
        const b = Buffer.from(photo);
        for (const [at, v] of flips) b[at % b.length] = v;
        return cut === null ? b : b.subarray(0, cut % b.length);
      });
    await fc.assert(
      fc.asyncProperty(mutated, async (bytes) => {
        await onlyTyped(['INVALID_IMAGE', 'IMAGE_TOO_LARGE'], async () => preprocess(await probeImage(bytes, 1e7), plan, 1e7));
      }),
      { numRuns: 150 },
    );
  });
});

describe('property: model.json, labels and mean files', () => {
  const known = fc.record(
    {
      task: fc.oneof(fc.constantFrom('classification', 'detection', 'segmentation', 'raw'), fc.anything()),
      labels: fc.anything(),
      versionPolicy: fc.oneof(
        fc.record({ latest: fc.anything() }),
        fc.record({ all: fc.anything() }),
        fc.record({ specific: fc.anything() }),
        fc.anything(),
      ),
      batching: fc.dictionary(
        fc.constantFrom('maxBatchSize', 'maxDelayMs', 'maxQueueSize', 'timeoutMs', 'maxConcurrentBatches'),
        fc.oneof(fc.integer(), fc.double(), fc.anything()),
      ),
      preprocessing: fc.dictionary(
        fc.constantFrom(
          'input',
          'dimensionOrder',
          'targetSize',
          'resizeType',
          'fillColor',
          'fillAlign',
          'colorChannels',
          'pixelScaling',
          'mean',
          'std',
          'meanFile',
          'dataType',
          'cropFraction',
          'sizeMultiple',
        ),
        fc.anything(),
      ),
      postprocessing: fc.dictionary(
        fc.constantFrom(
          'format',
          'output',
          'activation',
          'threshold',
          'layers',
          'strides',
          'boxes',
          'scores',
          'minConfidence',
          'iouThreshold',
          'maxDetections',
        ),
        fc.anything(),
      ),
    },
    { requiredKeys: [] },
  );

  it('random documents parse or fail with INVALID_MODEL_CONFIG', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(known, fc.jsonValue(), fc.anything()), async (doc) => {
        await onlyTyped(['INVALID_MODEL_CONFIG'], () => parseModelConfig(doc));
      }),
      { numRuns: 500 },
    );
    await fc.assert(
      fc.asyncProperty(fc.string(), async (text) => {
        await onlyTyped(['INVALID_MODEL_CONFIG'], () => parseModelConfigText(text));
      }),
      { numRuns: 200 },
    );
  });

  it('random labels and .npy files parse or fail with INVALID_MODEL_CONFIG', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('labels.txt', 'labels.json', 'labels.pbtxt'), fc.string({ maxLength: 300 }), async (name, text) => {
        await onlyTyped(['INVALID_MODEL_CONFIG'], () => parseLabelsFile(name, text));
      }),
      { numRuns: 300 },
    );
    const npyish = fc.uint8Array({ maxLength: 200 }).map((b) => {
      const out = Buffer.concat([Buffer.from([0x93, ...Buffer.from('NUMPY'), 1, 0]), Buffer.from(b)]);
      return new Uint8Array(out);
    });
    await fc.assert(
      fc.asyncProperty(fc.oneof(npyish, fc.uint8Array({ maxLength: 64 })), async (bytes) => {
        await onlyTyped(['INVALID_MODEL_CONFIG'], () => parseNpy(bytes));
      }),
      { numRuns: 300 },
    );
  });
});

describe('property: raw tensors against a real engine', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { id: { onnx: identityModel(ElemType.INT32, ['N', 2, 3]), config: { task: 'raw' } } } });
  });
  afterAll(() => gw?.close());

  it('random dtypes, shapes and data sent to infer over HTTP run or fail with a typed error', async () => {
    const tensor = fc.record({
      name: fc.oneof(fc.constant('x'), fc.string({ maxLength: 5 })),
      dtype: fc.constantFrom('FLOAT32', 'FLOAT16', 'INT64', 'INT32', 'INT8', 'UINT8', 'BOOL', 'float64', ''),
      shape: fc.oneof(fc.constant([1, 2, 3]), fc.array(fc.integer({ min: -2, max: 70000 }), { maxLength: 5 })),
      data: fc.oneof(
        fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b).toString('base64')),
        fc.string({ maxLength: 40 }),
      ),
    });
    let ran = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(tensor, { minLength: 0, maxLength: 2 }),
        fc.option(fc.array(fc.constantFrom('y', 'z'), { maxLength: 2 })),
        async (inputs, outputs) => {
          const r = await gw.gql(
            `mutation($i: [TensorInput!]!, $o: [String!]) { infer(model: "id", inputs: $i, outputs: $o) { outputs { name } } }`,
            { i: inputs, o: outputs },
          );
          if (!r.errors) ran++;
          // enum and variable errors come from GraphQL itself (BAD_USER_INPUT), the rest from the gateway
          else for (const e of r.errors) expect(['INVALID_INPUT', 'BAD_USER_INPUT'], JSON.stringify(e)).toContain(e.extensions?.code);
        },
      ),
      { numRuns: 200, examples: [[[{ name: 'x', dtype: 'INT32', shape: [1, 2, 3], data: Buffer.alloc(24).toString('base64') }], null]] },
    );
    expect(ran).toBeGreaterThan(0);
  });
});

describe('property: base64 from clients', () => {
  it('round-trips any bytes (with or without padding and line breaks, a last one too, as `base64`, Python and openssl write it); anything outside the alphabet is refused, not skipped', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 300 }),
        fc.boolean(),
        fc.constantFrom('', '\r\n', '\n'),
        fc.boolean(),
        (bytes, pad, lineEnd, lastLineEnd) => {
          let text = Buffer.from(bytes).toString('base64');
          if (!pad) text = text.replace(/=+$/, '');
          if (lineEnd) text = text.replace(/(.{76})(?!$)/g, `$1${lineEnd}`) + (lastLineEnd ? lineEnd : '');
          expect(Buffer.from(decodeBase64(text)!), JSON.stringify(text.slice(-6))).toEqual(Buffer.from(bytes));
        },
      ),
    );
    // a line break of a carriage return alone (classic Mac OS) was counted as a character: four and one over
    expect(Buffer.from(decodeBase64('QUJD\r')!).toString()).toBe('ABC');
    for (const bad of ['ab$c', 'abc d', 'a', 'abcde', '=abc', 'ab==cd', '-_-_', 'QQ=\n=', 'QQ===']) {
      expect(decodeBase64(bad), bad).toBeNull();
      // and the message says why, in words of its own
      expect(whyNotBase64(bad), bad).toMatch(/at character \d|leave one over/);
    }
    // refused in linear time: a long run of line breaks before a character that is not base64 (a pattern with two ways
    // to match a line break took the square of the run: 40k of them, 1.5 s of the event loop)
    const t0 = performance.now();
    expect(decodeBase64('\n'.repeat(200_000) + '!')).toBeNull();
    expect(decodeBase64('QUJD' + '\r\n'.repeat(100_000) + '$')).toBeNull();
    expect(performance.now() - t0).toBeLessThan(500);
  });
});

describe("property: a request's budget", () => {
  it('a file refused by the memory budget takes none of the input bytes: what a request may still read is unchanged', async () => {
    const { RequestBudget } = await import('../src/inference/budget.ts');
    const { ErrorCode } = await import('../src/errors.ts');
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 400 }), fc.boolean()), { maxLength: 20 }), (files) => {
        const budget = new RequestBudget({ maxImages: 64, maxInputBytes: 1000 });
        let memoryRefuses = false;
        budget.memory = { take: () => (memoryRefuses ? new GatewayError(ErrorCode.QUEUE_FULL, 'full') : null) };
        let taken = 0;
        for (const [n, refused] of files) {
          memoryRefuses = refused;
          const fits = taken + n <= 1000;
          let ok = true;
          try {
            budget.takeFileBytes(n);
          } catch {
            ok = false;
          }
          expect(ok).toBe(fits && !refused);
          if (ok) taken += n;
        }
      }),
    );
  });
});
