// Over 250 lines on purpose: the status feed, the admin channel, the unloaded-models hash and the catch-up share
// one ordering, which reads in one place.
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { errorMessage, isGatewayError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { ClusterMetrics, type Metrics } from '../metrics.ts';
import { unloadedOf, type AdminOp, type ModelManager, type UnloadedVersions } from '../repository/manager.ts';
import { VERSION_STATES, type ModelStatusEvent, type VersionState } from '../repository/version.ts';
import { z } from 'zod';
import { RedisBus, backoff } from './bus.ts';

/**
 * Many replicas behind a load balancer, one Redis between them (used only when REDIS_URL is set):
 *
 * - **Status events.** Every local `ModelStatusEvent` goes to this replica's `feed` at once and is added to the
 *   stream `<prefix>:events` (its last `STATUS_HISTORY` entries kept); events of the other replicas are read from
 *   there, from the last one read, so that none is lost while a connection is down or comes back later than another
 *   replica's (a channel keeps no history). A message carries the id of the process that sent it and its own come back
 *   from Redis, so those are dropped: each event reaches the feed exactly once. Events made here while the bus is down
 *   are kept (at most `maxPendingStatus`) and added, in order, once it is back. Events on the channel
 *   `<prefix>:status`, where replicas of an older version publish them, are handed on too (a rolling upgrade).
 * - **Admin changes.** The manager emits an `AdminOp` after each successful loadModel, unloadModel, updateModel and
 *   deleteModel; it is published on `<prefix>:admin` and the other replicas apply it (`ModelManager.applyRemote`),
 *   in order for each model. Files are not sent: uploads and model.json edits are written once to the shared
 *   repository. A load or unload also carries the model's resulting unloaded state (the change applied in Redis to
 *   the state held there, so that changes of different versions made at once all stay), which the others adopt after
 *   applying it (a change one of them missed is made up for with the next). That state of each model is also kept in
 *   the hash `<prefix>:unloaded`, which a replica applies when it joins and after each reconnection (so a replica
 *   restarted during a rolling restart, or cut off from Redis for a while, comes back in line); changes are counted
 *   there, so that a read of the hash older than a change already received does not undo it. If Redis lost that hash (restarted without persistence), the
 *   first replica to reconnect writes its state back; then each publishes the changes it kept (newer) and applies the
 *   hash. Admin changes made here during a catch-up are kept and published at its end, after that write (one that a
 *   change of another replica received meanwhile supersedes is dropped: see supersedes). A model
 *   loaded by path is kept in the hash `<prefix>:paths` (see PATH_RECORD), written by the same scripts, which a
 *   replica that joins or catches up loads from before it applies the unloaded state.
 * - **Lost connection.** Logged once, shown in /ready's body and `gateway_cluster_bus_connected`, retried with
 *   backoff by ioredis. Local inference never waits for Redis. While down, status events and admin changes made here
 *   are kept (at most `maxPendingStatus` and `maxPendingAdmin`) and published on reconnect. A change (or a catch-up)
 *   Redis refuses while connected (out of memory, READONLY during a failover, a timeout) is kept too, and tried again
 *   with the same backoff: no reconnection may come to publish it.
 *
 * Plain ioredis rather than `@graphql-yoga/redis-event-target`: the admin channel and the unloaded-state hash are no
 * GraphQL concern (every protocol shares them, and this module must not import a protocol), the status feed is the
 * EventEmitter the GraphQL adapter already reads, and the event target's pub/sub channel keeps no history for a
 * replica that comes back.
 */
export interface ClusterOptions {
  url: string;
  replica: string;
  manager: ModelManager;
  logger: Logger;
  metrics?: Metrics;
  prefix?: string;
  maxPendingAdmin?: number;
  /** Status events made here kept while they cannot be published (the oldest dropped and counted beyond). */
  maxPendingStatus?: number;
  maxBackoffMs?: number;
  /** How long a change published here is awaited back from Redis before it is taken for lost (see settle). */
  echoTimeoutMs?: number;
  /**
   * How often a connected replica checks that the unloaded-models hash is still there (its "." marker): Redis may lose
   * it with no connection lost (FLUSHALL, FLUSHDB, an eviction under maxmemory, a DEL), and no catch-up would then
   * write it back before a replica that starts reads it as "every model loaded".
   */
  stateCheckMs?: number;
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
   * Admin messages that wrote the unloaded-models hash: the change's place in the order of its changes (the "#"
   * counter) and the hash's epoch (its "." marker, new each time the hash is written back after Redis lost it). Set
   * by the script that writes and publishes; absent from older replicas' messages.
   */
  seq?: number;
  epoch?: string;
  /** The process that sent it (a fresh id per start; the replica name may be shared by mistake). */
  from: string;
  replica: string;
}
/**
 * `k`: the event's number among those this process added, so that one added twice (ioredis sends a write again when
 * the connection was lost before its reply, which Redis may have applied) reaches subscribers once.
 */
type StatusMessage = Wire & { event: Omit<ModelStatusEvent, 'at'> & { at: string }; k?: number };

/** Senders whose last status event number is remembered (the oldest forgotten past it: a process started again is new). */
const MAX_STATUS_SENDERS = 1000;
/**
 * `state` (load and unload): the model's unloaded state in the cluster after the change, the one held in the hash with
 * the change applied (see PUBLISH_SCRIPT), which receivers adopt. `n`: the change's number among those this process
 * published, so that the sender knows which of its changes came back (see unechoed).
 */
type AdminMessage = Wire & {
  op: AdminOp;
  state?: UnloadedState;
  n?: number;
  /**
   * Sent by a replica that keeps the models loaded by path in Redis (PATH_RECORD): its delete removed the record. One of
   * an earlier version removes none, so the first replica to receive its delete does, unless a change was counted
   * since (see FORGET_RECORD_SCRIPT).
   */
  paths?: true;
  /** A load by path: the record it wrote. */
  record?: PathRecord;
  /**
   * A change the sender kept before publishing it (made while it could not publish: Redis down or refusing it, a
   * catch-up running), so made at some moment before it went out: it supersedes no change kept by its receiver (see
   * supersedes), which may be newer.
   */
  kept?: true;
};
/** Which versions of a model are unloaded (null: none), as kept in the hash. */
type UnloadedState = UnloadedVersions;

/**
 * A change whose effect the unloaded-models hash cannot say, so that settle() cannot make it up for from there: an
 * update (description, metadata), a load (a path and its configuration; the new version of an upload).
 */
const unsaid = (op: AdminOp): boolean => op.op === 'update' || op.op === 'load';

/**
 * A change `later` of another replica, received while `earlier` of the same model was kept here (not published yet: a
 * catch-up running, Redis down or refusing it), and published by that replica as it was made (not kept there too, see
 * AdminMessage.kept: two changes kept through one outage were made in an order no replica knows, and the last
 * published wins, as before), was made after it: published now, `earlier` would undo it everywhere (an
 * unload kept during a catch-up, over a load made since on another replica), so it is dropped. Unloads add up in the hash
 * (see PUBLISH_SCRIPT): one does not supersede another. An update (description, metadata) is superseded by a delete
 * only, and supersedes nothing. A delete made here has removed the model's folder already: it still goes out.
 */
function supersedes(later: AdminOp, earlier: AdminOp): boolean {
  if (earlier.op === 'delete') return false;
  if (later.op === 'delete') return true;
  if (earlier.op === 'update' || later.op === 'update') return false;
  return later.op === 'load' || earlier.op === 'load';
}

/**
 * A change published here, awaited back (see Cluster.unechoed): its number in its message, and the timer that takes it
 * for lost, armed only once Redis has answered the publish (null before: Redis may hold writes for longer than the
 * timeout, in a failover, and then the change still goes out in its place).
 */
interface Echo {
  n: number;
  timer: NodeJS.Timeout | null;
}

/** Add `by` to a per-model count, dropping it at 0. */
function count(counts: Map<string, number>, name: string, by: number): void {
  const n = (counts.get(name) ?? 0) + by;
  if (n > 0) counts.set(name, n);
  else counts.delete(name);
}

const STATE = z.enum(VERSION_STATES as [VersionState, ...VersionState[]]);
const STATUS_EVENT = z.object({
  model: z.string(),
  version: z.number().int(),
  state: STATE,
  previousState: STATE.nullable(),
  errorCode: z.string().nullable(),
  errorMessage: z.string().nullable(),
  at: z.string().refine((at) => !Number.isNaN(Date.parse(at))),
  replica: z.string(),
  removed: z.boolean().optional(),
});

/**
 * A model's unloaded state as the hash holds it or a message carries it, read as the publish script reads it (`all`
 * true or not, the whole numbers among `versions`); undefined when it is none (not JSON, not an object): another
 * program's on the prefix, or an operator's, which must not stop a replica from applying the others' states.
 */
function readUnloaded(value: unknown, json = false): UnloadedState | undefined {
  if (json) {
    try {
      value = JSON.parse(value as string);
    } catch {
      return undefined;
    }
  }
  if (value === null) return null;
  if (typeof value !== 'object' || Array.isArray(value)) return undefined;
  const { all, versions } = value as { all?: unknown; versions?: unknown };
  const numbers = Array.isArray(versions) ? versions.filter((v): v is number => Number.isInteger(v)) : [];
  const sorted = [...new Set(numbers)].sort((a, b) => a - b);
  return all !== true && sorted.length === 0 ? null : { all: all === true, versions: sorted };
}

/** A model status event as a replica publishes it, or null. */
function statusEvent(wire: unknown): ModelStatusEvent | null {
  const r = STATUS_EVENT.safeParse(wire);
  return r.success ? { ...r.data, at: new Date(r.data.at) } : null;
}

/** Local and remote status events, each once: what modelStatus subscribers read. */
export type StatusFeed = EventEmitter<{ status: [ModelStatusEvent] }>;

/**
 * KEYS[1]: the unloaded-models hash, KEYS[2]: the models-loaded-by-path hash; ARGV: a new epoch, the number of states
 * n, then n times name, state, then name, record, name, record... Unless the hash is marked: marks it with the epoch
 * and writes each state and record where there is none (an entry there was published since Redis came back: newer).
 */
const RESTORE_SCRIPT = `
if redis.call('HEXISTS', KEYS[1], '.') == 1 then return 0 end
redis.call('HSET', KEYS[1], '.', ARGV[1])
local states = 2 + 2 * tonumber(ARGV[2])
for i = 3, states, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
local paths = redis.call('TYPE', KEYS[2]).ok
if paths == 'hash' or paths == 'none' then
  for i = states + 1, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return 1`;

/**
 * KEYS[1]: the unloaded-models hash, KEYS[2]: the models-loaded-by-path hash; ARGV: the admin channel, model name, the
 * change ("load", "unload", "delete"), the version an unload names ("" for the whole model), the sender's state of the
 * model after it (JSON, "null": none unloaded), message (a JSON object), the model's record as the sender serves it
 * after a load (JSON: a model loaded by path; "": none, one of the repository). A load writes or removes the record, a
 * delete removes it. Counts the change ("#"), applies it to the model's state held in the hash and
 * publishes the message with that state, the count and the hash's epoch added, at once: a replica that reads the hash
 * knows which changes it holds (those up to "#"). Applied to the state held, not the sender's: two unloads of different
 * versions at once on two replicas are both kept, where the second one's state would undo the first. The sender's
 * state is used only when the hash was lost (no "." yet): the held state is then no one's, or when the state held is
 * not one a gateway writes (not JSON, not an object; versions that are not numbers are dropped): another program's on
 * the prefix, or an operator's, must not make every publish fail. Counted ("#") only once nothing before can fail
 * (Redis does not undo what a failing script wrote).
 */
const PUBLISH_SCRIPT = `
local epoch = redis.call('HGET', KEYS[1], '.')
local state = ARGV[5]
if ARGV[3] == 'load' then
  state = 'null'
elseif ARGV[3] == 'unload' and epoch then
  local held = redis.call('HGET', KEYS[1], ARGV[2])
  local ok, s = true, {}
  if held then ok, s = pcall(cjson.decode, held) end
  if ok and type(s) == 'table' then
    local versions, has = {}, {}
    for _, v in ipairs(type(s.versions) == 'table' and s.versions or {}) do
      if type(v) == 'number' and v == math.floor(v) and not has[v] then has[v] = true; table.insert(versions, v) end
    end
    local v = tonumber(ARGV[4])
    if v and not has[v] then table.insert(versions, v) end
    table.sort(versions)
    state = '{"all":' .. tostring(s.all == true or ARGV[4] == '') .. ',"versions":[' .. table.concat(versions, ',') .. ']}'
  end
end
-- (the paths key of another type, another program's: the change is still counted and applied, without its record)
local paths = redis.call('TYPE', KEYS[2]).ok
if paths ~= 'hash' and paths ~= 'none' then
elseif ARGV[3] == 'delete' or (ARGV[3] == 'load' and ARGV[7] == '') then
  redis.call('HDEL', KEYS[2], ARGV[2])
elseif ARGV[3] == 'load' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[7])
end
local seq = redis.call('HINCRBY', KEYS[1], '#', 1)
local message = string.sub(ARGV[6], 1, -2)
if ARGV[3] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  if state == 'null' then redis.call('HDEL', KEYS[1], ARGV[2]) else redis.call('HSET', KEYS[1], ARGV[2], state) end
  message = message .. ',"state":' .. state
end
redis.call('PUBLISH', ARGV[1], message .. ',"seq":' .. seq .. ',"epoch":' .. cjson.encode(epoch or '') .. '}')
return seq`;

/**
 * KEYS[1]: the unloaded-models hash, KEYS[2]: the models-loaded-by-path hash; ARGV: the epoch and count read ("" for
 * none), a new epoch, then name, state, record, name, state, record... ("null": nothing unloaded; "": no record). If the
 * hash still has that epoch and count, gives it the new epoch and writes those states and records; the other models
 * keep theirs (a change published since Redis came back is among them).
 */
const REPLACE_SCRIPT = `
if redis.call('HGET', KEYS[1], '.') ~= ARGV[1] or (redis.call('HGET', KEYS[1], '#') or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], '.', ARGV[3])
local paths = redis.call('TYPE', KEYS[2]).ok
local records = paths == 'hash' or paths == 'none'
for i = 4, #ARGV, 3 do
  if ARGV[i + 1] == 'null' then redis.call('HDEL', KEYS[1], ARGV[i]) else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  if not records then
  elseif ARGV[i + 2] == '' then redis.call('HDEL', KEYS[2], ARGV[i]) else redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2]) end
end
return 1`;

/**
 * KEYS[1]: the models-loaded-by-path hash; ARGV: the admin channel, model name, its record after the update, message,
 * the record's beginning (its path and configuration). An update (description, metadata) of a model loaded by path
 * rewrites its record, if it still has one of the same path and configuration (a delete published before it removed
 * it; a load published before it, from another path or with another configuration, wrote its own), and publishes the
 * change.
 */
/**
 * KEYS[1]: the unloaded-models hash, KEYS[2]: the models-loaded-by-path hash; ARGV: model name, the count of a delete
 * published by a replica of an earlier version. Removes the model's record if no change was counted since the delete
 * (one counted since may be a new load of that name, whose record stays).
 */
const FORGET_RECORD_SCRIPT = `
if redis.call('HGET', KEYS[1], '#') == ARGV[2] and redis.call('TYPE', KEYS[2]).ok == 'hash' then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1`;

const UPDATE_SCRIPT = `
local held = redis.call('HGET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' and held and string.sub(held, 1, #ARGV[5]) == ARGV[5] then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('PUBLISH', ARGV[1], ARGV[4])
return 1`;

type ScriptCommands = {
  gatewayReplace(key: string, paths: string, epoch: string, count: string, ...args: string[]): Promise<number>;
  gatewayRestore(key: string, paths: string, epoch: string, states: number, ...args: string[]): Promise<number>;
  gatewayPublish(
    key: string,
    paths: string,
    channel: string,
    name: string,
    op: string,
    version: string,
    state: string,
    message: string,
    record: string,
  ): Promise<number>;
  gatewayUpdate(paths: string, channel: string, name: string, record: string, message: string, origin: string): Promise<number>;
  gatewayForgetRecord(key: string, paths: string, name: string, seq: string): Promise<number>;
};

/**
 * A model loaded by path as a replica serves it, kept in the hash `<prefix>:paths` so that a replica that starts later
 * (or comes back) loads it too: the path as asked for, the configuration given with it, its description and metadata.
 */
const PATH_RECORD = z.object({
  path: z.string().min(1),
  config: z.unknown(),
  description: z.string(),
  metadata: z.record(z.string(), z.unknown()),
});
type PathRecord = z.infer<typeof PATH_RECORD>;

/** A record as a gateway writes it, or undefined (another program's, or none); `json`: given as the hash holds it. */
function readRecord(value: unknown, json = false): PathRecord | undefined {
  if (json) {
    try {
      value = JSON.parse(value as string);
    } catch {
      return undefined;
    }
  }
  const r = PATH_RECORD.safeParse(value);
  return r.success ? r.data : undefined;
}

/**
 * An error of the publish script itself, or of a command it ran on data of an unexpected shape: the same on every try.
 * Not one of the passing refusals (OOM, READONLY, BUSY, LOADING, a timeout), which are tried again.
 */
const scriptError = (e: unknown): boolean =>
  e instanceof Error && e.name === 'ReplyError' && /^(ERR|WRONGTYPE) /.test(e.message) && / script: /.test(e.message);

/**
 * Status events the stream keeps (about: trimmed as Redis can, `MAXLEN ~`): a replica cut off from Redis for longer
 * than it takes the cluster to make this many misses the oldest of them.
 */
const STATUS_HISTORY = 10_000;

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
  private readonly stream: string;
  /** Status events made here and not added to the stream yet (the bus down, Redis refused them), in order. */
  private readonly pendingStatus: string[] = [];
  /** The number of the last status event made here (StatusMessage.k), and of the last received from each process. */
  private statusCount = 0;
  private readonly statusSeen = new Map<string, number>();
  private readonly maxPendingStatus: number;
  /** The loop adding pendingStatus to the stream, while it runs. */
  private flushing: Promise<void> | null = null;
  private statusRetry: NodeJS.Timeout | null = null;
  private readonly unloadedKey: string;
  /** The models loaded by path (see PATH_RECORD). */
  private readonly pathsKey: string;
  /**
   * Records of models loaded by path that this replica read and could not load (outside its MODEL_ROOTS, a file gone):
   * written back with its own if Redis loses them, and deletable here (deleteModel) though not served here.
   */
  private readonly foreign = new Map<string, string>();
  private readonly maxPendingAdmin: number;
  /** Admin changes made here and not published yet (the bus down, Redis refused them, a catch-up running), in order. */
  private readonly pendingAdmin: AdminOp[] = [];
  /** Those of pendingAdmin that a change of another replica received since has superseded: dropped, not published. */
  private readonly superseded = new WeakSet<AdminOp>();
  private readonly echoTimeoutMs: number;
  /** A catch-up that failed while connected, tried again after a backoff (no reconnection would run it). */
  private retry: NodeJS.Timeout | null = null;
  private retries = 0;
  private readonly maxBackoffMs: number | undefined;
  /** Remote admin changes run one after another per model, in the order they were published. */
  private readonly chains = new Map<string, Promise<void>>();
  private synced = false;
  /** join() is done: this replica has the cluster's unloaded state (or the bus was down and it could not wait). */
  joined = false;
  private syncing: Promise<void> | null = null;
  /** A catch-up was asked for while one ran (a reconnection during it): run again once it ends. */
  private syncAgain = false;
  private closed = false;
  private stateCheck: NodeJS.Timeout | null = null;
  /** The epoch (".") of the hash this replica last lined up with: another one there was written since. */
  private appliedEpoch: string | null = null;
  /** The newest counted change received for each model (see Wire.seq). */
  private readonly seen = new Map<string, { epoch: string; seq: number }>();
  private readonly onStatus = (e: ModelStatusEvent) => this.localStatus(e);
  private readonly onAdmin = (op: AdminOp) => void this.localAdmin(op);
  /**
   * Per model, the changes made here that were sent to Redis and whose message has not come back yet, each with a
   * timer that takes it for lost after `echoTimeoutMs` (its message dropped, or a reply that timed out after all):
   * one lost echo must not leave the others' changes of that model aside for good. A change of another replica that
   * arrives meanwhile was published before them: every other replica applies it first and then ours, which carries
   * our resulting state, so it is not applied here after ours (this replica was left alone in that older state, for
   * good). Changes not sent yet are in pendingAdmin (kept), not here: nothing comes back for them.
   */
  private readonly unechoed = new Map<string, Echo[]>();
  /** A message of another process with this replica's name arrived (said once). */
  private sameName = false;
  /** The number of the last admin change published here (see AdminMessage.n). */
  private sent = 0;
  /** Per model, the admin operations asked of this replica that have not ended (their change is published after). */
  private readonly inProgress = new Map<string, number>();
  /**
   * Models with a change of another replica left aside (see unechoed): lined up with the hash once ours are out. With
   * each, in the order the bus delivered them, the changes that the hash cannot say (see unsaid) of the others, left
   * aside, and all of ours that came back since: replayed then, in the order every other replica applied them (ours
   * too, so that one of ours that came later overrides theirs here as it does there: a delete after a load by path).
   */
  private readonly leftAside = new Map<string, AdminOp[]>();
  private readonly onChanging = (name: string, delta: number) => {
    // changes of another replica that arrived before this one began but still wait their turn here (behind a slow
    // load) were published before it, yet run after it: once it is out, the model is lined up with the hash, after them
    if (delta > 0 && this.chains.has(name)) this.leftAside.set(name, this.leftAside.get(name) ?? []);
    count(this.inProgress, name, delta);
    this.settle(name);
  };

  constructor({
    url,
    replica,
    manager,
    logger,
    metrics,
    prefix = 'gateway',
    maxPendingAdmin = 1000,
    maxPendingStatus = 1000,
    maxBackoffMs,
    echoTimeoutMs = 10_000,
    stateCheckMs = 2000,
  }: ClusterOptions) {
    this.feed.setMaxListeners(0);
    this.replica = replica;
    this.manager = manager;
    this.logger = logger.child({ replica });
    this.metrics = metrics ? new ClusterMetrics(metrics) : null;
    this.metrics?.connected.set(0);
    this.channels = { status: `${prefix}:status`, admin: `${prefix}:admin` };
    this.stream = `${prefix}:events`;
    this.unloadedKey = `${prefix}:unloaded`;
    this.pathsKey = `${prefix}:paths`;
    this.maxPendingAdmin = maxPendingAdmin;
    this.maxPendingStatus = maxPendingStatus;
    this.maxBackoffMs = maxBackoffMs;
    this.echoTimeoutMs = echoTimeoutMs;
    this.bus = new RedisBus({
      url,
      logger: this.logger,
      channels: Object.values(this.channels),
      stream: this.stream,
      name: replica,
      maxBackoffMs,
    });
    // EVALSHA, with EVAL when Redis does not have the script (yet, or again after a restart)
    this.bus.publisher.defineCommand('gatewayRestore', { numberOfKeys: 2, lua: RESTORE_SCRIPT });
    this.bus.publisher.defineCommand('gatewayPublish', { numberOfKeys: 2, lua: PUBLISH_SCRIPT });
    this.bus.publisher.defineCommand('gatewayReplace', { numberOfKeys: 2, lua: REPLACE_SCRIPT });
    this.bus.publisher.defineCommand('gatewayUpdate', { numberOfKeys: 1, lua: UPDATE_SCRIPT });
    this.bus.publisher.defineCommand('gatewayForgetRecord', { numberOfKeys: 2, lua: FORGET_RECORD_SCRIPT });
    // a model this replica could not load from its record can still be deleted here (see foreign)
    manager.elsewhere = (name) => this.foreign.has(name);
    this.bus.on('message', (channel, text) => this.remote(channel, text));
    this.bus.on('entry', (text) => this.remote(this.channels.status, text));
    this.bus.on('connected', () => {
      this.metrics?.connected.set(1);
      this.flushStatus();
      void this.catchUp();
    });
    this.bus.on('disconnected', () => {
      this.metrics?.connected.set(0);
      // what was published and not back yet may never come back: only the changes still kept are awaited (the
      // catch-up on reconnection lines every other model up with the hash)
      for (const echoes of this.unechoed.values()) for (const e of echoes) clearTimeout(e.timer ?? undefined);
      this.unechoed.clear();
      if (!this.closed) this.metrics?.disconnects.inc();
    });
    manager.on('status', this.onStatus);
    manager.on('admin', this.onAdmin);
    manager.on('changing', this.onChanging);
    this.stateCheck = setInterval(() => void this.checkState(), stateCheckMs);
    this.stateCheck.unref();
  }

  /**
   * The hash lost while connected (see stateCheckMs): written back, as after a reconnection, by a catch-up; or written
   * since this replica read it (another replica found it older and replaced it, or wrote a lost one back): adopted.
   */
  private async checkState(): Promise<void> {
    if (!this.synced || this.syncing || this.retry || this.closed || !this.bus.connected) return;
    let epoch: string | null;
    try {
      epoch = await this.bus.publisher.hget(this.unloadedKey, '.');
    } catch {
      return; // Redis refused the check: the next one tries again
    }
    if (epoch === this.appliedEpoch || this.syncing) return;
    if (epoch === null)
      this.logger.warn('the cluster state in Redis is gone (FLUSHALL, an eviction, a DEL) while connected: writing it back');
    else this.logger.info('the cluster state in Redis was written again by another replica: lining up with it');
    void this.catchUp();
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
    const message: StatusMessage = { ...this.wire(), event: { ...e, at: e.at.toISOString() }, k: ++this.statusCount };
    this.pendingStatus.push(JSON.stringify(message));
    if (this.pendingStatus.length > this.maxPendingStatus) {
      this.pendingStatus.shift();
      this.metrics?.dropped.inc({ kind: 'status' });
    }
    this.flushStatus();
  }

  /**
   * Add the status events kept here to the stream, in order, one after another (a later one never ahead of one that
   * failed); what Redis refuses while connected is tried again after a backoff, what a lost connection stops waits for
   * the next.
   */
  private flushStatus(failures = 0): void {
    if (this.flushing || this.statusRetry || !this.bus.connected || this.pendingStatus.length === 0) return;
    // the loop's first step awaits Redis, so its `finally` runs after this assignment
    this.flushing = (async () => {
      try {
        while (this.pendingStatus.length > 0 && this.bus.connected) {
          await this.bus.publisher.xadd(this.stream, 'MAXLEN', '~', STATUS_HISTORY, '*', 'm', this.pendingStatus[0]);
          this.pendingStatus.shift();
          this.metrics?.messages.inc({ direction: 'out', kind: 'status' });
          this.bus.allowed('adding a status event to the stream');
          failures = 0;
        }
      } catch (e) {
        if (this.closed || !this.bus.connected) return; // the next connection flushes
        if (!this.bus.refusedCommand('adding a status event to the stream', e) && failures === 0)
          this.logger.warn({ error: errorMessage(e) }, 'cluster bus: a status event not published; retrying');
        this.statusRetry = setTimeout(
          () => {
            this.statusRetry = null;
            this.flushStatus(failures + 1);
          },
          backoff(failures + 1, this.maxBackoffMs),
        ).unref();
      } finally {
        this.flushing = null;
      }
    })();
  }

  private async localAdmin(op: AdminOp): Promise<void> {
    if (op.op === 'delete') this.foreign.delete(op.name);
    if (!this.bus.connected || this.pendingAdmin.length > 0 || this.syncing) {
      // behind the changes still waiting, in order; during a catch-up, after it has written the state back (a change
      // published before that could be overwritten by an older state another replica writes back)
      this.keep(op);
      if (this.bus.connected && !this.retry) void this.catchUp();
      return;
    }
    try {
      await this.send(op, () => this.keep(op));
    } catch (e) {
      this.bus.refusedCommand('publishing an admin change', e);
      this.logger.warn({ error: errorMessage(e), op: op.op, model: op.name }, 'admin change not published yet; kept and tried again');
      this.retryLater();
    }
  }

  /**
   * Publish a change made here, awaited back from the moment it is sent (its message may come back before the reply),
   * taken for lost only `echoTimeoutMs` after Redis answered: until then it has not gone out, and whatever another
   * replica publishes meanwhile comes before it. Refused: `unsent` runs (the change is kept) before it stops being
   * awaited, so that the model is never free for a moment to be lined up with a hash that lacks it.
   */
  private async send(op: AdminOp, unsent: () => void = () => undefined, kept = false): Promise<void> {
    const echo: Echo = { n: ++this.sent, timer: null };
    this.unechoed.set(op.name, [...(this.unechoed.get(op.name) ?? []), echo]);
    try {
      await this.publishAdmin(op, echo.n, kept);
    } catch (e) {
      unsent();
      this.echoed(op.name, echo.n);
      throw e;
    }
    if (this.unechoed.get(op.name)?.includes(echo)) this.awaitEcho(op.name, echo); // not back yet
  }

  private keep(op: AdminOp): void {
    if (this.pendingAdmin.length >= this.maxPendingAdmin) {
      const dropped = this.pendingAdmin.shift()!;
      this.metrics?.dropped.inc({ kind: 'admin' });
      this.settle(dropped.name); // never published: nothing to await
    }
    this.pendingAdmin.push(op);
  }

  /** A change of this model made here and not published yet. */
  private kept(name: string): boolean {
    return this.pendingAdmin.some((op) => op.name === name);
  }

  /** Try the catch-up again after a backoff (it failed, or a change was refused, while the bus stayed up). */
  private retryLater(): void {
    if (this.retry || this.closed || !this.bus.connected) return; // a reconnection runs one
    this.retry = setTimeout(
      () => {
        this.retry = null;
        if (this.bus.connected && !this.closed) void this.catchUp();
      },
      backoff(++this.retries, this.maxBackoffMs),
    );
    this.retry.unref();
  }

  /** The unloaded state of a model on this replica, as kept in the hash (null: nothing unloaded). */
  private unloadedState(name: string): UnloadedState {
    const m = this.manager.get(name);
    return m ? unloadedOf(m) : null;
  }

  /** A model loaded by path as this replica serves it now, as kept in Redis (see PATH_RECORD); "" for any other. */
  private record(name: string): string {
    const m = this.manager.get(name);
    if (m?.source !== 'path' || !m.origin) return '';
    const { description, metadata } = m.config;
    return JSON.stringify({ ...m.origin, description, metadata } satisfies PathRecord);
  }

  /** The change and the resulting unloaded state in one transaction: a replica that joins later sees the state. */
  private async publishAdmin(op: AdminOp, n: number, kept: boolean): Promise<void> {
    const was = kept ? { kept: true as const } : {};
    if (op.op === 'update') {
      // model.json edits: nothing in the unloaded-models hash changes; a model loaded by path keeps them in its record
      const message = JSON.stringify({ ...this.wire(), op, n, ...was } satisfies AdminMessage);
      const record = this.record(op.name);
      let plain = record === '';
      if (!plain)
        await (this.bus.publisher as unknown as ScriptCommands)
          // (the record's JSON begins with the path and configuration: see record())
          .gatewayUpdate(
            this.pathsKey,
            this.channels.admin,
            op.name,
            record,
            message,
            `${JSON.stringify(this.manager.get(op.name)!.origin).slice(0, -1)},`,
          )
          .catch((e: unknown) => {
            if (!scriptError(e)) throw e;
            // the paths hash is another type of key: the change still goes out (as the publish script's, below)
            this.bus.refusedCommand('publishing an admin change', e); // (or a command the script runs that the ACL refuses)
            this.logger.warn(
              { error: errorMessage(e), op: op.op, model: op.name },
              'the cluster record of a model loaded by path could not be updated: the admin change is published without it',
            );
            plain = true;
          });
      if (plain) await this.bus.publisher.publish(this.channels.admin, message);
    } else {
      // the state the change left, as the manager saw it then (a load leaves nothing unloaded), for a lost hash only
      // (the script applies the change to the state held there): read now, it may already include a change of another
      // replica applied since, which would go out under this change's name
      const state = op.op === 'delete' || op.op === 'load' ? null : op.unloaded !== undefined ? op.unloaded : this.unloadedState(op.name);
      const wireOp = op.op === 'unload' ? { op: op.op, name: op.name, version: op.version } : op;
      const version = op.op === 'unload' && typeof op.version === 'number' ? String(op.version) : '';
      const record = op.op === 'load' ? this.record(op.name) : '';
      // (a load by path carries its record: a replica that cannot load it keeps it, see foreign)
      const message = JSON.stringify({
        ...this.wire(),
        op: wireOp,
        n,
        paths: true,
        ...(record ? { record: JSON.parse(record) as PathRecord } : {}),
        ...was,
      } satisfies AdminMessage); // the script adds the state
      try {
        await (this.bus.publisher as unknown as ScriptCommands).gatewayPublish(
          this.unloadedKey,
          this.pathsKey,
          this.channels.admin,
          op.name,
          op.op,
          version,
          JSON.stringify(state),
          message,
          record,
        );
        this.bus.allowed('publishing an admin change');
      } catch (e) {
        if (!scriptError(e)) throw e;
        // the script fails whatever the try (the hash holds what no gateway writes: "#" not a number, another type of
        // key; a command in it the ACL refuses, said as such): tried again, it would hold every later change of this
        // replica behind it for good. Published without it, with this replica's state and uncounted (receivers adopt
        // that state), the hash left as it is.
        this.bus.refusedCommand('publishing an admin change', e);
        this.logger.warn(
          { error: errorMessage(e), op: op.op, model: op.name },
          'the cluster state in Redis could not be updated: the admin change is published without it',
        );
        const plain: AdminMessage = { ...this.wire(), op: wireOp, n, ...(op.op === 'delete' ? {} : { state }), ...was };
        await this.bus.publisher.publish(this.channels.admin, JSON.stringify(plain));
      }
    }
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
    if (message?.v !== 1) return;
    if (message.from !== this.id && message.replica === this.replica && !this.sameName) {
      // (events of the two cannot be told apart by modelStatus subscribers, nor their connections in CLIENT LIST)
      this.sameName = true;
      this.logger.warn(
        `another replica is named ${JSON.stringify(this.replica)} too: give each its own REPLICA_NAME (the pod name on Kubernetes), or leave it unset (<host>-<pid>), so that status events say which replica made them`,
      );
    }
    if (message.from === this.id) {
      if (channel === this.channels.admin && message.op) {
        // our own, back from Redis; after one of another replica left aside, replayed after it as everywhere else
        const { op, state, n } = message;
        this.see(op.name, message.seq, message.epoch); // (a hash read later that lacks it is older than it)
        this.leftAside.get(op.name)?.push(op);
        if (!this.echoed(op.name, n) && state !== undefined) {
          // back after it was taken for lost: changes of the others published before it may have been applied here
          // since, so the model is lined up with the state it left (after its other changes made here, if any)
          this.logger.info({ op: op.op, model: op.name }, 'an admin change published here came back after it was taken for lost');
          if (this.unechoed.has(op.name) || this.inProgress.has(op.name) || this.kept(op.name))
            this.leftAside.set(op.name, this.leftAside.get(op.name) ?? []);
          else this.serialize(op.name, () => this.lineUp(op.name, state));
        }
      }
      return;
    }
    if (channel === this.channels.status && message.event) {
      const event = statusEvent(message.event);
      if (!event) {
        // not one a replica sends (another program on the channel, or a newer gateway's): dropped here, once, rather
        // than handed to every subscriber as an error
        this.logger.warn({ channel, from: message.replica }, 'cluster bus: a status message that is not a model status event was dropped');
        this.metrics?.dropped.inc({ kind: 'status' });
        return;
      }
      if (typeof message.k === 'number') {
        const before = this.statusSeen.get(message.from);
        if (before !== undefined && message.k <= before) return; // added twice: handed on once
        this.statusSeen.delete(message.from); // (kept in the order last heard from, the oldest forgotten first)
        this.statusSeen.set(message.from, message.k);
        if (this.statusSeen.size > MAX_STATUS_SENDERS) this.statusSeen.delete(this.statusSeen.keys().next().value!);
      }
      this.metrics?.messages.inc({ direction: 'in', kind: 'status' });
      this.feed.emit('status', event);
    } else if (channel === this.channels.admin && message.op) {
      this.metrics?.messages.inc({ direction: 'in', kind: 'admin' });
      const { op, seq, epoch, state } = message;
      this.see(op.name, seq, epoch);
      if (this.unechoed.has(op.name) || this.inProgress.has(op.name) || this.kept(op.name)) {
        this.logger.info(
          { op: op.op, model: op.name, from: message.replica },
          'an admin change of another replica left aside: a change of that model made here follows it',
        );
        // newer than the changes of that model kept here (made before it, not published yet): those it supersedes are
        // dropped, and the model is lined up with it once they are (see settle)
        const mine = message.kept ? [] : this.pendingAdmin.filter((kept) => kept.name === op.name && supersedes(op, kept));
        for (const kept of mine) this.superseded.add(kept);
        // (a delete that wins over a change kept here is made here too: the hash cannot say it, and lined up with the
        // hash, which no longer names the model, the model would stay here, loaded)
        const replayed = unsaid(op) || (op.op === 'delete' && mine.length > 0);
        this.leftAside.set(op.name, [...(this.leftAside.get(op.name) ?? []), ...(replayed ? [op] : [])]);
        return;
      }
      this.logger.info({ op: op.op, model: op.name, from: message.replica }, 'applying an admin change of another replica');
      if (op.op === 'delete') {
        this.foreign.delete(op.name);
        if (!message.paths && typeof seq === 'number')
          (this.bus.publisher as unknown as ScriptCommands)
            .gatewayForgetRecord(this.unloadedKey, this.pathsKey, op.name, String(seq))
            .catch(() => undefined); // (the record then stays, as it would without this replica)
      }
      const applied = this.serialize(op.name, () => this.manager.applyRemote(op));
      const record = op.op === 'load' && op.path ? readRecord(message.record) : undefined;
      if (record)
        void applied.then(() => {
          if (this.manager.get(op.name)) this.foreign.delete(op.name);
          else this.foreign.set(op.name, JSON.stringify(record)); // (refused here: not under MODEL_ROOTS)
        });
      // then the sender's resulting state: a change this replica missed (a catch-up that left the model as it was)
      // is made up for with the next one
      const want = readUnloaded(state);
      if (state !== undefined && want !== undefined) this.serialize(op.name, () => this.lineUp(op.name, want));
    }
  }

  /** A counted change of a model received (see Wire.seq): the newest of each model is remembered. */
  private see(name: string, seq: unknown, epoch: unknown): void {
    if (typeof seq !== 'number' || typeof epoch !== 'string') return;
    const before = this.seen.get(name);
    if (!before || before.epoch !== epoch || before.seq < seq) this.seen.set(name, { epoch, seq });
  }

  /** Redis answered the publish of `echo`: from now on, its message is awaited for `echoTimeoutMs` (see unechoed). */
  private awaitEcho(name: string, echo: Echo): void {
    echo.timer = setTimeout(() => {
      this.logger.warn({ model: name }, 'an admin change published here did not come back from Redis: taken for lost');
      this.echoed(name, echo.n);
    }, this.echoTimeoutMs);
    echo.timer.unref();
  }

  /**
   * Change `n` of this model published here came back, or is no longer awaited; false if it was not awaited (any more).
   * A message without a number (none is sent so) stands for the oldest awaited.
   */
  private echoed(name: string, n: number | undefined): boolean {
    const echoes = this.unechoed.get(name) ?? [];
    const i = typeof n === 'number' ? echoes.findIndex((e) => e.n === n) : 0;
    const found = i >= 0 && i < echoes.length;
    if (found) {
      clearTimeout(echoes[i].timer ?? undefined);
      echoes.splice(i, 1);
    }
    if (echoes.length === 0) this.unechoed.delete(name);
    this.settle(name);
    return found;
  }

  /**
   * Once this replica's own changes of a model are out (ended and back from Redis), a change of another replica left
   * aside meanwhile is made up for from the hash, which holds the state of the last change published: ours when ours
   * came last (nothing to do), the other one's when ours failed and was never published. What the hash cannot say (a
   * description, metadata, a path, the new version of an upload) is replayed first, ours among the others' in the order
   * published: an update of a model loaded by path is applied in memory, where the last one published must win.
   */
  private settle(name: string): void {
    if (!this.leftAside.has(name) || this.inProgress.has(name) || this.unechoed.has(name) || this.kept(name) || !this.bus.connected) return;
    const ops = this.leftAside.get(name)!;
    this.leftAside.delete(name);
    void this.serialize(name, async () => {
      // a delete wipes out what came before it (a model loaded again by path, its description): only what follows it
      // is made again, and it is made only when the model is still here
      const last = ops.map((op) => op.op).lastIndexOf('delete');
      for (const op of last >= 0 ? ops.slice(last) : ops) {
        // a load of a repository model served here is a re-read (model.json, the version of an upload), not made
        // again: it would load what a later change has unloaded, for the hash to unload it again
        const m = this.manager.get(name);
        if (op.op === 'delete' && !m) continue;
        const reread = op.op === 'load' && !op.path && m?.source === 'repository';
        await this.manager.applyRemote(reread ? { op: 'update', name, changes: {} } : op).catch((e: unknown) => {
          this.logger.info({ model: name, op: op.op, error: errorMessage(e) }, 'an admin change left aside did not apply here');
        });
      }
      const [mark, json] = await this.bus.publisher.hmget(this.unloadedKey, '.', name);
      const want = json === null ? null : readUnloaded(json, true);
      if (mark !== null && want !== undefined) await this.lineUp(name, want); // not a lost hash, nor one no gateway wrote
    });
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
          const op = this.pendingAdmin[0];
          if (this.superseded.has(op)) {
            this.pendingAdmin.shift();
            this.logger.info(
              { op: op.op, model: op.name },
              'an admin change kept here was not published: another replica changed that model since',
            );
            this.settle(op.name);
            continue;
          }
          await this.send(op, undefined, true); // refused: still first in pendingAdmin
          this.pendingAdmin.shift();
          this.settle(op.name); // its message may have come back already
        }
        if (this.synced && this.bus.connected) await this.applyUnloadedState();
        this.retries = 0;
        this.bus.allowed('publishing an admin change');
        for (const name of [...this.leftAside.keys()]) this.settle(name); // those whose echoes a disconnection gave up on
      } catch (e) {
        failed = true;
        const denied = this.bus.refusedCommand('publishing an admin change', e);
        // said once, not at every try while Redis keeps refusing it (a key of another type on the prefix)
        this.logger[this.retries === 0 && !denied ? 'warn' : 'debug'](
          { error: errorMessage(e) },
          'cluster catch-up failed; tried again shortly',
        );
      } finally {
        this.syncing = null;
        // a reconnection during this catch-up, or a change made here while it ran
        const again = this.syncAgain || (!failed && this.pendingAdmin.length > 0);
        this.syncAgain = false;
        if (again && this.bus.connected) void this.catchUp();
        else if (failed) this.retryLater();
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
    const states: string[] = [];
    const records: string[] = [];
    for (const m of this.manager.models()) {
      const state = this.unloadedState(m.name);
      if (state) states.push(m.name, JSON.stringify(state));
      const record = this.record(m.name);
      if (record) records.push(m.name, record);
    }
    for (const [name, record] of this.foreign) if (!this.manager.get(name)) records.push(name, record);
    const commands = this.bus.publisher as unknown as ScriptCommands;
    const wrote = await commands.gatewayRestore(this.unloadedKey, this.pathsKey, randomUUID(), states.length / 2, ...states, ...records);
    if (wrote === 1) this.logger.info('cluster state was empty (a new or restarted Redis): wrote this replica state back');
  }

  /**
   * Write this replica's state of the models whose changes a hash older than them lost (see applyUnloadedState) over
   * theirs, with a new epoch, unless another replica has done so since the read (the others then find that epoch and
   * adopt its state). The other models keep what the hash holds: a change published since Redis came back, by a
   * replica that did not know the hash older (one started since), is there and perhaps not here yet.
   */
  private async replaceOlderState(epoch: string, count: string): Promise<void> {
    const args: string[] = [];
    for (const [name, s] of this.seen)
      if (s.epoch === epoch && s.seq > Number(count || 0)) args.push(name, JSON.stringify(this.unloadedState(name)), this.record(name));
    const commands = this.bus.publisher as unknown as ScriptCommands;
    if ((await commands.gatewayReplace(this.unloadedKey, this.pathsKey, epoch, count, randomUUID(), ...args)) === 1)
      this.logger.warn(
        'cluster state in Redis older than changes already made (Redis lost its last writes): wrote this replica state over it',
      );
  }

  /**
   * Read the cluster's unloaded state and bring this replica in line with it. The read is a snapshot while changes
   * keep arriving on the other connection: a change received before the snapshot is used but counted after it (a `seq`
   * past the hash's "#", same epoch) would be undone by it, so the state is read again (a model still changing after
   * STATE_READS reads is left to its newest change, which carries its state). A model with a change made here and
   * not published yet (kept during the catch-up, also after the read) is left as it is: that change is newer and goes
   * out next, or a newer one of another replica that supersedes it lines the model up (see settle).
   */
  private async applyUnloadedState(): Promise<void> {
    const redis = this.bus.publisher;
    let hash: Record<string, string> = {};
    let racing: string[] = [];
    for (let reads = 0, restores = 0; ;) {
      const received = [...this.seen.values()]; // changes Redis had made before the read below
      hash = await redis.hgetall(this.unloadedKey);
      if (!('.' in hash)) {
        // lost again since it was written back (Redis restarted in between): an empty hash is no state ("every model
        // loaded" would undo every unload), so it is written back again first
        if (++restores > 3) throw new Error('the cluster state in Redis keeps disappearing');
        await this.restoreLostState();
        continue;
      }
      const count = Number(hash['#'] ?? 0);
      if (received.some((s) => s.epoch === hash['.'] && s.seq > count)) {
        // older than changes Redis had counted and published before this read: Redis lost its last writes (restarted
        // from an older snapshot or AOF). Applied, it would undo them on some replicas and not on others (each leaves
        // the models it saw change last); written over by this replica's state, which has them all, as a lost one is
        if (++restores > 3) throw new Error('the cluster state in Redis keeps going back');
        await this.replaceOlderState(hash['.'], hash['#'] ?? '');
        continue;
      }
      racing = [...this.seen].filter(([, s]) => s.epoch === hash['.'] && s.seq > count).map(([name]) => name);
      if (racing.length === 0 || ++reads >= STATE_READS) break;
    }
    this.appliedEpoch = hash['.'];
    const kept = new Set(this.pendingAdmin.map((op) => op.name));
    const wanted = new Map<string, UnloadedState>();
    const unreadable: string[] = [];
    for (const [name, json] of Object.entries(hash)) {
      if (name === '.' || name === '#') continue;
      const want = readUnloaded(json, true);
      if (want === undefined) unreadable.push(name);
      else wanted.set(name, want);
    }
    // left as they are here (the next change of each writes its state again), the others lined up
    if (unreadable.length)
      this.logger.warn(
        { models: unreadable },
        'the cluster state in Redis holds what no gateway writes for these models: left as they are here',
      );
    // a counted change received after the read above (during the read of the records below, or while a model waits
    // its turn) carries its own state, newer than the one read: the model is left to it
    const count = Number(hash['#'] ?? 0);
    const changedSince = (name: string) => {
      const s = this.seen.get(name);
      return s !== undefined && s.epoch === hash['.'] && s.seq > count;
    };
    const adopted = await this.adoptPathModels(kept, racing);
    const work = this.manager
      .models()
      .filter((m) => !kept.has(m.name) && !racing.includes(m.name) && !unreadable.includes(m.name) && !adopted.has(m.name))
      .map((m) =>
        // (nor one changed here since the read: kept, that change goes out after this catch-up)
        this.serialize(
          m.name,
          async () => void (changedSince(m.name) || this.kept(m.name) || (await this.lineUp(m.name, wanted.get(m.name) ?? null))),
        ),
      );
    // a model loaded here from its record is lined up once it is (an unloaded one is loaded first, then unloaded)
    for (const name of adopted)
      if (!unreadable.includes(name))
        work.push(
          this.serialize(
            name,
            async () => void (this.manager.get(name) && !changedSince(name) && (await this.lineUp(name, wanted.get(name) ?? null))),
          ),
        );
    await Promise.all(work);
  }

  /**
   * Load the models loaded by path elsewhere that this replica does not serve as their records say (it started later,
   * or was cut off when they were loaded): each from the same path (under this replica's MODEL_ROOTS too) with the same
   * configuration, description and metadata. A model with a change made here not published yet, or with changes
   * arriving as the state is read, is left to them, and so is one that a change received after the records were read
   * has changed since (a delete). Returns the models whose loads were lined up.
   */
  private async adoptPathModels(kept: Set<string>, racing: string[]): Promise<Set<string>> {
    const read = await this.bus.publisher.multi().hget(this.unloadedKey, '.').hget(this.unloadedKey, '#').hgetall(this.pathsKey).exec();
    if (!read) throw new Error('the models loaded by path could not be read');
    const failed = read.find(([e]) => e)?.[0];
    if (failed && !/^WRONGTYPE /.test(failed.message)) throw failed;
    if (failed) {
      // another program's key on the prefix: the unloaded state still applies (said at each catch-up, which is rare)
      this.logger.warn(
        { key: this.pathsKey, error: errorMessage(failed) },
        'the models loaded by path in Redis cannot be read: none loaded from there',
      );
      return new Set();
    }
    const [epoch, count, records] = read.map(([, v]) => v) as [string | null, string | null, Record<string, string>];
    for (const name of [...this.foreign.keys()]) if (records[name] !== this.foreign.get(name)) this.foreign.delete(name);
    const adopted = new Set<string>();
    for (const [name, json] of Object.entries(records)) {
      const record = readRecord(json, true);
      if (!record) {
        this.logger.warn({ model: name }, 'the cluster record of a model loaded by path is not one a gateway writes: left aside');
        continue;
      }
      const m = this.manager.get(name);
      // (a change of it being made here, or published here and not back yet, is newer than the record: left to it)
      const changing = this.inProgress.has(name) || this.unechoed.has(name);
      if (kept.has(name) || racing.includes(name) || changing || (m && m.source !== 'path')) continue;
      const { path, config, description, metadata } = record;
      if (
        m?.origin &&
        m.origin.path === path &&
        JSON.stringify(m.origin.config) === JSON.stringify(config) &&
        m.config.description === description &&
        JSON.stringify(m.config.metadata) === JSON.stringify(metadata)
      )
        continue;
      adopted.add(name);
      void this.serialize(name, async () => {
        const since = this.seen.get(name);
        if (since && since.epoch === epoch && since.seq > Number(count ?? 0)) return; // changed since the read
        if (this.inProgress.has(name) || this.unechoed.has(name) || this.kept(name)) return; // or being changed here
        this.logger.info({ model: name, path }, 'loading a model another replica loaded by path');
        await this.manager
          .applyRemote({ op: 'load', name, path, config, described: { description, metadata } })
          .then(async () => {
            // a load that failed (the file at that path is no model, or not this one any more) does not take this
            // replica out of its load balancer for good: it serves without it, as without one it cannot reach
            const m = this.manager.get(name);
            if (!m || m.ready || m.servingVersion()) return;
            const failed = [...m.versions.values()].find((v) => v.errorMessage)?.errorMessage ?? 'no version loaded';
            await this.manager.applyRemote({ op: 'delete', name });
            throw new Error(failed);
          })
          .catch((e: unknown) => {
            if (!this.manager.get(name)) this.foreign.set(name, json);
            this.logger.warn(
              { model: name, path, error: errorMessage(e) },
              'a model another replica loaded by path could not be loaded here (its path must be under MODEL_ROOTS on every replica)',
            );
          });
      });
    }
    return adopted;
  }

  /** Bring one model's unloaded versions to `want` (in its turn among the remote changes of that model). */
  private async lineUp(name: string, want: UnloadedState): Promise<void> {
    const m = this.manager.get(name);
    const mine = this.unloadedState(name);
    if (!m || JSON.stringify(want) === JSON.stringify(mine)) return;
    const ops: AdminOp[] = [];
    if (!want) ops.push({ op: 'load', name });
    else if (want.all) ops.push({ op: 'unload', name });
    else {
      // some versions unloaded: those out; first everything back (loadModel) if one of them should be loaded
      const back = mine !== null && (mine.all || mine.versions.some((v) => !want.versions.includes(v)));
      if (back) ops.push({ op: 'load', name });
      for (const v of want.versions)
        if (m.versions.has(v) && (back || !mine?.versions.includes(v))) ops.push({ op: 'unload', name, version: v });
    }
    this.logger.info({ model: name, wanted: want ?? 'loaded' }, 'bringing a model in line with the cluster');
    for (const op of ops) await this.manager.applyRemote(op);
  }

  /** Stop listening and close the connections (after the manager has unloaded, so those events went out). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.stateCheck) clearInterval(this.stateCheck);
    if (this.retry) clearTimeout(this.retry);
    if (this.statusRetry) clearTimeout(this.statusRetry);
    for (const echoes of this.unechoed.values()) for (const e of echoes) clearTimeout(e.timer ?? undefined);
    this.manager.off('status', this.onStatus);
    this.manager.off('admin', this.onAdmin);
    this.manager.off('changing', this.onChanging);
    this.manager.elsewhere = null;
    await Promise.allSettled([...this.chains.values()]);
    // the last events (the unloads) out before the connections close, unless Redis holds writes (a failover)
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.flushing, new Promise((r) => (timer = setTimeout(r, 2000)))]);
    clearTimeout(timer);
    // what Redis never got (it was down until the end) goes with this process: said, and counted
    if (this.pendingStatus.length > 0 || this.pendingAdmin.length > 0) {
      this.logger.warn(
        { statusEvents: this.pendingStatus.length, adminChanges: this.pendingAdmin.length },
        'cluster bus: status events and admin changes kept while Redis was down are lost with this process (the others will not see them)',
      );
      if (this.pendingStatus.length) this.metrics?.dropped.inc({ kind: 'status' }, this.pendingStatus.length);
      if (this.pendingAdmin.length) this.metrics?.dropped.inc({ kind: 'admin' }, this.pendingAdmin.length);
    }
    await this.bus.close();
    this.metrics?.connected.set(0);
  }
}
