import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Prometheus metrics with prom-client, named in the style of Triton's nv_inference_* and OVMS's ovms_* metrics, plus
 * the default process metrics (CPU, memory, event loop lag, GC). Series are labelled by model and version and are
 * removed when their version is unloaded, so a repository that churns versions does not grow /metrics forever.
 */
export const VERSION_STATE_NAMES = ['START', 'LOADING', 'AVAILABLE', 'UNLOADING', 'END'] as const;
const SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export class Metrics {
  readonly registry = new Registry();
  readonly success = new Counter({
    name: 'gateway_inference_request_success_total',
    help: 'Items answered: an image, or one item of a raw batch (a request of several counts each).',
    labelNames: ['model', 'version'],
    registers: [this.registry],
  });
  readonly failure = new Counter({
    name: 'gateway_inference_request_failure_total',
    help: "Items that failed, or were refused at the version's queue (QUEUE_FULL, LIMIT_EXCEEDED), by error code.",
    labelNames: ['model', 'version', 'code'],
    registers: [this.registry],
  });
  readonly execCount = new Counter({
    name: 'gateway_inference_exec_count_total',
    help: 'Engine calls (batches).',
    labelNames: ['model', 'version'],
    registers: [this.registry],
  });
  readonly batchSize = new Counter({
    name: 'gateway_inference_batch_size_total',
    help: 'Engine calls by batch size.',
    labelNames: ['model', 'version', 'batch_size'],
    registers: [this.registry],
  });
  readonly pending = new Gauge({
    name: 'gateway_inference_pending_requests',
    help: 'Requests admitted and not yet answered.',
    labelNames: ['model', 'version'],
    registers: [this.registry],
  });
  /** Set by the server once the inference service exists: its decoding threads, read at each scrape. */
  decoding: () => { running: number; waiting: number } = () => ({ running: 0, waiting: 0 });
  readonly decodesRunning: Gauge = new Gauge({
    name: 'gateway_image_decodes_running',
    help: 'Images being decoded and resized now (at most DECODE_THREADS).',
    registers: [this.registry],
    collect: (): void => this.decodesRunning.set(this.decoding().running),
  });
  readonly decodesWaiting: Gauge = new Gauge({
    name: 'gateway_image_decodes_waiting',
    help: 'Images waiting for a decoding thread.',
    registers: [this.registry],
    collect: (): void => this.decodesWaiting.set(this.decoding().waiting),
  });
  /** Set by the server: the request bytes it holds (MAX_BYTES_IN_FLIGHT's count), read at each scrape. */
  bytesInFlight: () => number = () => 0;
  readonly requestBytes: Gauge = new Gauge({
    name: 'gateway_request_bytes_in_flight',
    help: 'Bytes of requests held now (HTTP bodies until answered, gRPC messages until their call ends, WebSocket operations until they end, images read from IMAGE_ROOTS until their request is answered), against MAX_BYTES_IN_FLIGHT.',
    registers: [this.registry],
    collect: (): void => this.requestBytes.set(this.bytesInFlight()),
  });
  /** Set by the server: its open subscriptions and WebSocket connections, read at each scrape. */
  streams: () => { subscriptions: number; webSockets: number; webSocketUnsentBytes: number } = () => ({
    subscriptions: 0,
    webSockets: 0,
    webSocketUnsentBytes: 0,
  });
  readonly subscriptions: Gauge = new Gauge({
    name: 'gateway_subscriptions_open',
    help: 'Subscriptions open now (SSE and WebSocket), against MAX_SUBSCRIPTIONS_PER_CLIENT per client.',
    registers: [this.registry],
    collect: (): void => this.subscriptions.set(this.streams().subscriptions),
  });
  readonly webSockets: Gauge = new Gauge({
    name: 'gateway_websocket_connections_open',
    help: 'WebSocket connections open now, against MAX_WS_CONNECTIONS_PER_CLIENT per client.',
    registers: [this.registry],
    collect: (): void => this.webSockets.set(this.streams().webSockets),
  });
  readonly webSocketUnsent: Gauge = new Gauge({
    name: 'gateway_websocket_unsent_bytes',
    help: 'Bytes of answers held for WebSocket clients that the network has not taken yet (clients reading slowly, or not at all): past MAX_WS_MESSAGE_BYTES held for a connection, it is not read, and its queries and mutations wait.',
    registers: [this.registry],
    collect: (): void => this.webSocketUnsent.set(this.streams().webSocketUnsentBytes),
  });
  readonly state = new Gauge({
    name: 'gateway_model_version_state',
    help: 'Model version state (1 for the current one).',
    labelNames: ['model', 'version', 'state'],
    registers: [this.registry],
  });
  readonly queueTime = new Histogram({
    name: 'gateway_inference_queue_duration_seconds',
    help: 'Time from the batching queue to the engine call.',
    labelNames: ['model', 'version'],
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });
  readonly computeTime = new Histogram({
    name: 'gateway_inference_compute_duration_seconds',
    help: 'Engine call time per batch.',
    labelNames: ['model', 'version'],
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });
  readonly requestTime = new Histogram({
    name: 'gateway_inference_request_duration_seconds',
    help: 'Whole request time (preprocessing, queue, engine, postprocessing).',
    labelNames: ['model', 'version'],
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });

  constructor({ processMetrics = true }: { processMetrics?: boolean } = {}) {
    if (processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** The series of one model version; remove() drops exactly those it wrote. */
  forVersion(model: string, version: number): VersionMetrics {
    return new VersionMetrics(this, { model, version: String(version) });
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** Metrics of one model version. Times in seconds. */
export class VersionMetrics {
  private readonly codes = new Set<string>();
  private readonly sizes = new Set<string>();
  constructor(
    private readonly m: Metrics,
    private readonly labels: { model: string; version: string },
  ) {}

  success(requestSeconds: number): void {
    this.m.success.inc(this.labels);
    this.m.requestTime.observe(this.labels, requestSeconds);
  }
  /** `items` failed with `code` (the counters count items: a refused batch of n is n). */
  failure(code: string, items = 1): void {
    this.codes.add(code);
    this.m.failure.inc({ ...this.labels, code }, items);
  }
  batch(size: number, computeSeconds: number): void {
    const batch_size = String(size);
    this.sizes.add(batch_size);
    this.m.execCount.inc(this.labels);
    this.m.batchSize.inc({ ...this.labels, batch_size });
    this.m.computeTime.observe(this.labels, computeSeconds);
  }
  queued(seconds: number): void {
    this.m.queueTime.observe(this.labels, seconds);
  }
  pending(n: number): void {
    this.m.pending.set(this.labels, n);
  }
  state(state: string): void {
    for (const s of VERSION_STATE_NAMES) this.m.state.set({ ...this.labels, state: s }, s === state ? 1 : 0);
  }
  remove(): void {
    const l = this.labels;
    for (const metric of [this.m.success, this.m.execCount, this.m.pending, this.m.queueTime, this.m.computeTime, this.m.requestTime])
      metric.remove(l);
    for (const code of this.codes) this.m.failure.remove({ ...l, code });
    for (const batch_size of this.sizes) this.m.batchSize.remove({ ...l, batch_size });
    for (const state of VERSION_STATE_NAMES) this.m.state.remove({ ...l, state });
  }
}

/** Metrics of the Redis bus between replicas (src/cluster); registered only when REDIS_URL is set. */
export class ClusterMetrics {
  readonly connected: Gauge;
  readonly messages: Counter;
  readonly dropped: Counter;
  readonly disconnects: Counter;
  constructor(m: Metrics) {
    const registers = [m.registry];
    this.connected = new Gauge({
      name: 'gateway_cluster_bus_connected',
      help: '1 while this replica is connected to the Redis bus, else 0 (local inference goes on either way).',
      registers,
    });
    this.messages = new Counter({
      name: 'gateway_cluster_messages_total',
      help: 'Bus messages, by direction (in, out) and kind (status, admin).',
      labelNames: ['direction', 'kind'],
      registers,
    });
    this.dropped = new Counter({
      name: 'gateway_cluster_messages_dropped_total',
      help: 'Bus messages dropped, by kind: status events past those kept while the bus is down, or received and not a model status event; status events and admin changes still kept when the process ends with the bus down.',
      labelNames: ['kind'],
      registers,
    });
    this.disconnects = new Counter({
      name: 'gateway_cluster_bus_disconnects_total',
      help: 'Times the connection to the Redis bus was lost.',
      registers,
    });
  }
}
