// Longer than most files here, on purpose: the admin operations (load by name, by path or from uploads, unload,
// update, delete) and the reconcile each of them ends with run under the model's lock and share the registry; kept
// together, the locking protocol reads in one place.
import { AsyncLocalStorage } from 'node:async_hooks';
import { closest } from '../did-you-mean.ts';
import { EventEmitter } from 'node:events';
import os from 'node:os';
import { readFile, readdir, realpath, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError, errorMessage, isGatewayError, quoted } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Metrics, VersionMetrics } from '../metrics.ts';
import type { Engine, LoadOptions, Session } from '../engine/types.ts';
import { isInside, resolveUnderRoots } from '../paths.ts';
import { editModelJson, type JsonMergePatch } from './edits.ts';
import { parseModelConfig } from './model-config.ts';
import { MAX_MODEL_NAME, MODEL_NAME_RE, Model, badModelName, selectVersions, type ModelFiles } from './model.ts';
import {
  MAX_VERSION,
  atomicWrite,
  fileState,
  checkRemovable,
  discoverVersions,
  filesStamp,
  isMissing,
  layoutProblem,
  modelFileIn,
  readModelFiles,
  storageError,
  versionFolders,
  writeModelJson,
  readConfiguredFiles,
} from './store.ts';
import { checkUploadedLabels, commitUpload, discardUpload, planUpload, stageUpload, type UploadedFile } from './uploads.ts';
import { ModelVersion, type ModelStatusEvent } from './version.ts';
import { Watcher } from './watcher.ts';

export interface ManagerOptions {
  root: string;
  engine: Engine;
  logger: Logger;
  metrics?: Metrics;
  /** Extra directories loadModel(path:) may read from, beside the repository itself. */
  modelRoots?: readonly string[];
  /** How often the repository is rescanned; 0 turns the watcher off. */
  pollIntervalMs?: number;
  /** Engine options for every session (threads, dynamic batch). */
  loadOptions?: LoadOptions;
  /**
   * Does a configuration fit the loaded session (the load-time warm-up)? Throws when not, and the load ends with that
   * error; returns warnings. Supplied by the layer that knows what a task needs.
   */
  checkModel?: (files: ModelFiles, session: Session) => Promise<string[]> | string[];
  /** This replica's name, in every status event (several replicas may share one event stream). */
  replica?: string;
}

/**
 * An admin operation that succeeded on this replica, as other replicas apply it (the manager emits it as 'admin'; the
 * optional cluster bus carries it). Files are not in it: uploads and model.json edits are written once to the shared
 * repository, and the other replicas read them from there.
 */
/** Which of a model's versions are unloaded on purpose (null: none). */
export type UnloadedVersions = { all: boolean; versions: number[] } | null;

export function unloadedOf(model: Model): UnloadedVersions {
  if (!model.disabled && model.disabledVersions.size === 0) return null;
  return { all: model.disabled, versions: [...model.disabledVersions].sort((a, b) => a - b) };
}

export type AdminOp =
  | {
      op: 'load';
      name: string;
      path?: string | null;
      config?: unknown;
      /** A model loaded by path as another replica serves it now (its description and metadata edited since). */
      described?: { description: string; metadata: Record<string, unknown> };
    }
  /** unloaded: the model's unloaded versions right after this change (a load leaves none) */
  | { op: 'unload'; name: string; version?: number | null; unloaded?: UnloadedVersions }
  | { op: 'update'; name: string; changes: { description?: string | null; metadata?: JsonMergePatch | null } }
  | { op: 'delete'; name: string };

/** Set while an admin operation of another replica is applied: it is not announced again. */
const applyingRemote = new AsyncLocalStorage<boolean>();

/**
 * A version's failure as an error: its code, its message (`prefix` before it, or `fallback` when it has none), and the
 * model.json field it names (if any).
 */
const versionError = (mv: ModelVersion, code: ErrorCode, { prefix = '', fallback = 'the version did not load' } = {}): GatewayError =>
  new GatewayError(
    (mv.errorCode as ErrorCode | null) ?? code,
    prefix + (mv.errorMessage ?? fallback),
    mv.errorField ? { field: mv.errorField } : undefined,
  );

/** Is it there? Only an error that says it is not (ENOENT) says no: one that cannot be read now is still there. */
const exists = (p: string) =>
  stat(p).then(
    () => true,
    (e: unknown) => !isMissing(e),
  );

/**
 * The model manager (OpenVINO Model Server's manager -> model -> version): which models exist, which versions their
 * policies ask for, and the admin operations on them. Files are read by store.ts and written by uploads.ts and
 * edits.ts; the watcher rescans the repository; each version instance runs its own lifecycle with the configuration
 * it was loaded with (version.ts).
 */
export class ModelManager extends EventEmitter<{ status: [ModelStatusEvent]; admin: [AdminOp]; changing: [string, number] }> {
  readonly root: string;
  readonly replica: string;
  readonly engine: Engine;
  private readonly logger: Logger;
  private readonly metrics: Metrics | undefined;
  private readonly modelRoots: readonly string[];
  private readonly loadOptions: LoadOptions;
  private readonly checkModel: ManagerOptions['checkModel'];
  private readonly watcher: Watcher;
  private readonly byName = new Map<string, Model>();
  /** Set by the cluster: a model not served here that another replica serves (deleteModel still deletes it there). */
  elsewhere: ((name: string) => boolean) | null = null;
  /** Folders of the repository skipped for their name, told once each. */
  private readonly misnamed = new Set<string>();
  /** One series per (model, version), shared by the instances that serve it one after another. */
  private readonly versionMetrics = new Map<string, VersionMetrics>();
  private closed = false;
  private started = false;
  /**
   * Instances loading beside the list (a new configuration's, an upload's), which close() gives up as it gives up the
   * loads of listed versions: a shutdown waited for each of them to end (past SHUTDOWN_TIMEOUT_MS, an exit code 1).
   */
  private readonly candidates = new Set<ModelVersion>();

  constructor({
    root,
    engine,
    logger,
    metrics,
    modelRoots = [],
    pollIntervalMs = 1000,
    loadOptions = {},
    checkModel,
    replica = os.hostname(),
  }: ManagerOptions) {
    super();
    this.replica = replica;
    this.setMaxListeners(0);
    this.root = path.resolve(root);
    this.engine = engine;
    this.logger = logger;
    this.metrics = metrics;
    this.modelRoots = modelRoots.map((r) => path.resolve(r));
    this.loadOptions = loadOptions;
    this.checkModel = checkModel;
    this.watcher = new Watcher(() => this.scan(), pollIntervalMs);
  }

  /** Scan the repository, load what its policies ask for, and start watching. The repository must exist. */
  async start(): Promise<void> {
    const st = await stat(this.root).catch(() => null);
    if (!st?.isDirectory())
      throw new GatewayError(ErrorCode.INVALID_INPUT, `the model repository ${this.root} does not exist or is not a directory`);
    await readdir(this.root); // unreadable: fail now, with the system's reason
    await this.watcher.tick();
    if (this.closed) return; // shut down while the first scan loaded: nothing more to watch
    this.started = true;
    this.watcher.start();
  }

  models(): Model[] {
    return [...this.byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): Model | undefined {
    return this.byName.get(name);
  }

  /** The first scan has finished and every model the repository asks for is AVAILABLE (for /ready). */
  get ready(): boolean {
    return this.started && this.models().every((m) => m.settled);
  }

  /** The model of that name, or MODEL_NOT_FOUND. */
  require(name: string): Model {
    const model = this.byName.get(name);
    if (!model) {
      const meant = closest(name, this.byName.keys());
      throw new GatewayError(
        ErrorCode.MODEL_NOT_FOUND,
        `no model named ${quoted(name)}${meant ? `; did you mean ${JSON.stringify(meant)}?` : ''}`,
      );
    }
    return model;
  }

  /**
   * Why a model (or the version a client named) cannot be described, as MODEL_NOT_READY: no version of it was ever
   * loaded, so nothing is known of its tensors (metadata and configuration would be empty).
   */
  undescribed(model: Model, named: ModelVersion | null): GatewayError {
    return new GatewayError(
      ErrorCode.MODEL_NOT_READY,
      named
        ? `model ${model.name} version ${named.version} never loaded, so its inputs and outputs are not known${whyVersionNotServing(model, named)}`
        : `model ${model.name} has no version that ever loaded, so its inputs and outputs are not known${whyNotServing(model)}`,
    );
  }

  /** The version a request runs on: MODEL_NOT_FOUND for unknown names or versions, MODEL_NOT_READY otherwise. */
  resolve(name: string, version?: number | null): { model: Model; version: ModelVersion } {
    const model = this.require(name);
    if (version === undefined || version === null) {
      const v = model.servingVersion();
      if (!v) throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${name} has no AVAILABLE version${whyNotServing(model)}`);
      return { model, version: v };
    }
    const v = model.versions.get(version);
    if (!v) throw model.noSuchVersion(version);
    if (v.state !== 'AVAILABLE')
      throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${name} version ${version} is ${v.state}${whyVersionNotServing(model, v)}`, {
        state: v.state,
      });
    return { model, version: v };
  }

  /** One pass of the watcher: new model folders and version folders are loaded, removed ones unloaded and forgotten. */
  private async scan(): Promise<void> {
    try {
      const entries = await readdir(this.root, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        const misnamed = e.isDirectory() && !e.name.startsWith('.') && !MODEL_NAME_RE.test(e.name) && e.name !== 'lost+found';
        if (misnamed && !this.misnamed.has(e.name)) {
          // said once per folder: otherwise a folder named "My Model" is simply never served, and nothing says why (a
          // new volume's lost+found is no one's mistake)
          this.misnamed.add(e.name);
          this.logger.warn(
            { folder: e.name },
            `model folder skipped: a model name has 1 to ${MAX_MODEL_NAME} letters, digits, '_', '.' and '-', a letter or digit first; rename the folder`,
          );
        }
        if (
          e.isSymbolicLink() &&
          MODEL_NAME_RE.test(e.name) &&
          !this.byName.has(e.name) &&
          !this.misnamed.has(e.name) &&
          (await stat(path.join(this.root, e.name)).then(
            (st) => st.isDirectory(),
            () => false, // (a link to a file, or to nothing, is no model folder: not ours to speak of)
          ))
        ) {
          // not followed (it could lead out of the repository): said once, rather than never served without a word
          this.misnamed.add(e.name);
          this.logger.warn(
            { folder: e.name },
            'model folder skipped: it is a symbolic link, which the repository does not follow; put the folder itself there (or loadModel(path:) under MODEL_ROOTS)',
          );
        }
        if (!e.isDirectory() || e.name.startsWith('.') || !MODEL_NAME_RE.test(e.name) || this.byName.has(e.name)) continue;
        this.byName.set(e.name, new Model(e.name, path.join(this.root, e.name), 'repository'));
      }
      await Promise.all(
        this.models().map((m) =>
          m.exclusive(async () => {
            // checked under the lock: an upload may have created the folder meanwhile
            if (!m.file && !(await exists(m.dir))) {
              if (m.source === 'repository' || m.versions.size > 0) return this.forget(m);
              return;
            }
            if (!m.file && (await filesStamp(m.dir, m.files?.config ?? null)) !== m.filesStamp) await this.reread(m, { scan: true });
            return this.reconcile(m);
          }),
        ),
      );
    } catch (e) {
      this.logger.error({ error: errorMessage(e) }, 'repository scan failed');
    }
  }

  /** (Re)read model.json, labels and mean file. On error the versions keep what they loaded, with configError set. */
  private async reread(model: Model, { scan = false }: { scan?: boolean } = {}): Promise<void> {
    const stamp = await filesStamp(model.dir, model.files?.config ?? null);
    let files: ModelFiles | GatewayError;
    try {
      files = await readModelFiles(model.name, model.dir);
    } catch (e) {
      files = e as GatewayError;
      this.logger.warn({ model: model.name, error: errorMessage(e) }, 'model configuration invalid');
    }
    // a model.json gone from a model that had one is taken for gone when the next scan still finds none: an editor that
    // saves by unlinking and writing leaves none for a moment, and every version would reload with the defaults (and
    // again once it is back). Meanwhile nothing changes, and the stamp is left as it was, so the next scan reads again.
    const missing = !('code' in files) && files.defaults === true && model.files !== null && !model.files.defaults;
    if (scan && missing && !model.configMissing) {
      model.configMissing = true;
      return;
    }
    model.configMissing = false;
    model.filesStamp = stamp;
    model.setFiles(files);
  }

  /** Version files of a model: its version folders, or its single file (served as version 1). */
  private async discover(
    model: Model,
    unreadable: Map<number, unknown> = new Map(),
    notes?: { passedOver: string },
  ): Promise<Map<number, string>> {
    return model.file ? new Map([[1, model.file]]) : discoverVersions(model.dir, this.engine.modelFiles, unreadable, notes);
  }

  /** Say (once) that part of a model's folder cannot be read, or (null) that it can again; shown as configError. */
  private noteReadError(model: Model, message: string | null, error?: unknown): void {
    if (model.readError?.message !== (message ?? undefined)) {
      if (message) this.logger.warn({ model: model.name, error: errorMessage(error) }, 'model folder cannot be read');
      if (model.configError === model.readError) model.configError = null;
      model.readError = message === null ? null : new GatewayError(ErrorCode.MODEL_LOAD_FAILED, message);
    }
    // (again after a re-read of model.json cleared configError)
    if (model.readError) model.configError ??= model.readError;
  }

  private newVersion(model: Model, version: number, file: string, files: ModelFiles | null, publish = true): ModelVersion {
    const key = `${model.name}\u0000${version}`;
    let metrics = this.versionMetrics.get(key);
    if (!metrics && this.metrics) this.versionMetrics.set(key, (metrics = this.metrics.forVersion(model.name, version)));
    const created: ModelVersion = new ModelVersion(
      model.name,
      version,
      file,
      files,
      {
        logger: this.logger,
        publish: (e) => this.emit('status', { ...e, replica: this.replica }),
        openSession: async (p, options) => this.engine.load(await this.confinedModelFile(model, p), options),
        check: this.checkModel,
        metrics,
        // a self-restart runs only while this instance is still the model's version and wanted (not replaced, unloaded,
        // deleted, nor the server closing)
        exclusive: (fn) =>
          model.exclusive(async () => {
            if (this.closed || model.disabled || model.disabledVersions.has(version) || model.versions.get(version) !== created) return;
            return fn();
          }),
      },
      publish,
    );
    return created;
  }

  /**
   * The model file a version loads, confined to the repository (or, for a model loaded by path, to the allowed roots):
   * a symbolic link out of them is refused, as client-supplied paths are.
   */
  private async confinedModelFile(model: Model, file: string): Promise<string> {
    const real = await realpath(file);
    const roots = await Promise.all([this.root, ...this.modelRoots].map((r) => realpath(r).catch(() => r)));
    if (!roots.some((r) => isInside(real, r))) {
      throw new GatewayError(
        ErrorCode.FORBIDDEN_PATH,
        `the model file of ${model.name} is a link out of the model repository; model files must be inside it`,
      );
    }
    return real;
  }

  /** A version leaves the list (its folder is gone, or it failed and is not wanted): its metrics go with it. */
  private dropVersion(model: Model, version: number): void {
    const mv = model.versions.get(version);
    mv?.cancelRestart();
    mv?.removed();
    model.versions.delete(version);
    const key = `${model.name}\u0000${version}`;
    this.versionMetrics.get(key)?.remove();
    this.versionMetrics.delete(key);
  }

  /** Is this the model the list holds under its name? Not once a deleteModel that held it first has forgotten it. */
  private listed(model: Model): boolean {
    return this.byName.get(model.name) === model;
  }

  /** At the start of a change that waited for the model: MODEL_NOT_FOUND if a deleteModel that held it first forgot it. */
  private stillListed(model: Model): void {
    if (!this.listed(model)) throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${quoted(model.name)} was deleted meanwhile`);
  }

  /** Unload everything of a model and take it off the list (its folder was removed, or it was deleted). */
  private async forget(model: Model): Promise<void> {
    model.removing = true;
    await Promise.all([...model.versions.values()].map((v) => v.unload()));
    for (const v of [...model.versions.keys()]) this.dropVersion(model, v);
    if (this.byName.get(model.name) === model) this.byName.delete(model.name);
  }

  /**
   * Bring the loaded versions in line with the policy, what is on disk and the configuration: load what is wanted and
   * not loaded (or failed, once its file or configuration changed, or when `retry` says so), reload with a new
   * configuration without a gap (the old instance serves until the new one is AVAILABLE), unload what is not wanted,
   * and drop from the list what is gone.
   */
  private async reconcile(model: Model, { retry = false }: { retry?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    let files: Map<number, string>;
    const why = (e: unknown) => {
      const code = (e as NodeJS.ErrnoException)?.code ?? 'an error';
      return code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code;
    };
    const unreadable = new Map<number, unknown>();
    const notes = { passedOver: '' };
    try {
      files = await this.discover(model, unreadable, notes);
    } catch (e) {
      // nothing is known of the versions on disk: they are left as they are (unloading them said "put the model file
      // at <name>/1/model.onnx"), and the model says why, once
      this.noteReadError(
        model,
        `${model.name}: its folder cannot be read (${why(e)}): let the server read it; the versions serving keep serving`,
        e,
      );
      return;
    }
    // a version folder that cannot be entered (copied in under umask 077): a version serving from it keeps serving, one
    // not loaded is not loaded until the server may read it; the others are reconciled as ever
    for (const v of unreadable.keys()) {
      const mv = model.versions.get(v);
      if (mv?.state === 'AVAILABLE') files.set(v, mv.modelPath);
    }
    const [first, error] = [...unreadable].sort(([a], [b]) => a - b)[0] ?? [];
    this.noteReadError(
      model,
      first === undefined
        ? null
        : `${model.name}/${first}: the version folder cannot be read (${why(error)}): let the server read it; until then it is not loaded, and a version serving from it keeps serving`,
      error,
    );
    const onDisk = [...files.keys()];
    const layout = onDisk.length === 0 && !model.file ? await layoutProblem(model.name, model.dir, this.engine.modelFiles) : null;
    // said once in the log, as it changes (requests are told it each time): a misnamed model file, a folder without one
    if (layout && layout !== model.layoutProblem) this.logger.warn({ model: model.name }, `model ${model.name} is not loaded: ${layout}`);
    model.layoutProblem = layout;
    // version folders not read beside those that are (02 beside 1, a link named 3): said once, as it changes (with no
    // version at all, the layout problem says them)
    const passedOver = layout ? '' : notes.passedOver;
    if (passedOver && passedOver !== model.passedOver)
      this.logger.warn({ model: model.name }, `model ${model.name}: version folders passed over: ${passedOver}`);
    model.passedOver = passedOver;
    const policy = model.files?.config.versionPolicy ?? { latest: 1 };
    const selected = selectVersions(policy, onDisk);
    const wanted = model.disabled ? [] : selected.filter((v) => !model.disabledVersions.has(v));
    // a policy that names no version there is (a typo in versionPolicy.specific): the serving versions keep serving,
    // as for a new version that does not load, and the model says why
    const selectsNothing = !model.disabled && onDisk.length > 0 && selected.length === 0;
    if (model.configError && model.configError === model.policyError) model.configError = null;
    const policyBefore = model.policyError?.message;
    model.policyError = selectsNothing
      ? new GatewayError(
          ErrorCode.INVALID_MODEL_CONFIG,
          `${model.name}/model.json: versionPolicy selects none of the versions on disk (${[...onDisk].sort((a, b) => a - b).join(', ')}); ${
            [...model.versions.values()].some((v) => v.state === 'AVAILABLE' && onDisk.includes(v.version))
              ? 'the versions serving keep serving'
              : 'none serves until it names one of them'
          }`,
        )
      : null;
    if (model.policyError && model.policyError.message !== policyBefore)
      this.logger.warn({ model: model.name }, `model ${model.name}: ${model.policyError.message}`);
    if (model.policyError && !model.configError) model.configError = model.policyError;
    const loads: Promise<void>[] = [];
    for (const v of wanted) {
      if (this.closed) break; // shutting down: nothing new loads
      const file = files.get(v)!;
      // (a chmod that lets the server read it retries a failed version too: its change time)
      const { changed: mtime, id } = await fileState(file);
      const mv = model.versions.get(v);
      // a model.json that never read (so the version failed with its error, having no configuration to load with),
      // edited into another mistake: the version says the file's mistake now, not the one fixed already (the page, the
      // CLI's load and requests show the version's error)
      const configChanged =
        model.files !== null
          ? mv?.files?.signature !== model.files.signature
          : mv?.errorCode === ErrorCode.INVALID_MODEL_CONFIG && model.configError !== null && mv.errorMessage !== model.configError.message;
      // (a version that restarts itself after an engine failure is left to it, unless loadModel asks now: then its
      // restart is called off and a new instance loads at once)
      if (
        !mv ||
        (mv.state === 'END' && (!mv.restarting || retry) && (mv.errorCode === null || retry || configChanged || mv.loadedMtimeMs !== mtime))
      ) {
        mv?.cancelRestart();
        const fresh = this.newVersion(model, v, file, model.files);
        if (mv) fresh.continues(mv);
        fresh.loadedMtimeMs = mtime;
        fresh.loadedFileId = id;
        model.versions.set(v, fresh);
        loads.push(fresh.load(this.loadOptions, model.files ? undefined : (model.configError ?? undefined)));
      } else if (mv.state === 'AVAILABLE') {
        // a version whose file's change time was not recorded (loaded from an upload or a path) takes the file's now
        if (mv.loadedMtimeMs === 0) mv.loadedMtimeMs = mtime;
        if (mv.loadedFileId === null) mv.loadedFileId = id;
        // its file replaced under it (an upload that names the version, on this replica or another; an operator's
        // rename over it, a write in place; not a chmod or a hard link), once per change, as a new configuration is (a
        // misfit one was reloaded at every scan)
        const fileChanged = id !== null && id !== mv.loadedFileId && (retry || mv.refusedFileId !== id);
        if (fileChanged || (configChanged && (retry || mv.refusedSignature !== model.files!.signature)))
          loads.push(this.replace(model, mv, fileChanged ? { mtime, id } : undefined));
      }
    }
    await Promise.all(loads);
    // a model.json that parses but does not fit the model (found by the load's check): the model says so too, as for
    // one that does not parse (reread clears it when model.json changes)
    if (!model.configError)
      for (const v of wanted) {
        const mv = model.versions.get(v);
        if (mv?.state === 'END' && mv.errorCode === ErrorCode.INVALID_MODEL_CONFIG && mv.errorMessage) {
          model.configError = versionError(mv, ErrorCode.INVALID_MODEL_CONFIG);
          break;
        }
      }
    // Availability first (TensorFlow Serving's availability-preserving policy): a version that is still on disk keeps
    // serving until one the policy wants is AVAILABLE, so a corrupt new version never takes the model down.
    const replacementUp = wanted.some((v) => model.versions.get(v)?.state === 'AVAILABLE');
    const unloads: Promise<void>[] = [];
    for (const mv of model.versions.values()) {
      if (wanted.includes(mv.version)) continue;
      const keep = (wanted.length > 0 || selectsNothing) && !replacementUp && mv.state === 'AVAILABLE' && onDisk.includes(mv.version);
      if (keep) {
        if (!mv.notes.keptServing)
          this.logger.warn({ model: model.name, version: mv.version, wanted }, 'keeping the previous version until its replacement loads');
        mv.notes = { ...mv.notes, keptServing: true };
        // it serves: a new configuration reaches it as it reaches a wanted version (it went on with the old one for
        // good, configurationError saying nothing, while a newer version that does not load stood beside it)
        const configChanged = model.files !== null && mv.files?.signature !== model.files.signature;
        if (configChanged && (retry || mv.refusedSignature !== model.files!.signature)) unloads.push(this.replace(model, mv));
      } else unloads.push(mv.unload());
    }
    await Promise.all(unloads);
    // a model file that did not load is said while the version that refused it serves on (it is gone, or unloaded:
    // nothing keeps serving another file), and again after a re-read of model.json cleared configError
    if (model.fileError) {
      if (![...model.versions.values()].some((mv) => mv.state === 'AVAILABLE' && mv.refusedFileId !== null)) {
        if (model.configError === model.fileError) model.configError = null;
        model.fileError = null;
      } else model.configError ??= model.fileError;
    }
    if (!model.disabled && model.allSettled && model.servingVersion()) model.hasSettled = true;
    for (const mv of [...model.versions.values()]) {
      const gone = !onDisk.includes(mv.version) && mv.state === 'END';
      const failedAndUnwanted =
        mv.state === 'END' && mv.errorCode !== null && !wanted.includes(mv.version) && !model.disabledVersions.has(mv.version);
      if (gone || failedAndUnwanted) this.dropVersion(model, mv.version);
    }
  }

  /** A new configuration for a serving version: a new instance loads beside it and takes over once AVAILABLE. */
  private async replace(model: Model, old: ModelVersion, changedFile?: { mtime: number; id: string }): Promise<void> {
    // unpublished while it loads: for clients the version stays AVAILABLE, whether or not it takes over
    const fresh = this.newVersion(model, old.version, old.modelPath, model.files, false);
    fresh.loadedMtimeMs = changedFile?.mtime ?? old.loadedMtimeMs;
    fresh.loadedFileId = changedFile?.id ?? old.loadedFileId;
    await this.loadCandidate(fresh);
    if (fresh.state !== 'AVAILABLE') {
      old.refusedSignature = model.files?.signature ?? null;
      if (changedFile !== undefined) {
        old.refusedFileId = changedFile.id;
        if (model.configError === model.fileError) model.configError = null;
        model.fileError = new GatewayError(
          ErrorCode.MODEL_LOAD_FAILED,
          `${model.name}: the model file of version ${old.version} changed and does not load (${fresh.errorMessage ?? 'no reason given'}); the version keeps serving the file it loaded, until one that loads replaces it`,
        );
        model.configError ??= model.fileError;
        this.logger.warn(
          { model: model.name, version: old.version, error: fresh.errorMessage },
          'the new model file did not load; the version keeps serving the one it loaded',
        );
        return;
      }
      model.configError = versionError(fresh, ErrorCode.INVALID_MODEL_CONFIG, { fallback: 'the new configuration did not load' });
      this.logger.warn(
        { model: model.name, version: old.version, error: fresh.errorMessage },
        'the new configuration did not load; the version keeps serving with the previous one',
      );
      return;
    }
    if (model.fileError) {
      if (model.configError === model.fileError) model.configError = null;
      model.fileError = null;
    }
    model.versions.set(old.version, fresh);
    fresh.inService();
    await old.unload(undefined, { replaced: true });
  }

  /** Load an instance that is not in the list yet (see candidates). */
  private async loadCandidate(candidate: ModelVersion): Promise<void> {
    this.candidates.add(candidate);
    try {
      if (this.closed) candidate.abortLoad('the server is shutting down');
      await candidate.load(this.loadOptions);
    } finally {
      this.candidates.delete(candidate);
    }
  }

  /** The end of every loadModel: the model is wanted again, failed versions are retried. */
  private async enable(model: Model): Promise<void> {
    model.disabled = false;
    model.disabledVersions.clear();
    await this.reconcile(model, { retry: true });
  }

  /**
   * loadModel: from the repository (by name), from a server path under the allowed roots, or from uploaded files
   * written into the repository as a new version. Resolves once the version is AVAILABLE or has failed.
   */
  load(
    name: string,
    opts: { path?: string | null; files?: UploadedFile[] | null; config?: unknown; replace?: boolean } = {},
  ): Promise<Model> {
    return this.changing(name, () => this.loadHere(name, opts));
  }

  private async loadHere(
    name: string,
    opts: { path?: string | null; files?: UploadedFile[] | null; config?: unknown; replace?: boolean },
  ): Promise<Model> {
    const badName = badModelName(name);
    if (badName) throw new GatewayError(ErrorCode.INVALID_INPUT, badName);
    if (opts.path && opts.files?.length) throw new GatewayError(ErrorCode.INVALID_INPUT, 'give path or files, not both');
    if (opts.config !== undefined && opts.config !== null) parseModelConfig(opts.config, 'config'); // validate early
    if (opts.files?.length) return this.announce({ op: 'load', name }, this.loadFromFiles(name, opts.files, opts.config));
    if (opts.path)
      return this.announce(
        { op: 'load', name, path: opts.path, config: opts.config },
        this.loadFromPath(name, opts.path, opts.config, opts.replace === true),
      );

    let model = this.byName.get(name);
    if (!model) {
      const dir = path.join(this.root, name);
      if (
        !(await stat(dir).then(
          (s) => s.isDirectory(),
          () => false,
        ))
      ) {
        throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `no model named ${quoted(name)} in the repository`);
      }
      if (!isInside(await realpath(dir), await realpath(this.root))) {
        throw new GatewayError(ErrorCode.FORBIDDEN_PATH, `the model folder ${name} is a link out of the model repository`);
      }
      model = this.byName.get(name) ?? new Model(name, dir, 'repository');
      this.byName.set(name, model);
    }
    const m = model;
    await m.exclusive(async () => {
      this.stillListed(m); // its folder is gone (nothing is written into it again)
      const given = opts.config !== undefined && opts.config !== null;
      const previous = given ? await readFile(path.join(m.dir, 'model.json'), 'utf8').catch(() => null) : null;
      // a configuration given here that is refused, when the folder is read with it (a labels file that is not there)
      // or by the load's check (it parses but does not fit the model), is refused as one that does not parse, naming
      // the field: the previous model.json goes back (the versions that served keep serving with it; a restart finds
      // it, not the refused one)
      const refuse = async (refused: Error) => {
        if (previous === null) await rm(path.join(m.dir, 'model.json'), { force: true });
        else await atomicWrite(path.join(m.dir, 'model.json'), previous);
        await this.reread(m);
        throw refused;
      };
      if (given) await writeModelJson(m.dir, opts.config, `${m.name} config`);
      await this.reread(m);
      // a model loaded by path now serves its own model.json, not the configuration given with the path: so says the
      // record a replica that starts later loads it from (see Model.origin)
      if (m.origin) m.origin = { path: m.origin.path, config: null };
      if (given && m.configError) await refuse(m.configError);
      await this.enable(m);
      if (given && m.configError) await refuse(m.configError);
    });
    // asked to load a model that has nothing to load (the file under another name, or no version folder): say so
    if (m.versions.size === 0 && m.layoutProblem) throw new GatewayError(ErrorCode.MODEL_LOAD_FAILED, `model ${name}: ${m.layoutProblem}`);
    return this.announce({ op: 'load', name }, m);
  }

  /** replace: a load of another replica, published after the one this replica serves, takes over a model by path. */
  private async loadFromPath(name: string, requested: string, config: unknown, replace = false): Promise<Model> {
    const real = await resolveUnderRoots(
      requested,
      [this.root, ...this.modelRoots],
      'model path',
      'MODEL_ROOTS names the folders models may be loaded from, besides the repository',
    );
    const st = await stat(real);
    if (!st.isFile() && !st.isDirectory())
      throw new GatewayError(
        ErrorCode.INVALID_INPUT,
        `model path ${JSON.stringify(requested)} is neither a model file nor a folder (a FIFO, a socket or a device)`,
      );
    const existing = this.byName.get(name);
    let dir = real;
    let file: string | null = null;
    if (st.isFile()) {
      dir = path.dirname(real);
      file = real;
    } else if (!(await readdir(real)).some((n) => /^[1-9]\d*$/.test(n))) {
      file = await modelFileIn(real, this.engine.modelFiles);
      if (!file)
        throw new GatewayError(
          ErrorCode.INVALID_INPUT,
          `model path ${JSON.stringify(requested)} holds no version folders and no ${this.engine.modelFiles.join(' or ')}`,
        );
    }
    const same = existing && existing.dir === dir && existing.file === file;
    if (existing && !same && existing.source === 'path' && replace) {
      // the last load published wins on every replica: the file served here (loaded here at the same moment, or
      // before this replica was cut off) gives way
      this.logger.info({ model: name, path: requested }, 'a model loaded by path is loaded from another path by another replica');
      await existing.exclusive(async () => {
        if (this.listed(existing)) await this.forget(existing);
      });
    } else if (existing && !same && (existing.servingVersion() || existing.source === 'repository')) {
      throw new GatewayError(
        ErrorCode.INVALID_INPUT,
        `a model named ${name} is already served from elsewhere; unload it or choose another name`,
      );
    }
    const model = same ? existing : new Model(name, dir, 'path', file);
    this.byName.set(name, model);
    let deleted = false;
    await model.exclusive(async () => {
      if (!this.listed(model)) {
        deleted = true; // deleteModel held it while this waited: start over with a model the list holds
        return;
      }
      const reread = model !== existing || model.disabled;
      if (reread) await this.reread(model);
      // (the configuration given with an earlier load of the same path stays when this one gives none and reads nothing)
      model.origin = { path: requested, config: config ?? (reread ? null : (model.origin?.config ?? null)) };
      if (config !== undefined && config !== null) {
        const c = parseModelConfig(config, `${model.name} config`);
        // the labels and mean files the given configuration names (not those of the folder's model.json), and the
        // stamp of those files: otherwise the next scan reads the folder's model.json in its place
        const files = await readConfiguredFiles(model.name, model.dir, c).catch((e: unknown) => {
          if (!isGatewayError(e)) throw e;
          return e;
        });
        model.setFiles(files);
        if (!model.file) model.filesStamp = await filesStamp(model.dir, c);
      }
      await this.enable(model);
    });
    return deleted ? this.loadFromPath(name, requested, config, replace) : model;
  }

  /**
   * An upload is all or nothing: it is staged beside the repository, its version is loaded from there with the
   * configuration it brings, and only once that version is AVAILABLE are its files moved into the model folder. A
   * failed upload throws (with the version's error) and leaves nothing behind; the serving versions never see it.
   * Uploads of one model name run one after another (the model's lock, taken before anything is awaited).
   */
  private async loadFromFiles(name: string, uploads: UploadedFile[], config: unknown): Promise<Model> {
    const existing = this.byName.get(name);
    if (existing && existing.source !== 'repository')
      throw new GatewayError(ErrorCode.INVALID_INPUT, `model ${name} is served from a path; choose another name for uploads`);
    const plan = planUpload(uploads, config);
    if (!plan.modelFile && !existing)
      throw new GatewayError(
        ErrorCode.INVALID_INPUT,
        `no model file among the uploads: send the model as ${this.engine.modelFiles.map((f) => `a ${path.extname(f)} file`).join(' or ')}`,
      );
    // an OpenVINO model.xml on a server that runs ONNX Runtime read as ONNX's protobuf ("unsupported wire type 4")
    if (plan.modelFile && !this.engine.modelFiles.includes(plan.modelFile.name))
      throw new GatewayError(
        ErrorCode.INVALID_INPUT,
        `the uploaded model is ${plan.modelFile.name}, and this server's engine (ENGINE=${this.engine.name}) loads ${this.engine.modelFiles.join(' or ')}: convert the model, or serve it from a server started with the engine it was made for`,
      );
    const model = existing ?? new Model(name, path.join(this.root, name), 'repository');
    this.byName.set(name, model);
    let deleted = false;
    try {
      await model.exclusive(async () => {
        // deleteModel held the model while this waited: it is in no list now, so the upload starts over (a model of
        // its own), instead of loading into one nothing can reach any more (its session never to be unloaded)
        if (!this.listed(model)) {
          deleted = true;
          return;
        }
        // every version folder counts, with or without its model file yet: one an operator is filling is not free (the
        // staged version was renamed over it: ENOTEMPTY, after its version had loaded and been announced AVAILABLE)
        const versions = [...(await this.discover(model)).keys(), ...model.versions.keys()];
        const onDisk = [...versions, ...(await versionFolders(model.dir))];
        // the version the upload's folder names (Triton's "file:5/model.onnx"), a new one or one there is (replaced),
        // else the next one
        const next = plan.version ?? Math.max(0, ...onDisk) + 1;
        if (plan.version !== null && onDisk.includes(plan.version) && !versions.includes(plan.version))
          throw new GatewayError(
            ErrorCode.INVALID_INPUT,
            `the upload names version ${plan.version}, whose folder ${name}/${plan.version} is there without a model file (being filled?): send it without a version folder (the next version, ${Math.max(0, ...onDisk) + 1}), or once that folder holds its model`,
          );
        // a version folder past the highest the repository reads would be written, loaded, and then dropped by the
        // reconcile that follows as gone from disk (the upload answered without it, its folder left behind)
        if (plan.modelFile && next > MAX_VERSION)
          throw new GatewayError(
            ErrorCode.INVALID_INPUT,
            `model ${name} already has version ${next - 1}, the highest there can be (${MAX_VERSION}): delete the model, or upload under another name`,
          );
        const staged = await stageUpload(this.root, model.dir, plan, plan.modelFile ? next : null);
        try {
          const files = await readModelFiles(name, staged.dir);
          checkUploadedLabels(plan, await readdir(staged.dir), files.config.labels !== undefined);
          // a version named that the version policy would not serve would be loaded, answered as taken, and unloaded by
          // the reconcile that follows
          if (plan.version !== null && plan.modelFile) {
            const policy = files.config.versionPolicy ?? { latest: 1 };
            if (!selectVersions(policy, [...new Set([...versions, next])]).includes(next))
              throw new GatewayError(
                ErrorCode.INVALID_INPUT,
                `the upload names version ${next} (its folder, "${next}/${plan.modelFile.name}"), which model.json's versionPolicy (${JSON.stringify(policy)}) would not serve beside versions ${[...new Set(versions)].sort((a, b) => a - b).join(', ')} of ${name}: send it without a version folder (the next version, ${Math.max(0, ...onDisk) + 1}), or change versionPolicy`,
              );
          }
          const target = staged.modelPath ? null : model.servingVersion();
          // the version an upload names may be one the list holds (replaced): that one is left as it is until the
          // candidate takes over, and, when it serves, the candidate loads unpublished (as replace() does)
          const listed = staged.version !== null ? model.versions.get(staged.version) : undefined;
          const serving = listed?.state === 'AVAILABLE';
          // a configuration alone loads a new instance of the serving version, unpublished (as replace() does): for
          // clients the version stays AVAILABLE, whether or not it takes over
          const candidate = staged.modelPath
            ? this.newVersion(model, staged.version!, staged.modelPath, files, !serving)
            : target && this.newVersion(model, target.version, target.modelPath, files, false);
          if (candidate && listed && !serving) candidate.continues(listed);
          // a published one loads from the staging folder: its AVAILABLE is said once it is listed, below (a client that
          // acted on it at once was told the version does not exist)
          const published = staged.modelPath !== null && !serving;
          if (candidate && published) candidate.holdAvailable = true;
          if (candidate) {
            await this.loadCandidate(candidate);
            if (candidate.state !== 'AVAILABLE') {
              // a new version was never in the list, but its LOADING and END were published
              if (!listed) {
                candidate.removed();
                if (staged.version !== null) this.dropVersion(model, staged.version);
              }
              throw versionError(candidate, ErrorCode.MODEL_LOAD_FAILED, { prefix: 'the upload was not loaded: ' });
            }
          }
          let modelPath: string | null;
          try {
            modelPath = await commitUpload(staged, model.dir, plan, { replace: plan.version !== null && versions.includes(plan.version) });
          } catch (e) {
            // the loaded candidate serves no one: closed (its session and engine workers), and a published one said gone
            if (candidate && staged.modelPath && !serving) {
              await candidate.unload();
              if (!listed) {
                candidate.removed();
                if (staged.version !== null) this.dropVersion(model, staged.version);
              }
            } else await candidate?.unload(undefined, { replaced: true });
            const code = (e as NodeJS.ErrnoException)?.code;
            if (code === 'ENOTEMPTY' || code === 'EEXIST')
              throw new GatewayError(
                ErrorCode.MODEL_LOAD_FAILED,
                `the upload was not loaded: version folder ${name}/${staged.version} was made in the repository while it loaded; nothing was changed: send it again`,
              );
            throw storageError(e);
          }
          if (candidate && modelPath) candidate.modelPath = modelPath;
          model.setFiles(files);
          model.filesStamp = await filesStamp(model.dir, files.config);
          if (candidate) {
            const previous = model.versions.get(candidate.version);
            model.versions.set(candidate.version, candidate);
            if (published) candidate.listed();
            else candidate.inService();
            await previous?.unload(undefined, { replaced: true });
          }
          await this.enable(model);
        } finally {
          await discardUpload(staged);
        }
      });
    } catch (e) {
      if (!existing && model.versions.size === 0 && !(await exists(model.dir)) && this.byName.get(name) === model) this.byName.delete(name);
      throw e;
    }
    return deleted ? this.loadFromFiles(name, uploads, config) : model;
  }

  /** unloadModel: one version, or the whole model. The watcher leaves it unloaded until loadModel. */
  unload(name: string, version?: number | null): Promise<Model> {
    return this.changing(name, () => this.unloadHere(name, version));
  }

  private async unloadHere(name: string, version?: number | null): Promise<Model> {
    const model = this.require(name);
    const noSuchVersion = () => model.noSuchVersion(version!);
    let unloaded: UnloadedVersions = null;
    if (version !== undefined && version !== null && !model.versions.has(version)) throw noSuchVersion();
    await model.exclusive(async () => {
      this.stillListed(model); // (what it would unload, or announce, is no one's)
      if (version === undefined || version === null) {
        model.disabled = true;
        model.hasSettled = false;
        await Promise.all([...model.versions.values()].map((v) => v.unload()));
      } else {
        // again: what held the model meanwhile (a rescan, a load) may have dropped it
        const mv = model.versions.get(version);
        if (!mv) throw noSuchVersion();
        model.disabledVersions.add(version);
        await mv.unload();
      }
      unloaded = unloadedOf(model); // what this change left, before anything queued on the model changes it again
    });
    return this.announce({ op: 'unload', name, version, unloaded }, model);
  }

  /**
   * updateModel: description, and metadata as a JSON Merge Patch (RFC 7396: named keys set, null deletes, the others
   * kept). For a repository model, model.json is edited in place (the rest of the file, its formatting included, is
   * kept) and written before anything changes in memory.
   */
  update(name: string, changes: { description?: string | null; metadata?: JsonMergePatch | null }): Promise<Model> {
    return this.changing(name, () => this.updateHere(name, changes));
  }

  private async updateHere(name: string, changes: { description?: string | null; metadata?: JsonMergePatch | null }): Promise<Model> {
    const model = this.require(name);
    await model.exclusive(async () => {
      this.stillListed(model); // (its folder, and the model.json it would edit, are gone)
      const before = model.file ? null : await filesStamp(model.dir, model.files?.config ?? null);
      const { description, metadata } = await editModelJson(model, changes);
      const files = model.files;
      if (files) {
        files.config.description = description;
        files.config.metadata = metadata;
      }
      model.configUpdatedAt = new Date();
      // the stamp moves past this write only when the files were as last read: an edit on disk not read yet (made
      // since the last scan) is then left for the next scan to read, with this write, instead of being taken as read
      if (!model.file && before === model.filesStamp) model.filesStamp = await filesStamp(model.dir, files?.config ?? null);
    });
    return this.announce({ op: 'update', name, changes }, model);
  }

  /**
   * deleteModel: unload every version and take the model off the list; a model of the repository loses its folder
   * (its files), a model loaded by path keeps its files (they are not the repository's).
   */
  delete(name: string): Promise<boolean> {
    return this.changing(name, () => this.deleteHere(name));
  }

  private async deleteHere(name: string): Promise<boolean> {
    // a model the cluster knows that this replica could not load (see Cluster.foreign): deleted for the others
    if (!this.byName.has(name) && this.elsewhere?.(name)) return this.announce({ op: 'delete', name }, true);
    const model = this.require(name);
    await model.exclusive(async () => {
      this.stillListed(model);
      if (model.source === 'repository') await checkRemovable(model.dir);
      model.removing = true;
      await Promise.all([...model.versions.values()].map((v) => v.unload()));
      if (model.source === 'repository')
        await rm(model.dir, { recursive: true, force: true }).catch((e: unknown) => {
          model.removing = false; // (it stays listed, unloaded)
          // past checkRemovable (a folder inside that cannot be removed): its versions are unloaded by now, and some
          // of its files may be gone: said, not "nothing was changed"
          const error = storageError(e);
          throw isGatewayError(error)
            ? new GatewayError(
                error.code,
                `${error.message.replace(/: nothing was changed/, '')}: model ${name} was unloaded and its folder is partly removed`,
              )
            : error;
        });
      await this.forget(model);
    });
    return this.announce({ op: 'delete', name }, true);
  }

  // ---- Replicas (src/cluster carries AdminOps between them; without it, nothing below is used) ----

  /**
   * An admin operation asked of this replica (not one applied for another): 'changing' +1 as it begins and -1 once it
   * has ended (after its 'admin' announcement when it succeeded), so the cluster knows a change of the model made here
   * will be published after anything it receives meanwhile.
   */
  private async changing<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (applyingRemote.getStore()) return fn();
    this.emit('changing', name, 1);
    try {
      return await fn();
    } finally {
      this.emit('changing', name, -1);
    }
  }

  /** Tell other replicas about an admin operation that succeeded here, unless it came from one of them. */
  private async announce<T>(op: AdminOp, result: T | Promise<T>): Promise<T> {
    const value = await result;
    if (!applyingRemote.getStore()) this.emit('admin', op);
    return value;
  }

  /**
   * Apply an admin operation made on another replica, without announcing it again. Files were written once to the
   * shared repository by that replica: here a load reads them, an update re-reads model.json, and a delete forgets the
   * model without touching its folder (a new upload of the same name may already be there).
   */
  async applyRemote(op: AdminOp): Promise<void> {
    await applyingRemote.run(true, async () => {
      const model = this.byName.get(op.name);
      switch (op.op) {
        case 'load': {
          const m = await this.load(op.name, op.path ? { path: op.path, config: op.config, replace: true } : {});
          // a model loaded by path keeps its description and metadata in memory only (see editModelJson)
          if (op.described && m.source === 'path' && m.files)
            await m.exclusive(async () => {
              Object.assign(m.files!.config, op.described);
              m.configUpdatedAt = new Date();
            });
          return;
        }
        case 'unload':
          if (model) await this.unload(op.name, op.version);
          return;
        case 'update':
          if (!model) return;
          if (model.source === 'repository' && !model.file)
            await model.exclusive(async () => {
              await this.reread(model);
              await this.reconcile(model);
            });
          else await this.update(op.name, op.changes);
          return;
        case 'delete':
          if (model) await model.exclusive(() => this.forget(model));
          return;
      }
    });
  }

  /** Stop watching and unload everything (each unload waits for its requests in flight). */
  async close(): Promise<void> {
    // loads in progress (the first scan, a loadModel) are given up rather than waited for: a shutdown during start-up
    // ends in seconds, not after the slowest model
    this.closed = true;
    for (const m of this.models()) for (const v of m.versions.values()) v.abortLoad('the server is shutting down');
    for (const v of this.candidates) v.abortLoad('the server is shutting down');
    await this.watcher.stop();
    await Promise.all(this.models().map((m) => m.exclusive(() => Promise.all([...m.versions.values()].map((v) => v.unload())))));
  }
}

/** Why a version a request names does not serve, and what does (what its client can act on). */
function whyVersionNotServing(model: Model, v: ModelVersion): string {
  if (v.state === 'LOADING' || v.state === 'START') return ': try again once it is AVAILABLE';
  if (model.removing) return ': the model is being deleted (deleteModel, here or on another replica, or its folder was removed)';
  if (v.errorMessage) return `: ${v.errorMessage}`;
  const serving = model.servingVersion();
  if (model.disabled || model.disabledVersions.has(v.version))
    return `: it was unloaded (loadModel serves it again)${serving ? `; version ${serving.version} serves` : ''}`;
  if (serving)
    return `: version ${serving.version} serves now (model.json versionPolicy chooses the versions served); leave the version out for the newest`;
  return '';
}

/** Why a model has no version to serve, for the MODEL_NOT_READY its requests get (what a client can act on). */
function whyNotServing(model: Model): string {
  if (model.removing) return ': it is being deleted (deleteModel, here or on another replica, or its folder was removed)';
  if (model.disabled) return ': it was unloaded (loadModel serves it again)';
  if (model.versions.size === 0) return model.layoutProblem ? `: ${model.layoutProblem}` : '';
  const versions = [...model.versions.values()].sort((a, b) => b.version - a.version);
  const loading = versions.find((mv) => mv.state === 'LOADING' || mv.state === 'START');
  if (loading) return `: version ${loading.version} is ${loading.state}`;
  const failed = versions.find((mv) => mv.errorMessage);
  if (failed) return `: version ${failed.version}: ${failed.errorMessage}`;
  return versions.every((mv) => model.disabledVersions.has(mv.version)) ? ': its versions were unloaded (loadModel serves them again)' : '';
}
