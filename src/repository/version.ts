import { ErrorCode, GatewayError, errorMessage, isGatewayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Session, TensorInfo } from '../engine/types.ts';
import { Batcher, type Admission, type Feeds } from '../batching/batcher.ts';
import { VersionStats } from '../batching/stats.ts';
import type { BatchingConfig } from './model-config.ts';

/** The lifecycle of one model version, as in OpenVINO Model Server and TensorFlow Serving. */
export type VersionState = 'START' | 'LOADING' | 'AVAILABLE' | 'UNLOADING' | 'END';
export const VERSION_STATES: readonly VersionState[] = ['START', 'LOADING', 'AVAILABLE', 'UNLOADING', 'END'];

export interface ModelStatusEvent {
  model: string;
  version: number;
  state: VersionState;
  previousState: VersionState | null;
  errorCode: string | null;
  errorMessage: string | null;
  at: Date;
}

/** Allowed transitions; anything else is a bug and throws. */
const transitions: Record<VersionState, readonly VersionState[]> = {
  START: ['LOADING', 'END'],
  LOADING: ['AVAILABLE', 'END'],
  AVAILABLE: ['UNLOADING'],
  UNLOADING: ['END'],
  END: ['LOADING'],
};

export interface VersionDeps {
  logger: Logger;
  publish: (e: ModelStatusEvent) => void;
  /** Load a session; the repository may rewrite the graph first (dynamic batch). */
  openSession: (modelPath: string) => Promise<{ session: Session; notes: Record<string, unknown> }>;
  /** Throws (a GatewayError names the field) when the model's configuration does not fit the loaded session. */
  check?: (session: Session) => void;
}

export class ModelVersion {
  state: VersionState = 'START';
  errorCode: string | null = null;
  errorMessage: string | null = null;
  updatedAt = new Date();
  session: Session | null = null;
  batcher: Batcher | null = null;
  stats = new VersionStats();
  /** What loading found or changed (e.g. a batch dimension made dynamic). */
  notes: Record<string, unknown> = {};
  /** mtime of the file that was loaded, to retry a failed load when the file changes. */
  loadedMtimeMs = 0;
  /** The model's inputs and outputs as last loaded (kept after unloading, for clients to read). */
  inputs: TensorInfo[] = [];
  outputs: TensorInfo[] = [];
  private unloading: Promise<void> | null = null;
  private batching: BatchingConfig | null = null;
  /** Engine failures in a row (reset once a reload has served a request). */
  private engineFailures = 0;
  static readonly MAX_ENGINE_RESTARTS = 3;

  constructor(readonly model: string, readonly version: number, public modelPath: string, private readonly deps: VersionDeps) {}

  private transition(to: VersionState, error?: { code: string; message: string }): void {
    const from = this.state;
    if (!transitions[from].includes(to)) throw new Error(`bug: ${this.model}/${this.version} cannot go ${from} -> ${to}`);
    this.state = to;
    this.errorCode = error?.code ?? null;
    this.errorMessage = error?.message ?? null;
    this.updatedAt = new Date();
    const event: ModelStatusEvent = {
      model: this.model, version: this.version, state: to, previousState: from,
      errorCode: this.errorCode, errorMessage: this.errorMessage, at: this.updatedAt,
    };
    const log = error ? this.deps.logger.warn : this.deps.logger.info;
    log('model version state', { model: this.model, version: this.version, from, to, ...(error ? { errorCode: error.code, error: error.message } : {}) });
    this.deps.publish(event);
  }

  /** START/END -> LOADING -> AVAILABLE, or -> END with an error code. Never throws. */
  async load(batching: BatchingConfig, configError?: GatewayError): Promise<void> {
    if (this.state === 'AVAILABLE' || this.state === 'LOADING' || this.state === 'UNLOADING') return;
    this.transition('LOADING');
    if (configError) {
      this.transition('END', { code: configError.code, message: configError.message });
      return;
    }
    try {
      const { session, notes } = await this.deps.openSession(this.modelPath);
      try {
        this.deps.check?.(session);
      } catch (e) {
        await session.close().catch(() => undefined);
        const code = isGatewayError(e) ? e.code : ErrorCode.INVALID_MODEL_CONFIG;
        this.transition('END', { code, message: errorMessage(e) });
        return;
      }
      this.batching = batching;
      session.onFailure?.((e) => void this.engineFailed(e));
      this.session = session;
      this.notes = notes;
      this.inputs = session.inputs;
      this.outputs = session.outputs;
      const batchable = notes.batchable === true;
      this.stats = new VersionStats();
      this.batcher = new Batcher((feeds: Feeds) => session.run(feeds), {
        maxBatchSize: batchable ? batching.maxBatchSize : 1,
        maxDelayMs: batchable ? batching.maxDelayMs : 0,
        maxQueueSize: batching.maxQueueSize,
        maxConcurrentBatches: batching.maxConcurrentBatches,
        timeoutMs: batching.timeoutMs,
      }, this.stats);
      this.transition('AVAILABLE');
    } catch (e) {
      this.session = null;
      this.transition('END', { code: ErrorCode.MODEL_LOAD_FAILED, message: `cannot load ${this.modelPath}: ${errorMessage(e)}` });
    }
  }

  /**
   * The engine under this version died (its thread crashed): requests in flight fail with INFERENCE_FAILED, the version
   * ends with ENGINE_FAILED and reloads itself, with a growing pause, up to MAX_ENGINE_RESTARTS times in a row.
   */
  private async engineFailed(error: Error): Promise<void> {
    if (this.state !== 'AVAILABLE') return;
    this.deps.logger.error('engine failed', { model: this.model, version: this.version, error: error.message });
    await this.unload({ code: 'ENGINE_FAILED', message: `the engine stopped: ${error.message}` });
    if (++this.engineFailures > ModelVersion.MAX_ENGINE_RESTARTS || !this.batching) return;
    const batching = this.batching;
    const wait = 250 * 2 ** (this.engineFailures - 1);
    setTimeout(() => {
      if (this.state === 'END' && this.errorCode === 'ENGINE_FAILED') void this.load(batching);
    }, wait).unref();
  }

  /** AVAILABLE -> UNLOADING (new requests refused) -> wait for requests in flight -> END (with an error, if given). */
  unload(error?: { code: string; message: string }): Promise<void> {
    if (this.unloading) return this.unloading;
    if (this.state !== 'AVAILABLE') return Promise.resolve();
    this.transition('UNLOADING');
    this.unloading = (async () => {
      await this.batcher?.drain();
      try {
        await this.session?.close();
      } catch (e) {
        this.deps.logger.warn('session close failed', { model: this.model, version: this.version, error: errorMessage(e) });
      }
      this.session = null;
      this.batcher = null;
      this.transition('END', error);
      this.unloading = null;
    })();
    return this.unloading;
  }

  /**
   * Admit a request before its preprocessing: MODEL_NOT_READY unless AVAILABLE, QUEUE_FULL at the bound.
   * Its one inference goes through the admission; unloading waits until every admission is released.
   */
  admit(): Admission {
    if (this.state !== 'AVAILABLE' || !this.batcher) {
      throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${this.model} version ${this.version} is ${this.state}`, { state: this.state });
    }
    if (this.engineFailures > 0 && this.stats.requests > 0) this.engineFailures = 0; // the reload served: start over
    return this.batcher.admit();
  }
}
