import type { GatewayError } from '../errors.ts';
import type { Labels } from './labels.ts';
import { parseModelConfig, type ModelConfig, type VersionPolicy } from './model-config.ts';
import type { ModelVersion } from './version.ts';

export const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** What a model reads from its folder: model.json, labels and a mean file. */
export interface ModelFiles {
  config: ModelConfig;
  labels: Labels | null;
  mean: { shape: number[]; data: Float32Array } | null;
}

/**
 * A model of the repository: its configuration, labels and versions. Its files live in `dir` (repository layout:
 * `dir/<version>/model.onnx`), or at `file` (a single model file loaded by path, served as version 1).
 */
export class Model implements ModelFiles {
  config: ModelConfig = parseModelConfig({});
  configError: GatewayError | null = null;
  labels: ModelFiles['labels'] = null;
  mean: ModelFiles['mean'] = null;
  readonly versions = new Map<number, ModelVersion>();
  /** Unloaded by a client: the watcher leaves it alone until loadModel. */
  disabled = false;
  readonly disabledVersions = new Set<number>();
  configUpdatedAt = new Date();
  /** mtime of model.json when last read (-1: never read). */
  configMtimeMs = -1;
  /** Serializes load / unload / reconcile of this model. */
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly dir: string,
    readonly source: 'repository' | 'path',
    readonly file: string | null = null,
  ) {}

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.lock.then(fn, fn);
    this.lock = next.catch(() => undefined);
    return next;
  }

  /** Take what was read from the folder (or the error that reading it gave). */
  setFiles(files: ModelFiles | GatewayError): void {
    if ('code' in files) this.configError = files;
    else {
      this.config = files.config;
      this.labels = files.labels;
      this.mean = files.mean;
      this.configError = null;
    }
    this.configUpdatedAt = new Date();
  }

  get updatedAt(): Date {
    let t = this.configUpdatedAt;
    for (const v of this.versions.values()) if (v.updatedAt > t) t = v.updatedAt;
    return t;
  }

  /** The version requests go to when none is named: the highest AVAILABLE one. */
  servingVersion(): ModelVersion | undefined {
    let best: ModelVersion | undefined;
    for (const v of this.versions.values()) if (v.state === 'AVAILABLE' && (!best || v.version > best.version)) best = v;
    return best;
  }

  /** The serving version, else the newest version: what inputs and outputs describe. */
  describedVersion(): ModelVersion | undefined {
    return this.servingVersion() ?? [...this.versions.values()].sort((a, b) => b.version - a.version)[0];
  }

  /** Every version the policy asks for is AVAILABLE (or ended on purpose), or the model was unloaded on purpose. */
  get ready(): boolean {
    return (
      this.disabled || [...this.versions.values()].every((v) => v.state === 'AVAILABLE' || (v.state === 'END' && v.errorCode === null))
    );
  }
}

/** The versions a policy asks for, newest first. */
export function selectVersions(policy: VersionPolicy, onDisk: readonly number[]): number[] {
  const sorted = [...onDisk].sort((a, b) => b - a);
  if ('all' in policy) return sorted;
  if ('specific' in policy) return sorted.filter((v) => policy.specific.includes(v));
  return sorted.slice(0, policy.latest);
}
