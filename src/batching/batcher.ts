import DataLoader from 'dataloader';
import { ErrorCode, GatewayError, errorMessage, isGatewayError } from '../errors.ts';
import { allocate, elementCount, type Tensor, type TensorData } from '../engine/types.ts';
import type { VersionStats } from './stats.ts';

export type Feeds = Record<string, Tensor>;
export type RunFn = (feeds: Feeds) => Promise<Feeds>;

export interface BatcherOptions {
  /** Items per engine call; 1 turns batching off. */
  maxBatchSize: number;
  /** How long the first item of a batch waits for company. */
  maxDelayMs: number;
  /** Requests admitted at once (arrival to answer, preprocessing included); past it: QUEUE_FULL. */
  maxQueueSize: number;
  /** Engine calls at once. */
  maxConcurrentBatches: number;
  /** A request still waiting for its engine call after this long gets DEADLINE_EXCEEDED; 0 = never. */
  timeoutMs: number;
}

interface Item {
  feeds: Feeds;
  enqueuedAt: number;
}

interface Slot {
  count: number;
  /** Close the batch and send it (once). */
  fire: () => void;
  /** Its delay has passed: send it as soon as the engine is free. */
  due: boolean;
}

/** One admitted request: its single inference goes through here, and release() ends it. */
export interface Admission {
  infer(feeds: Feeds): Promise<Feeds>;
  release(): void;
}

/** Checks options early with messages that say what to fix (as dataloader does). */
export function validateBatcherOptions(o: BatcherOptions): BatcherOptions {
  const intAtLeast = (name: keyof BatcherOptions, min: number) => {
    if (!Number.isInteger(o[name]) || o[name] < min) throw new TypeError(`batcher option ${name} must be an integer >= ${min}, got ${o[name]}`);
  };
  intAtLeast('maxBatchSize', 1);
  intAtLeast('maxQueueSize', 1);
  intAtLeast('maxConcurrentBatches', 1);
  if (!(o.maxDelayMs >= 0)) throw new TypeError(`batcher option maxDelayMs must be >= 0, got ${o.maxDelayMs}`);
  if (!(o.timeoutMs >= 0)) throw new TypeError(`batcher option timeoutMs must be >= 0, got ${o.timeoutMs}`);
  return o;
}

/** The key that decides which items may share a batch: same input names, dtypes and per-item shapes. */
function shapeKey(feeds: Feeds): string {
  let key = '';
  for (const name in feeds) key += `${name}:${feeds[name].dtype}:${feeds[name].shape.join('x')};`;
  return key;
}

/** Join per-item tensors (batch dim 1 each) along dim 0: the one copy of the hot path. */
export function concatBatch(items: readonly Feeds[]): Feeds {
  const first = items[0];
  if (items.length === 1) return first;
  const out: Feeds = {};
  for (const name in first) {
    const t0 = first[name];
    const per = t0.data.length;
    const data = allocate(t0.dtype, per * items.length);
    for (let i = 0; i < items.length; i++) (data as Float32Array).set(items[i][name].data as Float32Array, i * per);
    out[name] = { dtype: t0.dtype, shape: [items.length, ...t0.shape.slice(1)], data };
  }
  return out;
}

/** Split outputs along dim 0 into per-item views (no copies). */
export function splitBatch(outputs: Feeds, n: number): Feeds[] {
  const result: Feeds[] = Array.from({ length: n }, () => ({}));
  for (const name in outputs) {
    const t = outputs[name];
    if (t.shape[0] !== n) throw new Error(`output ${name} has batch dimension ${t.shape[0]}, expected ${n}`);
    const per = elementCount(t.shape) / n;
    for (let i = 0; i < n; i++) {
      result[i][name] = { dtype: t.dtype, shape: [1, ...t.shape.slice(1)], data: t.data.subarray(i * per, (i + 1) * per) as TensorData };
    }
  }
  return result;
}

/**
 * One long-lived batcher per loaded model version. Requests that arrive together become one engine call.
 * Built on dataloader (cache off: a work queue, not an entity cache) with its own scheduler:
 * - a full batch (maxBatchSize) goes at once (dataloader alone would wait for its timer);
 * - otherwise it goes maxDelayMs after its first item, or later: while the engine is busy the batch stays open and
 *   keeps filling, and goes when the engine frees up (as Triton's dynamic batcher forms batches when an instance
 *   is free);
 * - when every admitted request is already queued (none is still being preprocessed), nothing can join, so it
 *   goes at once instead of waiting out the delay.
 */
export class Batcher {
  readonly options: BatcherOptions;
  private readonly loaders = new Map<string, { loader: DataLoader<Item, Feeds>; current: Slot | null }>();
  private admitted = 0;
  /** Admitted requests that have not reached infer() yet (still decoding and preprocessing). */
  private preparing = 0;
  private running = 0;
  /** Batches whose delay has passed while the engine was busy, oldest first. */
  private due: Slot[] = [];
  private readonly waiting: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly run: RunFn, options: BatcherOptions, private readonly stats?: VersionStats) {
    this.options = validateBatcherOptions({ ...options });
  }

  /** Requests admitted and not yet answered. */
  get pending(): number {
    return this.admitted;
  }

  /** Shapes with a batch still open. A queue exists only while its batch is open, so this stays bounded. */
  get openQueues(): number {
    return this.loaders.size;
  }

  /** Admit one request (call before preprocessing). Throws QUEUE_FULL at the bound. */
  admit(): Admission {
    if (this.admitted >= this.options.maxQueueSize) {
      throw new GatewayError(ErrorCode.QUEUE_FULL, `queue full: ${this.admitted} requests already admitted (maxQueueSize ${this.options.maxQueueSize})`);
    }
    this.admitted++;
    this.preparing++;
    let stage: 'preparing' | 'queued' | 'released' = 'preparing';
    return {
      infer: (feeds) => {
        if (stage === 'preparing') {
          stage = 'queued';
          this.preparing--;
        }
        return this.infer(feeds);
      },
      release: () => {
        if (stage === 'released') return;
        const wasPreparing = stage === 'preparing';
        if (wasPreparing) this.preparing--;
        stage = 'released';
        this.admitted--;
        // a request that failed before reaching the batcher may have been the one the open batches waited for
        if (wasPreparing) this.fireIfNobodyComing();
        if (this.admitted === 0) {
          const w = this.idleWaiters;
          this.idleWaiters = [];
          for (const f of w) f();
        }
      },
    };
  }

  /** Resolves when every admitted request has been answered. */
  drain(): Promise<void> {
    if (this.admitted === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Run one item (inputs with batch dimension 1); resolves to its outputs (batch dimension 1). */
  infer(feeds: Feeds): Promise<Feeds> {
    const key = shapeKey(feeds);
    let entry = this.loaders.get(key);
    if (!entry) {
      const e: { loader: DataLoader<Item, Feeds>; current: Slot | null } = { loader: undefined as never, current: null };
      e.loader = new DataLoader<Item, Feeds>((items) => this.dispatch(items), {
        cache: false,
        maxBatchSize: this.options.maxBatchSize,
        batchScheduleFn: (callback) => {
          const slot: Slot = { count: 0, fire: () => {}, due: false };
          let fired = false;
          const onDelay = () => {
            if (this.running < this.options.maxConcurrentBatches) slot.fire();
            else if (!fired) {
              slot.due = true; // the engine is busy: keep filling until it is free
              this.due.push(slot);
            }
          };
          const timer = this.options.maxDelayMs > 0 ? setTimeout(onDelay, this.options.maxDelayMs) : setImmediate(onDelay);
          slot.fire = () => {
            if (fired) return;
            fired = true;
            if (this.options.maxDelayMs > 0) clearTimeout(timer as NodeJS.Timeout);
            else clearImmediate(timer as NodeJS.Immediate);
            if (slot.due) this.due.splice(this.due.indexOf(slot), 1);
            if (e.current === slot) e.current = null;
            // Forget the queue once its batch closes: with NETWORK resizing every image size is a shape, and a map
            // kept per shape would grow with whatever sizes clients send. The next item of this shape starts afresh.
            if (this.loaders.get(key) === e) this.loaders.delete(key);
            callback();
          };
          e.current = slot;
        },
      });
      this.loaders.set(key, e);
      entry = e;
    }
    const promise = entry.loader.load({ feeds, enqueuedAt: performance.now() });
    const slot = entry.current;
    if (slot) {
      slot.count++;
      if (slot.count >= this.options.maxBatchSize || this.nobodyComing()) slot.fire();
    }
    return promise;
  }

  /** Every admitted request is already queued (none is still being preprocessed) and the engine is free. */
  private nobodyComing(): boolean {
    return this.admitted > 0 && this.preparing === 0 && this.running < this.options.maxConcurrentBatches;
  }

  private fireIfNobodyComing(): void {
    if (!this.nobodyComing()) return;
    for (const e of [...this.loaders.values()]) e.current?.fire();
  }

  private async acquireRun(): Promise<void> {
    if (this.running < this.options.maxConcurrentBatches) {
      this.running++;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private releaseRun(): void {
    const next = this.waiting.shift();
    if (next) next();
    else {
      this.running--;
      this.due[0]?.fire(); // the engine is free: send the oldest batch whose delay has passed
    }
  }

  private async dispatch(items: readonly Item[]): Promise<(Feeds | Error)[]> {
    await this.acquireRun();
    try {
      const start = performance.now();
      const results: (Feeds | Error)[] = new Array(items.length);
      const live: number[] = [];
      const timeout = this.options.timeoutMs;
      for (let i = 0; i < items.length; i++) {
        const waited = start - items[i].enqueuedAt;
        this.stats?.queueTime.observe(waited * 1000);
        if (timeout > 0 && waited > timeout) {
          results[i] = new GatewayError(ErrorCode.DEADLINE_EXCEEDED, `waited ${Math.round(waited)} ms for the engine (timeout ${timeout} ms)`);
        } else live.push(i);
      }
      if (live.length > 0) await this.runLive(items, live, results);
      return results;
    } finally {
      this.releaseRun();
    }
  }

  private async runLive(items: readonly Item[], live: number[], results: (Feeds | Error)[]): Promise<void> {
    try {
      const t0 = performance.now();
      const outputs = await this.run(concatBatch(live.map((i) => items[i].feeds)));
      this.stats?.recordBatch(live.length, (performance.now() - t0) * 1000);
      const split = live.length === 1 ? [outputs] : splitBatch(outputs, live.length);
      live.forEach((idx, k) => (results[idx] = split[k]));
    } catch (e) {
      if (live.length === 1) {
        results[live[0]] = isGatewayError(e) ? e : new GatewayError(ErrorCode.INFERENCE_FAILED, `inference failed: ${errorMessage(e)}`);
        return;
      }
      // One bad item must not fail its neighbours: run them one by one so each gets its own answer.
      for (const idx of live) await this.runLive(items, [idx], results);
    }
  }
}
