import { EventEmitter } from 'node:events';
import { Redis, type RedisOptions } from 'ioredis';
import { errorMessage } from '../errors.ts';
import type { Logger } from '../log.ts';

/**
 * The Redis connections of one replica: one for publishing and commands, one in subscriber mode (Redis wants a
 * connection of its own for SUBSCRIBE), and, with `stream`, one that reads that stream (a blocking XREAD holds its
 * connection). ioredis reconnects with the backoff below; this class subscribes again on each connection and turns the
 * connection events and that confirmed subscription into one `connected` state, logged on each change (not on every
 * failed retry). The stream is read on from the last entry read, whatever happened to the connection in between: what
 * was added while it was down arrives once it is back, which a channel (no history) cannot do.
 *
 * Commands are not queued while disconnected (enableOfflineQueue off on the publisher): a publish fails at once and
 * the caller decides what to keep (the cluster keeps admin changes and status events, up to a bound each).
 */
export interface BusOptions {
  url: string;
  logger: Logger;
  /** Channels to subscribe to. */
  channels: readonly string[];
  /** A stream to read, from its end when the bus starts (entries: `entry` events, their field `m`). */
  stream?: string;
  /** Name of the connections in CLIENT LIST (the replica's name). */
  name?: string;
  /** Longest pause between reconnection attempts. */
  maxBackoffMs?: number;
  /**
   * Redis must answer a PING, sent this often while connected, within this long, on the publisher's connection and on
   * the subscriber's: a Redis cut off by a partition or frozen sends no reset and no reply, and its connections would
   * stay "ready" for good; so would a connection whose flow alone was forgotten by a NAT or a load balancer (the
   * subscriber's, idle between messages, is the likeliest). Past it they are cut and reconnected, and the bus is
   * disconnected until Redis answers again. The stream's reader, which blocks in XREAD, must have its answer within
   * this long after the read's own block ends, or its connection alone is cut and made again.
   */
  pingTimeoutMs?: number;
}

/**
 * The wait before reconnection attempt `attempt` (1, 2, ...): 100 ms doubling up to `maxMs`, each wait drawn between
 * half and all of that ("equal jitter"), so that replicas cut off by the same Redis restart do not all come back at the
 * same moment and keep doing so.
 */
export const backoff = (attempt: number, maxMs = 2000, random: () => number = Math.random): number => {
  const ceiling = Math.min(100 * 2 ** Math.min(attempt - 1, 10), maxMs);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
};

/** How long one XREAD waits for entries before it answers none (the reader then looks where the stream stands). */
const READ_BLOCK_MS = 5000;

/** Is stream id `a` before `b` (ms-seq, compared as numbers)? */
export function idBefore(a: string, b: string): boolean {
  const [am, as = '0'] = a.split('-');
  const [bm, bs = '0'] = b.split('-');
  return BigInt(am) < BigInt(bm) || (am === bm && BigInt(as) < BigInt(bs));
}

/**
 * What a connection error says of REDIS_URL, when it is a mistake there rather than a Redis that is away: a password
 * missing or refused, or something other than Redis at that host and port. Null for the others (refused, unreachable,
 * reset: said as "cannot reach"). The URL's password is never in it.
 */
function refusal(e: Error, where: string): string | null {
  const message = errorMessage(e);
  const form = 'redis://:PASSWORD@host:port/0, or redis://USER:PASSWORD@host:port/0 for an ACL user, the password percent-encoded';
  if (/^NOAUTH\b/.test(message))
    return `Redis at ${where} wants a password and REDIS_URL gives none (NOAUTH): write it in REDIS_URL, ${form}`;
  if (/^WRONGPASS\b|^ERR invalid password/.test(message))
    return `Redis at ${where} refused the user name or password in REDIS_URL (${message}): write the ones it takes in REDIS_URL, ${form}`;
  if (/^Unknown RESP type|^Protocol error/i.test(message))
    return `what answers at ${where} is not Redis: check REDIS_URL's host and port (it answered what no Redis sends: ${message.replace(/\s*Please report this\.?/i, '')})`;
  return null;
}

/** A connection error as /ready and the log show it: a TLS connection that timed out may be TLS not spoken there. */
function reachError(e: Error, url: string): string {
  const message = errorMessage(e);
  return /^rediss:/i.test(url) && (e as NodeJS.ErrnoException).code === 'ETIMEDOUT'
    ? `${message} (no TLS connection within 5 s: the host does not answer, or does not speak TLS, which REDIS_URL's rediss:// asks for; redis:// for a Redis without TLS)`
    : message;
}

export class RedisBus extends EventEmitter<{
  message: [channel: string, text: string];
  entry: [text: string];
  connected: [];
  disconnected: [];
}> {
  readonly publisher: Redis;
  readonly subscriber: Redis;
  readonly reader: Redis | null = null;
  private up = false;
  /** Redis confirmed the subscription on the subscriber's current connection. */
  private subscribed = false;
  private closed = false;
  private lastError: string | null = null;
  /** When the state last changed. */
  since = new Date();
  private readonly watchdog: NodeJS.Timeout;
  private pinging = false;
  /** When the reader's command now awaited was sent (or sent again, on a new connection); null: none awaited. */
  private readingSince: number | null = null;
  /**
   * The database REDIS_URL names (its path, 0 without one), asked again on the publisher's every connection before the
   * bus is up (dbChecked): ioredis reports a SELECT that Redis refuses as an error and goes on in database 0, where
   * another deployment's state may be.
   */
  private readonly db: number;
  private dbChecked = false;
  /** Why the bus stays down for good (a database Redis does not have): a mistake in REDIS_URL, not a passing failure. */
  private refused: string | null = null;
  /**
   * Commands Redis refuses to the user of REDIS_URL (NOPERM: an ACL without them), or refuses as a Redis in cluster
   * mode (CROSSSLOT, MOVED), by what the gateway was doing: the
   * bus is connected, yet what needs them never goes out (admin changes, status events) or in (the stream). Shown in
   * `error`, said at error once each until cleared, when that work succeeds again (the ACL was changed).
   */
  private readonly denied = new Map<string, string>();
  private readonly logger: Logger;
  /** Settled once the database was checked on a connection (the reader waits for it before its first read). */
  private readonly dbOnce: Promise<void>;
  private dbOk: () => void = () => undefined;

  constructor({ url, logger, channels, stream, name, maxBackoffMs = 2000, pingTimeoutMs = 5000 }: BusOptions) {
    super();
    this.logger = logger;
    this.db = Number(/^\/(\d+)/.exec(new URL(url).pathname)?.[1] ?? 0);
    this.dbOnce = new Promise((r) => (this.dbOk = r));
    const common: RedisOptions = {
      retryStrategy: (attempt) => backoff(attempt, maxBackoffMs),
      connectionName: name ? `gateway:${name}` : undefined,
      connectTimeout: 5000,
    };
    this.publisher = new Redis(url, { ...common, enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    // subscribed by us on every (re)connection, and the bus is up only once Redis has confirmed it: a replica that
    // catches up (reads the cluster's state) before its subscription is active could miss a change published in
    // between, neither in the state it read nor among the messages it receives
    this.subscriber = new Redis(url, { ...common, autoResubscribe: false, maxRetriesPerRequest: null });
    // where Redis is, for the log (the URL may carry a password)
    const where = (() => {
      const u = new URL(url);
      return `${u.hostname}:${u.port || 6379}`;
    })();
    let reached = false; // once: a plain failure to connect is no longer said (a lost connection is, in update)
    let said: string | null = null; // what was last said of a failure while down (cleared once up)
    this.on('connected', () => (said = null));
    for (const conn of [this.publisher, this.subscriber]) {
      conn.on('ready', () => (reached = true));
      const failed = (e: Error) => {
        const why = refusal(e, where);
        this.lastError = why ?? reachError(e, url);
        if (this.up || this.closed) logger.debug({ error: this.lastError }, 'cluster bus error');
        // a mistake in REDIS_URL (Redis refuses it, or it leads to no Redis): said as such, and again when it comes
        // back after the bus was up (a password changed on Redis' side); retried all the same, as Redis may change
        else if (why !== null && why !== said) {
          said = why;
          logger.error({ redis: where }, `cluster bus: ${why}; retrying; local inference goes on`);
        }
        // at start nothing else says so: /ready and gateway_cluster_bus_connected only (a lost one is logged in update)
        else if (!reached && said === null) {
          said = this.lastError;
          logger.warn(
            { error: this.lastError, redis: where },
            'cluster bus: cannot reach Redis at the host and port of REDIS_URL; retrying; local inference goes on',
          );
        }
      };
      conn.on('error', failed);
      // a server that takes the connection and never answers (a Redis frozen or stopped, whose kernel still accepts; a
      // proxy with no Redis behind it): ioredis' connectTimeout ends with the TCP connection, and its handshake would
      // wait for good, said nowhere. Said after as long (not cut: a new connection would wait the same)
      let handshake: NodeJS.Timeout | undefined;
      conn.on('connect', () => {
        clearTimeout(handshake);
        handshake = setTimeout(() => {
          if (conn.status === 'connect' && !this.closed)
            failed(
              new Error(
                `${where} took the connection but has not answered within 5 s (a Redis frozen, stopped or still loading its data, or a proxy with no Redis behind it)`,
              ),
            );
        }, 5000).unref();
      });
      for (const event of ['ready', 'close'] as const) conn.on(event, () => clearTimeout(handshake));
      for (const event of ['close', 'end'] as const)
        conn.on(event, () => {
          if (conn === this.subscriber) this.subscribed = false;
          this.update(logger);
        });
    }
    this.publisher.on('ready', () => {
      this.dbChecked = false;
      // the database, asked again after ioredis' own SELECT: its refusal comes back here instead of being passed over
      void this.publisher.call('SELECT', String(this.db)).then(
        () => {
          this.dbChecked = this.publisher.status === 'ready';
          this.dbOk();
          this.update(logger);
        },
        (e: unknown) => {
          if (/DB index is out of range|invalid DB index/i.test(errorMessage(e))) {
            this.refused = `REDIS_URL names database ${this.db}, which this Redis does not have (${errorMessage(e)}): write a database it has in REDIS_URL's path (0 to its "databases" setting less one), or raise "databases" in redis.conf; the bus stays down until the server is restarted`;
            logger.error({ redis: where, db: this.db }, `cluster bus: ${this.refused}`);
            for (const c of [this.publisher, this.subscriber, this.reader]) c?.disconnect();
            this.update(logger);
          }
          // another failure (the connection went): the next connection asks again
        },
      );
    });
    this.subscriber.on('ready', () => {
      this.subscriber.subscribe(...channels).then(
        () => {
          this.subscribed = this.subscriber.status === 'ready';
          this.allowed('subscribing');
          this.update(logger);
        },
        (e: unknown) => this.refusedCommand('subscribing', e) || logger.warn({ error: errorMessage(e) }, 'cluster bus subscribe failed'),
      );
    });
    this.subscriber.on('message', (channel: string, text: string) => this.emit('message', channel, text));
    if (stream !== undefined) {
      // its commands wait for the connection (offline queue, no retry limit)
      this.reader = new Redis(url, { ...common, maxRetriesPerRequest: null });
      this.reader.on('error', () => undefined); // the other two connections report Redis' state
      // a command awaited when its connection went is sent again on the new one (ioredis resends it)
      this.reader.on('ready', () => this.readingSince !== null && (this.readingSince = Date.now()));
      void this.read(this.reader, stream, logger, maxBackoffMs);
    }
    this.watchdog = setInterval(() => {
      void this.ping(pingTimeoutMs);
      this.checkReader(pingTimeoutMs, logger);
    }, pingTimeoutMs);
    this.watchdog.unref();
  }

  /** A PING unanswered within `timeoutMs` cuts the connections (see pingTimeoutMs); ioredis reconnects them. */
  private async ping(timeoutMs: number): Promise<void> {
    if (this.closed || !this.up || this.pinging) return;
    this.pinging = true;
    let answered = false;
    // decided after the next read of the sockets (setImmediate runs after the poll phase): a PONG that came while this
    // process was busy past the deadline (a long synchronous task, a GC pause) is read first, not taken for a Redis
    // that hangs
    const timer = setTimeout(
      () =>
        setImmediate(() => {
          if (answered || this.closed) return;
          this.lastError = `Redis did not answer a PING within ${timeoutMs} ms (a partition, or a Redis that hangs)`;
          for (const c of [this.publisher, this.subscriber, this.reader]) c?.disconnect(true);
        }),
      timeoutMs,
    );
    try {
      await Promise.all([this.publisher.ping(), this.subscriber.ping()]);
    } catch {
      // refused, or the connection went: its own events say so
    } finally {
      answered = true;
      clearTimeout(timer);
      this.pinging = false;
    }
  }

  /**
   * The reader's connection cut and made again when its command has had no answer `timeoutMs` past what it may take
   * (a read blocks for READ_BLOCK_MS): its flow went silent while the other connections answer their PINGs. Decided
   * after the next read of the sockets, as the PING is.
   */
  private checkReader(timeoutMs: number, logger: Logger): void {
    const since = this.readingSince;
    if (this.closed || this.reader?.status !== 'ready' || since === null || Date.now() - since <= READ_BLOCK_MS + timeoutMs) return;
    setImmediate(() => {
      if (this.closed || this.readingSince !== since || this.reader?.status !== 'ready') return;
      logger.warn({ waitedMs: Date.now() - since }, 'cluster bus: the stream reader stopped hearing from Redis; reconnecting it');
      this.readingSince = Date.now();
      this.reader.disconnect(true);
    });
  }

  /**
   * Read `stream` entry after entry until closed, from where it ended when this process started (or from its end when
   * first reached, if that is earlier): a replica started while Redis is down still gets what the others add once it
   * is back. It reads on from the last entry read, and looks where the stream stands after a lost connection and after
   * each quiet read: a stream that is gone, or ends before the last entry read (deleted, or a Redis that restarted
   * empty, whose clock, which its new ids come from, may be behind the old one's), is read from its start.
   */
  private async read(reader: Redis, stream: string, logger: Logger, maxBackoffMs: number): Promise<void> {
    const started = `${Date.now()}-0`;
    await this.dbOnce; // (a database Redis does not have: never read, the bus stays down)
    let last: string | null = null;
    let look = true;
    // (a read it was waiting on when the connection went is sent again as it was; the next one looks first)
    reader.on('ready', () => (look = true));
    for (let failures = 0; !this.closed;) {
      try {
        if (look || last === null) {
          look = false;
          this.readingSince = Date.now();
          const end = (await reader.xrevrange(stream, '+', '-', 'COUNT', 1))[0]?.[0] ?? null;
          if (last === null) last = end === null ? '0-0' : idBefore(end, started) ? end : started;
          else if (end === null || idBefore(end, last)) last = '0-0';
        }
        this.readingSince = Date.now();
        const reply: [string, [string, string[]][]][] | null = await reader.xread(
          'COUNT',
          256,
          'BLOCK',
          READ_BLOCK_MS,
          'STREAMS',
          stream,
          last,
        );
        this.readingSince = null;
        failures = 0;
        this.allowed('reading the stream');
        if (!reply) look = true;
        for (const [, entries] of reply ?? [])
          for (const [id, fields] of entries) {
            last = id;
            const at = fields.indexOf('m');
            if (at % 2 === 0 && at + 1 < fields.length) this.emit('entry', fields[at + 1]);
          }
      } catch (e) {
        this.readingSince = null;
        if (this.closed) return;
        look = true;
        // Redis refused the read (the key is not a stream): tried again after a backoff
        // (one the ACL refuses is said by refusedCommand, at error)
        failures++;
        if (!this.refusedCommand('reading the stream', e) && failures === 1)
          logger.warn({ error: errorMessage(e), stream }, 'cluster bus: reading the stream failed; retrying');
        await new Promise((r) => setTimeout(r, backoff(failures, maxBackoffMs)));
      }
    }
  }

  /** Both connections are ready, and Redis confirmed the subscription. */
  get connected(): boolean {
    return this.up;
  }

  get error(): string | null {
    return this.up ? (this.denied.values().next().value ?? null) : (this.refused ?? this.lastError);
  }

  /**
   * A command failed while `doing` (what the gateway was doing, for the log): if Redis refused it to REDIS_URL's user
   * (NOPERM) or as a Redis in cluster mode, noted for `error` and said at error once, and true; the caller retries as
   * for any refusal.
   */
  refusedCommand(doing: string, e: unknown): boolean {
    const message = errorMessage(e);
    let why: string;
    // (a command a script runs: the script's error)
    if (/^NOPERM\b|^ERR The user executing the script can't/.test(message))
      why = `the Redis user of REDIS_URL may not run what the gateway needs (${doing}: ${message}): give it the commands, keys and channels README's Scale out lists (ACL SETUSER), or write a user that has them in REDIS_URL; retried meanwhile`;
    // one script reads and writes two keys, which Redis Cluster refuses (or sends to another node): not supported
    else if (/^(CROSSSLOT|MOVED|ASK)\b/.test(message))
      why = `REDIS_URL leads to a Redis in cluster mode, which the bus does not support (${doing}: ${message}): give the replicas one Redis (a primary) not in cluster mode; retried meanwhile`;
    else return false;
    if (!this.denied.has(doing)) this.logger.error(`cluster bus: ${why}`); // (EVALSHA and EVAL alternate: said once)
    this.denied.set(doing, why);
    return true;
  }

  /** What was being done while `doing` succeeded: a refusal noted for it is over. */
  allowed(doing: string): void {
    this.denied.delete(doing);
  }

  private update(logger: Logger): void {
    const up =
      !this.closed &&
      this.refused === null &&
      this.dbChecked &&
      this.publisher.status === 'ready' &&
      this.subscriber.status === 'ready' &&
      this.subscribed;
    if (up === this.up) return;
    this.up = up;
    this.since = new Date();
    if (up) {
      this.lastError = null;
      logger.info('cluster bus connected');
      this.emit('connected');
    } else {
      this.lastError ??= 'the connection to Redis was closed';
      if (!this.closed) logger.warn({ error: this.lastError }, 'cluster bus disconnected; retrying, local inference goes on');
      this.emit('disconnected');
    }
  }

  /** QUIT each connection (after its commands' replies), or cut it after `timeoutMs` (a Redis that holds writes). */
  async close({ timeoutMs = 2000 }: { timeoutMs?: number } = {}): Promise<void> {
    this.closed = true;
    clearInterval(this.watchdog);
    this.reader?.disconnect(); // its read blocks: a QUIT would wait behind it
    await Promise.all(
      [this.publisher, this.subscriber].map(async (c) => {
        if (c.status !== 'ready') return c.disconnect();
        let timer: NodeJS.Timeout | undefined;
        const quit = c.quit().then(
          () => true,
          () => false,
        );
        const done = await Promise.race([quit, new Promise<false>((r) => (timer = setTimeout(() => r(false), timeoutMs)))]);
        clearTimeout(timer);
        if (!done) c.disconnect();
      }),
    );
  }
}
