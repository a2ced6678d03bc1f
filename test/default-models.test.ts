import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { ROOT, image, startGateway, type TestGateway } from './helpers.ts';

/** The models/ repository that `npm start` serves after `npm install`, answering the README's examples. */
describe('default models (README examples)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ root: path.join(ROOT, 'models') });
  });
  afterAll(() => gw?.close());

  it('serves one real model per task, all AVAILABLE', async () => {
    const r = await gw.gql(`{ models { name task versions { state errorCode } } }`);
    expect(r.data.models).toEqual([
      { name: 'face-detection', task: 'detection', versions: [{ state: 'AVAILABLE', errorCode: null }] },
      { name: 'text-detection', task: 'segmentation', versions: [{ state: 'AVAILABLE', errorCode: null }] },
      { name: 'text-direction', task: 'classification', versions: [{ state: 'AVAILABLE', errorCode: null }] },
    ]);
  });

  it('face-detection finds the face in face1.jpg and none in zebra.jpeg', async () => {
    const q = `query($f: File!) { detect(model: "face-detection", image: { file: $f }) { objects { label confidence box { xMin yMin xMax yMax } } } }`;
    const r = await gw.gql(q, { f: null }, { files: { f: image('face1.jpg') } });
    expect(r.errors).toBeUndefined();
    const faces = r.data.detect.objects;
    expect(faces).toHaveLength(1);
    expect(faces[0].label).toBe('face');
    expect(faces[0].confidence).toBeCloseTo(0.93, 1);
    // PROVENANCE: box [10,18,53,61] in the 62x62 photo
    [10, 18, 53, 61].forEach((v, i) => expect(Math.abs(Object.values(faces[0].box)[i] as number * 62 - v)).toBeLessThan(3));
    const none = await gw.gql(q, { f: null }, { files: { f: image('zebra.jpeg') } });
    expect(none.data.detect.objects).toEqual([]);
  });

  it('text-detection finds the eight words; text-direction tells upright from upside down', async () => {
    const r = await gw.gql(`query($f: File!) { segment(model: "text-detection", image: { file: $f }) { regions(minPixels: 20) { box { xMin yMin xMax yMax } } } }`, { f: null }, { files: { f: image('east_ocr_input.jpg') } });
    expect(r.data.segment.regions).toHaveLength(8);
    // crop the widest word and classify it both ways up
    const box = r.data.segment.regions.map((g: any) => g.box).sort((a: any, b: any) => (b.xMax - b.xMin) - (a.xMax - a.xMin))[0];
    const pad = 6;
    const left = Math.max(0, Math.floor(box.xMin * 1920) - pad);
    const top = Math.max(0, Math.floor(box.yMin * 1080) - pad);
    const crop = await sharp(image('east_ocr_input.jpg')).extract({ left, top, width: Math.ceil((box.xMax - box.xMin) * 1920) + 2 * pad, height: Math.ceil((box.yMax - box.yMin) * 1080) + 2 * pad }).png().toBuffer();
    const flipped = await sharp(crop).rotate(180).png().toBuffer();
    const q = `query($a: File!, $b: File!) { up: classify(model: "text-direction", image: { file: $a }, topK: 1) { predictions { label } } down: classify(model: "text-direction", image: { file: $b }, topK: 1) { predictions { label } } }`;
    const c = await gw.gql(q, { a: null, b: null }, { files: { a: crop, b: flipped } });
    expect(c.errors).toBeUndefined();
    expect(c.data.up.predictions[0].label).toBe('0');
    expect(c.data.down.predictions[0].label).toBe('180');
  });
});
