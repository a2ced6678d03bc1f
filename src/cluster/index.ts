// Over 250 lines on purpose: the status feed, the admin channel, the unloaded-models hash and the catch-up share
// one ordering, which reads in one place.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { errorMessage, isGatewayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { ClusterMetrics, type Metrics } from '../metrics.ts';
import type { AdminOp, ModelManager } from '../repository/manager.ts';
import type { ModelStatusEvent } from '../repository/version.ts';
import { RedisBus } from './bus.ts';

/**
 * Many replicas behind a load balancer, one Redis between them (used only when REDIS_URL is set):
 *
 * - **Status events.** Every local `ModelStatusEvent` goes to this replica's `feed` at once and is published on
 *   `<prefix>:status`; events of the other replicas arrive from there. A message carries the id of the process that
 *   sent it and its own come back from Redis, so those are dropped: each event reaches the feed exactly once.
 * - **Admin changes.** The manager emits an `AdminOp` after each successful loadModel, unloadModel, updateModel and
 *   deleteModel; it is published on `<prefix>:admin` and the other replicas apply it (`ModelManager.applyRemote`),
 *   in order for each model. Files are not sent: uploads and model.json edits are written once to the shared
 *   repository. The resulting unloaded state of each model is also kept in the hash `<prefix>:unloaded`, which a
 *   replica applies when it joins and after each reconnection (so a replica restarted during a rolling restart, or cut
 *   off from Redis for a while, comes back in line). If Redis lost that hash (restarted without persistence), the
 *   first replica to reconnect writes its state back; then each publishes the changes it kept (newer) and applies the
 *   hash. Admin changes made here during a catch-up are kept and published at its end, after that write.
 * - **Lost connection.** Logged once, shown in /ready's body and `gateway_cluster_bus_connected`, retried with
 *   backoff by ioredis. Local inference never waits for Redis. While down, status events are dropped (counted) and
 *   admin changes made here are kept (at most `maxPendingAdmin`) and published on reconnect.
 *
 * Plain ioredis pub/sub rather than `@graphql-yoga/redis-event-target`: the admin channel and the unloaded-state hash
 * are no GraphQL concern (every protocol shares them, and this module must not import a protocol), and the status
 * feed is the EventEmitter the GraphQL adapter already reads, so the event target would add a second event model for
 * one channel.
 */
export interface ClusterOptions {
  url: string;
  replica: string;
  manager: ModelManager;
  logger: Logger;
  metrics?: Metrics;
  prefix?: string;
  maxPendingAdmin?: number;
  maxBackoffMs?: number;
}

export interface ClusterStatus {
  replica: string;
  /** Not ready before: a replica that starts applies the cluster's unloaded models before it takes requests. */
  joined: boolean;
  bus: 'redis';
  connected: boolean;
  since: string;
  error: string | null;
}

interface Wire {
  v: 1;
  /**
   * Admin messages: the change's place in the order of changes to the unloaded-models hash (its "#" counter, set by
   * the same script that publishes). Absent from older replicas' messages.
   */
  seq?: number;
  /** The process that sent it (a fresh id per start; the replica name may be shared by mistake). */
  from: string;
  replica: string;
}
type StatusMessage = Wire & { event: Omit<ModelStatusEvent, 'at'> & { at: string } };
type AdminMessage = Wire & { op: AdminOp };

/** Local and remote status events, each once: what modelStatus subscribers read. */
export type StatusFeed = EventEmitter<{ status: [ModelStatusEvent] }>;

/**
 * KEYS[1]: the unloaded-models hash; ARGV: name, state, name, state... Unless the hash is marked: marks it and writes
 * each state where it has none (an entry there was published since Redis came back: newer).
 */
const RESTORE_SCRIPT = `
if redis.call('HEXISTS', KEYS[1], '.') == 1 then return 0 end
redis.call('HSET', KEYS[1], '.', '1')
for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1`;

/**
 * KEYS[1]: the unloaded-models hash, KEYS[2]: the admin channel; ARGV: "set" or "del" or "", name, state, message.
 * Counts the change ("#"), writes the model's resulting state and publishes the message with that count as its `seq`,
 * at once: a replica reading the hash knows which changes it already holds (those up to its "#").
 */
const PUBLISH_SCRIPT = `
local seq = redis.call('HINCRBY', KEYS[1], '#', 1)
if ARGV[1] == 'set' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif ARGV[1] == 'del' then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', KEYS[2], string.sub(ARGV[4], 1, -2) .. ',"seq":' .. seq .. '}')
return seq`;

/** Reads of the cluster state before one is used although changes keep arriving past it. */
const STATE_READS = 5;

export class Cluster {
  readonly feed: StatusFeed = new EventEmitter<{ status: [ModelStatusEvent] }>();
  readonly replica: string;
  private readonly id = randomUUID();
  private readonly bus: RedisBus;
  private readonly manager: ModelManager;
  private readonly logger: Logger;
  private readonly metrics: ClusterMetrics | null;
  private readonly channels: { status: string; admin: string };
  private readonly unloadedKey: string;
  private readonly maxPendingAdmin: number;
  /** Admin changes made here while the bus was down, published on reconnect. */
  private readonly pendingAdmin: AdminOp[] = [];
  /** Remote admin changes run one after another per model, in the order they were published. */
  private readonly chains = new Map<string, Promise<void>>();
  private synced = false;
  /** join() is done: this replica has the cluster's unloaded state (or the bus was down and it could not wait). */
  joined = false;
  private syncing: Promise<void> | null = null;
  /** A catch-up was asked for while one ran (a reconnection during it): run again once it ends. */
  private syncAgain = false;
  private closed = false;
  /**
   * Since the bus (re)connected: the highest `seq` of the admin messages received, per model, and the `seq` of the
   * state last applied (changes up to it are in that state: one arriving late is not applied again over it).
   */
  private readonly seenSeq = new Map<string, number>();
  private appliedSeq = 0;
  /** Models changed here (admin operations) since the cluster state was last read. */
  private readonly changedHere = new Set<string>();
  private readonly onStatus = (e: ModelStatusEvent) => this.localStatus(e);
  private readonly onAdmin = (op: AdminOp) => void this.localAdmin(op);

  constructor({ url, replica, manager, logger, metrics, prefix = 'gateway', maxPendingAdmin = 1000, maxBackoffMs }: ClusterOptions) {
    this.feed.setMaxListeners(0);
    this.replica = replica;
    this.manager = manager;
    this.logger = logger.child({ replica });
    this.metrics = metrics ? new ClusterMetrics(metrics) : null;
    this.metrics?.connected.set(0);
    this.channels = { status: `${prefix}:status`, admin: `${prefix}:admin` };
    this.unloadedKey = `${prefix}:unloaded`;
    this.maxPendingAdmin = maxPendingAdmin;
    this.bus = new RedisBus({ url, logger: this.logger, channels: Object.values(this.channels), name: replica, maxBackoffMs });
    this.bus.on('message', (channel, text) => this.remote(channel, text));
    this.bus.on('connected', () => {
      this.metrics?.connected.set(1);
      // a new connection, perhaps to a Redis that restarted and counts from 0 again
      this.seenSeq.clear();
      this.appliedSeq = 0;
      void this.catchUp();
    });
    this.bus.on('disconnected', () => {
      this.metrics?.connected.set(0);
      if (!this.closed) this.metrics?.disconnects.inc();
    });
    manager.on('status', this.onStatus);
    manager.on('admin', this.onAdmin);
  }

  status(): ClusterStatus {
    return {
      replica: this.replica,
      joined: this.joined,
      bus: 'redis',
      connected: this.bus.connected,
      since: this.bus.since.toISOString(),
      error: this.bus.error,
    };
  }

  /**
   * The first repository scan is done: bring this replica in line with the cluster's unloaded state (now, and after
   * every reconnection from here on).
   */
  async join({ timeoutMs = 10_000 }: { timeoutMs?: number } = {}): Promise<void> {
    this.synced = true;
    if (this.bus.connected) {
      await this.syncing; // a catch-up begun before join() may have skipped the state; run one of our own
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.catchUp(), new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
      clearTimeout(timer);
    }
    this.joined = true;
  }

  private wire(): Wire {
    return { v: 1, from: this.id, replica: this.replica };
  }

  private localStatus(e: ModelStatusEvent): void {
    this.feed.emit('status', e);
    if (!this.bus.connected) {
      this.metrics?.dropped.inc({ kind: 'status' });
      return;
    }
    const message: StatusMessage = { ...this.wire(), event: { ...e, at: e.at.toISOString() } };
    this.bus.publisher.publish(this.channels.status, JSON.stringify(message)).then(
      () => this.metrics?.messages.inc({ direction: 'out', kind: 'status' }),
      () => this.metrics?.dropped.inc({ kind: 'status' }),
    );
  }

  private async localAdmin(op: AdminOp): Promise<void> {
    this.changedHere.add(op.name);
    if (!this.bus.connected || this.pendingAdmin.length > 0 || this.syncing) {
      // behind the changes still waiting, in order; during a catch-up, after it has written the state back (a change
      // published before that could be overwritten by an older state another replica writes back)
      this.keep(op);
      if (this.bus.connected) void this.catchUp();
      return;
    }
    try {
      await this.publishAdmin(op);
    } catch (e) {
      this.logger.warn({ error: errorMessage(e), op: op.op, model: op.name }, 'admin change not published yet; kept for the reconnection');
      this.keep(op);
    }
  }

  private keep(op: AdminOp): void {
    if (this.pendingAdmin.length >= this.maxPendingAdmin) {
      this.pendingAdmin.shift();
      this.metrics?.dropped.inc({ kind: 'admin' });
    }
    this.pendingAdmin.push(op);
  }

  /** The unloaded state of a model on this replica, as kept in the hash (null: nothing unloaded). */
  private unloadedState(name: string): { all: boolean; versions: number[] } | null {
    const m = this.manager.get(name);
    if (!m || (!m.disabled && m.disabledVersions.size === 0)) return null;
    return { all: m.disabled, versions: [...m.disabledVersions].sort((a, b) => a - b) };
  }

  /** The change and the resulting unloaded state in one transaction: a replica that joins later sees the state. */
  private async publishAdmin(op: AdminOp): Promise<void> {
    const state = this.unloadedState(op.name);
    const write = op.op === 'update' ? '' : state ? 'set' : 'del';
    const message = JSON.stringify({ ...this.wire(), op } satisfies AdminMessage);
    const { unloadedKey, channels } = this;
    await this.bus.publisher.eval(PUBLISH_SCRIPT, 2, unloadedKey, channels.admin, write, op.name, JSON.stringify(state), message);
    this.metrics?.messages.inc({ direction: 'out', kind: 'admin' });
  }

  private remote(channel: string, text: string): void {
    let message: (StatusMessage & { op?: undefined }) | (AdminMessage & { event?: undefined });
    try {
      message = JSON.parse(text);
    } catch {
      this.logger.warn({ channel }, 'cluster bus: a message that is not JSON was ignored');
      return;
    }
    if (message?.v !== 1 || message.from === this.id) return; // our own, back from Redis
    if (channel === this.channels.status && message.event) {
      this.metrics?.messages.inc({ direction: 'in', kind: 'status' });
      this.feed.emit('status', { ...message.event, at: new Date(message.event.at) });
    } else if (channel === this.channels.admin && message.op) {
      this.metrics?.messages.inc({ direction: 'in', kind: 'admin' });
      const op = message.op;
      if (typeof message.seq === 'number') {
        if (message.seq <= this.appliedSeq) return; // in the cluster state this replica applied since it was sent
        this.seenSeq.set(op.name, Math.max(message.seq, this.seenSeq.get(op.name) ?? 0));
      }
      this.logger.info({ op: op.op, model: op.name, from: message.replica }, 'applying an admin change of another replica');
      this.serialize(op.name, () => this.manager.applyRemote(op));
    }
  }

  /** Run fn after the previous remote change of the same model; failures are logged (this replica may lack the model). */
  private serialize(name: string, fn: () => Promise<void>): Promise<void> {
    const next = (this.chains.get(name) ?? Promise.resolve())
      .then(fn)
      .catch((e: unknown) => {
        const level = isGatewayError(e) ? 'info' : 'warn';
        this.logger[level]({ model: name, error: errorMessage(e) }, 'an admin change of another replica did not apply here');
      })
      .finally(() => {
        if (this.chains.get(name) === next) this.chains.delete(name);
      });
    this.chains.set(name, next);
    return next;
  }

  /**
   * After a (re)connection: write this replica's state back if Redis lost it, publish what was kept, then apply the
   * cluster's unloaded state. In that order: a change kept here is newer than the state before it, so it must land
   * after any replica (this one included) writes that older state back into an emptied Redis, not before.
   */
  private catchUp(): Promise<void> {
    if (this.syncing) this.syncAgain = true;
    this.syncing ??= (async () => {
      await Promise.resolve(); // so that the finally below runs after this promise is stored
      let failed = false;
      try {
        if (this.synced && this.bus.connected) await this.restoreLostState();
        while (this.pendingAdmin.length && this.bus.connected) {
          await this.publishAdmin(this.pendingAdmin[0]);
          this.pendingAdmin.shift();
        }
        if (this.synced && this.bus.connected) await this.applyUnloadedState();
      } catch (e) {
        failed = true;
        this.logger.warn({ error: errorMessage(e) }, 'cluster catch-up failed; retried on the next reconnection');
      } finally {
        this.syncing = null;
        // a reconnection during this catch-up, or a change made here while it ran
        const again = this.syncAgain || (!failed && this.pendingAdmin.length > 0);
        this.syncAgain = false;
        if (again && this.bus.connected) void this.catchUp();
      }
    })();
    return this.syncing;
  }

  /**
   * "." marks a hash that exists (no model name starts with a dot): without it, Redis lost its data, and the first
   * replica to find it so writes its state back (the others find the mark and adopt that state). Checked and written
   * in one script: a replica that wrote between the check and the write would otherwise have its state, or a change
   * published since, overwritten by an older one.
   */
  private async restoreLostState(): Promise<void> {
    const args: string[] = [];
    for (const m of this.manager.models()) {
      const state = this.unloadedState(m.name);
      if (state) args.push(m.name, JSON.stringify(state));
    }
    const wrote = await this.bus.publisher.eval(RESTORE_SCRIPT, 1, this.unloadedKey, ...args);
    if (wrote === 1) this.logger.info('cluster state was empty (a new or restarted Redis): wrote this replica state back');
  }

  /**
   * Read the cluster's unloaded state and bring this replica in line with it. The read is a snapshot, and changes
   * keep arriving on the other connection: a change received before the snapshot is used but made after it (a `seq`
   * past the hash's "#") would be undone by it, so the state is read again; a change made here meanwhile is newer and
   * is published after this catch-up, so its model is left as it is.
   */
  private async applyUnloadedState(): Promise<void> {
    const redis = this.bus.publisher;
    let hash: Record<string, string> = {};
    let seq = 0;
    let racing: string[] = [];
    for (let read = 1, lost = 0; ; read++) {
      this.changedHere.clear();
      hash = await redis.hgetall(this.unloadedKey);
      if (!('.' in hash)) {
        // lost again since it was written back (Redis restarted in between): an empty hash is no state ("every model
        // loaded" would undo every unload), so it is written back again first
        if (++lost > 3) throw new Error('the cluster state in Redis keeps disappearing');
        await this.restoreLostState();
        continue;
      }
      seq = Number(hash['#'] ?? 0);
      racing = [...this.seenSeq].filter(([, s]) => s > seq).map(([name]) => name);
      if (racing.length === 0 || read >= STATE_READS) break;
    }
    this.appliedSeq = Math.max(this.appliedSeq, seq);
    const wanted = new Map(
      Object.entries(hash)
        .filter(([name]) => name !== '.' && name !== '#')
        .map(([name, json]) => [name, JSON.parse(json) as { all: boolean; versions: number[] }]),
    );
    const work: Promise<void>[] = [];
    for (const m of this.manager.models()) {
      // still changing after every read: that model's newest change, received, is what it gets
      if (this.changedHere.has(m.name) || racing.includes(m.name)) continue;
      const want = wanted.get(m.name);
      const mine = this.unloadedState(m.name);
      if (JSON.stringify(want ?? null) === JSON.stringify(mine)) continue;
      const ops: AdminOp[] = [];
      if (!want) ops.push({ op: 'load', name: m.name });
      else if (want.all) ops.push({ op: 'unload', name: m.name });
      else {
        // some versions unloaded: everything back (loadModel), then those versions out
        ops.push({ op: 'load', name: m.name });
        for (const v of want.versions) if (m.versions.has(v)) ops.push({ op: 'unload', name: m.name, version: v });
      }
      this.logger.info({ model: m.name, wanted: want ?? 'loaded' }, 'bringing a model in line with the cluster');
      for (const op of ops) work.push(this.serialize(m.name, () => this.manager.applyRemote(op)));
    }
    await Promise.all(work);
  }

  /** Stop listening and close the connections (after the manager has unloaded, so those events went out). */
  async close(): Promise<void> {
    this.closed = true;
    this.manager.off('status', this.onStatus);
    this.manager.off('admin', this.onAdmin);
    await Promise.allSettled([...this.chains.values()]);
    await this.bus.close();
    this.metrics?.connected.set(0);
  }
}
