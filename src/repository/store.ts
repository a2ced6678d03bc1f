import { constants, type Dirent } from 'node:fs';
import { access, mkdir, open, readdir, realpath, rename, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError, errorMessage, isGatewayError, withoutPaths } from '../errors.ts';
import { isInside } from '../paths.ts';
import { withoutBom } from '../json-text.ts';
import { labelsFromList, labelsFromObject, parseLabelsFile, parseNpy, type Labels } from './labels.ts';
import { MAX_VERSION, TASKS, parseModelConfig, parseModelConfigText, type ModelConfig, type Task } from './model-config.ts';
import type { ModelFiles } from './model-files.ts';

/**
 * The files of the repository: how a model folder is laid out (`model.json`, labels, a mean file, `<version>/model.*`),
 * how it is read, and how it is written (atomically: a reader never sees half a file or half a version).
 */
export const LABEL_FILES = ['labels.txt', 'labels.json', 'labels.pbtxt'];

/**
 * A file of a model folder, confined to it as client-supplied paths are to their roots: a symbolic link out of the
 * folder (to /etc/passwd, to another model) is refused, not followed. ENOENT passes through (a file that is absent).
 */
export async function confined(dir: string, name: string): Promise<string> {
  const [real, root] = await Promise.all([realpath(path.join(dir, name)), realpath(dir)]);
  if (!isInside(real, root)) {
    throw new GatewayError(
      ErrorCode.FORBIDDEN_PATH,
      `${name} is a link out of the model folder; files of a model must be inside its folder`,
      { field: name },
    );
  }
  return real;
}

/**
 * A write that failed because the disk is full, or the repository cannot be written (a read-only mount, as KServe
 * mounts a pvc:// storageUri; a volume the server's user may not write), as the typed error a client can act on
 * (anything else unchanged).
 */
export function storageError(e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new GatewayError(ErrorCode.STORAGE_FULL, 'the model repository is full: nothing was changed');
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM')
    return new GatewayError(
      ErrorCode.STORAGE_NOT_WRITABLE,
      `the model repository cannot be written (${code}): nothing was changed; ${code === 'EROFS' ? 'it is mounted read-only' : "the server's user may not write it"}, so models change only where it comes from (or mount it writable)`,
    );
  return e;
}

/**
 * The bytes of a file of a model folder (model.json, labels, a mean file): confined to the folder (see confined), and
 * only a regular file. A FIFO there would block a thread of libuv's pool for ever on open() or read(), and the
 * repository scan with it (the server never ready, the watcher stopped, loadModel of that model never answering, and
 * with four of them every decode and file read of the process waiting): anything else is refused before it is opened,
 * and what was opened (without blocking, without following a link) is checked again. ENOENT passes through.
 */
export async function readModelFolderFile(dir: string, name: string): Promise<Buffer> {
  const real = await confined(dir, name);
  const notAFile = () =>
    new GatewayError(
      ErrorCode.INVALID_MODEL_CONFIG,
      `${name} of the model folder is not a regular file (a FIFO, a socket or a device): put a file there${name === 'model.json' ? '' : ', or change model.json to name another'}`,
      { field: name === 'model.json' ? '(root)' : name },
    );
  const st = await stat(real);
  if (st.isDirectory()) throw Object.assign(new Error(`${name} is a folder`), { code: 'EISDIR' });
  if (!st.isFile()) throw notAFile();
  const handle = await open(real, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW | constants.O_NOCTTY);
  try {
    if (!(await handle.stat()).isFile()) throw notAFile();
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/**
 * Whether a model's folder can be removed (it and the repository writable), as storageError's error: asked before
 * anything is unloaded, so that a read-only repository refuses deleteModel with nothing changed.
 */
export async function checkRemovable(dir: string): Promise<void> {
  try {
    await Promise.all([access(dir, constants.W_OK), access(path.dirname(dir), constants.W_OK)]);
  } catch (e) {
    if ((e as NodeJS.ErrnoException)?.code !== 'ENOENT') throw storageError(e);
  }
}

/**
 * When a file last changed, as its inode's change time: it moves with every write (as the modification time does) and
 * also with a chmod or chown, so a file that could not be read is read again once it may be ("let the server read it"
 * was all a message said to do, and nothing happened), and so is one copied in with its old modification time kept.
 */
export const changedAt = (p: string) =>
  stat(p).then(
    (st) => st.ctimeMs,
    () => 0,
  );

/**
 * A model file's change time (changedAt) and what says its bytes are others (null when it cannot be read now): its
 * inode (a file renamed over it, an upload's folder), size and modification time (a write in place). A chmod, a chown
 * or a hard link made to it (a backup) moves its change time and leaves its bytes: a serving version is not loaded
 * again for them.
 */
export const fileState = (p: string): Promise<{ changed: number; id: string | null }> =>
  stat(p).then(
    (st) => ({ changed: st.ctimeMs, id: `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}` }),
    () => ({ changed: 0, id: null }),
  );

/**
 * When the files a model's configuration comes from last changed: model.json, the labels files and the mean file. The
 * watcher rereads a model when this changes.
 */
export async function filesStamp(dir: string, config: ModelConfig | null): Promise<string> {
  const names = new Set(['model.json', ...LABEL_FILES]);
  if (typeof config?.labels === 'string') names.add(config.labels);
  if (config?.preprocessing.meanFile) names.add(config.preprocessing.meanFile);
  return (await Promise.all([...names].map((n) => changedAt(path.join(dir, n))))).join(',');
}

/**
 * A file of a model folder that could not be read, as the client sees it: which file, which setting names it, what to
 * do; never the server's path (the log keeps the original error).
 */
function fileError(name: string, file: string, field: string, e: unknown): GatewayError {
  const code = (e as NodeJS.ErrnoException)?.code;
  const why =
    code === 'ENOENT'
      ? `${file} is not in the model folder: add it beside model.json, or change "${field}" in model.json`
      : code === 'EACCES' || code === 'EPERM'
        ? `${file} cannot be read (permission denied): let the server read it`
        : code === 'EISDIR'
          ? `${file} is a folder, not a file: change "${field}" in model.json`
          : `${file} ("${field}"): ${withoutPaths(errorMessage(e))}`;
  return new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${name}: ${why}`, { field });
}

/** Read model.json (defaults when absent), labels and the mean file of a model folder. Errors are typed. */
export async function readModelFiles(name: string, dir: string): Promise<ModelFiles> {
  let text: string | null = null;
  try {
    // confined as labels and mean files are: a model.json that is a link out of the folder is refused, not followed
    text = await readModelFolderFile(dir, 'model.json').then(
      (b) => b.toString('utf8'),
      (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return null;
        throw e;
      },
    );
    const config = text === null ? parseModelConfig({}) : parseModelConfigText(text, `${name}/model.json`);
    const labels = await readLabels(name, dir, config);
    const meanFile = config.preprocessing.meanFile;
    const mean = meanFile ? await readMean(name, dir, meanFile) : null;
    return { config, labels, mean, signature: signatureOf(config, labels, mean), ...(text === null ? { defaults: true } : {}) };
  } catch (e) {
    const error = isGatewayError(e) ? e : new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${name}: ${withoutPaths(errorMessage(e))}`);
    // the task the file names, for clients, though the file did not load (the model's task is not the default "raw")
    const task = declaredTask(text);
    throw task ? new GatewayError(error.code, error.message, { ...error.details, task }) : error;
  }
}

/** The task a model.json names, if it is JSON with a known task. */
function declaredTask(text: string | null): Task | null {
  try {
    const task = (JSON.parse(withoutBom(text ?? '')) as { task?: unknown } | null)?.task;
    return TASKS.find((t) => t === task) ?? null;
  } catch {
    return null;
  }
}

/** What serving depends on, as a string: the configuration without description and metadata, labels, mean. */
export function signatureOf(config: ModelConfig, labels: Labels | null, mean: ModelFiles['mean']): string {
  const { description: _d, metadata: _m, ...serving } = config;
  return JSON.stringify([serving, labels ? [...labels] : null, mean ? [mean.shape, Array.from(mean.data)] : null]);
}

/**
 * The labels and mean files a configuration names (or the default labels files), read from a model folder: those of a
 * configuration given with loadModel(path:), which is not the folder's model.json.
 */
export async function readConfiguredFiles(name: string, dir: string, config: ModelConfig): Promise<ModelFiles> {
  const labels = await readLabels(name, dir, config);
  const meanFile = config.preprocessing.meanFile;
  const mean = meanFile ? await readMean(name, dir, meanFile) : null;
  return { config, labels, mean, signature: signatureOf(config, labels, mean) };
}

async function readMean(name: string, dir: string, meanFile: string): Promise<ModelFiles['mean']> {
  let bytes: Buffer;
  try {
    bytes = await readModelFolderFile(dir, meanFile);
  } catch (e) {
    throw isGatewayError(e) ? e : fileError(name, meanFile, 'preprocessing.meanFile', e);
  }
  return parseNpy(bytes, meanFile);
}

async function readLabels(name: string, dir: string, config: ModelConfig): Promise<Labels | null> {
  const spec = config.labels;
  if (Array.isArray(spec)) return labelsFromList(spec);
  if (spec && typeof spec === 'object') return labelsFromObject(spec, `${name}/model.json labels`);
  const candidates = typeof spec === 'string' ? [spec] : LABEL_FILES;
  for (const f of candidates) {
    try {
      return parseLabelsFile(f, (await readModelFolderFile(dir, f)).toString('utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && typeof spec !== 'string') continue;
      if (isGatewayError(e)) throw e;
      throw fileError(name, f, 'labels', e);
    }
  }
  return null;
}

const isFile = (p: string) =>
  stat(p).then(
    (s) => s.isFile(),
    () => false,
  );

/** A file system error that says a path is not there, as opposed to one that says it cannot be read now (EACCES, EIO). */
export const isMissing = (e: unknown): boolean => ['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException)?.code ?? '');

/** Is it a file? False when it is not there; an error that says nothing of that (permission denied, I/O) is thrown. */
const fileThere = (p: string) =>
  stat(p).then(
    (s) => s.isFile(),
    (e: unknown) => {
      if (isMissing(e)) return false;
      throw e;
    },
  );

export { MAX_VERSION };

/**
 * Version folders (positive integers) of a model folder that hold one of `modelFiles`: version -> file. A folder that
 * cannot be read now (permission denied, an I/O error) throws: that says nothing of which versions are there. A version
 * folder that cannot be entered says nothing of the others: its version and error go in `unreadable` when given (else
 * it throws too).
 */
export async function discoverVersions(
  dir: string,
  modelFiles: readonly string[],
  unreadable?: Map<number, unknown>,
  notes?: { passedOver: string },
): Promise<Map<number, string>> {
  const found = new Map<number, string>();
  const entries = await readdir(dir, { withFileTypes: true }).catch((e: unknown) => {
    if (isMissing(e)) return [];
    throw e;
  });
  // folders named as versions that are not read as one (02, 0, a link named 3); a folder of another name is the
  // operator's own (assets/) and not said
  if (notes)
    notes.passedOver = passedOverList(
      entries.filter((e) => /^\d+$/.test(e.name) && (e.isSymbolicLink() || (e.isDirectory() && !/^[1-9]\d{0,8}$/.test(e.name)))),
    );
  for (const e of entries) {
    if (!e.isDirectory() || !/^[1-9]\d{0,8}$/.test(e.name)) continue;
    try {
      for (const f of modelFiles) {
        const p = path.join(dir, e.name, f);
        if (await fileThere(p)) {
          found.set(Number(e.name), p);
          break;
        }
      }
    } catch (error) {
      if (!unreadable) throw error;
      unreadable.set(Number(e.name), error);
    }
  }
  return found;
}

/**
 * Every version folder of a model folder (a positive integer name), whether or not it holds a model file yet: a folder
 * being filled is no free version number for an upload.
 */
export async function versionFolders(dir: string): Promise<number[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory() && /^[1-9]\d{0,8}$/.test(e.name)).map((e) => Number(e.name));
}

/**
 * Why a model folder has no version to serve, for the one who put it there: its version folders without the model
 * file (and what they hold instead), or none at all. Folders being filled (a version folder made before its file is
 * copied in) are not an error: this is said when a request or loadModel finds nothing to serve, and logged once as a
 * scan finds it (a warning, again only when it changes), not on a schedule.
 */
export async function layoutProblem(name: string, dir: string, modelFiles: readonly string[]): Promise<string> {
  const expected = modelFiles[0];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const versionDir = entries.find((e) => e.isDirectory() && /^[1-9]\d{0,8}$/.test(e.name));
  if (!versionDir) return `its folder has no version folder: put the model file at ${name}/1/${expected}${passedOver(entries)}`;
  const missing = await missingModelFile(name, Number(versionDir.name), path.join(dir, versionDir.name, expected));
  return missing ?? `put the model file at ${name}/<version>/${expected}`;
}

/**
 * The folders of a model folder (and links named as versions) that are not read as version folders, and why:
 * "; passed over: 01 (a version has no leading zero), ...", or nothing. (01 and 1 would be one version twice.)
 */
function passedOver(entries: Dirent[]): string {
  const list = passedOverList(entries);
  return list && `; passed over: ${list}`;
}

/** "01 (a version has no leading zero), ..." for the folders (and links named as versions) among `entries`, or "". */
function passedOverList(entries: Dirent[]): string {
  const why = (e: Dirent) =>
    e.isSymbolicLink()
      ? 'a symbolic link: a version folder is a folder of its own'
      : /^0\d+$/.test(e.name)
        ? 'a version has no leading zero'
        : /^\d+$/.test(e.name)
          ? `versions go from 1 to ${MAX_VERSION}`
          : 'no version number';
  const skipped = entries
    .filter((e) => (e.isDirectory() || (e.isSymbolicLink() && /^\d+$/.test(e.name))) && !e.name.startsWith('.'))
    .sort((a, b) => (a.name < b.name ? -1 : 1));
  if (!skipped.length) return '';
  const shown = skipped.slice(0, 5).map((e) => `${e.name.length > 40 ? `${e.name.slice(0, 37)}...` : e.name} (${why(e)})`);
  return `${shown.join(', ')}${skipped.length > 5 ? `, and ${skipped.length - 5} more` : ''}`;
}

/** Why a version's model file cannot be loaded, or null when it is there: where it goes, and what the folder holds. */
export async function missingModelFile(model: string, version: number, file: string): Promise<string | null> {
  if (await isFile(file)) return null;
  const held = (await readdir(path.dirname(file)).catch(() => [])).filter((f) => !f.startsWith('.'));
  const shown = held.slice(0, 5).map((f) => (f.length > 60 ? `${f.slice(0, 57)}...` : f));
  return (
    `version ${version} of ${model} has no ${path.basename(file)}: the model file goes at ${model}/${version}/${path.basename(file)}` +
    (held.length ? ` (the folder holds ${shown.join(', ')}${held.length > 5 ? ', ...' : ''})` : ' (the folder is empty)')
  );
}

/** The model file directly in a folder (a model loaded by path without version folders), or null. */
export async function modelFileIn(dir: string, modelFiles: readonly string[]): Promise<string | null> {
  for (const f of modelFiles) if (await isFile(path.join(dir, f))) return path.join(dir, f);
  return null;
}

/** Write a file atomically: a temporary file beside it, then a rename. */
export async function atomicWrite(file: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw storageError(e);
  }
}

/** Write model.json (validated first) into a model folder. */
export async function writeModelJson(dir: string, config: unknown, source: string): Promise<void> {
  parseModelConfig(config, source);
  await mkdir(dir, { recursive: true });
  await atomicWrite(path.join(dir, 'model.json'), JSON.stringify(config, null, 2) + '\n');
}
