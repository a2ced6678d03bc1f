import { ErrorCode, GatewayError } from '../errors.ts';
import { toFloat32, type Tensor } from '../engine/types.ts';
import type { Labels } from '../repository/labels.ts';
import type { Activation, ClassificationConfig } from '../repository/model-config.ts';

export interface Prediction {
  classId: number;
  label: string | null;
  confidence: number;
}

export function activate(values: Float32Array, activation: Activation): Float32Array {
  if (activation === 'none') return values;
  const out = new Float32Array(values.length);
  if (activation === 'sigmoid') {
    for (let i = 0; i < values.length; i++) out[i] = 1 / (1 + Math.exp(-values[i]));
    return out;
  }
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += out[i] = Math.exp(values[i] - max);
  for (let i = 0; i < values.length; i++) out[i] /= sum;
  return out;
}

/** Output [1,C] or [1,C,1,1] -> the best classes, best first. */
export function classify(
  outputs: Record<string, Tensor>,
  config: ClassificationConfig,
  labels: Labels | null,
  topK = 5,
  minConfidence = 0,
): Prediction[] {
  const name = config.output ?? Object.keys(outputs)[0];
  const t = outputs[name];
  if (!t) {
    const known = Object.keys(outputs).join(', ');
    throw new GatewayError(
      ErrorCode.INVALID_MODEL_CONFIG,
      `postprocessing.output: the model has no output ${JSON.stringify(name)} (outputs: ${known})`,
      {
        field: 'postprocessing.output',
      },
    );
  }
  if (t.shape.length < 2 || t.shape.slice(2).some((d) => d !== 1)) {
    throw new GatewayError(
      ErrorCode.INVALID_MODEL_CONFIG,
      `task: output ${name} has shape [${t.shape.join(',')}]; classification expects [N,C] or [N,C,1,1]`,
      {
        field: 'task',
      },
    );
  }
  const scores = activate(toFloat32(t), config.activation);
  return topClasses(scores, topK, minConfidence).map((c) => ({ classId: c, label: labels?.get(c) ?? null, confidence: scores[c] }));
}

/** Indices of the k best scores at or above minScore, best first (a bounded insertion, not a sort of all classes). */
export function topClasses(scores: Float32Array, k: number, minScore = -Infinity): number[] {
  const best: number[] = [];
  for (let c = 0; c < scores.length; c++) {
    const v = scores[c];
    // NaN and the infinities are no score (a GraphQL Float cannot carry them): such a class is left out, not the answer
    if (!Number.isFinite(v) || v < minScore || (best.length === k && v <= scores[best[k - 1]])) continue;
    let i = best.length === k ? k - 1 : best.length;
    while (i > 0 && scores[best[i - 1]] < v) {
      best[i] = best[i - 1];
      i--;
    }
    best[i] = c;
  }
  return best.slice(0, k);
}
