import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import sharp, { type Sharp } from 'sharp';
import { image } from './helpers.ts';
import { detect, nms, type Candidate } from '../src/vision/detection.ts';
import { classify } from '../src/vision/classification.ts';
import {
  decodeError,
  planInput,
  probeImage,
  resizeImage,
  toOriginalNormalized,
  pixelsToTensor,
  type ImageTransform,
} from '../src/vision/preprocess.ts';
import { toClassMap, toOriginalSize, regions } from '../src/vision/segmentation.ts';
import { readJpegHeader } from '../src/vision/jpeg-header.ts';
import { svgText } from '../src/vision/draw.ts';
import { applyRgbTransform, embeddedProfile, rgbTransformOf } from '../src/vision/icc.ts';
import { parseModelConfig, parseModelConfigText, postprocessingOf } from '../src/repository/model-config.ts';
import { labelsFromList, parseLabelsFile, parseLabelsJson, parseLabelsPbtxt, parseLabelsTxt, parseNpy } from '../src/repository/labels.ts';
import type { Tensor } from '../src/engine/types.ts';

const f32 = (shape: number[], values: number[]): Tensor => ({ dtype: 'float32', shape, data: Float32Array.from(values) });
const identity = (w: number, h: number): ImageTransform => ({
  width: w,
  height: h,
  inputWidth: w,
  inputHeight: h,
  scaleX: 1,
  scaleY: 1,
  offsetX: 0,
  offsetY: 0,
});
const det = (post: Record<string, unknown>) => postprocessingOf(parseModelConfig({ task: 'detection', postprocessing: post }), 'detection');
const opts = { minConfidence: 0.5, iouThreshold: 0.5, maxDetections: 100 };

describe('detection decoders', () => {
  it('boxes_scores: normalized x1y1x2y2 boxes and per-class scores, skipping the background class', () => {
    const boxes = f32([1, 3, 4], [0.1, 0.1, 0.3, 0.3, 0.12, 0.1, 0.32, 0.3, 0.5, 0.5, 0.9, 0.8]);
    const scores = f32([1, 3, 3], [0.1, 0.9, 0.0, 0.2, 0.8, 0.0, 0.3, 0.0, 0.7]);
    const out = detect(
      { boxes, scores },
      det({ format: 'boxes_scores', boxes: 'boxes', scores: 'scores', backgroundClass: 0 }),
      identity(100, 100),
      labelsFromList(['bg', 'cat', 'dog']),
      opts,
    );
    expect(out.map((o) => [o.label, o.confidence])).toEqual([
      ['cat', expect.closeTo(0.9)],
      ['dog', expect.closeTo(0.7)],
    ]); // 2nd cat box suppressed
    expect(out[1].box).toEqual({
      xMin: expect.closeTo(0.5),
      yMin: expect.closeTo(0.5),
      xMax: expect.closeTo(0.9),
      yMax: expect.closeTo(0.8),
    });
  });

  it('ssd: DetectionOutput [1,1,K,7] with image_id -1 ending the list', () => {
    const o = f32([1, 1, 3, 7], [0, 2, 0.95, 0.1, 0.2, 0.4, 0.6, 0, 1, 0.3, 0, 0, 1, 1, -1, 0, 0, 0, 0, 0, 0]);
    const out = detect({ detection_out: o }, det({ format: 'ssd' }), identity(200, 100), labelsFromList(['bg', 'person', 'car']), opts);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ classId: 2, label: 'car', confidence: expect.closeTo(0.95) });
    expect(out[0].box).toEqual({
      xMin: expect.closeTo(0.1),
      yMin: expect.closeTo(0.2),
      xMax: expect.closeTo(0.4),
      yMax: expect.closeTo(0.6),
    });
  });

  it('tf: ymin,xmin,ymax,xmax boxes, 1-based classes with labelOffset, num_detections', () => {
    const outputs = {
      detection_boxes: f32([1, 3, 4], [0.2, 0.1, 0.6, 0.4, 0, 0, 1, 1, 0.5, 0.5, 0.6, 0.6]),
      detection_scores: f32([1, 3], [0.9, 0.8, 0.99]),
      detection_classes: f32([1, 3], [1, 3, 2]),
      num_detections: f32([1], [2]),
    };
    const out = detect(
      outputs,
      det({ format: 'tf', labelOffset: 1 }),
      identity(50, 50),
      labelsFromList(['person', 'bicycle', 'car']),
      opts,
    );
    expect(out.map((o) => o.label)).toEqual(['person', 'car']); // the third is past num_detections
    expect(out[0].box).toEqual({
      xMin: expect.closeTo(0.1),
      yMin: expect.closeTo(0.2),
      xMax: expect.closeTo(0.4),
      yMax: expect.closeTo(0.6),
    });
  });

  it('yolox: grid offsets and exp sizes per stride, score = objectness x class', () => {
    // 32x32 input, strides [16, 32]: grids 2x2 + 1x1 = 5 anchors, 2 classes
    const rows = Array.from({ length: 5 }, () => [0, 0, 0, 0, 0, 0, 0]);
    rows[3] = [0.5, 0.5, Math.log(2), Math.log(1), 0.9, 0.1, 0.8]; // cell (1,1) of stride 16: center (24,24), 32x16
    const out = detect(
      { output: f32([1, 5, 7], rows.flat()) },
      det({ format: 'yolox', strides: [16, 32] }),
      identity(32, 32),
      labelsFromList(['a', 'b']),
      opts,
    );
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ classId: 1, label: 'b', confidence: expect.closeTo(0.72) });
    expect(out[0].box).toEqual({ xMin: expect.closeTo(8 / 32), yMin: expect.closeTo(16 / 32), xMax: 1, yMax: 1 });
  });

  it('anchors: unit anchors on grids, center + size regression, sigmoid scores', () => {
    // one layer, 2x2 grid, 1 anchor per cell; only cell (1,0) scores
    const scores = f32([1, 4, 1], [-9, 3, -9, -9]);
    const boxes = f32([1, 4, 4], [0, 0, 0, 0, 8, 0, 32, 16, 0, 0, 0, 0, 0, 0, 0, 0]);
    const cfg = det({ format: 'anchors', layers: [{ scores: 's', boxes: 'b', grid: 2, anchorsPerCell: 1 }], boxScale: 64 });
    const out = detect({ s: scores, b: boxes }, cfg, identity(64, 64), labelsFromList(['face']), opts);
    expect(out).toHaveLength(1);
    expect(out[0].confidence).toBeCloseTo(1 / (1 + Math.exp(-3)));
    // anchor center (0.75, 0.25) + dx 8/64 -> cx 0.875; w 0.5, h 0.25
    expect(out[0].box).toEqual({ xMin: expect.closeTo(0.625), yMin: expect.closeTo(0.125), xMax: 1, yMax: expect.closeTo(0.375) });
  });

  it('nms suppresses overlaps within a class only, best first, capped', () => {
    const c = (classId: number, score: number, x: number): Candidate => ({ classId, score, x1: x, y1: 0, x2: x + 10, y2: 10 });
    const kept = nms([c(0, 0.5, 1), c(0, 0.9, 0), c(1, 0.8, 0), c(0, 0.7, 50)], 0.5, 10);
    expect(kept.map((k) => [k.classId, k.score])).toEqual([
      [0, 0.9],
      [1, 0.8],
      [0, 0.7],
    ]);
    expect(nms([c(0, 0.9, 0), c(0, 0.8, 100)], 0.5, 1)).toHaveLength(1);
  });

  it('nms suppresses a box only when its overlap is above iouThreshold: at the threshold exactly it is kept', () => {
    const box = (score: number, y2: number): Candidate => ({ classId: 0, score, x1: 0, y1: 0, x2: 10, y2 });
    // [0,0,10,5] inside [0,0,10,10]: IoU 50 / 100 = 0.5
    expect(nms([box(0.9, 10), box(0.8, 5)], 0.5, 10).map((k) => k.score)).toEqual([0.9, 0.8]);
    expect(nms([box(0.9, 10), box(0.8, 5)], 0.49, 10).map((k) => k.score)).toEqual([0.9]);
  });

  it('a box that falls wholly in the letterbox padding is no object (it would have no area in the image)', () => {
    // a 100x50 photo letterboxed into a 100x100 input: rows 0..25 and 75..100 are padding
    const t: ImageTransform = { width: 100, height: 50, inputWidth: 100, inputHeight: 100, scaleX: 1, scaleY: 1, offsetX: 0, offsetY: 25 };
    const boxes = f32([1, 2, 4], [0.1, 0.02, 0.5, 0.2, 0.1, 0.3, 0.5, 0.6]); // the first in the top padding
    const scores = f32([1, 2, 1], [0.9, 0.8]);
    const out = detect({ boxes, scores }, det({ format: 'boxes_scores', boxes: 'boxes', scores: 'scores' }), t, null, opts);
    expect(out.map((o) => [o.confidence, o.box])).toEqual([
      [expect.closeTo(0.8), { xMin: expect.closeTo(0.1), yMin: expect.closeTo(0.1), xMax: expect.closeTo(0.5), yMax: expect.closeTo(0.7) }],
    ]);
  });
});

describe('labels drawn on a picture', () => {
  it('characters XML cannot hold are written as escapes, markup is escaped, a long label is cut', () => {
    expect(svgText('car\u0001\u001b\u0000\ufffe\ud800 <b>&"\'')).toBe('car\\u0001\\u001b\\u0000\\ufffe\\ud800 &#60;b&#62;&#38;&#34;&#39;');
    expect(svgText('🐕 dog\tté')).toBe('🐕 dog\tté');
    const long = svgText('x'.repeat(20_000));
    expect([long.length, long.endsWith('…')]).toEqual([64, true]);
  });
});

describe('classification postprocessing', () => {
  it('softmax over [1,C,1,1], best first, topK and minConfidence', () => {
    const out = classify({ o: f32([1, 3, 1, 1], [1, 3, 2]) }, { activation: 'softmax' }, labelsFromList(['a', 'b', 'c']), 2, 0);
    expect(out.map((p) => p.label)).toEqual(['b', 'c']);
    expect(out[0].confidence).toBeCloseTo(Math.exp(3) / (Math.exp(1) + Math.exp(2) + Math.exp(3)));
    expect(classify({ o: f32([1, 3], [1, 3, 2]) }, { activation: 'sigmoid' }, null, 5, 0.9).map((p) => p.classId)).toEqual([1]);
  });
});

/** A black image with a white rectangle; returns it and the rectangle, normalized. */
async function target(w: number, h: number, r: { x: number; y: number; w: number; h: number }) {
  const rect = await sharp({ create: { width: r.w, height: r.h, channels: 3, background: '#ffffff' } })
    .png()
    .toBuffer();
  const bytes = await sharp({ create: { width: w, height: h, channels: 3, background: '#000000' } })
    .composite([{ input: rect, left: r.x, top: r.y }])
    .png()
    .toBuffer();
  return { bytes: new Uint8Array(bytes), box: [r.x / w, r.y / h, (r.x + r.w) / w, (r.y + r.h) / h] };
}

describe('resize types map boxes back to the original image', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['SQUASH', { resizeType: 'SQUASH', targetSize: '64x64' }],
    ['CROP', { resizeType: 'CROP', targetSize: '64x64' }],
    ['CROP 0.875', { resizeType: 'CROP', targetSize: '64x64', cropFraction: 0.875 }],
    ['FILL center', { resizeType: 'FILL', targetSize: '64x64', fillAlign: 'center' }],
    ['FILL topLeft', { resizeType: 'FILL', targetSize: '64x64', fillAlign: 'topLeft' }],
    ['NETWORK', { resizeType: 'NETWORK', targetSize: '96x96', sizeMultiple: 16, sizeOffset: 1 }],
  ];
  for (const [name, pre] of cases) {
    it(name, async () => {
      const { bytes, box } = await target(300, 150, { x: 120, y: 40, w: 60, h: 60 }); // inside the central square
      const plan = planInput(parseModelConfig({ task: 'detection', preprocessing: pre, postprocessing: { format: 'yolox' } }), [
        { name: 'x', dtype: 'float32', shape: [1, 3, null, null], layout: null },
      ]);
      const img = await probeImage(bytes, 1e8);
      const { pixels, transform } = await resizeImage(img, plan, 1e8);
      // find the white pixels in the model input
      let x0 = Infinity,
        y0 = Infinity,
        x1 = -1,
        y1 = -1;
      for (let y = 0; y < transform.inputHeight; y++)
        for (let x = 0; x < transform.inputWidth; x++) {
          if (pixels[(y * transform.inputWidth + x) * 3] > 127) {
            x0 = Math.min(x0, x);
            y0 = Math.min(y0, y);
            x1 = Math.max(x1, x + 1);
            y1 = Math.max(y1, y + 1);
          }
        }
      const [a, b] = toOriginalNormalized(transform, x0, y0);
      const [c, d] = toOriginalNormalized(transform, x1, y1);
      const tolX = 2 / transform.scaleX / 300 + 0.01;
      const tolY = 2 / transform.scaleY / 150 + 0.01;
      expect(Math.abs(a - box[0])).toBeLessThan(tolX);
      expect(Math.abs(b - box[1])).toBeLessThan(tolY);
      expect(Math.abs(c - box[2])).toBeLessThan(tolX);
      expect(Math.abs(d - box[3])).toBeLessThan(tolY);
      if (name === 'NETWORK') expect([transform.inputWidth, transform.inputHeight]).toEqual([97, 49]);
      if (name.startsWith('FILL')) expect([transform.inputWidth, transform.inputHeight]).toEqual([64, 64]);
    });
  }

  it('maps a segmentation map back through FILL padding', () => {
    // 4x2 image letterboxed into 4x4 (center): rows 0 and 3 are padding
    const t: ImageTransform = { width: 4, height: 2, inputWidth: 4, inputHeight: 4, scaleX: 1, scaleY: 1, offsetX: 0, offsetY: 1 };
    const map = { width: 4, height: 4, ids: Uint16Array.from([9, 9, 9, 9, 1, 1, 2, 2, 3, 3, 3, 3, 9, 9, 9, 9]) };
    expect([...toOriginalSize(map, t).ids]).toEqual([1, 1, 2, 2, 3, 3, 3, 3]);
  });

  it('normalizes pixels in colorChannels order, with mean/std, into NCHW or NHWC', () => {
    const plan = planInput(
      parseModelConfig({ preprocessing: { colorChannels: 'BGR', mean: [10, 20, 30], std: [2, 4, 5], targetSize: '1x1' } }),
      [{ name: 'x', dtype: 'float32', shape: [1, 3, 1, 1], layout: null }],
    );
    const t = pixelsToTensor(Uint8Array.from([100, 150, 200]), 1, 1, plan);
    expect([...t.data]).toEqual([(200 - 10) / 2, (150 - 20) / 4, (100 - 30) / 5]);
    const nhwc = planInput(parseModelConfig({ preprocessing: { dimensionOrder: 'NHWC', pixelScaling: 1 } }), [
      { name: 'x', dtype: 'float32', shape: [1, 1, 2, 3], layout: null },
    ]);
    expect([...pixelsToTensor(Uint8Array.from([255, 0, 0, 0, 255, 0]), 2, 1, nhwc).data]).toEqual([1, 0, 0, 0, 1, 0]);
  });

  it('refuses images whose header claims too many pixels, before decoding', async () => {
    const big = await sharp({ create: { width: 4000, height: 3000, channels: 3, background: '#000' } })
      .jpeg()
      .toBuffer();
    await expect(probeImage(big, 1_000_000)).rejects.toMatchObject({ code: 'IMAGE_TOO_LARGE' });
    // the limit is inclusive: an image of exactly the limit is taken, one pixel more is not
    const small = await sharp({ create: { width: 40, height: 25, channels: 3, background: '#000' } })
      .png()
      .toBuffer();
    await expect(probeImage(small, 1000)).resolves.toMatchObject({ width: 40, height: 25 });
    await expect(probeImage(small, 999)).rejects.toMatchObject({ code: 'IMAGE_TOO_LARGE' });
    await expect(probeImage(Uint8Array.from([0xff, 0xd8, 0xff, 0x00, 1, 2]), 1e6)).rejects.toMatchObject({ code: 'INVALID_IMAGE' });
  });
});

describe('segmentation postprocessing', () => {
  it('thresholds one channel (sigmoid in logit space), argmaxes several, finds regions', () => {
    const cfg = postprocessingOf(
      parseModelConfig({ task: 'segmentation', postprocessing: { activation: 'sigmoid', threshold: 0.5 } }),
      'segmentation',
    );
    const one = toClassMap({ s: f32([1, 2, 3, 1], [-1, 2, 3, -4, 5, 0.1]) }, cfg, 'NHWC');
    expect([...one.ids]).toEqual([0, 1, 1, 0, 1, 1]);
    const multi = toClassMap({ s: f32([1, 3, 1, 3], [0, 9, 1, 1, 0, 7, 2, 5, 3]) }, { ...cfg, activation: 'none' }, 'NCHW');
    expect([...multi.ids]).toEqual([2, 0, 1]);
    const rs = regions(
      { width: 5, height: 3, ids: Uint16Array.from([1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 2, 2, 0, 0, 0]) },
      identity(5, 3),
      labelsFromList(['bg', 'a', 'b']),
      1,
    );
    expect(rs.map((r) => [r.label, r.pixels])).toEqual([
      ['a', 2],
      ['a', 2],
      ['b', 2],
    ]);
  });

  it('regions: pixels that touch at a corner are one region (8-neighbour); a region of exactly minPixels is kept', () => {
    // class 1 on a diagonal (three pixels touching at corners), class 2 a column of two
    const map = { width: 4, height: 3, ids: Uint16Array.from([1, 0, 0, 2, 0, 1, 0, 2, 0, 0, 1, 0]) };
    const at = (minPixels: number) => regions(map, identity(4, 3), null, minPixels).map((r) => [r.classId, r.pixels, r.box]);
    expect(at(3)).toEqual([[1, 3, { xMin: 0, yMin: 0, xMax: 0.75, yMax: 1 }]]);
    expect(at(2)).toEqual([
      [1, 3, { xMin: 0, yMin: 0, xMax: 0.75, yMax: 1 }],
      [2, 2, { xMin: 0.75, yMin: 0, xMax: 1, yMax: expect.closeTo(2 / 3) }],
    ]);
  });
});

describe('labels', () => {
  it('refuses class ids past 999999 (a list of labels is built up to the largest id)', () => {
    const tooFar = /class id 130000000 .*at most 999999/;
    expect(() => parseLabelsJson('{"0":"a","130000000":"b"}')).toThrow(tooFar);
    expect(() => parseLabelsPbtxt('item { id: 130000000 name: "b" }')).toThrow(tooFar);
    expect(() => parseModelConfig({ labels: { '0': 'a', '130000000': 'b' } })).toThrow(/labels/);
    expect(parseLabelsJson('{"999999":"last"}').get(999999)).toBe('last');
  });

  it('reads .txt, JSON arrays and objects, and TensorFlow .pbtxt label maps', () => {
    expect([...parseLabelsTxt('cat\ndog\r\nhot dog\n\n').entries()]).toEqual([
      [0, 'cat'],
      [1, 'dog'],
      [2, 'hot dog'],
    ]);
    expect([...parseLabelsJson('["a","b"]').entries()]).toEqual([
      [0, 'a'],
      [1, 'b'],
    ]);
    expect([...parseLabelsJson('{"1":"person","3":"car"}').entries()]).toEqual([
      [1, 'person'],
      [3, 'car'],
    ]);
    const pbtxt = `item {\n  name: "/m/01g317"\n  id: 1\n  display_name: "person"\n}\nitem { id: 2 name: "bicycle" }\n`;
    expect([...parseLabelsPbtxt(pbtxt).entries()]).toEqual([
      [1, 'person'],
      [2, 'bicycle'],
    ]);
    expect(parseLabelsFile('x.pbtxt', pbtxt).get(2)).toBe('bicycle');
    expect(() => parseLabelsJson('{"a": 1}')).toThrow(/id/);
    expect(() => parseLabelsJson('[\n  "cat",\n  "dog",\n]', 'm/labels.json')).toThrow(
      /m\/labels\.json: not valid JSON at line 3, column 8 \(a trailing comma: JSON has none before \} or \], remove it\)$/,
    );
    expect(() => parseLabelsPbtxt('item { name: "x" }')).toThrow(/no id/);
  });

  it('reads .pbtxt label maps with comments, nested messages and escaped quotes', () => {
    const pbtxt = [
      '# COCO label map',
      'item {',
      '  name: "/m/01g317"  # the person class',
      '  id: 1',
      '  display_name: "person"',
      '  keypoints { id: 0 label: "nose" }',
      '  keypoints { id: 1 label: "left_eye" }',
      '}',
      "item < id: 2 display_name: 'bi\\'cycle' >",
      'item { id: 3, display_name: "a } brace" }',
    ].join('\n');
    expect([...parseLabelsPbtxt(pbtxt).entries()]).toEqual([
      [1, 'person'],
      [2, "bi'cycle"],
      [3, 'a } brace'],
    ]);
    expect(() => parseLabelsPbtxt('item { id: 1 display_name: "unterminated }')).toThrow(/INVALID|unterminated/i);
  });

  it('reads .npy mean files', () => {
    const header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
    const padded = header + ' '.repeat(128 - 10 - header.length - 1) + '\n';
    const bytes = new Uint8Array(10 + padded.length + 12);
    bytes.set([0x93, ...Buffer.from('NUMPY'), 1, 0, padded.length, 0]);
    bytes.set(Buffer.from(padded), 10);
    new DataView(bytes.buffer).setFloat32(10 + padded.length, 104, true);
    new DataView(bytes.buffer).setFloat32(14 + padded.length, 117, true);
    new DataView(bytes.buffer).setFloat32(18 + padded.length, 123, true);
    expect(parseNpy(bytes)).toEqual({ shape: [3], data: Float32Array.from([104, 117, 123]) });
    expect(() => parseNpy(Uint8Array.from([1, 2, 3]))).toThrow(/not a .npy/);
    // a header that claims ten billion values with 12 bytes of data: refused before anything is allocated
    const huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000,), }";
    const hugePadded = huge + ' '.repeat(128 - 10 - huge.length - 1) + '\n';
    const claim = new Uint8Array(10 + hugePadded.length + 12);
    claim.set([0x93, ...Buffer.from('NUMPY'), 1, 0, hugePadded.length, 0]);
    claim.set(Buffer.from(hugePadded), 10);
    expect(() => parseNpy(claim)).toThrow(
      expect.objectContaining({ code: 'INVALID_MODEL_CONFIG', message: expect.stringMatching(/truncated|holds/) }),
    );
  });
});

describe('model.json validation names the field', () => {
  const bad: [unknown, RegExp][] = [
    [{ task: 'ocr' }, /task: unknown value "ocr"; expected one of classification, detection/],
    [{ preprocessing: { mean: [1, 2] } }, /preprocessing\.mean: expected 3 numbers/],
    [{ preprocessing: { targetSize: '224' } }, /preprocessing\.targetSize/],
    [{ preprocessing: { std: [1, 0, 1] } }, /preprocessing\.std\[1\]: must not be 0/],
    [{ batching: { maxBatchSize: 0 } }, /batching\.maxBatchSize: must be >= 1/],
    [{ versionPolicy: { latest: 1, all: true } }, /versionPolicy: expected exactly one/],
    [{ versionPolicy: { specific: [] } }, /versionPolicy\.specific/],
    [{ task: 'detection', postprocessing: { format: 'anchors' } }, /postprocessing\.layers/],
    // a field of another format (a yolox config switched to ssd): said whose it is, not "did you mean" itself
    [
      { task: 'detection', postprocessing: { format: 'ssd', strides: [8, 16, 32] } },
      /postprocessing\.strides: not a field of postprocessing\.format "ssd": it belongs to postprocessing\.format "yolox"; remove it, or set postprocessing\.format to "yolox"$/,
    ],
    // a name every object has (not a field of any branch), and a field of this very branch beside one it excludes
    [{ task: 'detection', postprocessing: { format: 'ssd', constructor: 1 } }, /postprocessing\.constructor: unknown field(; |$)/],
    [{ task: 'raw', versionPolicy: { all: false, latest: 1 } }, /versionPolicy\.all: not expected beside "latest"/],
    [
      { task: 'classification', postprocessing: { format: 'yolox' } },
      /postprocessing\.format: not a field of task "classification": it belongs to task "detection"/,
    ],
    [{ labels: '../etc/passwd' }, /labels: expected a labels file .* a plain file name/],
    [{ preprocessing: { meanFile: '/etc/x.npy' } }, /preprocessing\.meanFile/],
    [{ colour: 1 }, /colour: unknown field/],
    [{ task: 'classification', batching: { maxBatchsize: 64 } }, /batching\.maxBatchsize: unknown field; did you mean "maxBatchSize"\?/],
    [{ task: 'segmentation', postprocessing: { treshold: 0.3 } }, /postprocessing\.treshold: unknown field; did you mean "threshold"\?/],
    [{ task: 'detection' }, /postprocessing: a detection model needs postprocessing with its format/],
    [{ task: 'detection', postprocessing: { format: 'yolo9000' } }, /postprocessing\.format: unknown value "yolo9000"/],
    [[1, 2], /\(root\): expected object/],
    // the value given is shown beside what was expected
    [{ preprocessing: { resizeType: 'STRETCH' } }, /preprocessing\.resizeType: expected one of "SQUASH", .*; got "STRETCH"/],
    [{ instances: 'two' }, /instances: expected number; got "two"/],
  ];
  for (const [raw, re] of bad) it(JSON.stringify(raw), () => expect(() => parseModelConfig(raw)).toThrow(re));

  it('bad JSON: says where (line and column)', () => {
    expect(() => parseModelConfigText('{\n  "task": "classification"\n  "labels": "labels.txt"\n}', 'm/model.json')).toThrow(
      /m\/model\.json: not valid JSON at line 3, column 3/,
    );
    // the mistakes for which Node 20's JSON.parse names no position (an unexpected token): a trailing comma in a list,
    // a bare word, NaN; said where all the same, with what was wrong and without the text around it
    for (const [text, where, reason] of [
      [
        '{\n  "task": "classification",\n  "preprocessing": { "mean": [0.485, 0.456, 0.406,] }\n}',
        'line 3, column 50',
        'a trailing comma: JSON has none before } or ], remove it',
      ],
      ['{\n  "task": classification\n}', 'line 2, column 11', "Unexpected token 'c'"],
      // a comma before a bracket that closes nothing open there: a bracket missing, not a trailing comma
      ['{"preprocessing": {"mean": [0.5, 0.5, 0.5,}}', 'line 1, column 43', "Unexpected token '}'"],
      ['{"preprocessing": {"std": NaN}}', 'line 1, column 27', "Unexpected token 'N'"],
      // comments (as the README's annotated example has them): said to be what they are
      ['{"task": "raw"}\n// a note\n', 'line 2, column 1', 'a comment: JSON has none, remove it'],
      ['{\n  "task": "raw", // the task\n  "labels": "labels.txt"\n}', 'line 2, column 18', 'a comment: JSON has none, remove it'],
      ['{ /* the task */ "task": "raw" }', 'line 1, column 3', 'a comment: JSON has none, remove it'],
    ] as const) {
      let message = '';
      try {
        parseModelConfigText(text, 'm/model.json');
      } catch (e) {
        message = (e as Error).message;
      }
      expect(message, text).toBe(`m/model.json: not valid JSON at line ${where.slice(5)} (${reason})`);
    }
  });

  it('fills defaults', () => {
    const c = parseModelConfig({});
    expect(c.task).toBe('raw');
    expect(c.versionPolicy).toEqual({ latest: 1 });
    expect(c.batching).toMatchObject({ maxBatchSize: 16, maxDelayMs: 0, maxQueueSize: 256 });
  });
});

describe('top classes', () => {
  it('matches a full sort, ties keep the lower class id first', async () => {
    const { topClasses } = await import('../src/vision/classification.ts');
    const scores = Float32Array.from({ length: 1000 }, (_, i) => (Math.sin(i * 12.9898) * 43758.5453) % 1);
    const sorted = Array.from(scores.keys()).sort((a, b) => scores[b] - scores[a] || a - b);
    expect(topClasses(scores, 5)).toEqual(sorted.slice(0, 5));
    expect(topClasses(Float32Array.from([0.2, 0.5, 0.5, 0.1]), 3)).toEqual([1, 2, 0]);
    expect(topClasses(Float32Array.from([0.2, 0.5]), 5, 0.3)).toEqual([1]);
    // minConfidence is a floor: a class scoring exactly it is kept
    expect(topClasses(Float32Array.from([0.25, 0.5, 0.125]), 5, 0.25)).toEqual([1, 0]);
  });
});

describe('why a decode failed', () => {
  it("says what libvips said without its decoders' names, and something a client can act on when libvips lost its reason", () => {
    // libvips keeps one error buffer for all threads: under concurrent failures sharp can find it emptied ("Unknown error")
    expect(decodeError(new Error('VipsJpeg: premature end of JPEG image'), 10_000).message).toBe(
      'cannot decode the image: premature end of JPEG image',
    );
    for (const lost of ['Unknown error', '', 'VipsJpeg:']) {
      const e = decodeError(new Error(lost), 10_000);
      expect([e.code, e.message], JSON.stringify(lost)).toEqual([
        'INVALID_IMAGE',
        'cannot decode the image: it is damaged, truncated, or not the format its first bytes say',
      ]);
    }
  });
});

describe('decoding only does what the header asks for', () => {
  const rgbPlan = planInput(parseModelConfig({ preprocessing: { targetSize: '4x8', resizeType: 'SQUASH' } }), [
    { name: 'x', dtype: 'float32', shape: [1, 3, 8, 4], layout: null },
  ]);
  it.each([
    // an asymmetric gradient, made smaller: turned after the resize (a JPEG still shrinks on load)
    ['made smaller', 320, 200, (x: number, y: number, w: number, h: number) => [(x * 255) / w, (y * 255) / h, x < w / 3 ? 255 : 0]],
    // stripes two pixels wide, made larger: libvips enlarges with pixel positions that are not mirror-symmetric, so
    // turning after would put every stripe a pixel off (a mean difference of 15-20 levels on a zebra's)
    ['made larger', 48, 30, (x: number, y: number) => [x % 4 < 2 ? 255 : 0, y % 4 < 2 ? 255 : 0, (x + y) % 6 < 3 ? 255 : 0]],
  ])('applies each EXIF orientation with the pixels of turning first: %s', async (_, w, h, pixel) => {
    // the photo stored turned each of the 8 ways; the reference is the upright photo
    const px = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) px.set(pixel(x, y, w, h), (y * w + x) * 3);
    const upright = await sharp(px, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toBuffer();
    const plans = ['SQUASH', 'CROP', 'FILL'].map((resizeType) =>
      planInput(parseModelConfig({ task: 'raw', preprocessing: { resizeType, targetSize: '64x48', cropFraction: 0.875 } }), [
        { name: 'x', dtype: 'float32', shape: [1, 3, 48, 64], layout: null },
      ]),
    );
    // the inverse of each orientation: store the upright photo so that orientation o shows it upright
    const store: Record<number, (s: Sharp) => Sharp> = {
      1: (s) => s,
      2: (s) => s.flop(),
      3: (s) => s.rotate(180),
      4: (s) => s.flip(),
      5: (s) => s.rotate(90).flip(),
      6: (s) => s.rotate(270),
      7: (s) => s.rotate(270).flip(),
      8: (s) => s.rotate(90),
    };
    for (let o = 1; o <= 8; o++) {
      const stored = await store[o](sharp(upright)).png().toBuffer();
      // as near lossless as JPEG goes, so that the stored and the upright photo differ in their turn alone
      const jpeg = { quality: 100, chromaSubsampling: '4:4:4' } as const;
      const tagged = await sharp(stored).jpeg(jpeg).withMetadata({ orientation: o }).toBuffer();
      const reference = await sharp(upright).jpeg(jpeg).toBuffer();
      const img = await probeImage(tagged, 1e6);
      expect([img.width, img.height, img.orientation], `orientation ${o}`).toEqual([w, h, o]);
      for (const plan of plans) {
        const got = await resizeImage(img, plan, 1e6);
        const want = await resizeImage(await probeImage(reference, 1e6), plan, 1e6);
        expect(got.transform).toEqual(want.transform);
        let sum = 0;
        for (let i = 0; i < want.pixels.length; i++) sum += Math.abs(got.pixels[i] - want.pixels[i]);
        expect(sum / want.pixels.length, `orientation ${o}, ${plan.pre.resizeType}`).toBeLessThan(3);
      }
    }
  });

  it('resizes with the interpolation model.json names: the same geometry, each its own filter', async () => {
    // a checkerboard of 3-pixel squares made smaller by 2.6: every filter averages it differently
    const w = 312;
    const px = Buffer.alloc(w * w * 3);
    for (let y = 0; y < w; y++)
      for (let x = 0; x < w; x++) px.fill((Math.floor(x / 3) + Math.floor(y / 3)) % 2 ? 255 : 0, (y * w + x) * 3, (y * w + x) * 3 + 3);
    const img = await probeImage(
      await sharp(px, { raw: { width: w, height: w, channels: 3 } })
        .png()
        .toBuffer(),
      1e6,
    );
    const run = async (interpolation?: string) => {
      const config = parseModelConfig({
        task: 'raw',
        preprocessing: { targetSize: '120x120', ...(interpolation ? { interpolation } : {}) },
      });
      const plan = planInput(config, [{ name: 'x', dtype: 'float32', shape: [1, 3, 120, 120], layout: null }]);
      return resizeImage(img, plan, 1e6);
    };
    const [byDefault, lanczos, linear, cubic, nearest] = await Promise.all([undefined, 'LANCZOS3', 'LINEAR', 'CUBIC', 'NEAREST'].map(run));
    expect(byDefault.pixels.equals(lanczos.pixels)).toBe(true); // sharp's own default
    const outputs = [lanczos, linear, cubic, nearest];
    for (const o of outputs) expect(o.transform).toEqual(lanczos.transform);
    expect(new Set(outputs.map((o) => o.pixels.toString('base64'))).size).toBe(4);
    expect(() => parseModelConfig({ task: 'raw', preprocessing: { interpolation: 'BILINEAR' } })).toThrow(/preprocessing\.interpolation/);
  });

  it('skips the colour transform of an embedded sRGB profile, and keeps that of another profile', async () => {
    const photo = await readFile(image('zebra.jpeg'));
    const srgb = await sharp(photo).withIccProfile('srgb').jpeg().toBuffer();
    const p3 = await sharp(photo).withIccProfile('p3').jpeg().toBuffer();
    expect((await probeImage(srgb, 1e6)).srgbProfile).toBe(true);
    expect((await probeImage(p3, 1e6)).srgbProfile).toBe(false);
    expect((await probeImage(photo, 1e6)).srgbProfile).toBe(false);
  });

  it('converts a matrix/shaper profile (Generic RGB, Display P3) to sRGB itself, as libvips would', async () => {
    const zebra = await readFile(image('zebra.jpeg')); // Apple's Generic RGB profile (gamma 1.8)
    const dog = await readFile(image('dog.jpg'));
    const plan = (resizeType: string) =>
      planInput(parseModelConfig({ preprocessing: { targetSize: '224x224', resizeType, fillColor: [114, 114, 114] } }), [
        { name: 'x', dtype: 'float32', shape: [1, 3, 224, 224], layout: null },
      ]);
    for (const photo of [zebra, await sharp(dog).withIccProfile('p3').jpeg({ quality: 95 }).toBuffer()]) {
      const img = await probeImage(photo, 1e8);
      expect(img.srgbProfile).toBe(false);
      expect(img.rgbProfile).not.toBeNull();
      // the whole photo: within one level of what Little CMS makes of it
      const theirs = await sharp(photo).raw().toBuffer();
      const ours = await sharp(photo, { ignoreIcc: true }).raw().toBuffer();
      applyRgbTransform(img.rgbProfile!, ours);
      expect(maxDifference(ours, theirs)).toBeLessThanOrEqual(1);
      for (const resizeType of ['CROP', 'FILL']) {
        const own = await resizeImage(img, plan(resizeType), 1e8);
        const byLibvips = await resizeImage({ ...img, rgbProfile: null }, plan(resizeType), 1e8);
        // the transform is ours (after the resize: a few pixels differ), the colours are libvips'
        expect(own.pixels.equals(byLibvips.pixels)).toBe(false);
        expect(meanDifference(own.pixels, byLibvips.pixels)).toBeLessThan(1.5);
        expect(own.transform).toEqual(byLibvips.transform);
        if (resizeType === 'FILL') {
          // the padding is the model's fill colour, untouched by the photo's profile
          expect(own.transform.offsetY).toBeGreaterThan(0); // landscape photos: bands above and below
          expect([...own.pixels.subarray(0, 3)]).toEqual([114, 114, 114]);
        }
      }
    }
  });

  it('leaves every other profile to libvips, and survives a damaged one', async () => {
    const p3 = (await sharp(await readFile(image('bee.jpeg')))
      .withIccProfile('p3')
      .jpeg()
      .toBuffer()) as Buffer;
    const icc = (await sharp(p3).metadata()).icc!;
    expect(rgbTransformOf(icc)).not.toBeNull();
    const cmyk = (await sharp(p3).toColourspace('cmyk').withIccProfile('cmyk').jpeg().toBuffer()) as Buffer;
    expect(rgbTransformOf((await sharp(cmyk).metadata()).icc!)).toBeNull();
    // a LUT-based RGB profile (an A2B0 tag): Little CMS would use the LUT
    const lut = Buffer.from(icc);
    lut.write('A2B0', lut.indexOf('desc', 128, 'latin1'), 'latin1');
    expect(rgbTransformOf(lut)).toBeNull();
    expect(rgbTransformOf(icc.subarray(0, 200))).toBeNull();
    expect(rgbTransformOf(Buffer.concat([icc, Buffer.alloc(70_000)]))).toBeNull(); // larger than any matrix/shaper profile
    // a tag twice (Little CMS reads the first): the second rXYZ points at gXYZ's data
    const view = new DataView(icc.buffer, icc.byteOffset, icc.byteLength);
    const tagAt = (name: string) => {
      for (let i = 0; i < view.getUint32(128); i++)
        if (Buffer.from(icc.subarray(132 + 12 * i, 136 + 12 * i)).toString('latin1') === name) return 132 + 12 * i;
      throw new Error(name);
    };
    const twice = Buffer.from(icc);
    twice.write('rXYZ', tagAt('cprt'), 'latin1');
    twice.writeUInt32BE(view.getUint32(tagAt('gXYZ') + 4), tagAt('cprt') + 4);
    twice.writeUInt32BE(20, tagAt('cprt') + 8);
    expect(rgbTransformOf(twice)).toBeNull();
    // black above 0 (P3's parametric curve given c = 0.05, type 2): Little CMS compensates the black point on v4
    const grey = Buffer.from(icc);
    const trc = view.getUint32(tagAt('rTRC') + 4);
    expect(grey.toString('latin1', trc, trc + 4)).toBe('para');
    grey.writeUInt16BE(2, trc + 8);
    grey.writeInt32BE(Math.round(0.05 * 65536), trc + 24);
    expect(rgbTransformOf(grey)).toBeNull();
    // damaged profiles never throw, and what they give is finite
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) % 1_000_000) / 1_000_000;
    for (let k = 0; k < 300; k++) {
      const bad = Buffer.from(icc);
      for (let j = 0; j < 4; j++) bad[Math.floor(random() * bad.length)] = Math.floor(random() * 256);
      const t = rgbTransformOf(bad);
      if (t) expect([...t.curves, ...t.matrix].every(Number.isFinite)).toBe(true);
      expect(() => embeddedProfile(bad)).not.toThrow(); // nor does telling sRGB from the rest
    }
  });

  it('applies EXIF orientation', async () => {
    // stored 40x20, white on the left; orientation 6 shows it turned 90 degrees clockwise: 20x40, white on top
    const white = await sharp({ create: { width: 20, height: 20, channels: 3, background: '#fff' } })
      .png()
      .toBuffer();
    const stored = await sharp({ create: { width: 40, height: 20, channels: 3, background: '#000' } })
      .composite([{ input: white, left: 0, top: 0 }])
      .jpeg()
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const img = await probeImage(stored, 1e6);
    expect([img.width, img.height, img.orientation]).toEqual([20, 40, 6]);
    const { pixels, transform } = await resizeImage(img, rgbPlan, 1e6);
    expect([transform.inputWidth, transform.inputHeight]).toEqual([4, 8]);
    expect(pixels[0]).toBeGreaterThan(200); // top row white
    expect(pixels[7 * 4 * 3]).toBeLessThan(50); // bottom row black
  });

  it('expands grey (with alpha) to three channels, and turns colour grey for an L model', async () => {
    const greyAlpha = await sharp(Buffer.alloc(8 * 8 * 2, 90).fill(255, 64), { raw: { width: 8, height: 8, channels: 2 } })
      .toColourspace('b-w')
      .png()
      .toBuffer();
    expect((await sharp(greyAlpha).metadata()).channels).toBe(2);
    const img = await probeImage(greyAlpha, 1e6);
    expect(img.isGrey).toBe(true);
    const { pixels } = await resizeImage(img, rgbPlan, 1e6);
    expect(pixels.length).toBe(4 * 8 * 3);
    expect(Math.abs(pixels[0] - pixels[1]) + Math.abs(pixels[1] - pixels[2])).toBeLessThanOrEqual(1);
    const greyPlan = planInput(parseModelConfig({ preprocessing: { targetSize: '4x4', colorChannels: 'L' } }), [
      { name: 'x', dtype: 'float32', shape: [1, 1, 4, 4], layout: null },
    ]);
    const red = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#ff0000' } })
      .png()
      .toBuffer();
    const g = await resizeImage(await probeImage(red, 1e6), greyPlan, 1e6);
    expect(g.pixels.length).toBe(16);
    expect(g.pixels[0]).toBeGreaterThan(40);
    expect(g.pixels[0]).toBeLessThan(160); // libvips converts by perceptual lightness (L*): red is mid-grey
  });
});

describe('allowed roots', () => {
  it('resolves .. and symlinks, also for paths that do not exist yet, and under a symlinked root', async () => {
    const { mkdtemp, mkdir, symlink, writeFile } = await import('node:fs/promises');
    const os = await import('node:os');
    const path = await import('node:path');
    const { resolveUnderRoots } = await import('../src/paths.ts');
    const base = await mkdtemp(path.join(os.tmpdir(), 'gw-roots-'));
    await mkdir(path.join(base, 'real', 'images'), { recursive: true });
    await writeFile(path.join(base, 'real', 'images', 'a.jpg'), 'x');
    await writeFile(path.join(base, 'secret'), 'x');
    await symlink(path.join(base, 'real'), path.join(base, 'linked'));
    const root = path.join(base, 'linked', 'images'); // a root reached through a symlink
    expect(await resolveUnderRoots(path.join(root, 'a.jpg'), [root])).toBe(path.join(base, 'real', 'images', 'a.jpg'));
    expect(await resolveUnderRoots('a.jpg', [root])).toBe(path.join(base, 'real', 'images', 'a.jpg'));
    await expect(resolveUnderRoots(path.join(root, 'missing.jpg'), [root])).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(resolveUnderRoots(path.join(root, 'no', 'such', 'dir.jpg'), [root])).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(resolveUnderRoots(path.join(root, '..', '..', 'secret'), [root])).rejects.toMatchObject({ code: 'FORBIDDEN_PATH' });
    await expect(resolveUnderRoots(path.join(root, '..', '..', 'nothing-here'), [root])).rejects.toMatchObject({ code: 'FORBIDDEN_PATH' });
    await expect(resolveUnderRoots('/etc/passwd', [root])).rejects.toMatchObject({ code: 'FORBIDDEN_PATH' });
    await expect(resolveUnderRoots('a.jpg', [])).rejects.toMatchObject({ code: 'FORBIDDEN_PATH' });
    // a path under any of several roots is allowed, not only under the first
    const other = path.join(base, 'other');
    await mkdir(other);
    await writeFile(path.join(other, 'b.jpg'), 'x');
    expect(await resolveUnderRoots(path.join(other, 'b.jpg'), [root, other])).toBe(path.join(other, 'b.jpg'));
    await expect(resolveUnderRoots(path.join(other, 'b.jpg'), [root])).rejects.toMatchObject({ code: 'FORBIDDEN_PATH' });
  });
});

describe('opening a file under the allowed roots', () => {
  it('without /proc (the check by device and inode): a file that comes and goes meanwhile gets a typed error, never a raw one', async () => {
    const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
    const os = await import('node:os');
    const path = await import('node:path');
    const { spawn } = await import('node:child_process');
    const { openUnderRoots } = await import('../src/paths.ts');
    const { GatewayError } = await import('../src/errors.ts');
    const root = await mkdtemp(path.join(os.tmpdir(), 'gw-open-'));
    await writeFile(path.join(root, 'a.jpg'), 'x');
    // a process that keeps removing the file and writing it again
    const churn = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('node:fs'); for (;;) { try { fs.rmSync(process.argv[1]); fs.writeFileSync(process.argv[1], 'x'); } catch {} }`,
        path.join(root, 'a.jpg'),
      ],
      { stdio: 'ignore' },
    );
    const seen: Record<string, number> = {};
    try {
      for (let i = 0; i < 3000; i++) {
        try {
          const file = await openUnderRoots('a.jpg', [root], 'image path', '', { openedFiles: path.join(root, 'no-proc') });
          await file.close();
          seen.opened = (seen.opened ?? 0) + 1;
        } catch (e) {
          const key = e instanceof GatewayError ? e.code : `raw ${(e as Error).message}`;
          seen[key] = (seen[key] ?? 0) + 1;
        }
      }
    } finally {
      churn.kill('SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
    expect(
      Object.keys(seen).filter((k) => k.startsWith('raw')),
      JSON.stringify(seen),
    ).toEqual([]);
    expect(seen.opened, JSON.stringify(seen)).toBeGreaterThan(0);
  });
});

describe('the JPEG header reader (the probe without a libvips round trip) agrees with libvips', () => {
  /** What sharp's metadata() says, in the reader's terms. */
  const bySharp = async (b: Uint8Array) => {
    const m = await sharp(b).metadata();
    return { width: m.width, height: m.height, components: m.channels, orientation: m.orientation ?? 1, icc: m.icc ? [...m.icc] : null };
  };
  const byReader = (b: Uint8Array) => {
    const h = readJpegHeader(b);
    return h && { ...h, icc: h.icc ? [...h.icc] : null };
  };

  /** The JPEG with its one ICC_PROFILE APP2 segment cut into two chunks (sequence 1 and 2 of 2). */
  const splitIcc = (jpeg: Buffer) => {
    const at = jpeg.indexOf(Buffer.from('ICC_PROFILE\0')) - 4;
    const length = jpeg.readUInt16BE(at + 2);
    const profile = jpeg.subarray(at + 4 + 14, at + 2 + length);
    const half = Math.floor(profile.length / 2);
    const chunk = (seq: number, data: Buffer) => {
      const head = Buffer.alloc(4 + 14);
      head.writeUInt16BE(0xffe2, 0);
      head.writeUInt16BE(2 + 14 + data.length, 2);
      head.write('ICC_PROFILE\0', 4, 'latin1');
      head[16] = seq;
      head[17] = 2;
      return Buffer.concat([head, data]);
    };
    const out = Buffer.concat([
      jpeg.subarray(0, at),
      chunk(1, profile.subarray(0, half)),
      chunk(2, profile.subarray(half)),
      jpeg.subarray(at + 2 + length),
    ]);
    expect(out.length).toBe(jpeg.length + 18);
    return out;
  };

  it('on every fixture photo and on made ones: orientations, grey, progressive, ICC profiles of one and several chunks', async () => {
    const photos = await Promise.all(
      ['bee.jpeg', 'dog.jpg', 'face1.jpg', 'east_ocr_input.jpg', 'people1.jpeg', 'road1.jpg', 'coco.jpg', 'zebra.jpeg'].map((p) =>
        readFile(image(p)),
      ),
    );
    const base = sharp(photos[0]);
    const made = [
      ...(await Promise.all([1, 2, 3, 4, 5, 6, 7, 8].map((o) => base.clone().jpeg().withMetadata({ orientation: o }).toBuffer()))),
      await base.clone().grayscale().jpeg().toBuffer(),
      await base.clone().jpeg({ progressive: true }).toBuffer(),
      await base.clone().jpeg().withIccProfile('srgb').toBuffer(),
      await base.clone().jpeg().withIccProfile('p3').toBuffer(),
      // a profile over 64 kB travels in several APP2 chunks: the same profile split in two
      splitIcc(await base.clone().jpeg().withIccProfile('p3').toBuffer()),
    ];
    for (const [i, b] of [...photos, ...made].entries()) {
      const read = byReader(b);
      expect(read, `image ${i}`).not.toBeNull();
      expect(read, `image ${i}`).toEqual(await bySharp(b));
    }
  });

  it('leaves what it does not read plainly to libvips (CMYK, not a JPEG, cut short, a second frame header)', async () => {
    const cmyk = await sharp(await readFile(image('bee.jpeg')))
      .toColourspace('cmyk')
      .jpeg()
      .toBuffer();
    expect((await sharp(cmyk).metadata()).channels).toBe(4);
    expect(readJpegHeader(cmyk)).toBeNull();
    const photo = await readFile(image('bee.jpeg'));
    expect(readJpegHeader(photo.subarray(0, 100))).toBeNull();
    expect(readJpegHeader(Buffer.from('not a jpeg'))).toBeNull();
    // a second start of frame
    const sof = photo.indexOf(Buffer.from([0xff, 0xc0]));
    const length = photo.readUInt16BE(sof + 2);
    const twice = Buffer.concat([photo.subarray(0, sof + 2 + length), photo.subarray(sof)]);
    expect(readJpegHeader(twice)).toBeNull();
    // a frame header whose length does not fit its component count (3 components need 8 + 3 x 3 bytes)
    const padded = Buffer.concat([photo.subarray(0, sof + 2 + length), Buffer.alloc(3), photo.subarray(sof + 2 + length)]);
    padded.writeUInt16BE(length + 3, sof + 2);
    expect(readJpegHeader(padded)).toBeNull();
    await expect(sharp(padded).raw().toBuffer()).rejects.toThrow(); // libjpeg refuses it too
    // an EXIF directory that names the orientation twice (1, then 6): libvips reads the first; the reader leaves it
    // to libvips rather than pick one (a different pick turned the boxes and not the crops)
    for (const [first, second] of [
      [1, 6],
      [6, 1],
    ]) {
      const entries = [first, second];
      const tiff = Buffer.alloc(8 + 2 + entries.length * 12 + 4);
      tiff.write('II*\0', 0, 'latin1');
      tiff.writeUInt32LE(8, 4);
      tiff.writeUInt16LE(entries.length, 8);
      entries.forEach((v, i) => {
        tiff.writeUInt16LE(0x0112, 10 + i * 12);
        tiff.writeUInt16LE(3, 12 + i * 12);
        tiff.writeUInt32LE(1, 14 + i * 12);
        tiff.writeUInt16LE(v, 18 + i * 12);
      });
      const payload = Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), tiff]);
      const app1 = Buffer.from([0xff, 0xe1, (payload.length + 2) >> 8, (payload.length + 2) & 0xff]);
      const doubled = Buffer.concat([photo.subarray(0, 2), app1, payload, photo.subarray(2)]);
      expect(readJpegHeader(doubled), `${first},${second}`).toBeNull();
      const probed = await probeImage(doubled, 1e8);
      expect(probed.orientation, `${first},${second}`).toBe((await sharp(doubled).metadata()).orientation ?? 1);
    }
  });

  it('probeImage gives the same answer by either path', async () => {
    for (const p of ['bee.jpeg', 'face1.jpg', 'east_ocr_input.jpg']) {
      const b = await readFile(image(p));
      const fast = await probeImage(b, 1e8);
      // the same photo in a PNG (its ICC profile kept) goes through sharp's metadata()
      const png = await sharp(b).keepIccProfile().png().toBuffer();
      const slow = await probeImage(png, 1e8);
      expect({ ...fast, bytes: null }).toEqual({ ...slow, bytes: null });
    }
  });
});

function maxDifference(a: Uint8Array, b: Uint8Array): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function meanDifference(a: Uint8Array, b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs(a[i] - b[i]);
  return sum / a.length;
}
