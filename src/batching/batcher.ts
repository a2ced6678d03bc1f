import { setMaxListeners } from 'node:events';
import DataLoader from 'dataloader';
import { ErrorCode, GatewayError, errorMessage, isGatewayError } from '../errors.ts';
import { allocate, elementCount, type RunOptions, type Tensor, type TensorData } from '../engine/types.ts';
import type { RequestTrace, VersionStats } from './stats.ts';

export type Feeds = Record<string, Tensor>;
export type RunFn = (feeds: Feeds, options?: RunOptions) => Promise<Feeds>;

export interface BatcherOptions {
  /** Items per engine call; 1 turns batching off. */
  maxBatchSize: number;
  /** How long the first item of a batch waits for company. */
  maxDelayMs: number;
  /** Engine calls at once. */
  maxConcurrentBatches: number;
  /** A request still waiting for its engine call after this long gets DEADLINE_EXCEEDED; 0 = never. */
  timeoutMs: number;
}

/** Checks options early with messages that say what to fix (as dataloader does). */
export function validateBatcherOptions(o: BatcherOptions): BatcherOptions {
  const intAtLeast = (name: keyof BatcherOptions, min: number) => {
    if (!Number.isInteger(o[name]) || o[name] < min)
      throw new TypeError(`batcher option ${name} must be an integer >= ${min}, got ${o[name]}`);
  };
  intAtLeast('maxBatchSize', 1);
  intAtLeast('maxConcurrentBatches', 1);
  if (!(o.maxDelayMs >= 0)) throw new TypeError(`batcher option maxDelayMs must be >= 0, got ${o.maxDelayMs}`);
  if (!(o.timeoutMs >= 0)) throw new TypeError(`batcher option timeoutMs must be >= 0, got ${o.timeoutMs}`);
  return o;
}

interface Item {
  /** Its tensors; let go (null) when it is answered before its engine call, as nothing will read them. */
  feeds: Feeds | null;
  enqueuedAt: number;
  /** Aborted when its client went away: answered at once and dropped if it has not reached the engine. */
  signal?: AbortSignal;
  /** Answered already, before its engine call (its client went away, or its wait passed timeoutMs): skipped. */
  gone?: GatewayError;
  /** Its engine call starts: the wait, and what watched it, are over. */
  started?: () => void;
  /** The request it is an item of, whose queue and compute times its engine calls add to. */
  request?: RequestTrace;
}

const cancelled = () => new GatewayError(ErrorCode.CANCELLED, 'the client went away');
const waitedTooLong = (waited: number, timeoutMs: number) =>
  new GatewayError(ErrorCode.DEADLINE_EXCEEDED, `waited ${Math.round(waited)} ms for the engine (timeout ${timeoutMs} ms)`);

/** The key that decides which items may share an engine call: same input names, dtypes and per-item shapes. */
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

/** After the promise jobs of this tick, as DataLoader schedules its batches. */
function afterThisTick(fn: () => void): void {
  void Promise.resolve().then(() => process.nextTick(fn));
}

/** The items cut into at most n calls of nearly equal size and at least two items each, in order. */
function spread(group: number[], n: number): number[][] {
  const k = Math.min(n, Math.floor(group.length / 2));
  if (k <= 1) return [group];
  const calls: number[][] = [];
  for (let c = 0, from = 0; c < k; c++) {
    const size = Math.ceil((group.length - from) / (k - c));
    calls.push(group.slice(from, from + size));
    from += size;
  }
  return calls;
}

/** At most n engine calls at once; when a permit frees and nobody waits, onFree runs. */
class Semaphore {
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(
    private readonly n: number,
    private readonly onFree: () => void,
  ) {}
  get free(): boolean {
    return this.running < this.n;
  }
  async acquire(): Promise<void> {
    if (this.running < this.n) this.running++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else {
      this.running--;
      this.onFree();
    }
  }
}

/** A batch the DataLoader is filling: when it goes is decided here. */
interface OpenBatch {
  count: number;
  /** Its delay has passed while the engine was busy: it goes as soon as the engine is free. */
  due: boolean;
  go: () => void;
}

/**
 * One long-lived batcher per loaded model version: requests that arrive together become one engine call. A
 * DataLoader (cache off: a work queue, not an entity cache) collects the items; this class decides when a batch goes:
 * - a full batch (maxBatchSize) goes at once;
 * - otherwise it goes maxDelayMs after its first item, or later: while the engine is busy the batch stays open and
 *   keeps filling, and goes when the engine frees up (as Triton's dynamic batcher forms batches when an instance is
 *   free). With maxDelayMs 0 (the default, as Triton's), "after" is the end of the tick in which it opened: the items
 *   of one request arrive in one tick, and a free engine never waits for company that may not come;
 * - when nobody else can join (othersComing() says every admitted request is already here), it goes at once;
 *   without that hook, anyone may still come.
 * A batch holding items of different shapes (NETWORK resizing) makes one engine call per shape. A failing engine
 * call is retried item by item, so one bad item fails alone.
 */
export class Batcher {
  /** Engine calls dispatched and not finished in this process (all models, waiting or running). */
  private static inFlight = 0;
  readonly options: BatcherOptions;
  private readonly loader: DataLoader<Item, Feeds>;
  private readonly engine: Semaphore;
  private open: OpenBatch | null = null;
  private readonly due: OpenBatch[] = [];

  constructor(
    private readonly run: RunFn,
    options: BatcherOptions,
    private readonly hooks: {
      stats?: VersionStats;
      othersComing?: () => boolean;
      /** Engine instances the run function spreads its calls over (default 1). */
      instances?: number;
    } = {},
  ) {
    this.options = validateBatcherOptions({ ...options });
    this.engine = new Semaphore(this.options.maxConcurrentBatches, () => this.due[0]?.go());
    this.loader = new DataLoader<Item, Feeds>((items) => this.dispatch(items), {
      cache: false,
      maxBatchSize: this.options.maxBatchSize,
      batchScheduleFn: (dispatch) => this.schedule(dispatch),
    });
  }

  /**
   * Run one item (inputs with batch dimension 1); resolves to its outputs (batch dimension 1). While it waits for its
   * engine call, it is answered at once when its client goes away (CANCELLED) or when it has waited timeoutMs
   * (DEADLINE_EXCEEDED), however long the engine stays busy, and is then dropped from its batch; a call that has
   * started is never cut short here (ENGINE_CALL_TIMEOUT_MS bounds it). `request`: the request it is an item of, told
   * when the item arrives and when its engine calls start and how long they take.
   */
  infer(feeds: Feeds, signal?: AbortSignal, request?: RequestTrace): Promise<Feeds> {
    const item: Item = { feeds, enqueuedAt: performance.now(), signal, request };
    if (request) request.queuedAt = Math.min(request.queuedAt, item.enqueuedAt);
    const result = this.loader.load(item);
    const batch = this.open!; // load() has just put the item in the open batch
    if (++batch.count >= this.options.maxBatchSize || this.nobodyComing()) batch.go();
    const timeoutMs = this.options.timeoutMs;
    if (!signal && timeoutMs === 0) return result;
    return new Promise<Feeds>((resolve, reject) => {
      const leave = (e: GatewayError) => {
        if (item.gone || !item.started) return; // answered, or its call has started
        item.gone = e;
        // the item stays in its batch until the engine is free (DataLoader holds it), but its tensors need not: its
        // place in maxQueueSize is given back now, and a new request may take it while the engine is still busy
        item.feeds = null;
        end();
        reject(e);
      };
      const onAbort = () => leave(cancelled());
      const timer =
        timeoutMs > 0 ? setTimeout(() => leave(waitedTooLong(performance.now() - item.enqueuedAt, timeoutMs)), timeoutMs) : undefined;
      const end = () => {
        item.started = undefined;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      item.started = end;
      if (signal) {
        // every item of one request (a raw batch, aliases) listens to the request's signal: not a leak, each listener
        // leaves with its item; past 10 Node would print a warning (a line that is not JSON) on stderr
        setMaxListeners(0, signal);
        signal.addEventListener('abort', onAbort, { once: true });
      }
      if (signal?.aborted) onAbort();
      result.then(
        (v) => (end(), resolve(v)),
        (e: unknown) => (end(), reject(e)),
      );
    });
  }

  /** Something changed outside (a request left before reaching the batcher): send the open batch if nobody else can join. */
  nudge(): void {
    if (this.open && this.nobodyComing()) this.open.go();
  }

  private nobodyComing(): boolean {
    return !(this.hooks.othersComing?.() ?? true) && this.engine.free;
  }

  /** DataLoader opened a new batch: decide when it goes. */
  private schedule(dispatch: () => void): void {
    let gone = false;
    const batch: OpenBatch = { count: 0, due: false, go: () => {} };
    const onDelay = () => {
      if (this.engine.free) batch.go();
      else if (!gone && !batch.due) {
        batch.due = true; // the engine is busy: keep filling until it is free
        this.due.push(batch);
      }
    };
    // maxDelayMs 0: no wait beyond this tick, so the items that arrive together (the images of one request, queued in
    // the same tick) still share the batch. A timer of 0 would wait for the next turn of the event loop (about 1 ms).
    const delay = this.options.maxDelayMs;
    const timer = delay > 0 ? setTimeout(onDelay, delay) : undefined;
    if (delay === 0) afterThisTick(onDelay);
    batch.go = () => {
      if (gone) return;
      gone = true;
      clearTimeout(timer);
      if (batch.due) this.due.splice(this.due.indexOf(batch), 1);
      if (this.open === batch) this.open = null;
      dispatch();
    };
    this.open = batch;
  }

  private async dispatch(items: readonly Item[]): Promise<(Feeds | Error)[]> {
    const results: (Feeds | Error)[] = new Array(items.length);
    const groups = new Map<string, number[]>();
    items.forEach((item, i) => {
      if (item.gone) {
        results[i] = item.gone; // answered already, while the batch waited: no engine call for it
        return;
      }
      const key = shapeKey(item.feeds!);
      const g = groups.get(key);
      if (g) g.push(i);
      else groups.set(key, [i]);
    });
    // Alone: one item, no other engine call dispatched in the process (any model, running or waiting), nobody about
    // to come. Decided here, before anything awaits, so two calls dispatched in one tick cannot both be alone. The
    // engine may then spend more threads on it: a lone request is answered sooner, a busy server keeps its threads.
    const idle = Batcher.inFlight === 0 && !(this.hooks.othersComing?.() ?? true);
    const alone = items.length === 1 && idle;
    // Spread: on an idle engine, a batch of one shape (the images of one request) is cut into one call per engine
    // instance, which compute side by side on their own threads instead of one after another on one instance's: the
    // request is answered sooner (mobilenet, 8 photos on 2 cores: p50 36 against 43-46 ms; 16: 70 against 88), for
    // 0-5% more CPU per image. Each call keeps at least two items: two calls of one cost 10% more CPU for 3% of
    // latency. Under load every instance has batches of its own, and nothing is cut.
    const shapes = [...groups.values()];
    const calls = idle && shapes.length === 1 ? spread(shapes[0], this.hooks.instances ?? 1) : shapes;
    Batcher.inFlight += calls.length;
    await Promise.all(calls.map((group) => this.runGroup(items, group, results, alone).finally(() => Batcher.inFlight--)));
    return results;
  }

  /** One engine call for items of one shape (after their deadlines are checked). */
  private async runGroup(items: readonly Item[], group: number[], results: (Feeds | Error)[], alone: boolean): Promise<void> {
    await this.engine.acquire();
    try {
      const start = performance.now();
      const timeout = this.options.timeoutMs;
      const live: number[] = [];
      for (const i of group) {
        const item = items[i];
        if (item.gone) {
          results[i] = item.gone; // answered already
          continue;
        }
        item.started?.(); // (a client that left has been answered already: its abort listener set `gone`)
        const waited = start - item.enqueuedAt;
        this.hooks.stats?.recordQueue(waited * 1000);
        // its timer may be due and not yet run (a busy event loop)
        if (timeout > 0 && waited > timeout) results[i] = waitedTooLong(waited, timeout);
        else {
          live.push(i);
          if (item.request) item.request.computingAt = Math.min(item.request.computingAt, start);
        }
      }
      if (live.length > 0) await this.runLive(items, live, results, alone);
    } finally {
      this.engine.release();
    }
  }

  private async runLive(items: readonly Item[], live: number[], results: (Feeds | Error)[], alone = false): Promise<void> {
    try {
      const t0 = performance.now();
      const outputs = await this.run(concatBatch(live.map((i) => items[i].feeds!)), alone ? { alone } : undefined);
      const us = (performance.now() - t0) * 1000;
      this.hooks.stats?.recordBatch(live.length, us);
      // each request with items in this call is charged its whole time, once (as Triton charges every request of a
      // batch the batch's compute time); a request whose items took several calls, the sum of them
      for (const request of new Set(live.map((i) => items[i].request))) if (request) request.computeUs += us;
      const split = live.length === 1 ? [outputs] : splitBatch(outputs, live.length);
      live.forEach((idx, k) => (results[idx] = split[k]));
    } catch (e) {
      // a typed error is about the engine, not an item (a call given up after ENGINE_CALL_TIMEOUT_MS): every item gets it
      if (isGatewayError(e)) {
        for (const idx of live) results[idx] = e;
        return;
      }
      if (live.length === 1) {
        // (whether the item's tensors were what the model cannot compute is the service's to say: it knows whose sizes
        // they are)
        results[live[0]] = new GatewayError(ErrorCode.INFERENCE_FAILED, `inference failed: ${errorMessage(e)}`);
        return;
      }
      // One bad item must not fail its neighbours: run them one by one so each gets its own answer (but not for a
      // client that went away meanwhile).
      for (const idx of live) {
        if (items[idx].signal?.aborted) results[idx] = cancelled();
        else await this.runLive(items, [idx], results);
      }
    }
  }
}
