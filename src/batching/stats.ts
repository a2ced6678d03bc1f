/** Per model version counters, shown in GraphQL (Model.stats) and at /metrics. Times in microseconds. */
export const LATENCY_BUCKETS_US = [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000];

export class Histogram {
  readonly counts = new Array<number>(LATENCY_BUCKETS_US.length + 1).fill(0);
  sum = 0;
  count = 0;
  observe(us: number): void {
    let i = 0;
    while (i < LATENCY_BUCKETS_US.length && us > LATENCY_BUCKETS_US[i]) i++;
    this.counts[i]++;
    this.sum += us;
    this.count++;
  }
  get mean(): number {
    return this.count ? this.sum / this.count : 0;
  }
}

export class VersionStats {
  requests = 0;
  errors = new Map<string, number>();
  batches = 0;
  /** batch size -> number of engine calls of that size */
  batchSizes = new Map<number, number>();
  readonly queueTime = new Histogram();
  readonly inferenceTime = new Histogram();
  readonly requestTime = new Histogram();

  recordBatch(size: number, inferenceUs: number): void {
    this.batches++;
    this.batchSizes.set(size, (this.batchSizes.get(size) ?? 0) + 1);
    this.inferenceTime.observe(inferenceUs);
  }
  recordError(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
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
