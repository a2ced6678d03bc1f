import { mkdtemp, mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { createOnnxRuntimeEngine } from '../src/engine/onnxruntime.ts';
import { ModelRepository } from '../src/repository/repository.ts';
import { createGateway, type Gateway } from '../src/server.ts';
import { checkImageInput } from '../src/inference.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Fixtures live beside the checkout (CI has them there); they are read, never copied into the project. */
export const SHARED = path.resolve(ROOT, '..', 'shared');
export const sharedModel = (name: string) => path.join(SHARED, 'models', name, 'model.onnx');
export const sharedFile = (...p: string[]) => path.join(SHARED, ...p);
export const image = (name: string) => path.join(SHARED, 'images', name);
if (!existsSync(SHARED)) throw new Error(`tests need the fixtures in ${SHARED}`);

export interface ModelSpec {
  /** Path of an .onnx file to link as version 1 (or bytes to write). */
  onnx?: string | Uint8Array;
  versions?: number[];
  config?: unknown;
  /** Extra files beside model.json: name -> path to link, or text. */
  files?: Record<string, string | { text: string }>;
}

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
    if (typeof src === 'string') await symlink(src, path.join(dir, f));
    else await writeFile(path.join(dir, f), src.text);
  }
  for (const v of spec.versions ?? (spec.onnx ? [1] : [])) {
    await mkdir(path.join(dir, String(v)), { recursive: true });
    const target = path.join(dir, String(v), 'model.onnx');
    if (typeof spec.onnx === 'string') await symlink(spec.onnx, target);
    else if (spec.onnx) await writeFile(target, spec.onnx);
  }
  await rename(dir, path.join(root, name));
}

export interface TestGateway {
  url: string;
  config: Config;
  repository: ModelRepository;
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
}
export interface GqlResult<T> {
  status: number;
  data?: T;
  errors?: { message: string; extensions?: { code?: string } & Record<string, unknown>; path?: (string | number)[] }[];
}

export async function startGateway(opts: { models?: Record<string, ModelSpec>; root?: string; env?: Record<string, string>; pollIntervalMs?: number } = {}): Promise<TestGateway> {
  const root = opts.root ?? (await makeRepository(opts.models ?? {}));
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MODEL_REPOSITORY: root, LOG_LEVEL: 'info', ...opts.env }, []);
  const logs: string[] = [];
  const logger = createLogger(config.logLevel, {}, (line) => logs.push(line));
  const repository = new ModelRepository({ root, engine: createOnnxRuntimeEngine(), logger, modelRoots: config.modelRoots, pollIntervalMs: opts.pollIntervalMs ?? 0, dynamicBatch: config.dynamicBatch, checkModel: checkImageInput });
  const gateway = createGateway({ config, repository, logger });
  const { url } = await gateway.listen();
  await repository.start();
  const gql = async <T>(query: string, variables: Record<string, unknown> = {}, o: GqlOptions = {}): Promise<GqlResult<T>> => {
    let res: Response;
    if (o.files && Object.keys(o.files).length) {
      const fd = new FormData();
      const vars = structuredClone(variables);
      const map: Record<string, string[]> = {};
      const { readFile } = await import('node:fs/promises');
      let i = 0;
      for (const [varPath, file] of Object.entries(o.files)) {
        setPath(vars, varPath, null);
        map[String(i)] = [`variables.${varPath}`];
        const bytes = typeof file === 'string' ? await readFile(file) : file instanceof Uint8Array ? file : file.bytes;
        const name = typeof file === 'string' ? path.basename(file) : file instanceof Uint8Array ? 'upload.bin' : file.name;
        fd.set(String(i), new Blob([bytes as Uint8Array<ArrayBuffer>]), name);
        i++;
      }
      const ops = new FormData();
      ops.set('operations', JSON.stringify({ query, variables: vars }));
      ops.set('map', JSON.stringify(map));
      for (const [k, v] of fd.entries()) ops.set(k, v as Blob, (v as File).name);
      res = await fetch(`${url}/graphql`, { method: 'POST', body: ops, headers: { 'x-graphql-yoga-csrf': '1', ...o.headers } });
    } else {
      res = await fetch(`${url}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json', ...o.headers }, body: JSON.stringify({ query, variables }) });
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
    url, config, repository, gateway, root, logs, gql,
    async close() {
      await gateway.close();
      await repository.close();
      if (!opts.root) await rm(root, { recursive: true, force: true });
    },
  };
}

function setPath(obj: Record<string, unknown>, p: string, value: unknown): void {
  const keys = p.split('.');
  let o: any = obj;
  for (const k of keys.slice(0, -1)) {
    if (o[k] === undefined) o[k] = /^\d+$/.test(k) ? [] : {};
    o = o[k];
  }
  o[keys.at(-1)!] = value;
}

/** The first error code of a result (undefined when it has none). */
export function errorCode(r: GqlResult<unknown>): string | undefined {
  return r.errors?.[0]?.extensions?.code;
}

/** Wait until fn() is truthy (polling), or fail after timeoutMs. */
export async function until<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** model.json for the shared fixtures, as their PROVENANCE.md describes them. */
export const fixtureConfigs = {
  mobilenet: {
    task: 'classification',
    description: 'ImageNet classifier',
    labels: 'labels.txt',
    preprocessing: { resizeType: 'CROP', cropFraction: 0.875, colorChannels: 'RGB', pixelScaling: 1, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
    postprocessing: { activation: 'softmax' },
  },
  yolox: {
    task: 'detection',
    labels: 'labels.txt',
    preprocessing: { resizeType: 'FILL', fillAlign: 'topLeft', fillColor: [114, 114, 114], colorChannels: 'BGR', pixelScaling: 255 },
    postprocessing: { format: 'yolox', strides: [8, 16, 32], minConfidence: 0.3, iouThreshold: 0.45 },
  },
  bodypix: {
    task: 'segmentation',
    labels: ['background', 'person'],
    preprocessing: { dimensionOrder: 'NHWC', resizeType: 'NETWORK', targetSize: '641x641', sizeMultiple: 16, sizeOffset: 1, colorChannels: 'RGB', pixelScaling: 255, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5] },
    postprocessing: { output: 'segments', activation: 'sigmoid', threshold: 0.5 },
  },
  ppocr: {
    task: 'segmentation',
    labels: ['background', 'text'],
    preprocessing: { resizeType: 'NETWORK', targetSize: '960x960', sizeMultiple: 32, colorChannels: 'RGB', pixelScaling: 1, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
    postprocessing: { activation: 'none', threshold: 0.3 },
  },
} as const;

export const fixtureModels = (): Record<string, ModelSpec> => ({
  mobilenet: { onnx: sharedModel('mobilenetv2-12-int8'), config: fixtureConfigs.mobilenet, files: { 'labels.txt': sharedFile('models', 'mobilenetv2-12-int8', 'labels.txt') } },
  yolox: { onnx: sharedModel('yolox-nano'), config: fixtureConfigs.yolox, files: { 'labels.txt': sharedFile('models', 'yolox-nano', 'labels.txt') } },
  bodypix: { onnx: sharedModel('bodypix-mobilenet050-stride16'), config: fixtureConfigs.bodypix },
  ppocr: { onnx: sharedModel('ppocrv4-det'), config: fixtureConfigs.ppocr },
});
