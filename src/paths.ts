import { constants } from 'node:fs';
import { open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError } from './errors.ts';

/** True when `p` is `root` or inside it (both absolute and normalized). */
export function isInside(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * Resolve a client-supplied path against allowed roots: `..` and symlinks are resolved first, and the real path must
 * lie under one of the (real) roots. Anything else is FORBIDDEN_PATH; the message never says whether the file exists,
 * nor what the roots are, but names the setting that lists them (`setting`).
 */
export async function resolveUnderRoots(requested: string, roots: readonly string[], what = 'path', setting = ''): Promise<string> {
  const deny = () =>
    new GatewayError(
      ErrorCode.FORBIDDEN_PATH,
      `${what} ${JSON.stringify(requested)} is not under an allowed root${setting ? `: ${setting}` : ''}`,
    );
  if (roots.length === 0 || typeof requested !== 'string' || requested === '' || requested.includes('\0')) throw deny();
  const realRoots = await Promise.all(roots.map((r) => realpath(r).catch(() => path.resolve(r))));
  const lexical = path.resolve(realRoots[0], requested);
  const { real, exists } = await realpathOfDeepestExisting(lexical);
  if (!realRoots.some((r) => isInside(real, r))) throw deny();
  if (!exists) throw new GatewayError(ErrorCode.INVALID_INPUT, `${what} ${JSON.stringify(requested)} does not exist`);
  return real;
}

/**
 * Open a client-supplied path under the allowed roots for reading, safe against a folder under them that others write
 * to: resolveUnderRoots checks the path, and between that check and the open the file (or a folder on its way) may be
 * swapped for a symlink out of the roots, or for a FIFO whose open would block a thread of libuv's pool for ever.
 * So the last component is opened without following a symlink and without blocking (O_NOFOLLOW, O_NONBLOCK), and what
 * was opened is checked again: its real path from /proc/self/fd (Linux), or elsewhere the same file (device and inode)
 * as the path resolves to now. The caller checks the kind of file (fstat) and closes the handle.
 */
export async function openUnderRoots(requested: string, roots: readonly string[], what = 'path', setting = ''): Promise<FileHandle> {
  const real = await resolveUnderRoots(requested, roots, what, setting);
  const deny = () =>
    new GatewayError(
      ErrorCode.FORBIDDEN_PATH,
      `${what} ${JSON.stringify(requested)} is not under an allowed root${setting ? `: ${setting}` : ''}`,
    );
  let handle: FileHandle;
  try {
    handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw deny(); // a symlink now, where the check saw a file
    if (code === 'ENOENT') throw new GatewayError(ErrorCode.INVALID_INPUT, `${what} ${JSON.stringify(requested)} does not exist`);
    throw new GatewayError(ErrorCode.INVALID_INPUT, `${what} ${JSON.stringify(requested)} cannot be read`);
  }
  try {
    if (!(await stillUnderRoots(handle, real, roots))) throw deny();
    return handle;
  } catch (e) {
    await handle.close();
    throw e;
  }
}

async function stillUnderRoots(handle: FileHandle, real: string, roots: readonly string[]): Promise<boolean> {
  const realRoots = await Promise.all(roots.map((r) => realpath(r).catch(() => path.resolve(r))));
  let opened: string | null = null;
  try {
    opened = await readlink(`/proc/self/fd/${handle.fd}`);
  } catch {
    opened = null; // no /proc: the same file as the path resolves to now
  }
  if (opened !== null) return path.isAbsolute(opened) && realRoots.some((r) => isInside(opened, r));
  const [mine, now] = await Promise.all([
    handle.stat(),
    realpath(real).then((p) => (realRoots.some((r) => isInside(p, r)) ? stat(p) : null)),
  ]);
  return now !== null && now.dev === mine.dev && now.ino === mine.ino;
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
