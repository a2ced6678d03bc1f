import { ErrorCode, GatewayError } from './errors.ts';

/**
 * Bytes of requests the process holds at once, on both ports, counted as they arrive (an HTTP body, GraphQL or KServe
 * REST, until its answer is sent or its client leaves; a gRPC message until its call ends). Each body is
 * bounded by MAX_UPLOAD_BYTES and connections per client by MAX_CONNECTIONS_PER_CLIENT, but their product is not (256
 * connections x 50 MB from one address): past this budget a request is refused (QUEUE_FULL, which clients retry) and
 * the rest of it is not read, so memory stays bounded whatever clients send. What is counted is what has come, not
 * what a request says will come, so that promises alone hold nothing. One client address may hold at most half of it,
 * so that one client alone cannot refuse everyone else (as connections per client are capped).
 */
export class BytesInFlight {
  private held = 0;
  private readonly perClient = new Map<string, number>();

  constructor(
    /** MAX_BYTES_IN_FLIGHT */
    readonly limit: number,
  ) {}

  /** Bytes held now. */
  get bytes(): number {
    return this.held;
  }

  /**
   * Take n bytes for a client, or the error to answer (nothing taken). `own`: what the same request holds already (a
   * gRPC message is taken as it arrives). A request that alone needs more than a client may ever hold is refused for
   * good (PAYLOAD_TOO_LARGE); otherwise past the budget, or past the client's half of it, it may be retried.
   */
  take(n: number, client: string, own = 0): GatewayError | null {
    const refused = this.fits(n, client, own);
    if (refused) return refused;
    this.held += n;
    this.perClient.set(client, (this.perClient.get(client) ?? 0) + n);
    return null;
  }

  /** What take() would answer, taking nothing. */
  fits(n: number, client: string, own = 0): GatewayError | null {
    const share = this.limit / 2;
    if (own + n > share)
      return new GatewayError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        `this request needs ${own + n} bytes, more than one client may hold at once (half of MAX_BYTES_IN_FLIGHT, ${this.limit}); send it uncompressed or smaller`,
      );
    if (this.held + n > this.limit)
      return new GatewayError(
        ErrorCode.QUEUE_FULL,
        `the server holds ${this.held} bytes of requests already and this one needs ${n} more, past MAX_BYTES_IN_FLIGHT (${this.limit}); retry shortly`,
      );
    const mine = this.perClient.get(client) ?? 0;
    if (mine + n > share)
      return new GatewayError(
        ErrorCode.QUEUE_FULL,
        `this client holds ${mine} bytes of requests already and this one needs ${n} more, past half of MAX_BYTES_IN_FLIGHT (${this.limit}); retry when they are answered`,
      );
    return null;
  }

  give(n: number, client: string): void {
    this.held = Math.max(0, this.held - n);
    const left = (this.perClient.get(client) ?? 0) - n;
    if (left > 0) this.perClient.set(client, left);
    else this.perClient.delete(client);
  }
}
