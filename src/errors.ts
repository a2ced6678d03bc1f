/**
 * Error codes a client can branch on. Every error the gateway raises on purpose is a GatewayError; at the GraphQL
 * edge (server.ts) it becomes `extensions.code` plus an HTTP status. Anything else is unexpected and masked.
 * This module imports nothing from graphql so the repository and engine layers can throw these.
 */
export const ErrorCode = {
  MODEL_NOT_FOUND: 'MODEL_NOT_FOUND',
  MODEL_NOT_READY: 'MODEL_NOT_READY',
  MODEL_LOAD_FAILED: 'MODEL_LOAD_FAILED',
  INVALID_MODEL_CONFIG: 'INVALID_MODEL_CONFIG',
  INVALID_IMAGE: 'INVALID_IMAGE',
  IMAGE_TOO_LARGE: 'IMAGE_TOO_LARGE',
  INVALID_INPUT: 'INVALID_INPUT',
  FORBIDDEN_PATH: 'FORBIDDEN_PATH',
  INFERENCE_FAILED: 'INFERENCE_FAILED',
  QUEUE_FULL: 'QUEUE_FULL',
  DEADLINE_EXCEEDED: 'DEADLINE_EXCEEDED',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  LIMIT_EXCEEDED: 'LIMIT_EXCEEDED',
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  FORBIDDEN: 'FORBIDDEN',
  STORAGE_FULL: 'STORAGE_FULL',
  STORAGE_NOT_WRITABLE: 'STORAGE_NOT_WRITABLE',
  CANCELLED: 'CANCELLED',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const httpStatus: Record<ErrorCode, number> = {
  MODEL_NOT_FOUND: 404,
  MODEL_NOT_READY: 503,
  MODEL_LOAD_FAILED: 422,
  INVALID_MODEL_CONFIG: 422,
  INVALID_IMAGE: 400,
  IMAGE_TOO_LARGE: 413,
  INVALID_INPUT: 400,
  FORBIDDEN_PATH: 403,
  INFERENCE_FAILED: 500,
  QUEUE_FULL: 503,
  DEADLINE_EXCEEDED: 504,
  PAYLOAD_TOO_LARGE: 413,
  LIMIT_EXCEEDED: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  STORAGE_FULL: 507,
  STORAGE_NOT_WRITABLE: 507,
  CANCELLED: 499,
};

/**
 * Longest message an error carries to a client. Messages repeat what the client sent (a shape, a name, a value):
 * past this, each quoted value is cut (cutQuotedValues), then the middle of what is left. gRPC carries the message in
 * a trailer: 200k characters there and the client got no status at all, and its channel stopped answering.
 */
const MAX_MESSAGE = 1000;

function capped(message: string): string {
  if (message.length <= MAX_MESSAGE) return wellFormed(message);
  const cut = cutQuotedValues(message);
  if (cut.length <= MAX_MESSAGE) return wellFormed(cut);
  return wellFormed(`${cut.slice(0, 600)} ... (${cut.length - 900} characters left out) ... ${cut.slice(-300)}`);
}

/**
 * Half of a character pair (an emoji) left alone, by a cut here or in JSON.parse's own words, as U+FFFD: grpc-js cannot
 * encode a status message holding one (URIError), and the call was never answered.
 */
const wellFormed = (text: string): string => (text as string & { toWellFormed(): string }).toWellFormed();

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(capped(message), options);
    this.name = 'GatewayError';
    this.code = code;
    this.status = httpStatus[code];
    this.details = details;
  }
}

/** The error of work dropped because its client went away (HTTP 499 in the log; there is no one to answer). */
export const clientGone = (): GatewayError => new GatewayError(ErrorCode.CANCELLED, 'the client went away');

export const isGatewayError = (e: unknown): e is GatewayError => e instanceof GatewayError;

/** Message of anything thrown, for logs and error states. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** An error message without absolute paths (and what follows them, such as file lengths): for clients. */
export function withoutPaths(message: string): string {
  return message
    .replace(/(?:[A-Za-z]:)?(?:[\\/][^\s'"\\/:]+){2,}[\\/]?/g, (p) => `…/${p.split(/[\\/]/).filter(Boolean).pop() ?? ''}`)
    .replace(/\b(?:file )?(?:length|size|offset)\s*[:=]?\s*\d+/gi, '')
    .slice(0, 300);
}

/** A client's text past `max` characters as its first 60 and its length (a JSON string or a name may be megabytes). */
const shortened = (text: string, max: number) => (text.length > max ? `${text.slice(0, 60)}... (${text.length} characters)` : text);

/** A client's text quoted back in a message a line long at most. */
export function quoted(text: string): string {
  return JSON.stringify(shortened(text, 80));
}

/**
 * A message that repeats a client's values in double quotes (graphql-js's words) with each longer than a line cut
 * short, every sentence kept (past 100 characters: what quoted() leaves is not cut again). One pass over the
 * message: a quoted value ends at its first unescaped quote.
 */
export function cutQuotedValues(message: string, max = 100): string {
  let out = '';
  let at = 0;
  for (let open = message.indexOf('"'); open !== -1; open = message.indexOf('"', at)) {
    let close = open + 1;
    while (close < message.length && message[close] !== '"') close += message[close] === '\\' ? 2 : 1;
    if (close >= message.length) break; // no closing quote: left as it is
    out += message.slice(at, open + 1) + shortened(message.slice(open + 1, close), max) + '"';
    at = close + 1;
  }
  return out + message.slice(at);
}
