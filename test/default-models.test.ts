import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
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

  it('serves general models (ImageNet, COCO, person segmentation) and the npm-provided ones, all AVAILABLE', async () => {
    const r = await gw.gql(`{ models { name task versions { state errorCode } } }`);
    const up = [{ state: 'AVAILABLE', errorCode: null }];
    expect(r.data.models).toEqual([
      { name: 'bodypix', task: 'segmentation', versions: up },
      { name: 'face-detection', task: 'detection', versions: up },
      { name: 'mobilenet', task: 'classification', versions: up },
      { name: 'text-detection', task: 'segmentation', versions: up },
      { name: 'text-direction', task: 'classification', versions: up },
      { name: 'yolox', task: 'detection', versions: up },
    ]);
  });

  it('each model folder has a PROVENANCE.md naming its model file by sha256 (where it comes from, its license)', async () => {
    const dir = path.join(ROOT, 'models');
    const names = (await readdir(dir, { withFileTypes: true }))
      .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
      .map((e) => e.name); // dot folders are not models (the repository skips them)
    expect(names.length).toBeGreaterThanOrEqual(6);
    for (const name of names) {
      const provenance = await readFile(path.join(dir, name, 'PROVENANCE.md'), 'utf8').catch(() => '');
      const sha = createHash('sha256')
        .update(await readFile(path.join(dir, name, '1', 'model.onnx')))
        .digest('hex');
      expect(provenance, name).toContain(sha);
      expect(provenance, name).toMatch(/licen[cs]e|Apache-2\.0|\bMIT\b|BSD/i);
    }
  });

  it('zebra.jpeg is a zebra, dog.jpg has a dog (and a bicycle), people1.jpeg is 40-50% person', async () => {
    const q = `mutation($z: File!, $d: File!, $p: File!) {
      classify(model: "mobilenet", image: { file: $z }, topK: 1) { predictions { label } }
      detect(model: "yolox", image: { file: $d }) { objects { label } }
      segment(model: "bodypix", image: { file: $p }) { classes { label pixelFraction } }
    }`;
    const r = await gw.gql(
      q,
      { z: null, d: null, p: null },
      { files: { z: image('zebra.jpeg'), d: image('dog.jpg'), p: image('people1.jpeg') } },
    );
    expect(r.errors).toBeUndefined();
    expect(r.data.classify.predictions[0].label).toBe('zebra');
    expect(r.data.detect.objects.map((o: any) => o.label)).toEqual(expect.arrayContaining(['dog', 'bicycle']));
    const person = r.data.segment.classes.find((c: any) => c.label === 'person').pixelFraction;
    expect(person).toBeGreaterThan(0.4);
    expect(person).toBeLessThan(0.5);
  });

  it('face-detection finds the face in face1.jpg and none in zebra.jpeg', async () => {
    const q = `mutation($f: File!) { detect(model: "face-detection", image: { file: $f }) { objects { label confidence box { xMin yMin xMax yMax } } } }`;
    const r = await gw.gql(q, { f: null }, { files: { f: image('face1.jpg') } });
    expect(r.errors).toBeUndefined();
    const faces = r.data.detect.objects;
    expect(faces).toHaveLength(1);
    expect(faces[0].label).toBe('face');
    expect(faces[0].confidence).toBeCloseTo(0.93, 1);
    // PROVENANCE: box [10,18,53,61] in the 62x62 photo
    [10, 18, 53, 61].forEach((v, i) => expect(Math.abs((Object.values(faces[0].box)[i] as number) * 62 - v)).toBeLessThan(3));
    const none = await gw.gql(q, { f: null }, { files: { f: image('zebra.jpeg') } });
    expect(none.data.detect.objects).toEqual([]);
  });

  it('text-detection finds the eight words; text-direction tells upright from upside down', async () => {
    const r = await gw.gql(
      `mutation($f: File!) { segment(model: "text-detection", image: { file: $f }) { regions(minPixels: 20) { box { xMin yMin xMax yMax } } } }`,
      { f: null },
      { files: { f: image('east_ocr_input.jpg') } },
    );
    expect(r.data.segment.regions).toHaveLength(8);
    // crop the widest word and classify it both ways up
    const box = r.data.segment.regions.map((g: any) => g.box).sort((a: any, b: any) => b.xMax - b.xMin - (a.xMax - a.xMin))[0];
    const pad = 6;
    const left = Math.max(0, Math.floor(box.xMin * 1920) - pad);
    const top = Math.max(0, Math.floor(box.yMin * 1080) - pad);
    const crop = await sharp(image('east_ocr_input.jpg'))
      .extract({
        left,
        top,
        width: Math.ceil((box.xMax - box.xMin) * 1920) + 2 * pad,
        height: Math.ceil((box.yMax - box.yMin) * 1080) + 2 * pad,
      })
      .png()
      .toBuffer();
    const flipped = await sharp(crop).rotate(180).png().toBuffer();
    const q = `mutation($a: File!, $b: File!) { up: classify(model: "text-direction", image: { file: $a }, topK: 1) { predictions { label } } down: classify(model: "text-direction", image: { file: $b }, topK: 1) { predictions { label } } }`;
    const c = await gw.gql(q, { a: null, b: null }, { files: { a: crop, b: flipped } });
    expect(c.errors).toBeUndefined();
    expect(c.data.up.predictions[0].label).toBe('0');
    expect(c.data.down.predictions[0].label).toBe('180');
  });
});
