import { constants, copyFile, mkdtemp, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { encodeMultipart, type UploadFile } from '../src/client/multipart.ts';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { loadConfig, loadOptionsOf, type Config } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { Metrics } from '../src/metrics.ts';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import type { Engine } from '../src/engine/types.ts';
import { ModelManager } from '../src/repository/manager.ts';
import { createGateway, type Gateway } from '../src/server/gateway.ts';
import { checkModel } from '../src/inference/warmup.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Photos used by tests, benchmarks and README examples (see test/fixtures/images/PROVENANCE.md). */
export const IMAGES = path.join(ROOT, 'test', 'fixtures', 'images');
export const image = (name: string) => path.join(IMAGES, name);
/** The default repository holds the fixture models (models/<name>/1/model.onnx, PROVENANCE.md beside each). */
export type FixtureModel = 'mobilenet' | 'yolox' | 'bodypix' | 'face-detection' | 'text-detection' | 'text-direction';
export const modelFile = (name: FixtureModel) => path.join(ROOT, 'models', name, '1', 'model.onnx');
export const modelAsset = (name: FixtureModel, file: string) => path.join(ROOT, 'models', name, file);
for (const m of ['mobilenet', 'face-detection'] as const) {
  if (!existsSync(modelFile(m))) throw new Error(`${modelFile(m)} is missing: run npm install (it links the npm-provided models)`);
}

export interface ModelSpec {
  /** Path of an .onnx file to copy as version 1 (or bytes to write). */
  onnx?: string | Uint8Array;
  versions?: number[];
  config?: unknown;
  /** Extra files beside model.json: name -> path to copy, or text. */
  files?: Record<string, string | { text: string }>;
}

/** Files are copied into test repositories (a copy-on-write clone where the file system can): the gateway refuses
 * links that lead out of its repository. */
const copy = (from: string, to: string) => copyFile(from, to, constants.COPYFILE_FICLONE);

export async function makeRepository(models: Record<string, ModelSpec>, dir?: string): Promise<string> {
  const root = dir ?? (await mkdtemp(path.join(os.tmpdir(), 'gw-repo-')));
  for (const [name, spec] of Object.entries(models)) await addModel(root, name, spec);
  return root;
}

/** Writes the model into a hidden folder, then renames it into place: the watcher never sees half a model. */
export async function addModel(root: string, name: string, spec: ModelSpec): Promise<void> {
  const dir = path.join(root, `.tmp-${name}-${process.pid}-${Date.now()}`);
  await mkdir(dir, { recursive: true });
  if (spec.config !== undefined) await writeFile(path.join(dir, 'model.json'), JSON.stringify(spec.config, null, 2));
  for (const [f, src] of Object.entries(spec.files ?? {})) {
    if (typeof src === 'string') await copy(src, path.join(dir, f));
    else await writeFile(path.join(dir, f), src.text);
  }
  for (const v of spec.versions ?? (spec.onnx ? [1] : [])) {
    await mkdir(path.join(dir, String(v)), { recursive: true });
    const target = path.join(dir, String(v), 'model.onnx');
    if (typeof spec.onnx === 'string') await copy(spec.onnx, target);
    else if (spec.onnx) await writeFile(target, spec.onnx);
  }
  await rename(dir, path.join(root, name));
}

export interface TestGateway {
  url: string;
  /** The KServe v2 gRPC port (127.0.0.1), null when GRPC_PORT=off. */
  grpcPort: number | null;
  config: Config;
  repository: ModelManager;
  metrics: Metrics;
  gateway: Gateway;
  root: string;
  logs: string[];
  gql<T = any>(query: string, variables?: Record<string, unknown>, opts?: GqlOptions): Promise<GqlResult<T>>;
  close(): Promise<void>;
}

export interface GqlOptions {
  /** variable path (e.g. "image.file" or "files.0") -> file path or bytes */
  files?: Record<string, string | Uint8Array | { name: string; bytes: Uint8Array }>;
  headers?: Record<string, string>;
  operationName?: string;
}
export interface GqlResult<T> {
  status: number;
  data?: T;
  errors?: { message: string; extensions?: { code?: string } & Record<string, unknown>; path?: (string | number)[] }[];
}

export async function startGateway(
  opts: { models?: Record<string, ModelSpec>; root?: string; env?: Record<string, string>; pollIntervalMs?: number; engine?: Engine } = {},
): Promise<TestGateway> {
  const root = opts.root ?? (await makeRepository(opts.models ?? {}));
  const config = loadConfig({ PORT: '0', GRPC_PORT: '0', HOST: '127.0.0.1', MODEL_REPOSITORY: root, LOG_LEVEL: 'info', ...opts.env }, []);
  const logs: string[] = [];
  const logger = createLogger(config.logLevel, {}, (line) => logs.push(line));
  const metrics = new Metrics();
  const repository = new ModelManager({
    root,
    engine: opts.engine ?? createOnnxRuntimeEngine(),
    logger,
    metrics,
    modelRoots: config.modelRoots,
    pollIntervalMs: opts.pollIntervalMs ?? 0,
    // as src/main.ts loads models
    loadOptions: loadOptionsOf(config),
    checkModel: (files, session) => checkModel(files, session, { fusePreprocessing: config.fusedPreprocessing }),
  });
  const gateway = createGateway({ config, models: repository, logger, metrics });
  const { url, grpcPort } = await gateway.listen();
  await repository.start();
  const gql = async <T>(query: string, variables: Record<string, unknown> = {}, o: GqlOptions = {}): Promise<GqlResult<T>> => {
    let res: Response;
    if (o.files && Object.keys(o.files).length) {
      const { body, contentType } = encodeMultipart({ query, variables, operationName: o.operationName }, await uploadFiles(o.files));
      res = await fetch(`${url}/graphql`, {
        method: 'POST',
        body,
        headers: { 'content-type': contentType, 'x-graphql-yoga-csrf': '1', ...o.headers },
      });
    } else {
      res = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json', ...o.headers },
        body: JSON.stringify({ query, variables, operationName: o.operationName }),
      });
    }
    const text = await res.text();
    let body: GqlResult<T>;
    try {
      body = JSON.parse(text);
    } catch {
      throw new Error(`non-JSON answer ${res.status}: ${text.slice(0, 300)}`);
    }
    return { ...body, status: res.status };
  };
  return {
    url,
    grpcPort,
    config,
    repository,
    metrics,
    gateway,
    root,
    logs,
    gql,
    async close() {
      await gateway.close();
      await repository.close();
      if (!opts.root) await rm(root, { recursive: true, force: true });
    },
  };
}

/** Test files (a path, raw bytes, or named bytes) as upload files. */
export async function uploadFiles(
  files: Record<string, string | Uint8Array | { name: string; bytes: Uint8Array }>,
): Promise<Record<string, UploadFile>> {
  const out: Record<string, UploadFile> = {};
  for (const [varPath, f] of Object.entries(files)) {
    if (typeof f === 'string') out[varPath] = { name: path.basename(f), bytes: await readFile(f) };
    else if (f instanceof Uint8Array) out[varPath] = { name: 'upload.bin', bytes: f };
    else out[varPath] = f;
  }
  return out;
}

/** The first error code of a result (undefined when it has none). */
export function errorCode(r: GqlResult<unknown>): string | undefined {
  return r.errors?.[0]?.extensions?.code;
}

/**
 * Watch this process's event loop (the gateway under test runs in it): stop() gives the longest it went without running
 * a 5 ms timer. Counted by hand: perf_hooks' monitorEventLoopDelay recorded no sample at all in some of these tests.
 */
export function watchStalls(): { stop(): number } {
  let last = performance.now();
  let worst = 0;
  const tick = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 5);
  return {
    stop() {
      clearInterval(tick);
      return Math.max(worst, performance.now() - last);
    },
  };
}

/**
 * A timing on a machine that other processes share, tried up to `tries` times until one try is within its bound: what
 * a loaded machine adds (other test files on the cores, a GC of vitest's heap) comes and goes, and a try clear of it
 * comes soon; the fault a timing is there to catch is in every try. Each try gives what it measured (`value`) and the
 * bound it is held to (fixed, or calibrated in the same try). Returns the try that came nearest its bound (within it,
 * unless none was) and every try made, for the assertion's message.
 */
export async function timedTries<T extends { value: number; bound: number }>(
  tries: number,
  attempt: () => Promise<T>,
): Promise<{ best: T; all: T[] }> {
  const all: T[] = [];
  while (all.length < tries && !all.some((t) => t.value < t.bound)) all.push(await attempt());
  const best = all.reduce((a, t) => (t.value / t.bound < a.value / a.bound ? t : a));
  return { best, all };
}

/** Wait until fn() is truthy (polling), or fail after timeoutMs. */
export async function until<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<NonNullable<T>> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A GraphQL-over-WebSocket connection (graphql-transport-ws) to a gateway, acknowledged, with every message it is
 * sent, parsed, in `messages` (typed as the test reads them).
 */
export async function openGraphqlWs<M extends { type: string } = { id?: string; type: string }>(
  gatewayUrl: string,
): Promise<{ ws: WebSocket; messages: M[] }> {
  const ws = new WebSocket(`${gatewayUrl.replace('http', 'ws')}/graphql`, 'graphql-transport-ws');
  const messages: M[] = [];
  ws.on('message', (d) => messages.push(JSON.parse(String(d))));
  await new Promise((resolve) => ws.once('open', resolve));
  ws.send(JSON.stringify({ type: 'connection_init' }));
  await until(async () => messages.some((m) => m.type === 'connection_ack'), 5000, 'the connection acknowledged');
  return { ws, messages };
}

/** Wait until `url` answers with a 2xx status (a server that is starting: refused connections count as not yet). */
export const untilAnswers = (url: string, what: string, timeoutMs = 60_000) =>
  until(
    () =>
      fetch(url).then(
        (r) => r.ok,
        () => false,
      ),
    timeoutMs,
    what,
  );

const readConfig = (name: FixtureModel) =>
  JSON.parse(readFileSync(modelAsset(name, 'model.json'), 'utf8')) as Record<string, unknown> & { batching?: object };

/** The fixture models' model.json, as committed in the default repository. */
export const fixtureConfigs = {
  mobilenet: readConfig('mobilenet'),
  yolox: readConfig('yolox'),
  bodypix: readConfig('bodypix'),
  ppocr: readConfig('text-detection'),
};

const FIXTURES = {
  mobilenet: { dir: 'mobilenet', labels: true },
  yolox: { dir: 'yolox', labels: true },
  bodypix: { dir: 'bodypix', labels: false },
  ppocr: { dir: 'text-detection', labels: false },
} as const;

/** One fixture model as a ModelSpec; `config` is merged over its model.json. */
export function fixture(name: keyof typeof FIXTURES, config: Record<string, unknown> = {}): ModelSpec {
  const { dir, labels } = FIXTURES[name];
  return {
    onnx: modelFile(dir),
    config: { ...fixtureConfigs[name], ...config },
    files: labels ? { 'labels.txt': modelAsset(dir, 'labels.txt') } : undefined,
  };
}

/** Every fixture model, under its short name. */
export const fixtureModels = (): Record<string, ModelSpec> => ({
  mobilenet: fixture('mobilenet'),
  yolox: fixture('yolox'),
  bodypix: fixture('bodypix'),
  ppocr: fixture('ppocr'),
});

/** The engine worker threads behind a session (one per engine instance), to end them as a native crash would. */
export function engineWorkers(session: unknown): { terminate(): Promise<number> }[] {
  const s = session as { members?: unknown[]; worker?: { terminate(): Promise<number> } };
  return s.members ? s.members.flatMap(engineWorkers) : s.worker ? [s.worker] : [];
}
