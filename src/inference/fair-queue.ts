/**
 * At most `concurrency` tasks at once, shared fairly between the requests that wait: when a slot frees, it goes to the
 * waiting request with the fewest tasks running (among equals, the one served or come longest ago), not to whichever
 * task was queued first. So a request with sixty-four costly images takes every slot only while nobody else waits, and
 * another client's one photo waits for a task or two to end, not for all of them (p-limit, which this replaces for
 * image decoding, is first come, first served). Work-conserving: a slot never stays idle while anything waits.
 */
export class FairQueue {
  private running = 0;
  /** Waiting tasks by request, in the order the requests began to wait. */
  private readonly waiting = new Map<object, (() => void)[]>();
  private readonly runningBy = new Map<object, number>();
  /** When each request with tasks waiting or running was last given a slot (forgotten once it has neither). */
  private readonly servedAt = new Map<object, number>();
  private turn = 0;

  constructor(readonly concurrency: number) {
    if (!Number.isInteger(concurrency) || concurrency < 1)
      throw new Error(`FairQueue: concurrency must be an integer >= 1, got ${concurrency}`);
  }

  get activeCount(): number {
    return this.running;
  }

  get pendingCount(): number {
    let n = 0;
    for (const q of this.waiting.values()) n += q.length;
    return n;
  }

  /** Run `task` for the request `key` (any object: one per request) when a slot is its turn. */
  run<T>(key: object, task: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.running++;
        this.runningBy.set(key, (this.runningBy.get(key) ?? 0) + 1);
        let result: Promise<T>;
        try {
          result = task();
        } catch (e) {
          result = Promise.reject(e);
        }
        result.then(resolve, reject).finally(() => {
          this.running--;
          const left = this.runningBy.get(key)! - 1;
          if (left > 0) this.runningBy.set(key, left);
          else {
            this.runningBy.delete(key);
            if (!this.waiting.has(key)) this.servedAt.delete(key);
          }
          this.next();
        });
      };
      const queue = this.waiting.get(key);
      if (queue) queue.push(start);
      else this.waiting.set(key, [start]);
      // a request that comes counts as served now: it goes before requests served since, not before every request
      // (a stream of one-image requests would otherwise keep a many-image one waiting for ever)
      if (!this.servedAt.has(key)) this.servedAt.set(key, this.turn++);
      this.next();
    });
  }

  private next(): void {
    while (this.running < this.concurrency && this.waiting.size > 0) {
      // the fewest running; among those, the one served (or come) longest ago, so that turns go round
      let pick: object | null = null;
      let fewest = Infinity;
      let servedAt = Infinity;
      for (const key of this.waiting.keys()) {
        const n = this.runningBy.get(key) ?? 0;
        const at = this.servedAt.get(key)!;
        if (n < fewest || (n === fewest && at < servedAt)) [pick, fewest, servedAt] = [key, n, at];
      }
      const queue = this.waiting.get(pick!)!;
      const start = queue.shift()!;
      if (queue.length === 0) this.waiting.delete(pick!);
      this.servedAt.set(pick!, this.turn++);
      start();
    }
  }
}
