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
 * Per model version counters, shown in GraphQL (Model.stats); each is also written to the version's Prometheus
 * series (/metrics) when it has them. Times in microseconds.
 */
export class VersionStats {
  requests = 0;
  readonly errors = new Map<string, number>();
  batches = 0;
  /** batch size -> number of engine calls of that size */
  readonly batchSizes = new Map<number, number>();
  /** batch size -> microseconds its engine calls took, in all */
  readonly batchSizeTime = new Map<number, number>();
  readonly queueTime = new Mean();
  readonly inferenceTime = new Mean();
  readonly requestTime = new Mean();
  /** Microseconds failed items took, in all (0 for one refused at once). */
  failedUs = 0;
  /** Items computed, and each item's engine call time summed over them (a call of 4 items taking 10 ms: 40 ms). */
  computedItems = 0;
  computedItemUs = 0;
  /** When an item last succeeded (ms since the epoch), 0 before. */
  lastSuccessAt = 0;

  constructor(readonly metrics?: VersionMetrics) {}

  recordRequest(requestUs: number): void {
    this.requests++;
    this.requestTime.observe(requestUs);
    this.lastSuccessAt = Date.now();
    this.metrics?.success(requestUs / 1e6);
  }
  /** `items` failed with `code` (a batch refused as a whole counts each of its items), after `us` each. */
  recordError(code: string, items = 1, us = 0): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + items);
    this.failedUs += items * us;
    this.metrics?.failure(code, items);
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
    this.computedItems += size;
    this.computedItemUs += size * inferenceUs;
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
