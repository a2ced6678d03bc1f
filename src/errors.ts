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
  CANCELLED: 499,
};

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GatewayError';
    this.code = code;
    this.status = httpStatus[code];
    this.details = details;
  }
}

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
