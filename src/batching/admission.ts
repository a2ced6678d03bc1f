import { ErrorCode, GatewayError } from '../errors.ts';

/** One admitted request: markQueued() when it reaches the batcher, release() when it is answered (or failed). */
export interface Ticket {
  markQueued(): void;
  release(): void;
}

/**
 * The queue bound of one model version, counted from a request's arrival to its answer (decoding and preprocessing
 * included), so memory stays flat under overload: past maxQueueSize the answer is QUEUE_FULL at once. It also knows
 * how many admitted requests are still being prepared, which tells the batcher whether anyone can still join a batch,
 * and lets an unload wait until every admitted request has been answered.
 */
export class Admissions {
  private admitted = 0;
  private preparing = 0;
  private idleWaiters: (() => void)[] = [];
  /** Requests admitted and not yet answered, by client (those that named one). */
  private readonly byClient = new Map<string, number>();

  constructor(
    readonly maxQueueSize: number,
    /** Called whenever the counts change (metrics, and the batcher's "nobody else is coming" check). */
    private readonly onChange: (admissions: Admissions, reason: 'admitted' | 'queued' | 'released-early' | 'released') => void = () => {},
  ) {
    if (!Number.isInteger(maxQueueSize) || maxQueueSize < 1)
      throw new TypeError(`maxQueueSize must be an integer >= 1, got ${maxQueueSize}`);
  }

  /** Requests admitted and not yet answered. */
  get pending(): number {
    return this.admitted;
  }

  /** Admitted requests that have not reached the batcher yet (still decoding and preprocessing). */
  get preparingCount(): number {
    return this.preparing;
  }

  /**
   * What one client may hold: half of maxQueueSize (rounded up), so that one client, however many requests or images it
   * sends at once, cannot take every place and have everyone else refused (as MAX_BYTES_IN_FLIGHT gives one client
   * half of it). Requests that name no client (the server's own, such as a warm-up) are not counted per client.
   */
  get clientShare(): number {
    return Math.ceil(this.maxQueueSize / 2);
  }

  /** Admit one request (before its preprocessing) of `client`, if known. Throws QUEUE_FULL at either bound. */
  admit(client?: string): Ticket {
    if (this.admitted >= this.maxQueueSize) {
      throw new GatewayError(
        ErrorCode.QUEUE_FULL,
        `queue full: ${this.admitted} requests already admitted (maxQueueSize ${this.maxQueueSize})`,
      );
    }
    const mine = client === undefined ? 0 : (this.byClient.get(client) ?? 0);
    if (client !== undefined && mine >= this.clientShare) {
      throw new GatewayError(
        ErrorCode.QUEUE_FULL,
        `this client has ${mine} requests admitted already, its share (half of maxQueueSize ${this.maxQueueSize}, so that other clients are served too): retry when they are answered`,
      );
    }
    if (client !== undefined) this.byClient.set(client, mine + 1);
    this.admitted++;
    this.preparing++;
    this.onChange(this, 'admitted');
    let stage: 'preparing' | 'queued' | 'released' = 'preparing';
    return {
      markQueued: () => {
        if (stage !== 'preparing') return;
        stage = 'queued';
        this.preparing--;
        this.onChange(this, 'queued');
      },
      release: () => {
        if (stage === 'released') return;
        const early = stage === 'preparing';
        if (early) this.preparing--;
        stage = 'released';
        this.admitted--;
        if (client !== undefined) {
          const left = this.byClient.get(client)! - 1;
          if (left > 0) this.byClient.set(client, left);
          else this.byClient.delete(client);
        }
        this.onChange(this, early ? 'released-early' : 'released');
        if (this.admitted === 0) {
          const waiters = this.idleWaiters;
          this.idleWaiters = [];
          for (const w of waiters) w();
        }
      },
    };
  }

  /** Resolves when every admitted request has been answered. */
  drain(): Promise<void> {
    if (this.admitted === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}
