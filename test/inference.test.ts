import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import ort from 'onnxruntime-node';
import { ElemType, argmaxSegmenter, identityModel, meanColourModel, stridedSegmenter } from './onnx-builder.ts';
import { IMAGES, errorCode, fixture, fixtureModels, image, modelAsset, modelFile, startGateway, type TestGateway } from './helpers.ts';
import { floatToHalf, halfToFloat } from '../src/engine/types.ts';
import { GraphQLError } from 'graphql';
import { maskError } from '../src/protocols/graphql/errors.ts';
import { createLogger } from '../src/log.ts';
import { cpuSaturatesInt8 } from '../src/engine/onnx/exact-int8.ts';

const IMAGENET = {
  'airliner.jpeg': 404,
  'arctic-fox.jpeg': 279,
  'bee.jpeg': 309,
  'golden_retriever.jpeg': 207,
  'gorilla.jpeg': 366,
  'magnetic_compass.jpeg': 635,
  'peacock.jpeg': 84,
  'pelican.jpeg': 144,
  'snail.jpeg': 113,
  'zebra.jpeg': 340,
};

const colourConfig = (dataType?: string) => ({
  task: 'classification',
  labels: ['red', 'green', 'blue'],
  preprocessing: { targetSize: '8x8', resizeType: 'SQUASH', pixelScaling: 255, ...(dataType ? { dataType } : {}) },
  postprocessing: { activation: 'none' },
});

const solid = (r: number, g: number, b: number, w = 32, h = 24): Promise<Buffer> =>
  sharp({ create: { width: w, height: h, channels: 3, background: { r, g, b } } })
    .png()
    .toBuffer();

describe('inference over GraphQL with real models and photos', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: {
        ...fixtureModels(),
        // every label with characters XML cannot hold, and one of 20,000 characters
        'yolox-odd': {
          ...fixture('yolox'),
          files: {
            'labels.txt': {
              text: readFileSync(modelAsset('yolox', 'labels.txt'), 'utf8')
                .trim()
                .split('\n')
                .map((l, i) => (i === 16 ? l.repeat(5000) : `${l}\u0001\u000b\u001b\u0000\ufffe<&>`))
                .join('\n'),
            },
          },
        },
        'colour-f16': { onnx: meanColourModel(ElemType.FLOAT16, ElemType.FLOAT16), config: colourConfig() },
        'colour-u8': { onnx: meanColourModel(ElemType.UINT8, ElemType.UINT8), config: colourConfig() },
        'argmax-seg': {
          onnx: argmaxSegmenter(),
          config: {
            task: 'segmentation',
            labels: ['red', 'green', 'blue'],
            preprocessing: { resizeType: 'NETWORK', targetSize: '64x64', pixelScaling: 255 },
          },
        },
        // BodyPix's grid: 641 pixels, a cell every 16 centred on pixels 0, 16, ... 640
        'strided-seg': {
          onnx: stridedSegmenter(16),
          config: {
            task: 'segmentation',
            labels: ['red', 'green', 'blue'],
            preprocessing: { resizeType: 'NETWORK', targetSize: '641x641', pixelScaling: 255 },
            postprocessing: { alignCorners: true },
          },
        },
        ...Object.fromEntries(
          (
            [
              ['id-f16', ElemType.FLOAT16],
              ['id-u8', ElemType.UINT8],
              ['id-i64', ElemType.INT64],
              ['id-i32', ElemType.INT32],
              ['id-i8', ElemType.INT8],
              ['id-bool', ElemType.BOOL],
              ['id-f32', ElemType.FLOAT],
            ] as const
          ).map(([n, t]) => [n, { onnx: identityModel(t, ['N', 2, 3]), config: { task: 'raw' } }]),
        ),
      },
      env: { IMAGE_ROOTS: IMAGES },
    });
  });
  afterAll(() => gw?.close());

  const classify = (model: string, file: string | Uint8Array, extra = '') =>
    gw.gql(
      `mutation($f: File!) { classify(model: "${model}", image: { file: $f }${extra}) { predictions { classId label confidence } } }`,
      { f: null },
      { files: { f: file } },
    );

  it('mobilenetv2-12-int8 classifies all ten ImageNet photos right', async () => {
    const results = await Promise.all(
      Object.entries(IMAGENET).map(async ([file, id]) => [file, id, await classify('mobilenet', image(file))] as const),
    );
    for (const [file, id, r] of results) {
      expect(r.errors, file).toBeUndefined();
      const [top] = r.data.classify.predictions;
      expect(top.classId, file).toBe(id);
      expect(top.label.length).toBeGreaterThan(0);
    }
    const [, , first] = results[0];
    const preds = first.data.classify.predictions;
    expect(preds).toHaveLength(5);
    for (let i = 1; i < preds.length; i++) expect(preds[i].confidence).toBeLessThanOrEqual(preds[i - 1].confidence);
    const topK = await classify('mobilenet', image('zebra.jpeg'), ', topK: 2, minConfidence: 0.0001');
    expect(topK.data.classify.predictions.length).toBeLessThanOrEqual(2);
  });

  it('minConfidence is a probability for a model that gives probabilities, any score for one that gives raw scores', async () => {
    for (const [m, code] of [
      ['1.5', 'INVALID_INPUT'],
      ['-0.1', 'INVALID_INPUT'],
    ]) {
      const r = await classify('mobilenet', image('zebra.jpeg'), `, minConfidence: ${m}`);
      expect(r.errors?.map((e) => [e.extensions?.code, e.message])).toEqual([
        [code, 'minConfidence must be 0..1: mobilenet gives probabilities (postprocessing.activation softmax)'],
      ]);
    }
    // activation "none": the scores are the model's own (here a photo's mean colour, 0..255), any bound goes
    const all = await classify('colour-f16', await solid(255, 0, 0), ', topK: 3, minConfidence: -1');
    expect(all.errors).toBeUndefined();
    expect(all.data.classify.predictions.map((p: any) => [p.label, p.confidence])).toEqual([
      ['red', 255],
      [expect.any(String), 0],
      [expect.any(String), 0],
    ]);
    const above = await classify('colour-f16', await solid(255, 0, 0), ', minConfidence: 2');
    expect(above.errors).toBeUndefined();
    expect(above.data.classify.predictions.map((p: any) => p.label)).toEqual(['red']);
  });

  it('yolox-nano finds the dog, the bicycle and the truck in dog.jpg, in the right places', async () => {
    const r = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }) { imageWidth imageHeight objects { classId label confidence box { xMin yMin xMax yMax } } } }`,
      { f: null },
      { files: { f: image('dog.jpg') } },
    );
    expect(r.errors).toBeUndefined();
    const d = r.data.detect;
    expect([d.imageWidth, d.imageHeight]).toEqual([768, 576]);
    const px = (o: any) => [o.box.xMin * 768, o.box.yMin * 576, o.box.xMax * 768, o.box.yMax * 576];
    const expected: Record<string, [number, number[]]> = {
      dog: [0.85, [133, 205, 323, 543]],
      car: [0.816, [467, 78, 693, 171]],
      bicycle: [0.815, [61, 133, 572, 428]],
    };
    for (const [label, [conf, box]] of Object.entries(expected)) {
      const o = d.objects.find((x: any) => x.label === label);
      expect(o, label).toBeDefined();
      expect(o.confidence).toBeCloseTo(conf, 1);
      px(o).forEach((v, i) => expect(Math.abs(v - box[i]), `${label} box[${i}]`).toBeLessThan(12));
    }
    for (let i = 1; i < d.objects.length; i++) expect(d.objects[i].confidence).toBeLessThanOrEqual(d.objects[i - 1].confidence);
    const few = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }, minConfidence: 0.83, maxDetections: 5) { objects { label } } }`,
      { f: null },
      { files: { f: image('dog.jpg') } },
    );
    expect(few.data.detect.objects.map((o: any) => o.label)).toEqual(['dog']);
  });

  it('bodypix finds 40-50% person pixels on people1.jpeg and none on road1.jpg', async () => {
    const seg = (file: string) =>
      gw.gql(
        `mutation($f: File!) { segment(model: "bodypix", image: { file: $f }) { width height classes { classId label pixelFraction } mask } }`,
        { f: null },
        { files: { f: image(file) } },
      );
    const people = await seg('people1.jpeg');
    expect(people.errors).toBeUndefined();
    expect([people.data.segment.width, people.data.segment.height]).toEqual([1200, 800]);
    const person = people.data.segment.classes.find((c: any) => c.label === 'person');
    expect(person.pixelFraction).toBeGreaterThan(0.4);
    expect(person.pixelFraction).toBeLessThan(0.5);
    const maskPng = Buffer.from(people.data.segment.mask, 'base64');
    const meta = await sharp(maskPng).metadata();
    expect([meta.format, meta.width, meta.height, meta.channels]).toEqual(['png', 1200, 800, 1]);
    const mask = await sharp(maskPng).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
    let ones = 0;
    for (const v of mask.data) ones += v === 1 ? 1 : 0;
    expect(ones / mask.data.length).toBeCloseTo(person.pixelFraction, 5);
    const road = await seg('road1.jpg');
    const roadPerson = road.data.segment.classes.find((c: any) => c.label === 'person');
    expect(roadPerson?.pixelFraction ?? 0).toBeLessThan(0.005);
  });

  it('ppocrv4-det separates the eight words of east_ocr_input.jpg', async () => {
    const r = await gw.gql(
      `mutation($f: File!) { segment(model: "ppocr", image: { file: $f }) { regions(minPixels: 20) { label pixels box { xMin yMin xMax yMax } } } }`,
      { f: null },
      { files: { f: image('east_ocr_input.jpg') } },
    );
    expect(r.errors).toBeUndefined();
    const regions = r.data.segment.regions;
    expect(regions).toHaveLength(8);
    const negative = await gw.gql(
      `mutation($f: File!) { segment(model: "ppocr", image: { file: $f }) { width regions(minPixels: -5) { pixels } } }`,
      { f: null },
      { files: { f: image('east_ocr_input.jpg') } },
    );
    expect([negative.data.segment, errorCode(negative), negative.errors![0].message]).toEqual([
      null, // regions is a non-null list: its error nulls the answer
      'INVALID_INPUT',
      'regions: minPixels must be 0 or more, got -5',
    ]);
    for (const g of regions) {
      expect(g.label).toBe('text');
      expect(g.box.xMax).toBeGreaterThan(g.box.xMin);
      // words are wider than tall on a 16:9 page, and none covers the page
      expect((g.box.xMax - g.box.xMin) * 1920).toBeGreaterThan((g.box.yMax - g.box.yMin) * 1080 * 0.5);
      expect(g.box.xMax - g.box.xMin).toBeLessThan(0.5);
    }
  });

  it('runs a pipeline in one query: detect, then classify each crop', async () => {
    const r = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }, minConfidence: 0.8) { objects { label classify(model: "mobilenet", topK: 1) { predictions { classId label } } } } }`,
      { f: null },
      { files: { f: image('dog.jpg') } },
    );
    expect(r.errors).toBeUndefined();
    const dog = r.data.detect.objects.find((o: any) => o.label === 'dog');
    const id = dog.classify.predictions[0].classId;
    expect(id >= 151 && id <= 268, `ImageNet dog breeds are 151..268, got ${id} ${dog.classify.predictions[0].label}`).toBe(true);
  });

  it('detectBatch and segmentBatch answer each image of the list, in order', async () => {
    const q = `mutation($d: [ImageInput!]!, $s: [ImageInput!]!) {
      detectBatch(model: "yolox", images: $d) { objects { label } }
      segmentBatch(model: "bodypix", images: $s) { classes { label pixelFraction } }
    }`;
    const files = {
      'd.0.file': image('dog.jpg'),
      'd.1.file': image('road1.jpg'),
      's.0.file': image('people1.jpeg'),
      's.1.file': image('road1.jpg'),
    };
    const r = await gw.gql(q, { d: [{ file: null }, { file: null }], s: [{ file: null }, { file: null }] }, { files });
    expect(r.errors).toBeUndefined();
    const [dog, road] = r.data.detectBatch.map((d: any) => d.objects.map((o: any) => o.label));
    expect(dog).toEqual(expect.arrayContaining(['dog', 'bicycle']));
    expect(new Set(road)).toEqual(new Set(['car']));
    const person = r.data.segmentBatch.map((s: any) => s.classes.find((c: any) => c.label === 'person')?.pixelFraction ?? 0);
    expect(person[0]).toBeGreaterThan(0.4);
    expect(person[1]).toBeLessThan(0.005);
  });

  it('draws annotated images and overlays only when asked, at the photo size', async () => {
    const det = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }) { annotatedImage } }`,
      { f: null },
      { files: { f: image('dog.jpg') } },
    );
    const meta = await sharp(Buffer.from(det.data.detect.annotatedImage, 'base64')).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 768, 576]);
    const seg = await gw.gql(
      `mutation($f: File!) { segment(model: "bodypix", image: { file: $f }) { overlay } }`,
      { f: null },
      { files: { f: image('people1.jpeg') } },
    );
    const m2 = await sharp(Buffer.from(seg.data.segment.overlay, 'base64')).metadata();
    expect([m2.format, m2.width, m2.height]).toEqual(['png', 1200, 800]);
  });

  it('draws a photo with a damaged scan as it was decoded to detect and segment it; an answer with data is HTTP 200', async () => {
    // libvips warns of such a file ("Corrupt JPEG data: extraneous bytes before marker") and decodes it
    const dog = await readFile(image('dog.jpg'));
    const damaged = Buffer.from(dog);
    for (let i = 0; i < 40; i++) damaged[Math.floor(dog.length * 0.6) + i * 13] ^= 0x55;
    const files = { files: { f: { name: 'damaged.jpg', bytes: damaged } } };
    const det = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }) { objects { label } annotatedImage } }`,
      { f: null },
      files,
    );
    expect([det.status, det.errors]).toEqual([200, undefined]);
    expect(det.data.detect.objects.map((o: any) => o.label)).toContain('dog');
    const meta = await sharp(Buffer.from(det.data.detect.annotatedImage, 'base64')).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 768, 576]);
    const seg = await gw.gql(`mutation($f: File!) { segment(model: "bodypix", image: { file: $f }) { overlay } }`, { f: null }, files);
    expect([seg.status, seg.errors]).toEqual([200, undefined]);
    expect((await sharp(Buffer.from(seg.data.segment.overlay, 'base64')).metadata()).width).toBe(768);
  });

  it('draws labels whatever characters they hold (control characters, markup, 20,000 characters)', async () => {
    const det = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox-odd", image: { file: $f }) { objects { classId label } annotatedImage } }`,
      { f: null },
      { files: { f: image('dog.jpg') } },
    );
    expect([det.status, det.errors]).toEqual([200, undefined]);
    expect(det.data.detect.objects.map((o: any) => o.classId)).toContain(16); // the dog, with the longest label
    expect(det.data.detect.objects.find((o: any) => o.classId === 1).label).toBe('bicycle\u0001\u000b\u001b\u0000\ufffe<&>');
    const meta = await sharp(Buffer.from(det.data.detect.annotatedImage, 'base64')).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 768, 576]);
  });

  it("a box whose classification fails is null with its own error: the detection and the box's other answers stay", async () => {
    const r = await gw.gql(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }) {
        objects { label a: classify(model: "mobilenet", topK: 1) { predictions { classId } } b: classify(model: "nope") { predictions { classId } } }
      } }`,
      { f: null },
      { files: { f: image('dog.jpg') } },
    );
    expect(r.status).toBe(200);
    const objects = r.data.detect.objects;
    expect(objects.length).toBeGreaterThan(1);
    expect(objects.every((o: any) => o.a.predictions.length === 1 && o.b === null)).toBe(true);
    expect(r.errors!.map((e) => [e.path, e.extensions?.code])).toEqual(
      objects.map((_: unknown, i: number) => [['detect', 'objects', i, 'b'], 'MODEL_NOT_FOUND']),
    );
  });

  it('an unexpected error of one field is masked and leaves an answer with data HTTP 200; one of the whole request is 500', () => {
    const mask = maskError(createLogger('error', {}, () => undefined));
    const field = mask(new GraphQLError('boom', { path: ['detect', 'annotatedImage'], originalError: new Error('/srv/secret: boom') }));
    expect([field.message, (field as GraphQLError).extensions]).toEqual(['Unexpected error.', { code: 'INTERNAL_SERVER_ERROR' }]);
    const request = mask(new Error('boom'));
    expect((request as GraphQLError).extensions).toEqual({ code: 'INTERNAL_SERVER_ERROR', http: { status: 500 } });
  });

  it('takes several images in one request (aliases and lists), by file, base64 and path', async () => {
    const zebra = (await readFile(image('zebra.jpeg'))).toString('base64');
    const r = await gw.gql(
      `mutation($a: File!, $b: File!, $z: String!, $p: String!) {
        a: classify(model: "mobilenet", image: { file: $a }, topK: 1) { predictions { classId } }
        b: classify(model: "mobilenet", image: { file: $b }, topK: 1) { predictions { classId } }
        z: classify(model: "mobilenet", image: { base64: $z }, topK: 1) { predictions { classId } }
        p: classify(model: "mobilenet", image: { path: $p }, topK: 1) { predictions { classId } }
      }`,
      { a: null, b: null, z: zebra, p: image('pelican.jpeg') },
      { files: { a: image('bee.jpeg'), b: image('snail.jpeg') } },
    );
    expect(r.errors).toBeUndefined();
    expect([r.data.a, r.data.b, r.data.z, r.data.p].map((x: any) => x.predictions[0].classId)).toEqual([309, 113, 340, 144]);
  });

  it('refuses image paths outside IMAGE_ROOTS with FORBIDDEN_PATH', async () => {
    for (const p of ['/etc/passwd', `${IMAGES}/../../../models/yolox/labels.txt`, 'images/../../etc/passwd', modelFile('yolox')]) {
      const r = await gw.gql(`mutation($p: String!) { classify(model: "mobilenet", image: { path: $p }) { predictions { classId } } }`, {
        p,
      });
      expect(errorCode(r), p).toBe('FORBIDDEN_PATH');
      expect(r.errors![0].message, p).toMatch(/not under an allowed root: IMAGE_ROOTS names the folders images may be read from$/); // (it said "none by default" with roots set)
    }
  });

  it('feeds and reads float16 and uint8 models', async () => {
    for (const model of ['colour-f16', 'colour-u8']) {
      for (const [rgb, label] of [
        [[250, 10, 10], 'red'],
        [[10, 240, 10], 'green'],
        [[10, 10, 230], 'blue'],
      ] as const) {
        const r = await classify(model, await solid(rgb[0], rgb[1], rgb[2]), ', topK: 3');
        expect(r.errors, model).toBeUndefined();
        expect(r.data.classify.predictions[0].label, `${model} ${label}`).toBe(label);
        const top = r.data.classify.predictions[0].confidence;
        // the model averages the channels: raw 0..255 values in, so the top score is the colour's own value
        expect(Math.abs(top - Math.max(...rgb)), model).toBeLessThan(model === 'colour-f16' ? 0.6 : 1.01);
      }
    }
  });

  it('passes a class-id map through and maps it back to the image size', async () => {
    // left half red (class 0), right half blue (class 2)
    const img = await sharp({ create: { width: 40, height: 20, channels: 3, background: { r: 255, g: 0, b: 0 } } })
      .composite([{ input: await solid(0, 0, 255, 20, 20), left: 20, top: 0 }])
      .png()
      .toBuffer();
    const r = await gw.gql(
      `mutation($f: File!) { segment(model: "argmax-seg", image: { file: $f }) { width height classes { classId label pixelFraction } mask } }`,
      { f: null },
      { files: { f: img } },
    );
    expect(r.errors).toBeUndefined();
    expect(r.data.segment.classes).toEqual([
      { classId: 0, label: 'red', pixelFraction: 0.5 },
      { classId: 2, label: 'blue', pixelFraction: 0.5 },
    ]);
    const mask = await sharp(Buffer.from(r.data.segment.mask, 'base64')).extractChannel(0).raw().toBuffer();
    expect([mask[0], mask[19], mask[20], mask[39]]).toEqual([0, 0, 2, 2]);
  });

  it('a map whose cells are centred on every 16th input pixel (alignCorners, as BodyPix) is laid back on the pixels it sampled, not shifted half a cell', async () => {
    // red, a green band at the bottom (rows 632-640), a blue one at the right (columns 632-640): each band holds the
    // last sample (640) and not the one before (624), so a map read right covers exactly the bands; read as cells of
    // 641 / 41 = 15.6 pixels each (half-pixel centres) the last cell began at 625, 7 pixels early
    const img = await sharp({ create: { width: 641, height: 641, channels: 3, background: { r: 255, g: 0, b: 0 } } })
      .composite([
        { input: await solid(0, 255, 0, 632, 9), left: 0, top: 632 },
        { input: await solid(0, 0, 255, 9, 641), left: 632, top: 0 },
      ])
      .png()
      .toBuffer();
    const r = await gw.gql(
      `mutation($f: File!) { segment(model: "strided-seg", image: { file: $f }) { classes { classId pixelFraction } mask regions(minPixels: 1) { classId box { xMin yMin xMax yMax } } } }`,
      { f: null },
      { files: { f: img } },
    );
    expect(r.errors).toBeUndefined();
    const n = 641 * 641;
    expect(r.data.segment.classes.map((c: any) => [c.classId, Math.round(c.pixelFraction * n)])).toEqual([
      [0, 632 * 632],
      [1, 632 * 9],
      [2, 9 * 641],
    ]);
    const mask = await sharp(Buffer.from(r.data.segment.mask, 'base64')).extractChannel(0).raw().toBuffer();
    const at = (x: number, y: number) => mask[y * 641 + x];
    expect([at(631, 0), at(632, 0), at(640, 0), at(0, 631), at(0, 632), at(631, 640)]).toEqual([0, 2, 2, 0, 1, 1]);
    // the blue region's box begins where the band does (half a pixel: the cell's edge lies between pixel centres)
    const blue = r.data.segment.regions.find((g: any) => g.classId === 2).box;
    expect(Math.abs(blue.xMin * 641 - 632)).toBeLessThanOrEqual(0.5);
    expect(blue.xMax).toBe(1);
  });

  it('infer reproduces the engine output exactly (mobilenet, float32)', async () => {
    const input = new Float32Array(3 * 224 * 224).map((_, i) => Math.sin(i) * 2);
    // the model as the gateway serves it: on a CPU whose int8 kernel saturates, with exact int8 products
    const file = new Uint8Array(await readFile(modelFile('mobilenet')));
    const session = await ort.InferenceSession.create(file, {
      extra: { session: cpuSaturatesInt8() ? { x64quantprecision: '1' } : {} },
    } as ort.InferenceSession.SessionOptions);
    const direct = (await session.run({ input: new ort.Tensor('float32', input, [1, 3, 224, 224]) })).output;
    const r = await gw.gql(
      `mutation($d: String!) { infer(model: "mobilenet", inputs: [{ name: "input", dtype: FLOAT32, shape: [1, 3, 224, 224], data: $d }]) { outputs { name dtype shape data } } }`,
      { d: Buffer.from(input.buffer).toString('base64') },
    );
    expect(r.errors).toBeUndefined();
    const [out] = r.data.infer.outputs;
    expect(out).toMatchObject({ name: 'output', dtype: 'FLOAT32', shape: [1, 1000] });
    expect(Buffer.from(out.data, 'base64').equals(Buffer.from((direct.data as Float32Array).buffer))).toBe(true);
    await session.release();
  });

  it('infer carries every dtype byte for byte and returns only the outputs asked for', async () => {
    const cases: [string, string, Uint8Array][] = [
      ['id-f16', 'FLOAT16', new Uint8Array(new Uint16Array([1, 2, 3, 4, 5, 6].map((x) => floatToHalf(x / 3))).buffer)],
      ['id-u8', 'UINT8', Uint8Array.from([0, 1, 127, 128, 254, 255])],
      ['id-i64', 'INT64', new Uint8Array(new BigInt64Array([-(2n ** 62n), -1n, 0n, 1n, 2n ** 40n, 9n]).buffer)],
      ['id-i32', 'INT32', new Uint8Array(new Int32Array([-2147483648, -1, 0, 1, 7, 2147483647]).buffer)],
      ['id-i8', 'INT8', new Uint8Array(new Int8Array([-128, -1, 0, 1, 64, 127]).buffer)],
      ['id-bool', 'BOOL', Uint8Array.from([1, 0, 1, 1, 0, 0])],
      ['id-f32', 'FLOAT32', new Uint8Array(new Float32Array([0.5, -1e-7, 3.25, 1e30, -0, 2]).buffer)],
    ];
    for (const [model, dtype, bytes] of cases) {
      const r = await gw.gql(
        `mutation($d: String!) { infer(model: "${model}", inputs: [{ name: "x", dtype: ${dtype}, shape: [1, 2, 3], data: $d }], outputs: ["y"]) { outputs { name dtype shape data } } }`,
        { d: Buffer.from(bytes).toString('base64') },
      );
      expect(r.errors, model).toBeUndefined();
      expect(r.data.infer.outputs).toEqual([{ name: 'y', dtype, shape: [1, 2, 3], data: Buffer.from(bytes).toString('base64') }]);
    }
    expect(halfToFloat(floatToHalf(1 / 3))).toBeCloseTo(1 / 3, 3);
  });

  it('a version the model does not have is refused naming the versions it has, over GraphQL and KServe', async () => {
    const says = 'model mobilenet has no version 9 (its versions: 1)';
    const classify = await gw.gql(
      'mutation { classify(model: "mobilenet", version: 9, image: { base64: "AAAA" }) { predictions { classId } } }',
    );
    expect([errorCode(classify), classify.errors?.[0].message]).toEqual(['MODEL_NOT_FOUND', says]);
    const shape = await gw.gql('{ inputShape(model: "mobilenet", version: 9) }');
    expect([errorCode(shape), shape.errors?.[0].message]).toEqual(['MODEL_NOT_FOUND', says]);
    const rest = await fetch(`${gw.url}/v2/models/mobilenet/versions/9`);
    expect([rest.status, ((await rest.json()) as { error: string }).error]).toEqual([404, says]);
  });

  it('answers typed errors for bad requests and keeps serving', async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ['mutation { classify(model: "nope", image: { base64: "AAAA" }) { predictions { classId } } }', {}, 'MODEL_NOT_FOUND'],
      [
        'mutation { classify(model: "mobilenet", version: 9, image: { base64: "AAAA" }) { predictions { classId } } }',
        {},
        'MODEL_NOT_FOUND',
      ],
      ['mutation { classify(model: "mobilenet", image: { base64: "bm90IGFuIGltYWdl" }) { predictions { classId } } }', {}, 'INVALID_IMAGE'],
      ['mutation { classify(model: "mobilenet", image: { }) { predictions { classId } } }', {}, 'INVALID_INPUT'],
      ['mutation { classify(model: "mobilenet", image: { base64: "AAAA", path: "x" }) { predictions { classId } } }', {}, 'INVALID_INPUT'],
      ['mutation { detect(model: "mobilenet", image: { base64: "AAAA" }) { imageWidth } }', {}, 'INVALID_INPUT'],
      [
        'mutation { infer(model: "id-u8", inputs: [{ name: "x", dtype: UINT8, shape: [1, 2, 3], data: "AAAA" }]) { outputs { name } } }',
        {},
        'INVALID_INPUT',
      ],
      [
        'mutation { infer(model: "id-u8", inputs: [{ name: "x", dtype: FLOAT32, shape: [1, 2, 3], data: "AAAAAAAA" }]) { outputs { name } } }',
        {},
        'INVALID_INPUT',
      ],
      [
        'mutation { infer(model: "id-u8", inputs: [{ name: "x", dtype: UINT8, shape: [1, 3, 2], data: "AAAAAAAA" }]) { outputs { name } } }',
        {},
        'INVALID_INPUT',
      ],
      [
        'mutation { infer(model: "id-u8", inputs: [{ name: "z", dtype: UINT8, shape: [1, 2, 3], data: "AAAAAAAA" }]) { outputs { name } } }',
        {},
        'INVALID_INPUT',
      ],
      [
        'mutation { infer(model: "id-u8", inputs: [{ name: "x", dtype: UINT8, shape: [1, 2, 3], data: "AAAAAAAA" }], outputs: ["nope"]) { outputs { name } } }',
        {},
        'INVALID_INPUT',
      ],
    ];
    for (const [q, v, code] of cases) expect(errorCode(await gw.gql(q, v)), q).toBe(code);
    const ok = await classify('mobilenet', image('bee.jpeg'));
    expect(ok.data.classify.predictions[0].classId).toBe(309);
    // a size the graph accepts at its inputs but cannot compute (ppocr needs multiples of 32): the client's input, in the
    // engine's own words, without the paths of its sources
    const odd = await gw.gql(
      `mutation($d: String!) { infer(model: "ppocr", inputs: [{ name: "x", dtype: FLOAT32, shape: [1, 3, 30, 14], data: $d }]) { outputs { name } } }`,
      { d: Buffer.alloc(4 * 3 * 30 * 14).toString('base64') },
    );
    expect(errorCode(odd)).toBe('INVALID_INPUT');
    expect(odd.errors![0].message).toMatch(
      /^model ppocr cannot compute input x of shape \[1,3,30,14\] \(the model's is \[-1,3,-1,-1\]\): /,
    );
    expect(odd.errors![0].message).not.toMatch(/onnxruntime_src|\.(h|cc):\d+/);
    expect(gw.logs.some((l) => l.includes('engine call failed') && l.includes('onnxruntime_src'))).toBe(true); // the log has it all
  });

  it("a newcomer's slips are answered with what to write instead", async () => {
    const message = async (q: string, v: Record<string, unknown> = {}) => (await gw.gql(q, v)).errors?.[0]?.message ?? '';
    // the upload scalar most clients know by another name
    expect(await message('mutation($f: Upload!) { classify(model: "mobilenet", image: { file: $f }) { predictions { label } } }')).toMatch(
      /Unknown type "Upload".*this schema's upload scalar is File: write \$f: File!/,
    );
    // an inference field asked in a query
    expect(await message('{ classify(model: "mobilenet", image: { base64: "AAAA" }) { predictions { label } } }')).toMatch(
      /Cannot query field "classify" on type "Query".*classify is a mutation: write mutation \{ classify\(/,
    );
    // a File variable left null (no file part bound to it)
    expect(
      await message('mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }) { predictions { label } } }', { f: null }),
    ).toMatch(/must not be null.*a file is sent as a part of a multipart request, bound to "variables\.f" by its "map"/);
    // a model name one letter off
    expect(await message('mutation { classify(model: "mobilenett", image: { base64: "AAAA" }) { predictions { label } } }')).toMatch(
      /no model named "mobilenett"; did you mean "mobilenet"\?/,
    );
    // a model name a megabyte long: no suggestion sought, and quoted back a line long
    const long = await message('mutation($m: String!) { classify(model: $m, image: { base64: "AAAA" }) { predictions { label } } }', {
      m: 'm'.repeat(1_000_000),
    });
    expect(long).toMatch(/^no model named "m{60}\.\.\. \(1000000 characters\)"$/);
    // an image sent as base64 text in a File variable: the answer names image: { base64 } and does not echo 50 KB
    const b64 = (await readFile(image('zebra.jpeg'))).toString('base64');
    const echoed = await message('mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }) { predictions { label } } }', {
      f: b64,
    });
    expect(echoed).toMatch(/image: \{ base64: /);
    expect(echoed.length).toBeLessThan(600);
  });
});

describe('a pipeline over crops, on a server that accepts JPEG uploads only', () => {
  let gw: TestGateway;
  /** The same models with the default formats: the reference answers for crops sent as (lossless) PNG. */
  let reference: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { yolox: fixture('yolox'), mobilenet: fixture('mobilenet') }, env: { IMAGE_FORMATS: 'jpeg' } });
    reference = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
  });
  afterAll(async () => {
    await gw?.close();
    await reference?.close();
  });

  it.each([
    ['dog.jpg as it is', async () => readFile(image('dog.jpg'))],
    // stored turned a quarter, with the EXIF orientation that shows it upright: the crops come from what is shown
    [
      'dog.jpg stored sideways (EXIF orientation 6)',
      async () => sharp(image('dog.jpg')).rotate(270).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer(),
    ],
  ])(
    'classifies each detected box from the decoded photo, %s (crops are not re-encoded: IMAGE_FORMATS does not apply to them)',
    async (_, photoBytes) => {
      const file = await photoBytes();
      const r = await gw.gql(
        `mutation($f: File!) { detect(model: "yolox", image: { file: $f }, minConfidence: 0.5) { objects { label box { xMin yMin xMax yMax } classify(model: "mobilenet", topK: 1) { predictions { classId confidence } } } } }`,
        { f: null },
        { files: { f: file } },
      );
      expect(r.errors).toBeUndefined();
      const objects = r.data.detect.objects as {
        label: string;
        box: Record<string, number>;
        classify: { predictions: { classId: number; confidence: number }[] };
      }[];
      expect(objects.length).toBeGreaterThan(1);
      // each answer is that of the same box cut from the photo (as shown) by hand and sent as a PNG of its own: the same
      // pixels, so the same scores (a JPEG's loss was enough to swap the top two classes of a borderline crop)
      const photo = sharp(await sharp(file).rotate().png().toBuffer());
      const { width, height } = await photo.metadata();
      for (const o of objects) {
        const left = Math.floor(o.box.xMin * width!);
        const top = Math.floor(o.box.yMin * height!);
        const crop = await photo
          .clone()
          .extract({ left, top, width: Math.ceil(o.box.xMax * width!) - left, height: Math.ceil(o.box.yMax * height!) - top })
          .png()
          .toBuffer();
        const alone = await reference.gql(
          `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { classId confidence } } }`,
          { f: null },
          { files: { f: crop } },
        );
        const [mine, theirs] = [o.classify.predictions[0], alone.data.classify.predictions[0]];
        expect(mine.classId, o.label).toBe(theirs.classId);
        expect(mine.confidence, o.label).toBeCloseTo(theirs.confidence, 6);
      }
    },
  );
});
