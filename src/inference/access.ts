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

/** Where a request comes from: its peer address, and for browser requests the page's origin and the Host it used. */
export interface Caller {
  remoteAddress?: string | null;
  origin?: string | null;
  host?: string | null;
  /** The request came through a proxy: it carries Forwarded, X-Forwarded-For or X-Real-IP, or its peer is a trusted proxy. */
  forwarded?: boolean;
}

/** Headers a proxy adds: a request with one of them was relayed, whatever the peer address says. */
export const FORWARDING_HEADERS = ['forwarded', 'x-forwarded-for', 'x-real-ip'] as const;

/** Whether a request's headers say a proxy relayed it (get: the header's value, or null/undefined). */
export const wasForwarded = (get: (name: string) => unknown) => FORWARDING_HEADERS.some((h) => get(h) != null);

export const isLoopbackAddress = (a: string | null | undefined) =>
  !!a && (a === '::1' || a.startsWith('127.') || a.startsWith('::ffff:127.'));

/** A browser page of another origin (a same-origin page, or a client that is no browser, sends no foreign Origin). */
export function foreignOrigin({ origin, host }: Pick<Caller, 'origin' | 'host'>): boolean {
  if (!origin) return false;
  try {
    return new URL(origin).host !== host;
  } catch {
    return true; // "null" (sandboxed frames, file:) and garbage
  }
}

/**
 * Who is calling, from the Authorization header and where the request comes from (every protocol checks the same
 * way). Without ADMIN_TOKEN, admin operations are allowed only from loopback and never from a browser page of another
 * origin: a web page the user visits (or DNS rebinding) must not manage models.
 */
export function accessFor(authorization: string | null | undefined, { adminToken, apiTokens }: Tokens, caller: Caller = {}) {
  const token = bearer(authorization);
  const isAdmin = adminToken !== null && tokenMatches(token, adminToken);
  // a header was sent, in another form: said as such, not as if none had been
  const noToken = (needs: string) =>
    new GatewayError(
      ErrorCode.UNAUTHENTICATED,
      authorization?.trim() ? 'the Authorization header is not of the form "Bearer <token>" (one token, no spaces)' : needs,
    );
  return {
    /** API_TOKENS set: every request needs one of them (or the admin token). */
    checkApi(): void {
      if (apiTokens.length === 0 || isAdmin) return;
      if (token === null) throw noToken('this gateway needs Authorization: Bearer <token>');
      if (!apiTokens.some((t) => tokenMatches(token, t))) throw new GatewayError(ErrorCode.FORBIDDEN, 'the token is not valid');
    },
    /** ADMIN_TOKEN set: admin operations need it; unset: loopback only, never a page of another origin. */
    requireAdmin(): void {
      if (isAdmin) return;
      if (adminToken === null) {
        if (!isLoopbackAddress(caller.remoteAddress)) {
          throw new GatewayError(
            ErrorCode.FORBIDDEN,
            'admin operations without ADMIN_TOKEN are allowed only from this machine (loopback); set ADMIN_TOKEN to manage models remotely',
          );
        }
        // a load balancer on this machine connects from loopback for every remote client it relays
        if (caller.forwarded)
          throw new GatewayError(
            ErrorCode.FORBIDDEN,
            'admin operations without ADMIN_TOKEN are not allowed through a proxy (the request carries forwarding headers); set ADMIN_TOKEN',
          );
        if (foreignOrigin(caller))
          throw new GatewayError(ErrorCode.FORBIDDEN, `admin operations are not allowed from a page of another origin (${caller.origin})`);
        return;
      }
      if (token === null) throw noToken('this operation needs Authorization: Bearer <admin token>');
      if (apiTokens.some((t) => tokenMatches(token, t)))
        throw new GatewayError(
          ErrorCode.FORBIDDEN,
          'this operation needs the admin token (ADMIN_TOKEN); the token sent is an API token, which runs inference and reads models only',
        );
      throw new GatewayError(ErrorCode.FORBIDDEN, 'the token sent is not the admin token (ADMIN_TOKEN), which this operation needs');
    },
  };
}
