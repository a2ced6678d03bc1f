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

  /** Admit one request (before its preprocessing). Throws QUEUE_FULL at the bound. */
  admit(): Ticket {
    if (this.admitted >= this.maxQueueSize) {
      throw new GatewayError(
        ErrorCode.QUEUE_FULL,
        `queue full: ${this.admitted} requests already admitted (maxQueueSize ${this.maxQueueSize})`,
      );
    }
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
