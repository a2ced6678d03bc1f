import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError } from '../errors.ts';
import { parseModelConfig } from './model-config.ts';
import { atomicWrite } from './store.ts';

/** A file sent by a client to loadModel(files:). */
export interface UploadedFile {
  name: string;
  bytes: Uint8Array;
}

/** What an upload brings, sorted: the model file (if any), side files (labels, mean), and model.json. */
export interface UploadPlan {
  modelFile: UploadedFile | null;
  weights: UploadedFile | null;
  sideFiles: UploadedFile[];
  config: unknown;
}

const invalid = (message: string) => new GatewayError(ErrorCode.INVALID_INPUT, message);

/** Sort and check uploaded files before anything is written. File names are reduced to safe base names. */
export function planUpload(files: readonly UploadedFile[], config: unknown): UploadPlan {
  const plan: UploadPlan = { modelFile: null, weights: null, sideFiles: [], config: undefined };
  let uploadedConfig: unknown;
  for (const f of files) {
    const base = path.basename(f.name || '');
    if (!/^[\w.-]{1,128}$/.test(base) || base.startsWith('.')) throw invalid(`unacceptable file name ${JSON.stringify(f.name)}`);
    if (base === 'model.json') {
      try {
        uploadedConfig = JSON.parse(new TextDecoder().decode(f.bytes));
      } catch (e) {
        throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `uploaded model.json: not valid JSON (${(e as Error).message})`);
      }
    } else if (base.endsWith('.onnx') || base.endsWith('.xml')) {
      if (plan.modelFile) throw invalid('upload exactly one model file (.onnx, or .xml with its .bin)');
      plan.modelFile = { name: base.endsWith('.onnx') ? 'model.onnx' : 'model.xml', bytes: f.bytes };
    } else if (base.endsWith('.bin')) {
      plan.weights = { name: 'model.bin', bytes: f.bytes };
    } else if (/\.(txt|json|pbtxt|npy)$/.test(base)) {
      plan.sideFiles.push({ name: base, bytes: f.bytes });
    } else {
      throw invalid(`unexpected file ${base}: send a model (.onnx/.xml+.bin), labels (.txt/.json/.pbtxt), model.json or a .npy mean`);
    }
  }
  plan.config = config ?? uploadedConfig;
  if (plan.config !== undefined) parseModelConfig(plan.config, 'uploaded model.json');
  return plan;
}

/**
 * Write an upload into a model folder: side files and model.json beside the versions, the model file (and weights)
 * as version `version`, written into a hidden folder first and then renamed into place, so the watcher never sees
 * half a version.
 */
export async function writeUpload(dir: string, plan: UploadPlan, version: number | null): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const f of plan.sideFiles) await atomicWrite(path.join(dir, f.name), f.bytes);
  if (plan.config !== undefined) await atomicWrite(path.join(dir, 'model.json'), JSON.stringify(plan.config, null, 2) + '\n');
  if (!plan.modelFile || version === null) return;
  const tmp = path.join(dir, `.upload-${version}-${process.pid}-${Date.now()}`);
  await mkdir(tmp, { recursive: true });
  await writeFile(path.join(tmp, plan.modelFile.name), plan.modelFile.bytes);
  if (plan.weights) await writeFile(path.join(tmp, plan.weights.name), plan.weights.bytes);
  await rename(tmp, path.join(dir, String(version)));
}
