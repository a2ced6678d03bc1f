import type { VersionMetrics } from '../metrics.ts';

/** A running mean (of microseconds). */
export class Mean {
  sum = 0;
  count = 0;
  observe(value: number): void {
    this.sum += value;
    this.count++;
  }
  get mean(): number {
    return this.count ? this.sum / this.count : 0;
  }
}

/**
 * One request: one call of the inference service, however many items (images, items of a raw batch) it carries, as
 * Triton's statistics count requests. Its items note when they reached the batcher and when their engine calls
 * started, and each engine call that computed any of its items adds its time once (see VersionStats.recordRequestEnd).
 */
export class RequestTrace {
  readonly startedAt = performance.now();
  /** When its first item reached the batcher (performance.now()); Infinity before. */
  queuedAt = Infinity;
  /** When its first engine call started; Infinity before. */
  computingAt = Infinity;
  /** Microseconds of the engine calls that computed its items, each call once (a call shared with other requests in full). */
  computeUs = 0;
}

/** Requests as Triton's statistics extension counts them: each call of the inference service once. Microseconds. */
export interface RequestCounts {
  /** Requests answered in full, and their whole time (from the call to its answer). */
  succeeded: number;
  succeededUs: number;
  /** Of the requests answered: the wait from their first item's arrival at the batcher to their first engine call. */
  queueUs: number;
  /** Of the requests answered: the time of their engine calls (the sum of them when their items took several). */
  computeUs: number;
  /** Requests that failed, or were refused at the version's queue (one, however many of their items failed), and their time. */
  failed: number;
  failedUs: number;
}

/**
 * Per model version counters, shown in GraphQL (Model.stats); each is also written to the version's Prometheus
 * series (/metrics) when it has them. Times in microseconds. Those counters count items, as the engine sees them (a
 * request of six images counts six); `byRequest` counts requests, for the KServe statistics extension.
 */
export class VersionStats {
  /** Items answered. */
  items = 0;
  readonly errors = new Map<string, number>();
  batches = 0;
  /** batch size -> number of engine calls of that size */
  readonly batchSizes = new Map<number, number>();
  /** batch size -> microseconds its engine calls took, in all */
  readonly batchSizeTime = new Map<number, number>();
  readonly queueTime = new Mean();
  readonly inferenceTime = new Mean();
  /** Time of each item answered, from its admission to its outputs. */
  readonly requestTime = new Mean();
  readonly byRequest: RequestCounts = { succeeded: 0, succeededUs: 0, queueUs: 0, computeUs: 0, failed: 0, failedUs: 0 };
  /** When an item last succeeded (ms since the epoch), 0 before. */
  lastSuccessAt = 0;

  constructor(readonly metrics?: VersionMetrics) {}

  /** An item answered, `itemUs` after its admission. */
  recordItem(itemUs: number): void {
    this.items++;
    this.requestTime.observe(itemUs);
    this.lastSuccessAt = Date.now();
    this.metrics?.success(itemUs / 1e6);
  }
  /** `items` failed with `code` (a batch refused as a whole counts each of its items). */
  recordError(code: string, items = 1): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + items);
    this.metrics?.failure(code, items);
  }
  /** A request has been answered (`ok`: in full) or has failed: counted once, whatever number of items it carried. */
  recordRequestEnd(request: RequestTrace, ok: boolean): void {
    const us = (performance.now() - request.startedAt) * 1000;
    const r = this.byRequest;
    if (!ok) {
      r.failed++;
      r.failedUs += us;
      return;
    }
    r.succeeded++;
    r.succeededUs += us;
    if (request.computingAt < Infinity) r.queueUs += Math.max(0, request.computingAt - request.queuedAt) * 1000;
    r.computeUs += request.computeUs;
  }
  recordQueue(waitedUs: number): void {
    this.queueTime.observe(waitedUs);
    this.metrics?.queued(waitedUs / 1e6);
  }
  recordBatch(size: number, inferenceUs: number): void {
    this.batches++;
    this.batchSizes.set(size, (this.batchSizes.get(size) ?? 0) + 1);
    this.batchSizeTime.set(size, (this.batchSizeTime.get(size) ?? 0) + inferenceUs);
    this.inferenceTime.observe(inferenceUs);
    this.metrics?.batch(size, inferenceUs / 1e6);
  }
  get errorCount(): number {
    let n = 0;
    for (const c of this.errors.values()) n += c;
    return n;
  }
  get meanBatchSize(): number {
    let items = 0;
    for (const [size, n] of this.batchSizes) items += size * n;
    return this.batches ? items / this.batches : 0;
  }
}
