import { status as GrpcStatus } from '@grpc/grpc-js';
import { ErrorCode, GatewayError, isGatewayError } from '../../errors.ts';

/**
 * The one table of this protocol's errors: each gateway error code as an HTTP status (REST) and a gRPC status code.
 * The REST spec answers errors with `{"error": "<message>"}` and an error status (400 for a bad request); the model
 * states and limits get the statuses clients retry or back off on (503 / UNAVAILABLE for a model that is not ready or
 * a full queue, as Triton does; 413 and RESOURCE_EXHAUSTED for sizes past the limits).
 */
export const KSERVE_STATUS: Record<ErrorCode, { http: number; grpc: GrpcStatus }> = {
  MODEL_NOT_FOUND: { http: 404, grpc: GrpcStatus.NOT_FOUND },
  MODEL_NOT_READY: { http: 503, grpc: GrpcStatus.UNAVAILABLE },
  MODEL_LOAD_FAILED: { http: 400, grpc: GrpcStatus.FAILED_PRECONDITION },
  INVALID_MODEL_CONFIG: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  INVALID_IMAGE: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  IMAGE_TOO_LARGE: { http: 413, grpc: GrpcStatus.RESOURCE_EXHAUSTED },
  INVALID_INPUT: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  FORBIDDEN_PATH: { http: 403, grpc: GrpcStatus.PERMISSION_DENIED },
  INFERENCE_FAILED: { http: 500, grpc: GrpcStatus.INTERNAL },
  QUEUE_FULL: { http: 503, grpc: GrpcStatus.UNAVAILABLE },
  DEADLINE_EXCEEDED: { http: 504, grpc: GrpcStatus.DEADLINE_EXCEEDED },
  PAYLOAD_TOO_LARGE: { http: 413, grpc: GrpcStatus.RESOURCE_EXHAUSTED },
  LIMIT_EXCEEDED: { http: 400, grpc: GrpcStatus.RESOURCE_EXHAUSTED },
  UNAUTHENTICATED: { http: 401, grpc: GrpcStatus.UNAUTHENTICATED },
  FORBIDDEN: { http: 403, grpc: GrpcStatus.PERMISSION_DENIED },
  STORAGE_FULL: { http: 507, grpc: GrpcStatus.RESOURCE_EXHAUSTED },
  STORAGE_NOT_WRITABLE: { http: 507, grpc: GrpcStatus.FAILED_PRECONDITION },
  CANCELLED: { http: 499, grpc: GrpcStatus.CANCELLED },
};

/** Anything that is not a GatewayError is unexpected: 500 / INTERNAL with a fixed message (the cause is logged). */
export const UNEXPECTED = { http: 500, grpc: GrpcStatus.INTERNAL, message: 'internal error' };

export interface MappedError {
  http: number;
  grpc: GrpcStatus;
  /** The gateway's code (or INTERNAL), for logs and the `x-error-code` header. */
  code: string;
  message: string;
  expected: boolean;
}

export function mapError(e: unknown): MappedError {
  if (isGatewayError(e)) return { ...KSERVE_STATUS[e.code], code: e.code, message: e.message, expected: true };
  return { http: UNEXPECTED.http, grpc: UNEXPECTED.grpc, code: 'INTERNAL', message: UNEXPECTED.message, expected: false };
}

export const invalid = (message: string) => new GatewayError(ErrorCode.INVALID_INPUT, message);
