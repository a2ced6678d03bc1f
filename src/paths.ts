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
