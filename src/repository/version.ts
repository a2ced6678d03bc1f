// Over 250 lines on purpose: the version state machine and what it owns (files snapshot, session, batcher, metrics).
import { ErrorCode, GatewayError, errorMessage, isGatewayError, withoutPaths } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { VersionMetrics } from '../metrics.ts';
import { DTYPES, type LoadOptions, type Session, type TensorInfo } from '../engine/types.ts';
import { Admissions, type Ticket } from '../batching/admission.ts';
import { Batcher, type Feeds } from '../batching/batcher.ts';
import { VersionStats, type RequestTrace } from '../batching/stats.ts';
import type { ModelConfig } from './model-config.ts';
import type { ModelFiles } from './model-files.ts';
import { missingModelFile } from './store.ts';

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
  /** The replica (process, pod) whose version changed; with several replicas, events of all of them reach a subscriber. */
  replica: string;
  /** The version left the list (its folder was removed, the model deleted, or it failed and is not wanted any more). */
  removed?: boolean;
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
  /** The manager adds which replica it is. */
  publish: (e: Omit<ModelStatusEvent, 'replica'>) => void;
  /** Open a session on the engine (it decides whether the session can batch). */
  openSession: (modelPath: string, options: LoadOptions) => Promise<Session>;
  /**
   * Does the configuration fit the loaded session? Runs before AVAILABLE (a warm-up); throws a GatewayError naming the
   * field when not, and returns warnings for settings that look inconsistent but cannot be proven wrong.
   */
  check?: (files: ModelFiles, session: Session) => Promise<string[]> | string[];
  /** This version's Prometheus series. */
  metrics?: VersionMetrics;
  /**
   * Runs `fn` under the model's lock (what loadModel, unloadModel and the watcher hold): a self-restart after an engine
   * failure runs there, so an admin action asked for during it waits for it, then wins.
   */
  exclusive?: (fn: () => Promise<void>) => Promise<void>;
}

/** One admitted request of a version: its single inference, then release(). */
export interface Admission {
  /**
   * The request's one inference; `signal` (the client went away) drops it if it has not reached the engine; `request`:
   * the call of the inference service it is an item of, whose queue and compute times it adds to.
   */
  infer(feeds: Feeds, signal?: AbortSignal, request?: RequestTrace): Promise<Feeds>;
  release(): void;
}

export class ModelVersion {
  state: VersionState = 'START';
  errorCode: string | null = null;
  errorMessage: string | null = null;
  /** The model.json field the error is about, when it is about one (a model.json that does not fit the model). */
  errorField: string | null = null;
  updatedAt = new Date();
  session: Session | null = null;
  stats: VersionStats;
  /** What loading found or changed (e.g. a batch dimension made dynamic). */
  notes: Record<string, unknown> = {};
  /** When the file that was loaded last changed (its ctime: store.changedAt), to retry a failed load when it changes. */
  loadedMtimeMs = 0;
  /** Which bytes the file that was loaded held (store.fileState's id; null: not known), to load a replaced one. */
  loadedFileId: string | null = null;
  /** The model's inputs and outputs as last loaded (kept after unloading, for clients to read). */
  inputs: TensorInfo[] = [];
  outputs: TensorInfo[] = [];
  private batcher: Batcher | null = null;
  private admissions: Admissions | null = null;
  private unloading: Promise<void> | null = null;
  /** Replaced by a newer instance: its last transitions are logged, not published. */
  private quiet = false;
  /**
   * In the log lines of its transitions: an instance loading beside the serving one (a new configuration or file), or
   * the one it replaced going away. For clients the version stays AVAILABLE: their lines are no outage.
   */
  private instanceRole: 'replacement' | 'replaced' | null = null;
  /** Its removal was said (removed()). */
  private gone = false;
  private loadOptions: LoadOptions | null = null;
  /** The load in progress, to give it up (abortLoad). */
  private loadGiveUp: AbortController | null = null;
  /** Engine failures in a row (reset once a reload has served a request). */
  private engineFailures = 0;
  /** The pending self-restart after an engine failure (see engineFailed): its pause, then its turn of the lock. */
  private restartTimer: NodeJS.Timeout | null = null;
  private restartPending = false;
  private restartAttempts = 0;
  static readonly MAX_ENGINE_RESTARTS = 3;

  /**
   * One instance per configuration: a version owns the model.json, labels and mean it was loaded with (`files`), so
   * an edit never mixes old and new settings; a changed configuration loads a new instance.
   */
  /** Its tensors are known: it was loaded once (a graph has at least one output). */
  get described(): boolean {
    return this.outputs.length > 0;
  }

  constructor(
    readonly model: string,
    readonly version: number,
    public modelPath: string,
    readonly files: ModelFiles | null,
    private readonly deps: VersionDeps,
    /** False for a candidate to replace a serving instance: its transitions are only logged until inService(). */
    publish = true,
  ) {
    this.stats = new VersionStats(deps.metrics);
    this.quiet = !publish;
    this.instanceRole = publish ? null : 'replacement';
    if (publish) deps.metrics?.state(this.state);
  }

  /** Requests admitted and not yet answered. */
  get pending(): number {
    return this.admissions?.pending ?? 0;
  }

  /** The configuration this version was loaded with (null when its model.json was invalid). */
  get config(): ModelConfig | null {
    return this.files?.config ?? null;
  }

  /** The batching options in force (null unless AVAILABLE). */
  get batchingOptions() {
    return this.batcher?.options ?? null;
  }

  private transition(to: VersionState, error?: { code: string; message: string; field?: string }): void {
    const from = this.state;
    if (!transitions[from].includes(to)) throw new Error(`bug: ${this.model}/${this.version} cannot go ${from} -> ${to}`);
    this.state = to;
    this.errorCode = error?.code ?? null;
    this.errorMessage = error?.message ?? null;
    this.errorField = error?.field ?? null;
    this.updatedAt = new Date();
    const fields = {
      model: this.model,
      version: this.version,
      from,
      to,
      ...(this.instanceRole ? { instance: this.instanceRole } : {}),
      ...(error ? { errorCode: error.code, error: error.message } : {}),
    };
    if (error) this.deps.logger.warn(fields, 'model version state');
    else this.deps.logger.info(fields, 'model version state');
    if (this.quiet) return;
    this.deps.metrics?.state(to);
    const previous = this.lastPublished ?? from;
    this.lastPublished = null;
    const event = {
      model: this.model,
      version: this.version,
      state: to,
      previousState: previous,
      errorCode: this.errorCode,
      errorMessage: this.errorMessage,
      at: this.updatedAt,
    };
    if (to === 'AVAILABLE' && this.holdAvailable) this.heldAvailable = event;
    else this.deps.publish(event);
  }

  /**
   * The version leaves the list (it is END): said once to subscribers, as its last event. Without it a version that
   * had failed left without a word, and a client that re-reads its list on events (the page) kept showing it.
   */
  removed(): void {
    if (this.quiet || this.gone) return;
    this.gone = true;
    this.deps.logger.info({ model: this.model, version: this.version, state: this.state }, 'model version removed');
    this.deps.publish({
      model: this.model,
      version: this.version,
      state: this.state,
      previousState: this.state,
      errorCode: null,
      errorMessage: null,
      at: new Date(),
      removed: true,
    });
  }

  /**
   * An upload's new version loads from where it is staged and is listed only once its files are moved in: its
   * AVAILABLE is said then (listed()), not before, when a client acting on it was told the version does not exist.
   */
  holdAvailable = false;
  private heldAvailable: Omit<ModelStatusEvent, 'replica'> | null = null;

  /** The version is listed (requests reach it): a held AVAILABLE is said now. */
  listed(): void {
    this.holdAvailable = false;
    const held = this.heldAvailable;
    this.heldAvailable = null;
    if (held) this.deps.publish(held);
  }

  /** START/END -> LOADING -> AVAILABLE, or -> END with an error code. Never throws. */
  async load(options: LoadOptions = {}, configError?: GatewayError): Promise<void> {
    if (this.state === 'AVAILABLE' || this.state === 'LOADING' || this.state === 'UNLOADING') return;
    this.transition('LOADING');
    const files = this.files;
    if (configError || !files) {
      const e = configError ?? new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, 'no valid model.json');
      return this.transition('END', { code: e.code, message: e.message, field: fieldOf(e) });
    }
    const missing = await missingModelFile(this.model, this.version, this.modelPath);
    if (missing) return this.transition('END', { code: ErrorCode.MODEL_LOAD_FAILED, message: missing });
    const batching = files.config.batching;
    // a load that takes longer than ENGINE_LOAD_TIMEOUT_MS is given up, whatever the engine does: the engine is told
    // to stop (its workers end), and a session that still arrives later is closed
    const giveUp = new AbortController();
    this.loadGiveUp = giveUp;
    // given up before this point (while the file was looked for): it starts no engine
    if (this.givenUp !== null) giveUp.abort(new GatewayError(ErrorCode.MODEL_LOAD_FAILED, this.givenUp));
    const limit = options.timeoutMs ?? 0;
    const timer =
      limit > 0
        ? setTimeout(
            () =>
              giveUp.abort(new GatewayError(ErrorCode.MODEL_LOAD_FAILED, `loading took longer than ${limit} ms (ENGINE_LOAD_TIMEOUT_MS)`)),
            limit,
          )
        : null;
    const gaveUp = new Promise<never>((_, reject) =>
      giveUp.signal.addEventListener('abort', () => reject(giveUp.signal.reason), { once: true }),
    );
    gaveUp.catch(() => undefined);
    const inTime = <T>(p: Promise<T>): Promise<T> => Promise.race([p, gaveUp]);
    const why = (e: unknown) => (giveUp.signal.aborted ? giveUp.signal.reason : e);
    try {
      const instances = files.config.instances ?? options.instances;
      const opening = this.deps.openSession(this.modelPath, { ...options, instances, signal: giveUp.signal });
      let session: Session;
      try {
        session = await inTime(opening);
      } catch (e) {
        void opening.then((late) => late.close()).catch(() => undefined);
        return this.loadFailed(why(e));
      }
      // a tensor of a type no protocol here carries (float64, string...) would fail every request: said now, at load
      const uncarried = [...session.inputs.map((t) => ['input', t] as const), ...session.outputs.map((t) => ['output', t] as const)].find(
        ([, t]) => !(DTYPES as readonly string[]).includes(t.dtype),
      );
      if (uncarried) {
        await session.close().catch(() => undefined);
        const [kind, t] = uncarried;
        return this.loadFailed(
          new GatewayError(
            ErrorCode.MODEL_LOAD_FAILED,
            `its ${kind} ${t.name} has type ${t.dtype}, which the gateway does not carry (${DTYPES.join(', ')}): export the model with one of those`,
          ),
        );
      }
      let warnings: string[] = [];
      try {
        warnings = (await inTime(Promise.resolve(this.deps.check?.(files, session)))) ?? [];
      } catch (e) {
        await session.close().catch(() => undefined);
        if (giveUp.signal.aborted) return this.loadFailed(why(e));
        // the engine did not finish the warm-up run within ENGINE_CALL_TIMEOUT_MS (a busy machine, a large model, the
        // setting given in seconds): the server's setting or the machine, not model.json
        if (isGatewayError(e) && e.code === ErrorCode.DEADLINE_EXCEEDED)
          return this.loadFailed(
            new GatewayError(
              ErrorCode.MODEL_LOAD_FAILED,
              `the warm-up run did not finish in time: ${e.message.replace(/; the model's engine is restarted$/, '')}; raise ENGINE_CALL_TIMEOUT_MS, or loadModel to try again`,
            ),
          );
        const code = isGatewayError(e) && e.code !== ErrorCode.INFERENCE_FAILED ? e.code : ErrorCode.INVALID_MODEL_CONFIG;
        return this.transition('END', {
          code,
          message: `${this.model}/model.json does not fit the model: ${errorMessage(e)}`,
          field: fieldOf(e),
        });
      }
      for (const w of warnings)
        this.deps.logger.warn({ model: this.model, version: this.version, warning: w }, 'model configuration looks inconsistent');
      try {
        await inTime(Promise.resolve(session.loaded?.()));
      } catch (e) {
        // the engine could not finish (its thread died, or the load took too long): a version must not serve a
        // session that cannot run
        await session.close().catch(() => undefined);
        return this.loadFailed(why(e));
      }
      this.serve(session, warnings, options, batching);
    } finally {
      if (timer) clearTimeout(timer);
      this.loadGiveUp = null;
    }
  }

  /** Give up a load in progress (the server shuts down): it ends as a load past ENGINE_LOAD_TIMEOUT_MS does. */
  abortLoad(reason: string): void {
    this.givenUp = reason;
    this.loadGiveUp?.abort(new GatewayError(ErrorCode.MODEL_LOAD_FAILED, reason));
  }

  /** Why its loads are given up (abortLoad), also one not started yet, or still looking for its file. */
  private givenUp: string | null = null;

  /** The loaded session goes into service: its batcher and admissions, and AVAILABLE. */
  private serve(session: Session, warnings: string[], options: LoadOptions, batching: ModelConfig['batching']): void {
    this.loadOptions = options;
    session.onFailure?.((e) => void this.engineFailed(e));
    this.session = session;
    this.notes = warnings.length ? { ...session.notes, warnings } : session.notes;
    this.inputs = session.inputs;
    this.outputs = session.outputs;
    this.stats = new VersionStats(this.deps.metrics);
    const instances = session.instances ?? 1;
    const batcher = new Batcher(
      (feeds, runOptions) =>
        session.run(feeds, runOptions).catch((e: unknown) => {
          // clients get the engine's words without its internals (engineWords); the log keeps all of it
          const cause = (e as { cause?: unknown })?.cause;
          this.deps.logger.warn(
            { model: this.model, version: this.version, error: errorMessage(e), ...(typeof cause === 'string' ? { engine: cause } : {}) },
            'engine call failed',
          );
          throw e;
        }),
      {
        maxBatchSize: session.batchable ? batching.maxBatchSize : 1,
        maxDelayMs: session.batchable ? batching.maxDelayMs : 0,
        // per engine instance: each has one batch running and the next waiting
        maxConcurrentBatches: batching.maxConcurrentBatches * instances,
        timeoutMs: batching.timeoutMs,
      },
      { stats: this.stats, othersComing: () => (this.admissions?.preparingCount ?? 0) > 0, instances },
    );
    this.admissions = new Admissions(batching.maxQueueSize, (a, reason) => {
      this.deps.metrics?.pending(a.pending);
      // a request that failed before reaching the batcher may have been the one an open batch waited for
      if (reason === 'released-early') batcher.nudge();
    });
    this.batcher = batcher;
    this.transition('AVAILABLE');
  }

  /** The engine could not load this version: END with its code; the client sees no server paths, the log does. */
  private loadFailed(e: unknown): void {
    this.deps.logger.warn({ model: this.model, version: this.version, file: this.modelPath, error: errorMessage(e) }, 'model load failed');
    this.transition('END', {
      code: isGatewayError(e) ? e.code : ErrorCode.MODEL_LOAD_FAILED,
      message: `cannot load version ${this.version} of ${this.model}: ${withoutPaths(errorMessage(e))}`,
    });
  }

  /**
   * The engine under this version died (its thread crashed): requests in flight fail with INFERENCE_FAILED, the version
   * ends with ENGINE_FAILED and reloads itself, with a growing pause, up to MAX_ENGINE_RESTARTS times in a row.
   */
  private async engineFailed(error: Error): Promise<void> {
    if (this.state !== 'AVAILABLE') return;
    this.deps.logger.error({ model: this.model, version: this.version, error: error.message }, 'engine failed');
    // the restart is claimed before the shutdown: an unload, a delete or a replacement asked for while requests in
    // flight drain calls it off (cancelRestart), instead of being undone by it afterwards
    const options = this.loadOptions;
    if (this.stats.items > 0) this.engineFailures = 0; // the reload served before it failed: start over
    const restart = ++this.engineFailures <= ModelVersion.MAX_ENGINE_RESTARTS && options !== null;
    const attempt = ++this.restartAttempts;
    this.restartPending = restart;
    await this.unload({ code: 'ENGINE_FAILED', message: `the engine stopped: ${error.message}` }, { keepRestart: true });
    if (!restart || !this.restartPending) return;
    const wait = 250 * 2 ** (this.engineFailures - 1);
    const exclusive = this.deps.exclusive ?? ((fn) => fn());
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      void exclusive(async () => {
        // an unload, a delete or a replacement that came first called it off (cancelRestart) while it waited its turn
        if (!this.restartPending) return;
        this.restartPending = false;
        if (this.state === 'END' && this.errorCode === 'ENGINE_FAILED') {
          // it reads its file as it is now: the identity recorded for the old load is taken again at the next scan
          // (else a file changed meanwhile would be loaded a second time beside it)
          this.loadedFileId = null;
          await this.load(options!);
        }
      }).finally(() => {
        // not run (the model's lock said it is no longer wanted): nothing is pending any more
        if (this.restartAttempts === attempt) this.restartPending = false;
      });
    }, wait);
    this.restartTimer.unref();
  }

  /** Ended by an engine failure and about to load itself again: nobody else should load this version meanwhile. */
  get restarting(): boolean {
    return this.restartPending;
  }

  /**
   * A new instance of a version whose last instance ended (loaded again, retried): its first event goes on from the
   * state clients last saw (END -> LOADING), not from this instance's START, which was never published.
   */
  continues(previous: ModelVersion): void {
    this.lastPublished = previous.state;
  }

  private lastPublished: VersionState | null = null;

  /**
   * A candidate (made with `publish` false) takes over the version it was loaded to replace: from now on its
   * transitions are published, and the state metric is its own. Until then they were only logged, since for clients
   * the version stayed AVAILABLE whether or not the candidate took over.
   */
  inService(): void {
    this.quiet = false;
    this.instanceRole = null;
    this.deps.metrics?.state(this.state);
  }

  /** A replacement with this configuration (its signature) failed to load: not tried again until it changes. */
  refusedSignature: string | null = null;
  /** A replacement of its model file that did not load (its fileState id: tried once per change, see refusedSignature). */
  refusedFileId: string | null = null;

  /** Call off a pending self-restart: the version was unloaded, dropped or replaced in the meantime. */
  cancelRestart(): void {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    this.restartPending = false;
  }

  /**
   * AVAILABLE -> UNLOADING (new requests refused) -> wait for requests in flight -> END (with an error, if given).
   * An instance `replaced` by a newer one of the same version (a new configuration) ends quietly: for clients the
   * version stays AVAILABLE, so no event is published and the metrics keep the new instance's state.
   */
  unload(
    error?: { code: string; message: string },
    { replaced = false, keepRestart = false }: { replaced?: boolean; keepRestart?: boolean } = {},
  ): Promise<void> {
    if (!keepRestart) this.cancelRestart();
    if (this.unloading) return this.unloading;
    if (this.state !== 'AVAILABLE') return Promise.resolve();
    if (replaced) {
      this.quiet = true;
      // (a candidate that never took over stays a replacement: it is the one let go)
      this.instanceRole ??= 'replaced';
    } else this.listed(); // (an AVAILABLE held, said before its UNLOADING)
    this.transition('UNLOADING');
    this.unloading = (async () => {
      await this.admissions?.drain();
      try {
        await this.session?.close();
      } catch (e) {
        this.deps.logger.warn({ model: this.model, version: this.version, error: errorMessage(e) }, 'session close failed');
      }
      this.session = null;
      this.batcher = null;
      this.admissions = null;
      this.transition('END', error);
      this.unloading = null;
    })();
    return this.unloading;
  }

  /**
   * The most requests one caller may have admitted at once: the client's share when it names one (see Admissions). Not
   * serving: what its configuration will admit once it is (Infinity without one).
   */
  admissible(client?: string): number {
    const a = this.admissions;
    const size = a?.maxQueueSize ?? this.files?.config.batching.maxQueueSize;
    if (size === undefined) return Infinity;
    return client === undefined ? size : (a?.clientShare ?? Math.ceil(size / 2));
  }

  /**
   * Admit a request of `client` (if known) before its preprocessing: MODEL_NOT_READY unless AVAILABLE, QUEUE_FULL at
   * the bound or at the client's share of it. Its one inference goes through the admission; unloading waits until every
   * admission is released.
   */
  admit(client?: string): Admission {
    const batcher = this.batcher;
    if (this.state !== 'AVAILABLE' || !batcher || !this.admissions) {
      throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${this.model} version ${this.version} is ${this.state}`, {
        state: this.state,
      });
    }
    const ticket: Ticket = this.admissions.admit(client);
    return {
      infer: (feeds, signal, request) => {
        ticket.markQueued();
        return batcher.infer(feeds, signal, request);
      },
      release: () => ticket.release(),
    };
  }
}

/** The model.json field a configuration error names (details.field), if any. */
function fieldOf(e: unknown): string | undefined {
  const field = isGatewayError(e) ? e.details?.field : undefined;
  return typeof field === 'string' ? field : undefined;
}
