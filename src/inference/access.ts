import { createHash, timingSafeEqual } from 'node:crypto';
import { ErrorCode, GatewayError } from '../errors.ts';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Constant-time token comparison. */
export function tokenMatches(given: string | null, expected: string): boolean {
  return given !== null && timingSafeEqual(digest(given), digest(expected));
}

export function bearer(header: string | null | undefined): string | null {
  const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  return m ? m[1] : null;
}

/** The tokens of this gateway: ADMIN_TOKEN and API_TOKENS. */
export interface Tokens {
  adminToken: string | null;
  apiTokens: readonly string[];
}

/** Who is calling, from the Authorization header (every protocol checks the same way). */
export function accessFor(authorization: string | null | undefined, { adminToken, apiTokens }: Tokens) {
  const token = bearer(authorization);
  const isAdmin = adminToken !== null && tokenMatches(token, adminToken);
  return {
    /** API_TOKENS set: every request needs one of them (or the admin token). */
    checkApi(): void {
      if (apiTokens.length === 0 || isAdmin) return;
      if (token === null) throw new GatewayError(ErrorCode.UNAUTHENTICATED, 'this gateway needs Authorization: Bearer <token>');
      if (!apiTokens.some((t) => tokenMatches(token, t))) throw new GatewayError(ErrorCode.FORBIDDEN, 'the token is not valid');
    },
    /** ADMIN_TOKEN set: loadModel, unloadModel and updateModel need it. */
    requireAdmin(): void {
      if (adminToken === null || isAdmin) return;
      if (token === null) throw new GatewayError(ErrorCode.UNAUTHENTICATED, 'this operation needs Authorization: Bearer <admin token>');
      throw new GatewayError(ErrorCode.FORBIDDEN, 'the admin token is not valid');
    },
  };
}
