import { EventEmitter } from 'node:events';
import { mkdir, readFile, readdir, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError, errorMessage, isGatewayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Engine, LoadOptions, Session } from '../engine/types.ts';
import { resolveUnderRoots } from '../paths.ts';
import { parseModelConfig, parseModelConfigText, type ModelConfig, type VersionPolicy } from './model-config.ts';
import { labelsFromList, labelsFromObject, parseLabelsFile, parseNpy, type Labels } from './labels.ts';
import { ModelVersion, type ModelStatusEvent } from './version.ts';
import { prepareOnnx } from './onnx-batch.ts';

export const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export interface UploadedFile {
  name: string;
  bytes: Uint8Array;
}

/** A model: its configuration, labels and versions. Its files live in `dir` (repository layout) or at `file`. */
export class Model {
  config: ModelConfig;
  configError: GatewayError | null = null;
  labels: Labels | null = null;
  mean: { shape: number[]; data: Float32Array } | null = null;
  readonly versions = new Map<number, ModelVersion>();
  /** Unloaded by a client: the watcher leaves it alone until loadModel. */
  disabled = false;
  readonly disabledVersions = new Set<number>();
  configUpdatedAt = new Date();
  /** mtime of model.json when last read (-1: never read). */
  configMtimeMs = -1;
  /** Serializes load / unload / reconcile of this model. */
  private lock: Promise<unknown> = Promise.resolve();

  constructor(readonly name: string, readonly dir: string, readonly source: 'repository' | 'path', readonly file: string | null = null) {
    this.config = parseModelConfig({});
  }

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.lock.then(fn, fn);
    this.lock = next.catch(() => undefined);
    return next;
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

  /** The newest version with a session, else the newest version: what inputs/outputs describe. */
  describedVersion(): ModelVersion | undefined {
    const serving = this.servingVersion();
    if (serving) return serving;
    return [...this.versions.values()].sort((a, b) => b.version - a.version)[0];
  }

  get ready(): boolean {
    return this.disabled || [...this.versions.values()].every((v) => v.state === 'AVAILABLE' || (v.state === 'END' && v.errorCode === null));
  }
}

export function selectVersions(policy: VersionPolicy, onDisk: readonly number[]): number[] {
  const sorted = [...onDisk].sort((a, b) => b - a);
  if ('all' in policy) return sorted;
  if ('specific' in policy) return sorted.filter((v) => policy.specific.includes(v));
  return sorted.slice(0, policy.latest);
}

export interface RepositoryOptions {
  root: string;
  engine: Engine;
  logger: Logger;
  /** Extra directories loadModel(path:) may read from, beside the repository itself. */
  modelRoots?: readonly string[];
  /** How often the repository is rescanned; 0 turns the watcher off. */
  pollIntervalMs?: number;
  /** Rewrite a fixed batch dimension of 1 to dynamic where a trial run shows it is safe. */
  dynamicBatch?: boolean;
  /** Engine options for every session (threads). */
  loadOptions?: LoadOptions;
  /**
   * Does the model's configuration fit the loaded session (e.g. its preprocessing fits the image input)? Throws when
   * not, and the load ends with that error. Supplied by the layer that knows what a task needs.
   */
  checkModel?: (model: Model, session: Session) => void;
}

const LABEL_FILES = ['labels.txt', 'labels.json', 'labels.pbtxt'];

export class ModelRepository extends EventEmitter<{ status: [ModelStatusEvent] }> {
  readonly root: string;
  readonly engine: Engine;
  private readonly logger: Logger;
  private readonly modelRoots: readonly string[];
  private readonly pollIntervalMs: number;
  private readonly dynamicBatch: boolean;
  private readonly loadOptions: LoadOptions;
  private readonly checkModel: RepositoryOptions['checkModel'];
  private readonly byName = new Map<string, Model>();
  private timer: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  private closed = false;
  private started = false;

  constructor({ root, engine, logger, modelRoots = [], pollIntervalMs = 1000, dynamicBatch = true, loadOptions = {}, checkModel }: RepositoryOptions) {
    super();
    this.setMaxListeners(0);
    this.root = path.resolve(root);
    this.engine = engine;
    this.logger = logger;
    this.modelRoots = modelRoots.map((r) => path.resolve(r));
    this.pollIntervalMs = pollIntervalMs;
    this.dynamicBatch = dynamicBatch;
    this.loadOptions = loadOptions;
    this.checkModel = checkModel;
  }

  /** Scan the repository, load what its policies ask for, and start watching. */
  async start(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    await this.scan();
    this.started = true;
    if (this.pollIntervalMs > 0) {
      this.timer = setInterval(() => void this.scan(), this.pollIntervalMs);
      this.timer.unref();
    }
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
  resolve(name: string, version?: number | null): ModelVersion {
    const model = this.require(name);
    if (version === undefined || version === null) {
      const v = model.servingVersion();
      if (!v) throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${name} has no AVAILABLE version`);
      return v;
    }
    const v = model.versions.get(version);
    if (!v) throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${name} has no version ${version}`);
    if (v.state !== 'AVAILABLE') throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${name} version ${version} is ${v.state}`, { state: v.state });
    return v;
  }

  /** One pass of the watcher: new model folders and version folders are loaded, removed ones unloaded. */
  scan(): Promise<void> {
    if (this.scanning) return this.scanning;
    this.scanning = (async () => {
      try {
        const entries = await readdir(this.root, { withFileTypes: true }).catch(() => []);
        const present = new Set<string>();
        for (const e of entries) {
          if (!e.isDirectory() || e.name.startsWith('.') || !MODEL_NAME_RE.test(e.name)) continue;
          present.add(e.name);
          if (!this.byName.has(e.name)) this.byName.set(e.name, new Model(e.name, path.join(this.root, e.name), 'repository'));
        }
        await Promise.all(this.models().map((m) => m.exclusive(async () => {
          if (m.source === 'repository' && !present.has(m.name)) return this.reconcile(m, []);
          if (!m.file && (await this.configMtime(m)) !== m.configMtimeMs) await this.readModelFiles(m);
          return this.reconcile(m);
        })));
      } catch (e) {
        this.logger.error('repository scan failed', { error: errorMessage(e) });
      } finally {
        this.scanning = null;
      }
    })();
    return this.scanning;
  }

  private configMtime(model: Model): Promise<number> {
    return stat(path.join(model.dir, 'model.json')).then((st) => st.mtimeMs, () => 0);
  }

  /** (Re)read model.json, labels and mean file. On error the previous configuration stays, with configError set. */
  private async readModelFiles(model: Model): Promise<void> {
    model.configError = null;
    model.configMtimeMs = await this.configMtime(model);
    try {
      const configPath = path.join(model.dir, 'model.json');
      const text = await readFile(configPath, 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return null;
        throw e;
      });
      model.config = text === null ? parseModelConfig({}) : parseModelConfigText(text, `${model.name}/model.json`);
      model.labels = await this.readLabels(model);
      model.mean = model.config.preprocessing.meanFile
        ? parseNpy(await readFile(path.join(model.dir, model.config.preprocessing.meanFile)), model.config.preprocessing.meanFile)
        : null;
    } catch (e) {
      model.configError = isGatewayError(e) ? e : new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${model.name}: ${errorMessage(e)}`);
      this.logger.warn('model configuration invalid', { model: model.name, error: model.configError.message });
    }
    model.configUpdatedAt = new Date();
  }

  private async readLabels(model: Model): Promise<Labels | null> {
    const spec = model.config.labels;
    if (Array.isArray(spec)) return labelsFromList(spec);
    if (spec && typeof spec === 'object') return labelsFromObject(spec, `${model.name}/model.json labels`);
    const candidates = typeof spec === 'string' ? [spec] : LABEL_FILES;
    for (const f of candidates) {
      try {
        return parseLabelsFile(f, await readFile(path.join(model.dir, f), 'utf8'));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' && typeof spec !== 'string') continue;
        if (isGatewayError(e)) throw e;
        throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${model.name}: labels file ${f}: ${errorMessage(e)}`, { field: 'labels' });
      }
    }
    return null;
  }

  /** Version folders (positive integers) holding a file the engine loads. */
  private async discover(model: Model): Promise<Map<number, string>> {
    const found = new Map<number, string>();
    if (model.file) {
      found.set(1, model.file);
      return found;
    }
    const entries = await readdir(model.dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (!e.isDirectory() || !/^[1-9]\d{0,8}$/.test(e.name)) continue;
      for (const f of this.engine.modelFiles) {
        const p = path.join(model.dir, e.name, f);
        if (await stat(p).then((s) => s.isFile(), () => false)) {
          found.set(Number(e.name), p);
          break;
        }
      }
    }
    return found;
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
      const mtime = await stat(file).then((s) => s.mtimeMs, () => 0);
      let mv = model.versions.get(v);
      if (!mv) {
        mv = new ModelVersion(model.name, v, file, {
          logger: this.logger,
          publish: (e) => this.emit('status', e),
          openSession: (p) => this.openSession(p),
          check: this.checkModel && ((session) => this.checkModel!(model, session)),
        });
        model.versions.set(v, mv);
      }
      // Load what never loaded, and retry a failed load once its file changes.
      const retry = mv.state === 'END' && (mv.errorCode === null || mv.loadedMtimeMs !== mtime);
      if (mv.state === 'START' || retry) {
        mv.modelPath = file;
        mv.loadedMtimeMs = mtime;
        loads.push(mv.load(model.config.batching, model.configError ?? undefined));
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
        if (!mv.notes.keptServing) this.logger.warn('keeping the previous version until its replacement loads', { model: model.name, version: mv.version, wanted });
        mv.notes = { ...mv.notes, keptServing: true };
      } else unloads.push(mv.unload());
    }
    await Promise.all(unloads);
  }

  private async openSession(modelPath: string): Promise<{ session: Session; notes: Record<string, unknown> }> {
    if (modelPath.endsWith('.onnx') && this.engine.loadBytes) return prepareOnnx(this.engine, modelPath, this.dynamicBatch, this.loadOptions);
    const session = await this.engine.load(modelPath, this.loadOptions);
    return { session, notes: { batchable: false } };
  }

  /**
   * loadModel: from the repository (by name), from a server path under the allowed roots, or from uploaded files
   * written into the repository as a new version. Resolves once the version is AVAILABLE or has failed.
   */
  async load(name: string, opts: { path?: string | null; files?: UploadedFile[] | null; config?: unknown } = {}): Promise<Model> {
    if (!MODEL_NAME_RE.test(name)) throw new GatewayError(ErrorCode.INVALID_INPUT, `invalid model name ${JSON.stringify(name)}: use letters, digits, '_', '.', '-'`);
    if (opts.path && opts.files?.length) throw new GatewayError(ErrorCode.INVALID_INPUT, 'give path or files, not both');
    if (opts.config !== undefined && opts.config !== null) parseModelConfig(opts.config, 'config'); // validate early
    if (opts.files?.length) return this.loadFromFiles(name, opts.files, opts.config);
    if (opts.path) return this.loadFromPath(name, opts.path, opts.config);

    let model = this.byName.get(name);
    if (!model) {
      const dir = path.join(this.root, name);
      if (!(await stat(dir).then((s) => s.isDirectory(), () => false))) {
        throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `no model named ${JSON.stringify(name)} in the repository`);
      }
      model = new Model(name, dir, 'repository');
      this.byName.set(name, model);
    }
    const m = model;
    await m.exclusive(async () => {
      if (opts.config !== undefined && opts.config !== null) await this.writeConfig(m, opts.config);
      else await this.readModelFiles(m);
      m.disabled = false;
      m.disabledVersions.clear();
      await this.reconcile(m);
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
      const f = this.engine.modelFiles.map((n) => path.join(real, n));
      for (const c of f) if (await stat(c).then((s) => s.isFile(), () => false)) { file = c; break; }
      if (!file) throw new GatewayError(ErrorCode.INVALID_INPUT, `model path ${JSON.stringify(requested)} holds no version folders and no ${this.engine.modelFiles.join(' or ')}`);
    }
    if (existing && (existing.dir !== dir || existing.file !== file)) {
      if (existing.servingVersion() || existing.source === 'repository') {
        throw new GatewayError(ErrorCode.INVALID_INPUT, `a model named ${name} is already served from elsewhere; unload it or choose another name`);
      }
    }
    const model = existing && existing.dir === dir && existing.file === file ? existing : new Model(name, dir, 'path', file);
    this.byName.set(name, model);
    await model.exclusive(async () => {
      if (model !== existing || model.disabled) await this.readModelFiles(model);
      if (config !== undefined && config !== null) this.applyConfig(model, config);
      model.disabled = false;
      model.disabledVersions.clear();
      await this.reconcile(model);
    });
    return model;
  }

  private applyConfig(model: Model, config: unknown): void {
    try {
      model.config = parseModelConfig(config, `${model.name} config`);
      model.configError = null;
    } catch (e) {
      model.configError = e as GatewayError;
      throw e;
    }
    model.configUpdatedAt = new Date();
  }

  private async writeConfig(model: Model, config: unknown): Promise<void> {
    parseModelConfig(config, `${model.name} config`);
    await mkdir(model.dir, { recursive: true });
    await atomicWrite(path.join(model.dir, 'model.json'), JSON.stringify(config, null, 2) + '\n');
    await this.readModelFiles(model);
    if (model.configError) throw model.configError;
  }

  private async loadFromFiles(name: string, files: UploadedFile[], config: unknown): Promise<Model> {
    const existing = this.byName.get(name);
    if (existing && existing.source !== 'repository') {
      throw new GatewayError(ErrorCode.INVALID_INPUT, `model ${name} is served from a path; choose another name for uploads`);
    }
    let modelFile: UploadedFile | undefined;
    const extras: UploadedFile[] = [];
    let uploadedConfig: unknown;
    for (const f of files) {
      const base = path.basename(f.name || '');
      if (!/^[\w.-]{1,128}$/.test(base) || base.startsWith('.')) throw new GatewayError(ErrorCode.INVALID_INPUT, `unacceptable file name ${JSON.stringify(f.name)}`);
      if (base === 'model.json') {
        try {
          uploadedConfig = JSON.parse(new TextDecoder().decode(f.bytes));
        } catch (e) {
          throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `uploaded model.json: not valid JSON (${(e as Error).message})`);
        }
      } else if (base.endsWith('.onnx') || base.endsWith('.xml')) {
        if (modelFile) throw new GatewayError(ErrorCode.INVALID_INPUT, 'upload exactly one model file (.onnx, or .xml with its .bin)');
        modelFile = { name: base.endsWith('.onnx') ? 'model.onnx' : 'model.xml', bytes: f.bytes };
      } else if (base.endsWith('.bin')) {
        extras.push({ name: 'model.bin', bytes: f.bytes });
      } else if (/\.(txt|json|pbtxt|npy)$/.test(base)) {
        extras.push({ name: base, bytes: f.bytes });
      } else throw new GatewayError(ErrorCode.INVALID_INPUT, `unexpected file ${base}: send a model (.onnx/.xml+.bin), labels (.txt/.json/.pbtxt), model.json or a .npy mean`);
    }
    const finalConfig = config ?? uploadedConfig;
    if (finalConfig !== undefined) parseModelConfig(finalConfig, 'uploaded model.json');
    if (!modelFile && !existing) throw new GatewayError(ErrorCode.INVALID_INPUT, 'no model file among the uploads');

    const dir = path.join(this.root, name);
    const model = existing ?? new Model(name, dir, 'repository');
    let newVersion = 0;
    await model.exclusive(async () => {
      await mkdir(dir, { recursive: true });
      for (const f of extras.filter((e) => e.name !== 'model.bin')) await atomicWrite(path.join(dir, f.name), f.bytes);
      if (finalConfig !== undefined) await atomicWrite(path.join(dir, 'model.json'), JSON.stringify(finalConfig, null, 2) + '\n');
      if (modelFile) {
        const onDisk = [...(await this.discover(model)).keys(), ...model.versions.keys()];
        newVersion = Math.max(0, ...onDisk) + 1;
        const vdir = path.join(dir, String(newVersion));
        const tmp = path.join(dir, `.upload-${newVersion}-${process.pid}-${Date.now()}`);
        await mkdir(tmp, { recursive: true });
        await writeFile(path.join(tmp, modelFile.name), modelFile.bytes);
        const bin = extras.find((e) => e.name === 'model.bin');
        if (bin) await writeFile(path.join(tmp, 'model.bin'), bin.bytes);
        await rename(tmp, vdir); // the watcher never sees half a version
      }
      this.byName.set(name, model);
      await this.readModelFiles(model);
      model.disabled = false;
      model.disabledVersions.clear();
      await this.reconcile(model);
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
    if (changes.metadata !== undefined && changes.metadata !== null && (typeof changes.metadata !== 'object' || Array.isArray(changes.metadata))) {
      throw new GatewayError(ErrorCode.INVALID_INPUT, 'metadata must be a JSON object');
    }
    await model.exclusive(async () => {
      if (changes.description !== undefined && changes.description !== null) model.config.description = changes.description;
      if (changes.metadata !== undefined && changes.metadata !== null) model.config.metadata = changes.metadata as Record<string, unknown>;
      model.configUpdatedAt = new Date();
      if (model.source === 'repository' && !model.file) {
        const configPath = path.join(model.dir, 'model.json');
        const raw = await readFile(configPath, 'utf8').then((t) => JSON.parse(t) as Record<string, unknown>, () => ({}) as Record<string, unknown>);
        raw.description = model.config.description;
        raw.metadata = model.config.metadata;
        await atomicWrite(configPath, JSON.stringify(raw, null, 2) + '\n');
      }
    });
    return model;
  }

  /** Stop watching and unload everything (each unload waits for its requests in flight). */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.scanning;
    this.closed = true;
    await Promise.all(this.models().map((m) => m.exclusive(() => Promise.all([...m.versions.values()].map((v) => v.unload())))));
  }
}

async function atomicWrite(file: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, file);
}
