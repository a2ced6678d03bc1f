import type { Labels } from './labels.ts';
import type { ModelConfig } from './model-config.ts';

/** What a model reads from its folder: model.json, labels and a mean file. A version holds the one it loaded with. */
export interface ModelFiles {
  config: ModelConfig;
  labels: Labels | null;
  mean: { shape: number[]; data: Float32Array } | null;
  /** What serving depends on (everything but description and metadata): equal signatures serve alike. */
  signature: string;
  /** The folder has no model.json: the configuration is the defaults (task raw). */
  defaults?: boolean;
}
