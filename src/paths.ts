import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, GatewayError } from './errors.ts';

/** True when `p` is `root` or inside it (both absolute and normalized). */
export function isInside(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * Resolve a client-supplied path against allowed roots: `..` and symlinks are resolved first, and the real path must
 * lie under one of the (real) roots. Anything else is FORBIDDEN_PATH; the message never says whether the file exists.
 */
export async function resolveUnderRoots(requested: string, roots: readonly string[], what = 'path'): Promise<string> {
  const deny = () => new GatewayError(ErrorCode.FORBIDDEN_PATH, `${what} ${JSON.stringify(requested)} is not under an allowed root`);
  if (roots.length === 0 || typeof requested !== 'string' || requested === '' || requested.includes('\0')) throw deny();
  const realRoots = await Promise.all(roots.map((r) => realpath(r).catch(() => path.resolve(r))));
  const lexical = path.resolve(realRoots[0], requested);
  let real: string;
  try {
    real = await realpath(lexical);
  } catch {
    if (realRoots.some((r) => isInside(lexical, r))) {
      throw new GatewayError(ErrorCode.INVALID_INPUT, `${what} ${JSON.stringify(requested)} does not exist`);
    }
    throw deny();
  }
  if (!realRoots.some((r) => isInside(real, r))) throw deny();
  return real;
}
