import { ErrorCode, GatewayError } from './errors.ts';

/**
 * Bytes of requests the process holds at once, on every port: an HTTP body (GraphQL, KServe REST) from its headers
 * until its answer is sent, a gRPC message from its first byte until its call ends. Each body is bounded by
 * MAX_UPLOAD_BYTES and connections per client by MAX_CONNECTIONS_PER_CLIENT, but their product is not (256 connections
 * x 50 MB from one address): past this budget a new request is refused (QUEUE_FULL, which clients retry) instead of
 * read, so memory stays bounded whatever clients send.
 */
export class BytesInFlight {
  private held = 0;

  constructor(
    /** MAX_BYTES_IN_FLIGHT */
    readonly limit: number,
  ) {}

  /** Bytes held now. */
  get bytes(): number {
    return this.held;
  }

  /** Take n bytes, or false (nothing taken) when they would go past the limit. */
  take(n: number): boolean {
    if (this.held + n > this.limit) return false;
    this.held += n;
    return true;
  }

  give(n: number): void {
    this.held = Math.max(0, this.held - n);
  }

  /** The error of a request that does not fit. */
  refusal(n: number): GatewayError {
    return new GatewayError(
      ErrorCode.QUEUE_FULL,
      `the server holds ${this.held} bytes of requests already and this one needs ${n} more, past MAX_BYTES_IN_FLIGHT (${this.limit}); retry shortly`,
    );
  }
}
