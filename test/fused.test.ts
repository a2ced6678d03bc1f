import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, image, startGateway, type TestGateway } from './helpers.ts';

/**
 * Preprocessing fused into the engine (the default) against the per-pixel path on the main thread
 * (FUSED_PREPROCESSING=false): the same answers within float rounding, on every model of the default repository.
 */
describe('fused preprocessing gives the answers of the main-thread path', () => {
  let fused: TestGateway;
  let plain: TestGateway;
  beforeAll(async () => {
    [fused, plain] = await Promise.all([
      startGateway({ root: path.join(ROOT, 'models') }),
      startGateway({ root: path.join(ROOT, 'models'), env: { FUSED_PREPROCESSING: 'false' } }),
    ]);
  });
  afterAll(async () => {
    await fused?.close();
    await plain?.close();
  });

  const both = async (query: string, file: string) => {
    const [a, b] = await Promise.all([fused, plain].map((gw) => gw.gql(query, { f: null }, { files: { f: image(file) } })));
    expect(a.errors).toBeUndefined();
    expect(b.errors).toBeUndefined();
    return [a.data, b.data];
  };
  const close = (a: number, b: number, tolerance = 1e-4) =>
    expect(Math.abs(a - b), `${a} vs ${b}`).toBeLessThanOrEqual(tolerance * Math.max(1, Math.abs(b)));

  it('says which path it took', async () => {
    const notes = async (gw: TestGateway) =>
      (await gw.gql(`{ model(name: "mobilenet") { versions { notes } } }`)).data.model.versions[0].notes;
    expect((await notes(fused)).preprocessing).toMatch(/fused/);
    expect((await notes(plain)).preprocessing).toBeUndefined();
  });

  it.each([
    ['mobilenet', 'zebra.jpeg'],
    ['mobilenet', 'pelican.jpeg'],
    ['text-direction', 'east_ocr_input.jpg'],
  ])('classification: %s on %s', async (model, file) => {
    const [a, b] = await both(
      `mutation($f: File!) { classify(model: "${model}", image: { file: $f }, topK: 5) { predictions { classId confidence } } }`,
      file,
    );
    expect(a.classify.predictions.map((p: any) => p.classId)).toEqual(b.classify.predictions.map((p: any) => p.classId));
    a.classify.predictions.forEach((p: any, i: number) => close(p.confidence, b.classify.predictions[i].confidence));
  });

  it.each([
    ['yolox', 'dog.jpg'],
    ['yolox', 'road1.jpg'],
    ['face-detection', 'face1.jpg'],
  ])('detection: %s on %s', async (model, file) => {
    const [a, b] = await both(
      `mutation($f: File!) { detect(model: "${model}", image: { file: $f }) { objects { classId confidence box { xMin yMin xMax yMax } } } }`,
      file,
    );
    expect(a.detect.objects.length).toBe(b.detect.objects.length);
    a.detect.objects.forEach((o: any, i: number) => {
      const p = b.detect.objects[i];
      expect(o.classId).toBe(p.classId);
      close(o.confidence, p.confidence);
      for (const k of ['xMin', 'yMin', 'xMax', 'yMax']) close(o.box[k], p.box[k], 1e-3);
    });
  });

  it.each([
    ['bodypix', 'people1.jpeg'],
    ['text-detection', 'east_ocr_input.jpg'],
  ])('segmentation: %s on %s', async (model, file) => {
    const [a, b] = await both(
      `mutation($f: File!) { segment(model: "${model}", image: { file: $f }) { classes { classId pixelFraction } } }`,
      file,
    );
    expect(a.segment.classes.map((c: any) => c.classId)).toEqual(b.segment.classes.map((c: any) => c.classId));
    a.segment.classes.forEach((c: any, i: number) => close(c.pixelFraction, b.segment.classes[i].pixelFraction, 1e-3));
  });

  it("raw infer on a fused model still takes the model's own input", async () => {
    const d = Buffer.alloc(4 * 3 * 224 * 224).toString('base64');
    const q = `mutation($d: String!) { infer(model: "mobilenet", inputs: [{ name: "input", dtype: FLOAT32, shape: [1, 3, 224, 224], data: $d }]) { outputs { shape } } }`;
    const r = await fused.gql(q, { d });
    expect(r.errors).toBeUndefined();
    expect(r.data.infer.outputs[0].shape).toEqual([1, 1000]);
    const inputs = (await fused.gql(`{ model(name: "mobilenet") { inputs { name dtype shape } } }`)).data.model.inputs;
    expect(inputs).toEqual([{ name: 'input', dtype: 'FLOAT32', shape: [null, 3, 224, 224] }]);
  });
});
