import { ErrorCode, GatewayError, clientGone } from './errors.ts';

/**
 * Bytes of requests the process holds at once, on both ports, counted as they arrive (an HTTP body, GraphQL or KServe
 * REST, until its answer is sent or its client leaves; a gRPC message until its call ends; a WebSocket operation's
 * message until the operation ends; an image the server reads from IMAGE_ROOTS for a request, with that request). Each body is
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

/**
 * What one HTTP request holds of the budget: its body as it comes, and what its route holds besides (KServe REST
 * inflating a compressed body), all given back at once when it is answered or its client leaves (release()).
 */
export class RequestHold {
  private held = 0;
  private released = false;

  constructor(
    private readonly budget: BytesInFlight,
    private readonly client: string,
  ) {}

  /** Answered, or its client gone: nothing is held any more, and nothing more may be. */
  get done(): boolean {
    return this.released;
  }

  /** Take n bytes more, or the error to answer (nothing taken); once released, CANCELLED: the work is for no one. */
  take(n: number): GatewayError | null {
    if (this.released) return clientGone();
    const refused = this.budget.take(n, this.client, this.held);
    if (!refused) this.held += n;
    return refused;
  }

  /** Give back n of the bytes taken (at most what is held). */
  give(n: number): void {
    const k = Math.min(n, this.held);
    this.held -= k;
    this.budget.give(k, this.client);
  }

  release(): void {
    this.give(this.held);
    this.released = true;
  }
}

const holds = new WeakMap<object, RequestHold>();
/** The hold of an HTTP request (the HTTP server counts its body), for a route that holds more for it. */
export const holdOf = (req: object): RequestHold | undefined => holds.get(req);
export const setHold = (req: object, hold: RequestHold): void => void holds.set(req, hold);
