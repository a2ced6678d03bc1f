import { constants } from 'node:fs';
import { lstat, open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError } from './errors.ts';

/** True when `p` is `root` or inside it (both absolute and normalized). A name that begins with `..` is inside. */
export function isInside(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/**
 * Resolve a client-supplied path against allowed roots: `..` and symlinks are resolved first, and the real path must
 * lie under one of the (real) roots. Anything else is FORBIDDEN_PATH; the message never says whether the file exists,
 * nor what the roots are, but names the setting that lists them (`setting`).
 */
export async function resolveUnderRoots(requested: string, roots: readonly string[], what = 'path', setting = ''): Promise<string> {
  const deny = () => notUnder(what, requested, setting);
  if (roots.length === 0 || typeof requested !== 'string' || requested === '' || requested.includes('\0')) throw deny();
  const realRoots = await Promise.all(roots.map((r) => realpath(r).catch(() => path.resolve(r))));
  const lexical = path.resolve(realRoots[0], requested);
  const { real, exists } = await realpathOfDeepestExisting(lexical);
  if (!realRoots.some((r) => isInside(real, r))) throw deny();
  if (!exists) throw new GatewayError(ErrorCode.INVALID_INPUT, `${what} ${JSON.stringify(requested)} does not exist`);
  return real;
}

/** FORBIDDEN_PATH for a path not under the roots: names the setting that lists them, never the roots themselves. */
function notUnder(what: string, requested: string, setting: string): GatewayError {
  return new GatewayError(
    ErrorCode.FORBIDDEN_PATH,
    `${what} ${JSON.stringify(requested)} is not under an allowed root${setting ? `: ${setting}` : ''}`,
  );
}

/**
 * Open a client-supplied path under the allowed roots for reading, safe against a folder under them that others write
 * to: resolveUnderRoots checks the path, and between that check and the open the file (or a folder on its way) may be
 * swapped for a symlink out of the roots, or for a FIFO whose open would block a thread of libuv's pool for ever.
 * So the last component is opened without following a symlink and without blocking (O_NOFOLLOW, O_NONBLOCK), and what
 * was opened is checked again: its real path from /proc/self/fd (Linux), or elsewhere the same file (device and inode)
 * as the path resolves to now. The caller checks the kind of file (fstat) and closes the handle.
 */
export async function openUnderRoots(
  requested: string,
  roots: readonly string[],
  what = 'path',
  setting = '',
  { openedFiles = '/proc/self/fd' }: { openedFiles?: string } = {},
): Promise<FileHandle> {
  const real = await resolveUnderRoots(requested, roots, what, setting);
  const named = `${what} ${JSON.stringify(requested)}`;
  const deny = () => notUnder(what, requested, setting);
  const gone = () => new GatewayError(ErrorCode.INVALID_INPUT, `${named} does not exist`);
  const notAFile = () => new GatewayError(ErrorCode.INVALID_INPUT, `${named} is not a file`);
  // anything but a regular file is refused before it is opened (a device's open may do something); one swapped in
  // after this is opened without blocking and without becoming a terminal, and refused by its caller's fstat
  const st = await lstat(real).catch(() => null);
  if (!st) throw gone();
  if (!st.isFile()) throw notAFile();
  let handle: FileHandle;
  try {
    handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw deny(); // a symlink now, where the check saw a file
    if (code === 'ENOENT' || code === 'ENOTDIR') throw gone();
    if (code === 'EMFILE' || code === 'ENFILE')
      throw new GatewayError(ErrorCode.QUEUE_FULL, 'the server has too many files open right now; try again');
    throw new GatewayError(ErrorCode.INVALID_INPUT, `${named} cannot be read`);
  }
  try {
    const where = await stillUnderRoots(handle, real, roots, openedFiles);
    if (where === 'outside') throw deny();
    if (where === 'changed') throw new GatewayError(ErrorCode.INVALID_INPUT, `${named} changed while it was opened; try again`);
    return handle;
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/**
 * Is what the handle opened still under the roots? Its real path from /proc/self/fd where there is one; elsewhere the
 * path is resolved again and must be the same file (device and inode): a file replaced meanwhile is 'changed', one
 * gone or now outside the roots 'outside' (nothing of it is read either way).
 */
async function stillUnderRoots(
  handle: FileHandle,
  real: string,
  roots: readonly string[],
  openedFiles: string,
): Promise<'inside' | 'outside' | 'changed'> {
  const realRoots = await Promise.all(roots.map((r) => realpath(r).catch(() => path.resolve(r))));
  const under = (p: string) => path.isAbsolute(p) && realRoots.some((r) => isInside(p, r));
  const opened = await readlink(`${openedFiles}/${handle.fd}`).catch(() => null);
  if (opened !== null) return under(opened) ? 'inside' : 'outside';
  try {
    const now = await realpath(real);
    if (!under(now)) return 'outside';
    const [mine, theirs] = await Promise.all([handle.stat(), stat(now)]);
    return mine.dev === theirs.dev && mine.ino === theirs.ino ? 'inside' : 'changed';
  } catch {
    return 'changed'; // gone (or unreadable) since it was opened
  }
}

/** The real path of p; for a path that does not exist, the real path of its deepest existing ancestor plus the rest. */
async function realpathOfDeepestExisting(p: string): Promise<{ real: string; exists: boolean }> {
  const rest: string[] = [];
  let cur = p;
  for (;;) {
    try {
      return { real: path.join(await realpath(cur), ...rest), exists: rest.length === 0 };
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return { real: p, exists: false };
      rest.unshift(path.basename(cur));
      cur = parent;
    }
  }
}
