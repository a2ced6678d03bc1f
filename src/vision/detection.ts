// Over 250 lines on purpose: the detection output formats (boxes_scores, ssd, tf, yolox, anchors) and NMS side by side.
import { ErrorCode, GatewayError } from '../errors.ts';
import { readNumber, toFloat32, type Tensor } from '../engine/types.ts';
import type { Labels } from '../repository/labels.ts';
import type { DetectionConfig } from '../repository/model-config.ts';

type Format<F extends DetectionConfig['format']> = Extract<DetectionConfig, { format: F }>;
import { toOriginalNormalized, type ImageTransform } from './preprocess.ts';

export interface Box {
  xMin: number;
  yMin: number;
  xMax: number;
  yMax: number;
}
export interface DetectedObject {
  classId: number;
  label: string | null;
  confidence: number;
  box: Box;
}

/** A candidate in model-input pixels. */
export interface Candidate {
  classId: number;
  score: number;
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

export interface DecodeOptions {
  minConfidence: number;
  iouThreshold: number;
  maxDetections: number;
}

/** model.json names (or implies) something this model does not have: a configuration error, caught at load. */
const misfit = (field: string, msg: string) => new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${field}: ${msg}`, { field });
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

function output(outputs: Record<string, Tensor>, name: string | undefined, what: string, field: string): Tensor {
  const t = name ? outputs[name] : undefined;
  if (!t)
    throw misfit(field, `detection needs output ${what}${name ? ` (${name})` : ''}; the model gives ${Object.keys(outputs).join(', ')}`);
  return t;
}

export function iou(a: Candidate, b: Candidate): number {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return union > 0 ? inter / union : 0;
}

/** Greedy non-maximum suppression within each class; best first, at most maxDetections. */
export function nms(cands: Candidate[], iouThreshold: number, maxDetections: number): Candidate[] {
  const sorted = [...cands].sort((a, b) => b.score - a.score);
  const kept: Candidate[] = [];
  // each candidate is held against the kept boxes of its own class only: against every kept box, a model of many
  // boxes and classes (1917 x 91) at maxDetections 10000 and iouThreshold 1 took 0.5 s of the event loop per image
  const keptOf = new Map<number, Candidate[]>();
  for (const c of sorted) {
    if (kept.length >= maxDetections) break;
    let same = keptOf.get(c.classId);
    if (same?.some((k) => iou(k, c) > iouThreshold)) continue;
    if (!same) keptOf.set(c.classId, (same = []));
    same.push(c);
    kept.push(c);
  }
  return kept;
}

/** boxes [1,K,4] x1y1x2y2 normalized, scores [1,K,C]. */
function decodeBoxesScores(outputs: Record<string, Tensor>, cfg: Format<'boxes_scores'>, t: ImageTransform, minConf: number): Candidate[] {
  let boxesName = cfg.boxes;
  let scoresName = cfg.scores;
  if (!boxesName || !scoresName) {
    // told apart by shape: only when one output ends in 4 and one other is left (a model of four classes has scores
    // [N,K,4] too, and its scores were read as boxes)
    const names = Object.keys(outputs);
    const fours = names.filter((n) => outputs[n].shape.at(-1) === 4);
    if (fours.length !== 1 || names.length !== 2)
      throw misfit(
        'postprocessing.boxes',
        `boxes_scores cannot tell the boxes from the scores among outputs ${names.map((n) => `${n} [${outputs[n].shape.join(',')}]`).join(', ')}: name them (postprocessing.boxes and postprocessing.scores)`,
      );
    boxesName = fours[0];
    scoresName = names.find((n) => n !== boxesName);
  }
  const bt = output(outputs, boxesName, 'boxes', 'postprocessing.boxes');
  if (bt.shape.at(-1) !== 4)
    throw misfit('postprocessing.boxes', `boxes_scores boxes are [N,K,4]; output has shape [${bt.shape.join(',')}]`);
  const boxes = toFloat32(bt);
  const st = output(outputs, scoresName, 'scores', 'postprocessing.scores');
  const scores = toFloat32(st);
  const K = boxes.length / 4;
  const C = st.shape.length >= 3 ? st.shape[st.shape.length - 1] : 1;
  if (scores.length !== K * C) throw misfit('postprocessing.format', `boxes_scores: scores hold ${scores.length} values for ${K} boxes`);
  const out: Candidate[] = [];
  for (let k = 0; k < K; k++) {
    for (let c = 0; c < C; c++) {
      if (c === cfg.backgroundClass) continue;
      const s = scores[k * C + c];
      if (s < minConf) continue;
      out.push({
        classId: c - cfg.labelOffset,
        score: s,
        x1: boxes[k * 4] * t.inputWidth,
        y1: boxes[k * 4 + 1] * t.inputHeight,
        x2: boxes[k * 4 + 2] * t.inputWidth,
        y2: boxes[k * 4 + 3] * t.inputHeight,
      });
    }
  }
  return out;
}

/** DetectionOutput [1,1,K,7]: image_id, label, conf, x1, y1, x2, y2 (normalized), as OpenVINO and Caffe SSD give. */
function decodeSsd(outputs: Record<string, Tensor>, cfg: Format<'ssd'>, t: ImageTransform, minConf: number): Candidate[] {
  const ot = output(outputs, cfg.output ?? Object.keys(outputs)[0], 'detection_out', 'postprocessing.output');
  if (ot.shape.at(-1) !== 7)
    throw misfit('postprocessing.format', `ssd expects DetectionOutput [1,1,K,7]; output has shape [${ot.shape.join(',')}]`);
  const o = toFloat32(ot);
  const out: Candidate[] = [];
  for (let i = 0; i + 7 <= o.length; i += 7) {
    if (o[i] < 0) break; // image_id -1 ends the list
    const conf = o[i + 2];
    if (conf < minConf) continue;
    out.push({
      classId: Math.round(o[i + 1]) - cfg.labelOffset,
      score: conf,
      x1: o[i + 3] * t.inputWidth,
      y1: o[i + 4] * t.inputHeight,
      x2: o[i + 5] * t.inputWidth,
      y2: o[i + 6] * t.inputHeight,
    });
  }
  return out;
}

/** TensorFlow object detection API: boxes [1,K,4] ymin,xmin,ymax,xmax normalized; scores, classes [1,K]; num [1]. */
function decodeTf(outputs: Record<string, Tensor>, cfg: Format<'tf'>, t: ImageTransform, minConf: number): Candidate[] {
  const bt = output(outputs, cfg.boxes ?? 'detection_boxes', 'boxes', 'postprocessing.boxes');
  if (bt.shape.at(-1) !== 4) throw misfit('postprocessing.boxes', `tf boxes are [N,K,4]; output has shape [${bt.shape.join(',')}]`);
  const boxes = toFloat32(bt);
  const scores = toFloat32(output(outputs, cfg.scores ?? 'detection_scores', 'scores', 'postprocessing.scores'));
  const classes = output(outputs, cfg.classes ?? 'detection_classes', 'classes', 'postprocessing.classes');
  const numT = outputs[cfg.numDetections ?? 'num_detections'];
  const n = Math.min(scores.length, numT ? Math.round(readNumber(numT, 0)) : scores.length);
  const out: Candidate[] = [];
  for (let k = 0; k < n; k++) {
    if (scores[k] < minConf) continue;
    out.push({
      classId: Math.round(readNumber(classes, k)) - cfg.labelOffset,
      score: scores[k],
      x1: boxes[k * 4 + 1] * t.inputWidth,
      y1: boxes[k * 4] * t.inputHeight,
      x2: boxes[k * 4 + 3] * t.inputWidth,
      y2: boxes[k * 4 + 2] * t.inputHeight,
    });
  }
  return out;
}

/** YOLOX raw grid predictions [1,A,5+C]: per stride a row-major grid; (tx+gx)*s, exp(tw)*s; score = obj * cls. */
function decodeYolox(outputs: Record<string, Tensor>, cfg: Format<'yolox'>, t: ImageTransform, minConf: number): Candidate[] {
  const ot = output(outputs, cfg.output ?? Object.keys(outputs)[0], 'predictions', 'postprocessing.output');
  const o = toFloat32(ot);
  const D = ot.shape[ot.shape.length - 1];
  const C = D - 5;
  const act = cfg.activation === 'sigmoid' ? sigmoid : (x: number) => x;
  let expected = 0;
  for (const s of cfg.strides) expected += Math.ceil(t.inputHeight / s) * Math.ceil(t.inputWidth / s);
  if (C < 1 || o.length !== expected * D)
    throw misfit(
      'postprocessing.strides',
      `yolox output [${ot.shape.join(',')}] does not match strides ${cfg.strides.join(',')} at ${t.inputWidth}x${t.inputHeight}`,
    );
  const out: Candidate[] = [];
  let row = 0;
  for (const s of cfg.strides) {
    const gw = Math.ceil(t.inputWidth / s);
    const gh = Math.ceil(t.inputHeight / s);
    for (let gy = 0; gy < gh; gy++) {
      for (let gx = 0; gx < gw; gx++, row++) {
        const b = row * D;
        const obj = act(o[b + 4]);
        if (obj < minConf) continue;
        let best = 0;
        let bestScore = -Infinity;
        for (let c = 0; c < C; c++)
          if (o[b + 5 + c] > bestScore) {
            bestScore = o[b + 5 + c];
            best = c;
          }
        const score = obj * act(bestScore);
        if (score < minConf) continue;
        const cx = (o[b] + gx) * s;
        const cy = (o[b + 1] + gy) * s;
        const w = Math.exp(o[b + 2]) * s;
        const h = Math.exp(o[b + 3]) * s;
        out.push({ classId: best, score, x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2 });
      }
    }
  }
  return out;
}

/**
 * Center-size regression against a grid of unit anchors (MediaPipe/BlazeFace SSD style): for each layer,
 * row = (cy*grid + cx)*anchorsPerCell + a, anchor center ((cx+0.5)/grid, (cy+0.5)/grid),
 * box center = anchor + (dx,dy)/boxScale, size = (w,h)/boxScale. Scores are per class (last dimension).
 */
function decodeAnchors(outputs: Record<string, Tensor>, cfg: Format<'anchors'>, t: ImageTransform, minConf: number): Candidate[] {
  const act = cfg.activation === 'sigmoid' ? sigmoid : (x: number) => x;
  const scale = cfg.boxScale ?? t.inputWidth;
  const out: Candidate[] = [];
  for (const layer of cfg.layers ?? []) {
    const st = output(outputs, layer.scores, 'scores', 'postprocessing.layers');
    const scores = toFloat32(st);
    const boxes = toFloat32(output(outputs, layer.boxes, 'boxes', 'postprocessing.layers'));
    const rows = layer.grid * layer.grid * layer.anchorsPerCell;
    const C = scores.length / rows;
    const stride = boxes.length / rows;
    if (!Number.isInteger(C) || !Number.isInteger(stride) || stride < 4)
      throw misfit(
        'postprocessing.layers',
        `anchors layer ${layer.scores}: ${scores.length} scores / ${boxes.length} box values do not fit ${rows} anchors`,
      );
    for (let r = 0; r < rows; r++) {
      const cell = Math.floor(r / layer.anchorsPerCell);
      const ax = ((cell % layer.grid) + 0.5) / layer.grid;
      const ay = (Math.floor(cell / layer.grid) + 0.5) / layer.grid;
      for (let c = 0; c < C; c++) {
        const score = act(scores[r * C + c]);
        if (score < minConf) continue;
        const b = r * stride;
        const cx = ax + boxes[b] / scale;
        const cy = ay + boxes[b + 1] / scale;
        const w = boxes[b + 2] / scale;
        const h = boxes[b + 3] / scale;
        out.push({
          classId: c,
          score,
          x1: (cx - w / 2) * t.inputWidth,
          y1: (cy - h / 2) * t.inputHeight,
          x2: (cx + w / 2) * t.inputWidth,
          y2: (cy + h / 2) * t.inputHeight,
        });
      }
    }
  }
  return out;
}

function decode(outputs: Record<string, Tensor>, cfg: DetectionConfig, t: ImageTransform, minConf: number): Candidate[] {
  switch (cfg.format) {
    case 'boxes_scores':
      return decodeBoxesScores(outputs, cfg, t, minConf);
    case 'ssd':
      return decodeSsd(outputs, cfg, t, minConf);
    case 'tf':
      return decodeTf(outputs, cfg, t, minConf);
    case 'yolox':
      return decodeYolox(outputs, cfg, t, minConf);
    case 'anchors':
      return decodeAnchors(outputs, cfg, t, minConf);
  }
}

/** Decode, suppress, and map boxes back to 0..1 of the original image. */
export function detect(
  outputs: Record<string, Tensor>,
  cfg: DetectionConfig,
  t: ImageTransform,
  labels: Labels | null,
  opts: DecodeOptions,
): DetectedObject[] {
  // a score that is not a number (NaN, from a model whose arithmetic overflowed) passes no threshold: it is no object,
  // and the answer keeps the others (a NaN confidence cannot be written as a GraphQL Float and nulled the whole answer)
  const cands = decode(outputs, cfg, t, opts.minConfidence).filter((c) => Number.isFinite(c.score));
  return nms(cands, opts.iouThreshold, opts.maxDetections)
    .map((c) => {
      const [xMin, yMin] = toOriginalNormalized(t, c.x1, c.y1);
      const [xMax, yMax] = toOriginalNormalized(t, c.x2, c.y2);
      return { classId: c.classId, label: labels?.get(c.classId) ?? null, confidence: c.score, box: { xMin, yMin, xMax, yMax } };
    })
    .filter((o) => o.box.xMax > o.box.xMin && o.box.yMax > o.box.yMin);
}
