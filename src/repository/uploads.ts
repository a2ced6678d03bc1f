import { copyFile, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError } from '../errors.ts';
import { modelJsonOf, parseModelConfig } from './model-config.ts';
import { LABEL_FILES, storageError } from './store.ts';

/** A file sent by a client to loadModel(files:). */
export interface UploadedFile {
  name: string;
  bytes: Uint8Array;
}

/** What an upload brings, sorted: the model file (if any), side files (labels, mean), and model.json. */
export interface UploadPlan {
  modelFile: UploadedFile | null;
  /** Weights beside the model file: OpenVINO's model.bin, or ONNX external data (kept under their names). */
  weights: UploadedFile[];
  sideFiles: UploadedFile[];
  config: unknown;
  /**
   * The version the model file's path names ("5/model.onnx", as Triton's repository extension sends an override
   * folder: "file:5/model.onnx"); null: none named, the next version.
   */
  version: number | null;
}

const invalid = (message: string) => new GatewayError(ErrorCode.INVALID_INPUT, message);

/**
 * A .json upload that is a model.json under another name (an object with "task"), which would otherwise be stored as a
 * side file while the model loads without it. Labels in JSON are a list, or an object keyed by class id.
 */
function looksLikeModelConfig(bytes: Uint8Array): boolean {
  try {
    const v: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof v === 'object' && v !== null && !Array.isArray(v) && 'task' in v;
  } catch {
    return false;
  }
}

/** Sort and check uploaded files before anything is written. File names are reduced to safe base names. */
export function planUpload(files: readonly UploadedFile[], config: unknown): UploadPlan {
  const plan: UploadPlan = { modelFile: null, weights: [], sideFiles: [], config: undefined, version: null };
  let uploadedConfig: unknown;
  const names = new Set<string>();
  /** The version folder each model file or weights file was sent in (null: none). */
  const folders = new Map<string, number | null>();
  for (const f of files) {
    const base = path.basename(f.name || '');
    if (!/^[\w.-]{1,128}$/.test(base) || base.startsWith('.'))
      throw invalid(
        `unacceptable file name ${JSON.stringify(f.name)}: ${
          base === ''
            ? 'each file needs its name (model.onnx, labels.txt, model.json)'
            : 'a name is 1 to 128 letters, digits, _, - and ., not starting with .'
        }`,
      );
    // two of one name (two model.json): the last one was taken, silently
    if (names.has(base)) throw invalid(`two files named ${base} among the uploads: send each file once`);
    names.add(base);
    if (base === 'model.json') {
      uploadedConfig = modelJsonOf(new TextDecoder().decode(f.bytes), 'uploaded model.json');
    } else if (base.endsWith('.onnx') || base.endsWith('.xml')) {
      if (plan.modelFile) throw invalid('upload exactly one model file (.onnx, or .xml with its .bin)');
      plan.modelFile = { name: base.endsWith('.onnx') ? 'model.onnx' : 'model.xml', bytes: f.bytes };
      folders.set(f.name, versionFolder(f.name));
    } else if (/\.(bin|data|weights)$/.test(base)) {
      plan.weights.push({ name: base, bytes: f.bytes });
      folders.set(f.name, versionFolder(f.name));
    } else if (/\.(txt|json|pbtxt|npy)$/.test(base)) {
      if (base.endsWith('.json') && looksLikeModelConfig(f.bytes))
        throw invalid(`${base} looks like a model configuration: upload it under the name model.json (a file's name says what it is)`);
      plan.sideFiles.push({ name: base, bytes: f.bytes });
    } else {
      throw invalid(
        `unexpected file ${base}: send a model (.onnx with its external data .bin/.data, or .xml + .bin), labels (.txt/.json/.pbtxt), model.json or a .npy mean`,
      );
    }
  }
  // OpenVINO reads model.xml's weights from model.bin; ONNX external data keeps the names the model refers to
  if (plan.modelFile?.name === 'model.xml') {
    if (plan.weights.length !== 1) throw invalid('an OpenVINO model is model.xml and one .bin file');
    plan.weights[0] = { name: 'model.bin', bytes: plan.weights[0].bytes };
  }
  if (plan.weights.length > 0 && !plan.modelFile) throw invalid('weights were uploaded without a model file');
  // the model file and its weights in one version folder, or all in none
  const named = [...new Set(folders.values())];
  if (named.length > 1)
    throw invalid(
      `the model's files name different version folders (${[...folders.keys()].map((n) => JSON.stringify(n)).join(', ')}): send one version's files, all in its folder or all without one`,
    );
  plan.version = named[0] ?? null;
  plan.config = config ?? uploadedConfig;
  if (plan.config !== undefined) parseModelConfig(plan.config, 'uploaded model.json');
  // two labels files read by default: only the first is read (labels.txt before labels.json), unless model.json names one
  const labels = LABEL_FILES.filter((n) => names.has(n));
  if (labels.length > 1 && (plan.config as { labels?: unknown } | undefined)?.labels === undefined)
    throw invalid(
      `${labels.join(' and ')} were both uploaded: the model would read ${labels[0]} only (the first of ${LABEL_FILES.join(', ')}); upload one, or name it in model.json's "labels"`,
    );
  return plan;
}

/**
 * The version folder a model file's name puts it in ("5/model.onnx": 5), as Triton's override folders do; null for a
 * bare name. A folder that is not a version number (1 to 999999999) is refused: the file would be read from another
 * place than the one named.
 */
function versionFolder(name: string): number | null {
  const parts = name.split('/');
  if (parts.length === 1) return null;
  if (parts.length === 2 && /^[1-9]\d{0,8}$/.test(parts[0])) return Number(parts[0]);
  throw invalid(`unacceptable file name ${JSON.stringify(name)}: a model file goes in a version folder ("1/model.onnx") or in none`);
}

/**
 * A labels file read by default (labels.txt, .json, .pbtxt) uploaded into a model folder that holds another, read before
 * it: the upload would be answered as taken, and the model go on reading the other one. Refused (as two of them in one
 * upload are, planUpload), unless model.json's "labels" names the one to read. `staged`: the staged folder's file names.
 */
export function checkUploadedLabels(plan: UploadPlan, staged: readonly string[], labelsNamed: boolean): void {
  if (labelsNamed) return;
  const uploaded = plan.sideFiles.map((f) => f.name).filter((n) => LABEL_FILES.includes(n));
  const read = LABEL_FILES.find((n) => staged.includes(n));
  if (uploaded.length === 0 || read === undefined || uploaded.includes(read)) return;
  throw invalid(
    `${uploaded[0]} was uploaded, but the model folder has ${read}, which is read first (${LABEL_FILES.join(', ')}): name the one to read in model.json's "labels" (upload a model.json with "labels": "${uploaded[0]}" beside it)`,
  );
}

/** An upload written beside the repository, not yet seen by anyone. */
export interface StagedUpload {
  /** A complete model folder: the upload's files over the model's current ones. */
  dir: string;
  /** The staged model file (in `dir/<version>/`), when the upload brings one. */
  modelPath: string | null;
  version: number | null;
}

/**
 * Write an upload into a hidden staging folder of the repository (the watcher skips dot folders): the model's current
 * model.json, labels and mean files, then the uploaded ones over them, and the model file as `<version>/model.*`. The
 * staged folder is a complete model folder, so it can be read and loaded before anything of it is seen.
 */
export async function stageUpload(root: string, modelDir: string, plan: UploadPlan, version: number | null): Promise<StagedUpload> {
  const dir = await mkdtemp(path.join(root, '.upload-')).catch((e: unknown) => {
    throw storageError(e);
  });
  try {
    return await writeStaged(dir, modelDir, plan, version);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw storageError(e);
  }
}

async function writeStaged(dir: string, modelDir: string, plan: UploadPlan, version: number | null): Promise<StagedUpload> {
  for (const e of await readdir(modelDir, { withFileTypes: true }).catch(() => [])) {
    if (e.isFile() && SIDE_FILE_RE.test(e.name)) await copyFile(path.join(modelDir, e.name), path.join(dir, e.name));
  }
  for (const f of plan.sideFiles) await writeFile(path.join(dir, f.name), f.bytes);
  if (plan.config !== undefined) await writeFile(path.join(dir, 'model.json'), JSON.stringify(plan.config, null, 2) + '\n');
  if (!plan.modelFile || version === null) return { dir, modelPath: null, version: null };
  await mkdir(path.join(dir, String(version)));
  const modelPath = path.join(dir, String(version), plan.modelFile.name);
  await writeFile(modelPath, plan.modelFile.bytes);
  for (const w of plan.weights) await writeFile(path.join(dir, String(version), w.name), w.bytes);
  return { dir, modelPath, version };
}

/**
 * Make a staged upload seen: its version folder renamed into the model folder (atomic: the watcher never sees half a
 * version), then each side file it brought renamed over the old one. Returns the model file's final path.
 */
export async function commitUpload(
  staged: StagedUpload,
  modelDir: string,
  plan: UploadPlan,
  { replace = false }: { replace?: boolean } = {},
): Promise<string | null> {
  await mkdir(modelDir, { recursive: true });
  let modelPath: string | null = null;
  if (staged.version !== null && staged.modelPath) {
    const target = path.join(modelDir, String(staged.version));
    const from = path.join(staged.dir, String(staged.version));
    const file = path.basename(staged.modelPath);
    if (!replace)
      await rename(from, target); // (a folder made there meanwhile: ENOTEMPTY, nothing moved)
    else {
      // a version there is, replaced (an upload that names it): its files renamed over the old ones one by one, the
      // model file last, so that its folder is never gone for a scan (of this replica, or of another on a shared
      // volume, which would unload the version) and a scan sees the old model file or the new one, each whole
      for (const name of [...(await readdir(from)).filter((n) => n !== file), file])
        await rename(path.join(from, name), path.join(target, name));
    }
    modelPath = path.join(target, file);
  }
  const names = [...plan.sideFiles.map((f) => f.name), ...(plan.config !== undefined ? ['model.json'] : [])];
  for (const name of names) await rename(path.join(staged.dir, name), path.join(modelDir, name));
  return modelPath;
}

/** Remove a staging folder (whatever is left of it). */
export function discardUpload(staged: StagedUpload): Promise<void> {
  return rm(staged.dir, { recursive: true, force: true });
}

const SIDE_FILE_RE = /^(?!\.)[\w.-]+\.(json|txt|pbtxt|npy)$/;
