import { ErrorCode, GatewayError } from '../errors.ts';
import type { Labels } from './labels.ts';
import type { ModelFiles } from './model-files.ts';
import { parseModelConfig, type ModelConfig, type Task, type VersionPolicy } from './model-config.ts';

const DEFAULT_CONFIG = parseModelConfig({});
import type { ModelVersion } from './version.ts';

export type { ModelFiles };

/** The longest model name (a folder name, a label of every metric). */
export const MAX_MODEL_NAME = 128;
export const MODEL_NAME_RE = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,${MAX_MODEL_NAME - 1}}$`);

/** Why no model can have this name (a loadModel, or a modelStatus filter, that names it), or null for a good one. */
export function badModelName(name: string): string | null {
  if (MODEL_NAME_RE.test(name)) return null;
  const shown = JSON.stringify(name.length > 60 ? `${name.slice(0, 57)}...` : name);
  return name.length > MAX_MODEL_NAME
    ? `invalid model name ${shown}: ${name.length} characters; a model name has at most ${MAX_MODEL_NAME}`
    : `invalid model name ${shown}: use letters, digits, '_', '.', '-' (a letter or digit first), at most ${MAX_MODEL_NAME} characters`;
}

/**
 * A model of the repository: its configuration, labels and versions. Its files live in `dir` (repository layout:
 * `dir/<version>/model.onnx`), or at `file` (a single model file loaded by path, served as version 1).
 */
export class Model {
  /**
   * The configuration read last that was valid. Versions load with it and keep their own snapshot; it is replaced (and
   * versions reload) only when what serving depends on changes, so editing the description does not reload anything.
   */
  files: ModelFiles | null = null;
  /** Why the model.json on disk is not in force (the versions keep serving with what they loaded). */
  configError: GatewayError | null = null;
  /** Why the folder has no version to serve (no version folder, or none with the model file), else null. */
  layoutProblem: string | null = null;
  /** Folders named as versions that are not read as one, beside those that are ("02 (...), 3 (...)"), for the log. */
  passedOver = '';
  /** The versionPolicy names no version on disk (set by each scan; shown as configError while there is no other). */
  policyError: GatewayError | null = null;
  /** The folder could not be read at the last scan (permission denied, I/O): its versions were left as they were. */
  readError: GatewayError | null = null;
  /** A serving version's model file was replaced by one that does not load (it serves on with the one it loaded). */
  fileError: GatewayError | null = null;
  readonly versions = new Map<number, ModelVersion>();
  /** Unloaded by a client: the watcher leaves it alone until loadModel. */
  disabled = false;
  /** Its versions are being unloaded to take it off the list (deleteModel, here or on another replica; its folder gone). */
  removing = false;
  readonly disabledVersions = new Set<number>();
  configUpdatedAt = new Date();
  /** A scan found no model.json where there was one: the next that still finds none takes it for gone (see reread). */
  configMissing = false;
  /** When the configuration files were last read (their mtimes; see store.filesStamp). */
  filesStamp = '';
  /**
   * A model loaded by path: the path as it was asked for (which every replica resolves under its own roots) and the
   * configuration given with it (null: its own model.json), so that a replica that starts later loads it the same way.
   */
  origin: { path: string; config: unknown } | null = null;
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

  /** model.json as read last (defaults before anything was read): task, description and metadata for clients. */
  get config(): ModelConfig {
    return this.files?.config ?? DEFAULT_CONFIG;
  }

  /**
   * The task requests are run with: the serving version's (a model.json read since that does not fit the model leaves it
   * serving with the one it loaded), else that of model.json; a file that did not load still names it, if it says one
   * (else the default, raw).
   */
  get task(): Task {
    return (
      this.servingVersion()?.files?.config.task ??
      this.files?.config.task ??
      (this.configError?.details?.task as Task | undefined) ??
      DEFAULT_CONFIG.task
    );
  }

  /** Labels of the serving version, else of the configuration read last. */
  get labels(): Labels | null {
    return this.servingVersion()?.files?.labels ?? this.files?.labels ?? null;
  }

  /** Take what was read from the folder (or the error that reading it gave). */
  setFiles(files: ModelFiles | GatewayError): void {
    this.configUpdatedAt = new Date();
    if ('code' in files) {
      this.configError = files;
      return;
    }
    this.configError = null;
    if (this.files && this.files.signature === files.signature) {
      // the same for serving: keep the snapshot the versions hold, take the new words
      this.files.config.description = files.config.description;
      this.files.config.metadata = files.config.metadata;
    } else this.files = files;
  }

  get updatedAt(): Date {
    let t = this.configUpdatedAt;
    for (const v of this.versions.values()) if (v.updatedAt > t) t = v.updatedAt;
    return t;
  }

  /** MODEL_NOT_FOUND for a version this model does not have, naming those it has (a client's wrong number). */
  noSuchVersion(version: number): GatewayError {
    const have = [...this.versions.keys()].sort((a, b) => a - b);
    const listed = have.length > 10 ? `${have.slice(0, 10).join(', ')}, ...` : have.join(', ');
    const its = have.length > 0 ? ` (its versions: ${listed})` : ' (it has no version now)';
    return new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${this.name} has no version ${version}${its}`);
  }

  /** The version requests go to when none is named: the highest AVAILABLE one. */
  servingVersion(): ModelVersion | undefined {
    let best: ModelVersion | undefined;
    for (const v of this.versions.values()) if (v.state === 'AVAILABLE' && (!best || v.version > best.version)) best = v;
    return best;
  }

  /**
   * What inputs and outputs describe: the serving version, else the newest whose tensors are known (loaded once: an
   * unloaded one), else the newest version.
   */
  describedVersion(): ModelVersion | undefined {
    const newest = [...this.versions.values()].sort((a, b) => b.version - a.version);
    return this.servingVersion() ?? newest.find((v) => v.described) ?? newest[0];
  }

  /**
   * Every version listed is AVAILABLE (or ended on purpose), or one serves beside versions that load or failed since it
   * settled (see settled), or the model was unloaded on purpose. A folder with no version to serve (none yet, or the
   * model file under another name) is not ready: it can answer nothing.
   */
  get ready(): boolean {
    return this.disabled || (this.versions.size > 0 && this.settled);
  }

  /**
   * Nothing of this model keeps the server from being ready: every version it lists is AVAILABLE or ended on purpose
   * (a folder with no version asks for nothing: one still being filled, or left empty, is no reason to take the
   * server out of its load balancer).
   */
  get settled(): boolean {
    if (this.disabled || this.allSettled) return true;
    // once it has served settled, a version that loads or fails beside a serving one keeps nothing from being ready:
    // the model serves, and a new version's load (seconds) or failure (for as long as its folder stays) would take
    // every replica reading the same repository out of its load balancer at once
    return this.hasSettled && this.servingVersion() !== undefined;
  }

  /** Every version listed is AVAILABLE or ended on purpose. */
  get allSettled(): boolean {
    return [...this.versions.values()].every((v) => v.state === 'AVAILABLE' || (v.state === 'END' && v.errorCode === null));
  }

  /**
   * It has been settled with a version serving since it was last loaded (see settled): set by the repository after
   * each scan of it, cleared when it is unloaded, so a model loaded again is not ready until it has settled again.
   */
  hasSettled = false;
}

/** The versions a policy asks for, newest first. */
export function selectVersions(policy: VersionPolicy, onDisk: readonly number[]): number[] {
  const sorted = [...onDisk].sort((a, b) => b - a);
  if ('all' in policy) return sorted;
  if ('specific' in policy) return sorted.filter((v) => policy.specific.includes(v));
  return sorted.slice(0, policy.latest);
}
