// Longer than most files here (~340 lines), on purpose: the admin operations (load by name, by path or from uploads,
// unload, update) and the reconcile each of them ends with run under the model's lock and share the registry; kept
// together, the locking protocol reads in one place.
import { EventEmitter } from 'node:events';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError, errorMessage } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { Engine, LoadOptions, Session } from '../engine/types.ts';
import { resolveUnderRoots } from '../paths.ts';
import { parseModelConfig } from './model-config.ts';
import { MODEL_NAME_RE, Model, selectVersions } from './model.ts';
import { configMtime, discoverVersions, modelFileIn, readModelFiles, readRawModelJson, atomicWrite, writeModelJson } from './store.ts';
import { planUpload, writeUpload, type UploadedFile } from './uploads.ts';
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
   * Does the model's configuration fit the loaded session (e.g. its preprocessing fits the image input)? Throws when
   * not, and the load ends with that error. Supplied by the layer that knows what a task needs.
   */
  checkModel?: (model: Model, session: Session) => void;
}

/**
 * The model manager (OpenVINO Model Server's manager -> model -> version): which models exist, which versions their
 * policies ask for, and the admin operations on them. Files are read and written by store.ts and uploads.ts; the
 * watcher rescans the repository; each version runs its own lifecycle (version.ts).
 */
export class ModelManager extends EventEmitter<{ status: [ModelStatusEvent] }> {
  readonly root: string;
  readonly engine: Engine;
  private readonly logger: Logger;
  private readonly metrics: Metrics | undefined;
  private readonly modelRoots: readonly string[];
  private readonly loadOptions: LoadOptions;
  private readonly checkModel: ManagerOptions['checkModel'];
  private readonly watcher: Watcher;
  private readonly byName = new Map<string, Model>();
  private closed = false;
  private started = false;

  constructor({ root, engine, logger, metrics, modelRoots = [], pollIntervalMs = 1000, loadOptions = {}, checkModel }: ManagerOptions) {
    super();
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

  /** Scan the repository, load what its policies ask for, and start watching. */
  async start(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    await this.watcher.tick();
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
    return this.started && this.models().every((m) => m.ready);
  }

  /** The model of that name, or MODEL_NOT_FOUND. */
  require(name: string): Model {
    const model = this.byName.get(name);
    if (!model) throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `no model named ${JSON.stringify(name)}`);
    return model;
  }

  /** The version a request runs on: MODEL_NOT_FOUND for unknown names or versions, MODEL_NOT_READY otherwise. */
  resolve(name: string, version?: number | null): { model: Model; version: ModelVersion } {
    const model = this.require(name);
    if (version === undefined || version === null) {
      const v = model.servingVersion();
      if (!v) throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${name} has no AVAILABLE version`);
      return { model, version: v };
    }
    const v = model.versions.get(version);
    if (!v) throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${name} has no version ${version}`);
    if (v.state !== 'AVAILABLE')
      throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${name} version ${version} is ${v.state}`, { state: v.state });
    return { model, version: v };
  }

  /** One pass of the watcher: new model folders and version folders are loaded, removed ones unloaded. */
  private async scan(): Promise<void> {
    try {
      const entries = await readdir(this.root, { withFileTypes: true }).catch(() => []);
      const present = new Set<string>();
      for (const e of entries) {
        if (!e.isDirectory() || e.name.startsWith('.') || !MODEL_NAME_RE.test(e.name)) continue;
        present.add(e.name);
        if (!this.byName.has(e.name)) this.byName.set(e.name, new Model(e.name, path.join(this.root, e.name), 'repository'));
      }
      await Promise.all(
        this.models().map((m) =>
          m.exclusive(async () => {
            if (m.source === 'repository' && !present.has(m.name)) return this.reconcile(m, []);
            if (!m.file && (await configMtime(m.dir)) !== m.configMtimeMs) await this.reread(m);
            return this.reconcile(m);
          }),
        ),
      );
    } catch (e) {
      this.logger.error({ error: errorMessage(e) }, 'repository scan failed');
    }
  }

  /** (Re)read model.json, labels and mean file. On error the previous configuration stays, with configError set. */
  private async reread(model: Model): Promise<void> {
    model.configMtimeMs = await configMtime(model.dir);
    try {
      model.setFiles(await readModelFiles(model.name, model.dir));
    } catch (e) {
      model.setFiles(e as GatewayError);
      this.logger.warn({ model: model.name, error: errorMessage(e) }, 'model configuration invalid');
    }
  }

  /** Version files of a model: its version folders, or its single file (served as version 1). */
  private async discover(model: Model): Promise<Map<number, string>> {
    return model.file ? new Map([[1, model.file]]) : discoverVersions(model.dir, this.engine.modelFiles);
  }

  /** Bring the loaded versions in line with the policy and what is on disk. */
  private async reconcile(model: Model, onDiskOverride?: number[]): Promise<void> {
    if (this.closed) return;
    const files = onDiskOverride ? new Map<number, string>() : await this.discover(model);
    const onDisk = onDiskOverride ?? [...files.keys()];
    const wanted = model.disabled ? [] : selectVersions(model.config.versionPolicy, onDisk).filter((v) => !model.disabledVersions.has(v));
    const loads: Promise<void>[] = [];
    for (const v of wanted) {
      const file = files.get(v)!;
      const mtime = await stat(file).then(
        (s) => s.mtimeMs,
        () => 0,
      );
      let mv = model.versions.get(v);
      if (!mv) {
        mv = new ModelVersion(model.name, v, file, {
          logger: this.logger,
          publish: (e) => this.emit('status', e),
          openSession: (p, options) => this.engine.load(p, options),
          check: this.checkModel && ((session) => this.checkModel!(model, session)),
          metrics: this.metrics?.forVersion(model.name, v),
        });
        model.versions.set(v, mv);
      }
      // Load what never loaded, and retry a failed load once its file changes.
      const retry = mv.state === 'END' && (mv.errorCode === null || mv.loadedMtimeMs !== mtime);
      if (mv.state === 'START' || retry) {
        mv.modelPath = file;
        mv.loadedMtimeMs = mtime;
        loads.push(mv.load(model.config.batching, this.loadOptions, model.configError ?? undefined));
      }
    }
    await Promise.all(loads);
    // Availability first (TensorFlow Serving's availability-preserving policy): a version that is still on disk keeps
    // serving until one the policy wants is AVAILABLE, so a corrupt new version never takes the model down.
    const replacementUp = wanted.some((v) => model.versions.get(v)?.state === 'AVAILABLE');
    const unloads: Promise<void>[] = [];
    for (const mv of model.versions.values()) {
      if (wanted.includes(mv.version)) continue;
      const keep = wanted.length > 0 && !replacementUp && mv.state === 'AVAILABLE' && onDisk.includes(mv.version);
      if (keep) {
        if (!mv.notes.keptServing)
          this.logger.warn({ model: model.name, version: mv.version, wanted }, 'keeping the previous version until its replacement loads');
        mv.notes = { ...mv.notes, keptServing: true };
      } else unloads.push(mv.unload());
    }
    await Promise.all(unloads);
  }

  /** The end of every loadModel: the model is wanted again, its files (re)read, its versions reconciled. */
  private async enable(model: Model, reread: boolean): Promise<void> {
    if (reread) await this.reread(model);
    model.disabled = false;
    model.disabledVersions.clear();
    await this.reconcile(model);
  }

  /**
   * loadModel: from the repository (by name), from a server path under the allowed roots, or from uploaded files
   * written into the repository as a new version. Resolves once the version is AVAILABLE or has failed.
   */
  async load(name: string, opts: { path?: string | null; files?: UploadedFile[] | null; config?: unknown } = {}): Promise<Model> {
    if (!MODEL_NAME_RE.test(name))
      throw new GatewayError(ErrorCode.INVALID_INPUT, `invalid model name ${JSON.stringify(name)}: use letters, digits, '_', '.', '-'`);
    if (opts.path && opts.files?.length) throw new GatewayError(ErrorCode.INVALID_INPUT, 'give path or files, not both');
    if (opts.config !== undefined && opts.config !== null) parseModelConfig(opts.config, 'config'); // validate early
    if (opts.files?.length) return this.loadFromFiles(name, opts.files, opts.config);
    if (opts.path) return this.loadFromPath(name, opts.path, opts.config);

    let model = this.byName.get(name);
    if (!model) {
      const dir = path.join(this.root, name);
      const isDir = await stat(dir).then(
        (s) => s.isDirectory(),
        () => false,
      );
      if (!isDir) throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `no model named ${JSON.stringify(name)} in the repository`);
      model = new Model(name, dir, 'repository');
      this.byName.set(name, model);
    }
    const m = model;
    await m.exclusive(async () => {
      if (opts.config !== undefined && opts.config !== null) {
        await writeModelJson(m.dir, opts.config, `${m.name} config`);
        await this.reread(m);
        if (m.configError) throw m.configError;
      }
      await this.enable(m, opts.config === undefined || opts.config === null);
    });
    return m;
  }

  private async loadFromPath(name: string, requested: string, config: unknown): Promise<Model> {
    const real = await resolveUnderRoots(requested, [this.root, ...this.modelRoots], 'model path');
    const st = await stat(real);
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
    if (existing && !same && (existing.servingVersion() || existing.source === 'repository')) {
      throw new GatewayError(
        ErrorCode.INVALID_INPUT,
        `a model named ${name} is already served from elsewhere; unload it or choose another name`,
      );
    }
    const model = same ? existing : new Model(name, dir, 'path', file);
    this.byName.set(name, model);
    await model.exclusive(async () => {
      if (model !== existing || model.disabled) await this.reread(model);
      if (config !== undefined && config !== null)
        model.setFiles({ config: parseModelConfig(config, `${model.name} config`), labels: model.labels, mean: model.mean });
      await this.enable(model, false);
    });
    return model;
  }

  private async loadFromFiles(name: string, files: UploadedFile[], config: unknown): Promise<Model> {
    const existing = this.byName.get(name);
    if (existing && existing.source !== 'repository')
      throw new GatewayError(ErrorCode.INVALID_INPUT, `model ${name} is served from a path; choose another name for uploads`);
    const plan = planUpload(files, config);
    if (!plan.modelFile && !existing) throw new GatewayError(ErrorCode.INVALID_INPUT, 'no model file among the uploads');
    const model = existing ?? new Model(name, path.join(this.root, name), 'repository');
    await model.exclusive(async () => {
      const onDisk = [...(await this.discover(model)).keys(), ...model.versions.keys()];
      await writeUpload(model.dir, plan, plan.modelFile ? Math.max(0, ...onDisk) + 1 : null);
      this.byName.set(name, model);
      await this.enable(model, true);
    });
    return model;
  }

  /** unloadModel: one version, or the whole model. The watcher leaves it unloaded until loadModel. */
  async unload(name: string, version?: number | null): Promise<Model> {
    const model = this.require(name);
    if (version !== undefined && version !== null && !model.versions.has(version)) {
      throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${name} has no version ${version}`);
    }
    await model.exclusive(async () => {
      if (version === undefined || version === null) {
        model.disabled = true;
        await Promise.all([...model.versions.values()].map((v) => v.unload()));
      } else {
        model.disabledVersions.add(version);
        await model.versions.get(version)!.unload();
      }
    });
    return model;
  }

  /** updateModel: only description and metadata; persisted to model.json when the model lives in the repository. */
  async update(name: string, changes: { description?: string | null; metadata?: unknown }): Promise<Model> {
    const model = this.require(name);
    if (
      changes.metadata !== undefined &&
      changes.metadata !== null &&
      (typeof changes.metadata !== 'object' || Array.isArray(changes.metadata))
    ) {
      throw new GatewayError(ErrorCode.INVALID_INPUT, 'metadata must be a JSON object');
    }
    await model.exclusive(async () => {
      if (changes.description !== undefined && changes.description !== null) model.config.description = changes.description;
      if (changes.metadata !== undefined && changes.metadata !== null) model.config.metadata = changes.metadata as Record<string, unknown>;
      model.configUpdatedAt = new Date();
      if (model.source === 'repository' && !model.file) {
        const raw = await readRawModelJson(model.dir);
        raw.description = model.config.description;
        raw.metadata = model.config.metadata;
        await atomicWrite(path.join(model.dir, 'model.json'), JSON.stringify(raw, null, 2) + '\n');
      }
    });
    return model;
  }

  /** Stop watching and unload everything (each unload waits for its requests in flight). */
  async close(): Promise<void> {
    await this.watcher.stop();
    this.closed = true;
    await Promise.all(this.models().map((m) => m.exclusive(() => Promise.all([...m.versions.values()].map((v) => v.unload())))));
  }
}
