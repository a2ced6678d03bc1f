import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import {
  GraphQLError as GraphQLErrorClass,
  getOperationAST,
  type ExecutionArgs,
  type ExecutionResult,
  type GraphQLError,
  type GraphQLFormattedError,
} from 'graphql';
import type { YogaServerInstance } from 'graphql-yoga';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import { GRAPHQL_TRANSPORT_WS_PROTOCOL } from 'graphql-ws';
import { ErrorCode, GatewayError, clientGone, errorMessage } from '../../errors.ts';
import { RequestHold, type BytesInFlight } from '../../bytes-in-flight.ts';
import { ClientAddresses, UNATTRIBUTED } from '../../client-address.ts';
import { FORWARDING_HEADERS, accessFor, type Tokens } from '../../inference/access.ts';
import type { Context } from './context.ts';
import type { RequestBudget } from '../../inference/budget.ts';
import { noteErrorCodes, requestContext, type Logger, type RequestContext } from '../../log.ts';
import { isClosing } from '../../closing-connections.ts';
import { toGraphQLError, withHint } from './errors.ts';
import { jsonValueCount } from '../../json-text.ts';
import { tooManyVariableValues } from './plugins/variable-values.ts';
import { documentTooLarge } from './plugins/limits.ts';

export interface WebSocketLimits {
  /** Is an upgrade answered at all (the HTTP server's host check)? */
  allowUpgrade?: (req: IncomingMessage) => boolean;
  maxConnectionsPerClient?: number;
  maxSubscriptionsPerConnection?: number;
  maxPayloadBytes?: number;
  /** Most JSON values one message holds (MAX_VARIABLE_VALUES): an operation in a message past it is refused. */
  maxVariableValues?: number;
  /** Largest document (MAX_QUERY_BYTES), as over HTTP. */
  maxQueryBytes?: number;
  /** The process's budget of request bytes (MAX_BYTES_IN_FLIGHT): an operation holds its message until it ends. */
  bytesInFlight?: BytesInFlight;
  /** Who each connection's client is (TRUSTED_PROXIES); default: its peer. */
  clients?: ClientAddresses;
  /** Where a connection's protocol errors go (debug: they are the client's), and each operation's request line. */
  logger?: Logger;
  /**
   * A connection whose client answers no ping within this, or, while its reading is held (holdReading), reads none of
   * what it is sent, is closed (WS_KEEPALIVE_MS; graphql-ws's own keep-alive, 12 s, is replaced).
   */
  keepAliveMs?: number;
}

/** A message's bytes in one piece (a fragmented message comes as a list). */
const bytesOf = (data: RawData): Uint8Array =>
  Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;

/** At most `max` bytes that are not JSON whitespace (space, tab, line feed, carriage return). */
function smallButForWhitespace(bytes: Uint8Array, max: number): boolean {
  let n = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b !== 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d && ++n > max) return false;
  }
  return true;
}

const rawBytes = (data: RawData): number =>
  Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data instanceof ArrayBuffer ? data.byteLength : data.length;

type Root = {
  execute: (a: ExecutionArgs) => unknown;
  subscribe: (a: ExecutionArgs) => unknown;
  log: RequestContext;
  /** Run a query or mutation in its connection's turn (inTurn). */
  inTurn: (run: () => unknown) => unknown;
};

/**
 * An operation's line in the request log, as an HTTP request has: its own request id (the context its work logs under),
 * the codes of the errors its answers held, when it began, and what it is once parsed.
 */
type Logged = { log: RequestContext; t0: number; operation?: string; answered: boolean; done: boolean };

/**
 * A connection's failures are the client's, and said as such (a debug line) instead of graphql-ws's plain-text stack on
 * stderr, one per failure: a frame past the message limit (ws closes the connection 1009 itself, then emits the error),
 * and an answer written after the client has gone (graphql-ws's send rejects, and its message handler prints it).
 * Registered before graphql-ws's own connection listener, which adds its listeners to the same socket.
 */
function quietFailures(socket: WebSocket, log: (err: unknown) => void): void {
  const emit = socket.emit.bind(socket);
  socket.emit = ((event: string | symbol, ...args: unknown[]) => {
    if (event !== 'error') return emit(event, ...args);
    log(args[0]);
    return true;
  }) as typeof socket.emit;
  const send = socket.send.bind(socket);
  socket.send = ((data: unknown, ...rest: unknown[]) => {
    const done = rest.at(-1);
    if (typeof done !== 'function') return send(data as never, ...(rest as []));
    const options = rest.length > 1 ? rest[0] : {};
    return send(data as never, options as never, (err?: Error) => {
      // gone: closed, or reset while its answers were written (the write fails before ws sees the close)
      const code = (err as NodeJS.ErrnoException | undefined)?.code;
      if (err && (socket.readyState !== WebSocket.OPEN || code === 'ECONNRESET' || code === 'EPIPE')) {
        log(err);
        done();
      } else done(err);
    });
  }) as typeof socket.send;
}

/**
 * Is the client there? Every `ms`, a ping whose pong must come before the next (graphql-ws's rule); but while the
 * connection's reading is held (holdReading) its pong cannot be read: then it is there while it reads what it is sent
 * (what the server holds for it goes down from one check to the next). A client that reads nothing is closed after one
 * to two periods, with what the server held for it.
 */
function keepAlive(socket: WebSocket, ms: number): void {
  let answered = true;
  let held = Infinity;
  socket.on('pong', () => (answered = true));
  // a client's pong travels behind the messages it sent before it, which are read one per turn of the event loop: one
  // that pipelined many operations has its pong read late though it answered at once. A message read since the ping
  // says it is there as well as a pong would (one that then goes silent is closed a period after its last message)
  socket.on('message', () => (answered = true));
  const check = setInterval(() => {
    if (socket.readyState !== WebSocket.OPEN) return;
    if (socket.isPaused) {
      const left = socket.bufferedAmount;
      if (left >= held) return void socket.terminate();
      held = left;
      return;
    }
    held = Infinity;
    // a pong held behind a hold since the ping (it may have ended just now, its pong not yet read) is not missing
    if (!answered && !heldSincePing.has(socket)) return void socket.terminate();
    heldSincePing.delete(socket);
    answered = false;
    socket.ping();
  }, ms);
  socket.once('close', () => clearInterval(check));
}

/** Connections whose reading was held since their last keep-alive ping. */
const heldSincePing = new WeakSet<WebSocket>();

/**
 * Stop reading a connection until what the server has to send it is down to `resumeAt` bytes (checked every 20 ms
 * while held: ws tells no drain). What the client sends meanwhile waits in the kernel's buffers, then on its side.
 */
function holdReading(socket: WebSocket, resumeAt: number): void {
  if (socket.isPaused) return;
  socket.pause();
  heldSincePing.add(socket);
  const check = setInterval(() => {
    if (socket.readyState !== WebSocket.OPEN) clearInterval(check);
    else if (socket.bufferedAmount <= resumeAt) {
      clearInterval(check);
      socket.resume();
    }
  }, 20);
}

/** Queries and mutations of one connection run at once (as an HTTP connection's pipelined requests, src/server/http.ts). */
const MAX_RUNNING = 8;
/** Per connection: its queries and mutations running, and those waiting their turn (each runs, or is let go unrun). */
const lanes = new WeakMap<WebSocket, { running: number; waiting: { go: () => void; drop: () => void }[]; check: NodeJS.Timeout | null }>();

/**
 * Run a query or mutation of a connection in its turn: at most MAX_RUNNING at once, and none while the answers held for
 * its client (ws's bufferedAmount) are past `max` bytes. Holding the reading (holdReading) stops new messages, but not
 * those ws had read in already, nor the operations they started: each made its answer and held it until sent (h55: 1.5
 * MB answers, 42 MB held for one connection that read nothing, 1.4 GB for 16 connections of one client). A slot is
 * given again a turn of the event loop after its operation ended, once graphql-ws has sent its answer, so that each
 * answer is counted before the next is made. One that waits is let go without running (CANCELLED, to nobody) when its
 * client completes it or its connection closes. Subscriptions do not wait: their events are small.
 */
function inTurn(socket: WebSocket, max: number, signal: AbortSignal, run: () => unknown): unknown {
  let lane = lanes.get(socket);
  if (!lane) lanes.set(socket, (lane = { running: 0, waiting: [], check: null }));
  const l = lane;
  const open = () => socket.readyState === WebSocket.OPEN;
  const behind = () => socket.bufferedAmount > max;
  const next = () => {
    if (!open()) for (const w of l.waiting.splice(0)) w.drop();
    else if (l.waiting.length > 0 && l.running < MAX_RUNNING && !behind()) l.waiting.shift()!.go();
    if (l.waiting.length === 0 && l.check) {
      clearInterval(l.check);
      l.check = null;
    }
  };
  const start = () => {
    l.running++;
    const ended = () =>
      setImmediate(() => {
        l.running--;
        next();
      });
    try {
      return Promise.resolve(run()).finally(ended);
    } catch (e) {
      ended();
      throw e;
    }
  };
  const cancelled = () => ({ errors: [toGraphQLError(clientGone())] });
  if (!open() || signal.aborted) return cancelled();
  if (l.waiting.length === 0 && l.running < MAX_RUNNING && !behind()) return start();
  if (behind()) holdReading(socket, max / 2);
  return new Promise((resolve, reject) => {
    const waiter = {
      go: () => {
        signal.removeEventListener('abort', dropped);
        try {
          resolve(start());
        } catch (e) {
          reject(e);
        }
      },
      drop: () => {
        signal.removeEventListener('abort', dropped);
        resolve(cancelled());
      },
    };
    const dropped = () => {
      const k = l.waiting.indexOf(waiter);
      if (k >= 0) l.waiting.splice(k, 1);
      waiter.drop();
    };
    signal.addEventListener('abort', dropped, { once: true });
    l.waiting.push(waiter);
    // ws tells no drain: checked every 20 ms while some wait
    l.check ??= setInterval(next, 20);
  });
}

/**
 * graphql-ws (the graphql-transport-ws protocol) on the same port and path as HTTP, through yoga's envelop: the same
 * schema, plugins, limits and error masking. Connections per client address and operations per connection are bounded.
 */
export function attachWebSocket(
  server: Server,
  yoga: YogaServerInstance<Record<string, unknown>, Context>,
  tokens: Tokens,
  {
    maxConnectionsPerClient = 16,
    maxSubscriptionsPerConnection = 32,
    maxPayloadBytes = 1024 * 1024,
    maxVariableValues = 65_536,
    maxQueryBytes = 100_000,
    allowUpgrade = () => true,
    bytesInFlight,
    clients = new ClientAddresses(),
    logger,
    keepAliveMs = 12_000,
  }: WebSocketLimits = {},
): { close(timeoutMs: number): Promise<void>; readonly connections: number; readonly unsentBytes: number } {
  const clientAddress = (req: IncomingMessage) => clients.of(req.socket.remoteAddress, req.headers['x-forwarded-for']);
  const connections = new Map<string, number>();
  // noServer: upgrades are taken from the HTTP server here, so the WebSocket server never sees (and never re-emits)
  // the HTTP server's own errors, such as a port in use at start
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: maxPayloadBytes,
    // each message in a turn of the event loop of its own: ws handed every message of what it read to graphql-ws at
    // once, and libuv reads up to 2 MB from a socket in one go, so 20,000 small operations in one write (each refused
    // past MAX_SUBSCRIPTIONS_PER_CONNECTION) held every other client 2-3 s; a connection behind on its messages is not
    // read meanwhile
    allowSynchronousEvents: false,
    verifyClient: (info, done) => {
      const client = clientAddress(info.req);
      if (client === null) done(false, 400, UNATTRIBUTED);
      else if ((connections.get(client) ?? 0) >= maxConnectionsPerClient)
        done(
          false,
          429,
          `more than ${maxConnectionsPerClient} WebSocket connections from one client (MAX_WS_CONNECTIONS_PER_CLIENT): close one, or share one connection between subscriptions`,
        );
      else done(true);
    },
  });
  server.on('upgrade', (req, socket, head) => {
    // Node takes its own error listener off an upgraded socket: a write that fails must not throw where nobody listens
    socket.on('error', () => socket.destroy());
    // sent behind an answer that closes the connection (the server's side may have ended already): not upgraded
    if (isClosing(socket as Socket)) return void socket.destroy();
    if (!allowUpgrade(req)) {
      socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n');
      return;
    }
    if ((req.url ?? '').split('?')[0] !== '/graphql') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (ws.protocol === GRAPHQL_TRANSPORT_WS_PROTOCOL) return void wss.emit('connection', ws, req);
      // another subprotocol, or none: told which to speak, never a connection (nothing counted, nothing held)
      ws.on('error', () => {});
      closeFirmly(ws, maxPayloadBytes);
      ws.close(4406, notSpoken(ws.protocol, req.headers['sec-websocket-protocol'] ?? ''));
    });
  });
  /** The size of the message being handled on a connection (graphql-ws hands a subscribe to onSubscribe at once). */
  const messageBytes = new WeakMap<object, number>();
  /** Connections whose message being handled holds more than maxVariableValues values (counted from its bytes). */
  const overValues = new WeakSet<object>();
  /** Each connection's client, read once when it opens. */
  const clientOf = new WeakMap<object, string>();
  wss.on('connection', (socket, req) => {
    const addr = clientAddress(req) ?? 'unknown'; // verifyClient refused a connection that names no client
    clientOf.set(socket, addr);
    quietFailures(socket, (err) => logger?.debug({ err: errorMessage(err), client: addr }, 'websocket connection error'));
    closeFirmly(socket, maxPayloadBytes);
    connections.set(addr, (connections.get(addr) ?? 0) + 1);
    if (bytesInFlight) socket.prependListener('message', (data: RawData) => messageBytes.set(socket, rawBytes(data)));
    // a client that does not read its answers is not read either, as over TCP: graphql-ws answers a ping with its
    // payload, and a client that sent 1 MB pings and read nothing had the server read on and keep every pong (250 MB
    // of pings: 2.6 GB of RSS). Past a message's worth of answers held for it, its next message is the last read until
    // they are sent (its subscriptions' events still go out)
    const holdIfBehind = () => {
      if (socket.bufferedAmount > maxPayloadBytes) holdReading(socket, maxPayloadBytes / 2);
    };
    socket.prependListener('message', holdIfBehind);
    // its values counted before graphql-ws parses it; an operation in it is refused before its variables are coerced
    socket.prependListener('message', (data: RawData) => {
      if (jsonValueCount(bytesOf(data), maxVariableValues) > maxVariableValues) overValues.add(socket);
      else overValues.delete(socket);
    });
    socket.prependListener('ping', holdIfBehind);
    keepAlive(socket, keepAliveMs);
    socket.on('close', () => {
      const n = (connections.get(addr) ?? 1) - 1;
      if (n <= 0) connections.delete(addr);
      else connections.set(addr, n);
    });
  });
  /**
   * Operations in progress per connection, each with its own signal (the request's signal over HTTP): it ends when
   * the operation completes or the connection closes, so work queued for a client that left is dropped, and each
   * operation is a request of its own for what is shared between requests (decoding threads). Each holds its message's
   * bytes of the budget (MAX_BYTES_IN_FLIGHT) until then: a subscription keeps its variables as long as it lasts.
   * Keyed by the message's payload, which graphql-ws hands to onSubscribe, onComplete and onError alike, not by its id:
   * a client may use an id again as soon as it has completed it, before the operation it named has finished ending.
   * A client's `complete` for a query or mutation that runs lets its work go at once (graphql-ws itself only forgets
   * the id, and calls onComplete when the work has ended); until that operation has ended its id is refused for a new
   * one, since graphql-ws would send the old operation's answer under it and then forget the new one.
   */
  type Operation = { abort: AbortController; hold: RequestHold | null; id: string };
  /** Longest operation id: a complete message is read when small (below), so a longer id could not let its work go. */
  const MAX_ID_LENGTH = 128;
  const completedByClient = (socket: object, data: RawData) => {
    // a complete message is small, but whitespace (which JSON allows anywhere between tokens) may pad it: parsed a
    // second time only if it is at most 512 bytes without it (a larger message stops being counted past that)
    const bytes = bytesOf(data);
    if (bytes.length > 512 && !smallButForWhitespace(bytes, 512)) return;
    let message: { type?: unknown; id?: unknown };
    try {
      message = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return; // graphql-ws answers it
    }
    if (message?.type !== 'complete') return;
    for (const op of operations.get(socket)?.values() ?? []) if (op.id === message.id) op.abort.abort();
  };
  const operations = new WeakMap<object, Map<object, Operation>>();
  let closing = false;
  const endOperation = (op: Operation | undefined) => {
    op?.hold?.release();
    op?.abort.abort();
  };
  const end = (socket: object, payload: object) => {
    const ops = operations.get(socket);
    const op = ops?.get(payload);
    ops?.delete(payload);
    endOperation(op);
  };
  /** Each operation's request line, by its message's payload (as operations are), written once when it ends. */
  const requestLines = new WeakMap<object, Logged>();
  const logLine = (logged: Logged | undefined) => {
    if (!logged || logged.done) return;
    logged.done = true;
    const { log, t0, operation } = logged;
    requestContext.run(log, () =>
      logger?.info(
        {
          transport: 'websocket',
          path: '/graphql',
          ...(operation ? { operation } : {}),
          ms: Math.round((performance.now() - t0) * 10) / 10,
          ...(log.errorCodes ? { errors: log.errorCodes } : {}),
        },
        'request',
      ),
    );
  };
  /** The schema's mutation fields, for the hints of errors (read once, at the first). */
  let mutations: Set<string> | undefined;
  const authOf = (ctx: { connectionParams?: Record<string, unknown>; extra: { request: IncomingMessage } }) =>
    (ctx.connectionParams?.authorization as string | undefined) ?? ctx.extra.request.headers.authorization ?? null;
  useServer(
    {
      // run in the operation's request context, as an HTTP request's work is: what is logged meanwhile carries its id
      // (a query or mutation in its connection's turn: its answer is held until its client reads it)
      execute: (args) => {
        const root = args.rootValue as Root;
        return root.inTurn(() => requestContext.run(root.log, () => root.execute(args))) as never;
      },
      subscribe: (args) => {
        const root = args.rootValue as Root;
        return requestContext.run(root.log, () => root.subscribe(args)) as never;
      },
      onConnect: (ctx) => {
        // the token of the connection, as a header would carry it: anything else would fail each operation later (a
        // 4500 "internal error" at its first)
        const given = ctx.connectionParams?.authorization;
        if (given !== undefined && given !== null && (typeof given !== 'string' || !/^[\t\x20-\x7e\x80-\xff]*$/.test(given))) {
          ctx.extra.socket.close(4400, 'connectionParams.authorization must be a string, as the header: "Bearer <token>"');
          return false;
        }
        try {
          accessFor(authOf(ctx), tokens).checkApi();
          return true;
        } catch (e) {
          // 4403, as graphql-ws closes a refused connection, with the reason HTTP gives (it said only "Forbidden"); a
          // close reason holds at most 123 bytes
          const why = e instanceof GatewayError ? `${e.code}: ${e.message}` : 'FORBIDDEN';
          ctx.extra.socket.close(4403, Buffer.from(why).subarray(0, 123).toString());
          return false;
        }
      },
      onSubscribe: async (ctx, id, payload) => {
        const logged: Logged = { log: { requestId: randomUUID() }, t0: performance.now(), answered: false, done: false };
        requestLines.set(payload, logged);
        let ops = operations.get(ctx.extra.socket);
        if (!ops) {
          const mine = (ops = new Map());
          operations.set(ctx.extra.socket, mine);
          ctx.extra.socket.prependListener('message', (data: RawData) => completedByClient(ctx.extra.socket, data));
          ctx.extra.socket.once('close', () => {
            for (const op of mine.values()) endOperation(op);
            mine.clear();
          });
        }
        if (overValues.has(ctx.extra.socket)) return [tooManyVariableValues(maxVariableValues)];
        if (id.length > MAX_ID_LENGTH)
          return [
            toGraphQLError(
              new GatewayError(
                ErrorCode.INVALID_INPUT,
                `an operation id has at most ${MAX_ID_LENGTH} characters, got ${id.length}: use a shorter id (a counter, a UUID)`,
              ),
            ),
          ];
        // shutting down: what is in flight is answered, nothing new starts (a client reconnects elsewhere)
        if (closing)
          return [
            toGraphQLError(new GatewayError(ErrorCode.QUEUE_FULL, 'the server is shutting down: send it again (another replica answers)')),
          ];
        for (const op of ops.values()) {
          if (op.id !== id) continue;
          const message = `operation id "${id}" is still in use: the operation completed under it has not ended yet; use a new id for each operation`;
          const refusal = toGraphQLError(new GatewayError(ErrorCode.INVALID_INPUT, message));
          // graphql-ws holds the id for this subscribe already, and would send the refusal under it while the old
          // operation ends: that one, finding its id held, sent its (cancelled) answer after the refusal, where a
          // client that tried again took it for the new operation's. The id is let go here, before anything waits,
          // and the refusal sent from here: graphql-ws sends nothing for an id it does not hold, nor does the old one.
          delete (ctx.subscriptions as Record<string, unknown>)[id];
          ctx.extra.socket.send(JSON.stringify({ id, type: 'error', payload: [refusal.toJSON()] }));
          return [refusal];
        }
        if (ops.size >= maxSubscriptionsPerConnection) {
          return [
            toGraphQLError(
              new GatewayError(ErrorCode.LIMIT_EXCEEDED, `more than ${maxSubscriptionsPerConnection} operations on one connection`),
            ),
          ];
        }
        const auth = authOf(ctx);
        // what the access rules read: the token, where a browser page comes from, and whether a proxy relayed the
        // upgrade (admin without ADMIN_TOKEN is refused through a proxy, as over HTTP)
        const upgrade = ctx.extra.request.headers;
        const headers = new Headers(auth ? { authorization: auth } : {});
        for (const name of ['origin', 'host', ...FORWARDING_HEADERS]) {
          const value = upgrade[name];
          if (value !== undefined) headers.set(name, Array.isArray(value) ? value.join(', ') : value);
        }
        const abort = new AbortController();
        const { schema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          request: { headers, signal: abort.signal },
          params: payload,
        });
        const tooLarge = documentTooLarge(payload.query, maxQueryBytes);
        if (tooLarge) return [tooLarge];
        let document;
        try {
          document = parse(payload.query);
        } catch (e) {
          return [e as GraphQLError];
        }
        const errors = validate(schema, document);
        if (errors.length) return errors;
        logged.operation = getOperationAST(document, payload.operationName)?.operation;
        // the message's size, read before anything here waited (graphql-ws calls this as the message comes)
        const client = clientOf.get(ctx.extra.socket) ?? 'unknown';
        const bytes = bytesInFlight ? (messageBytes.get(ctx.extra.socket) ?? 0) : 0;
        // held as an HTTP request's body is (RequestHold), with what the server reads for it (files under IMAGE_ROOTS)
        const hold = bytesInFlight ? new RequestHold(bytesInFlight, client) : null;
        const refused = hold?.take(bytes);
        if (refused) return [toGraphQLError(refused)];
        ops.set(payload, { abort, hold, id });
        const contextValue = await contextFactory();
        const { budget } = contextValue as { budget?: RequestBudget }; // the server's context (index.ts)
        if (hold && budget) budget.memory = hold;
        return {
          schema,
          operationName: payload.operationName,
          document,
          variableValues: payload.variables,
          contextValue,
          rootValue: {
            execute,
            subscribe,
            log: logged.log,
            inTurn: (run) => inTurn(ctx.extra.socket, maxPayloadBytes, abort.signal, run),
          } satisfies Root,
        };
      },
      onComplete: (ctx, _id, payload) => {
        const logged = requestLines.get(payload);
        // a query or mutation that ends unanswered: its client completed it, or its connection closed, before its answer
        if (logged && !logged.answered && logged.operation !== 'subscription') noteErrorCodes([ErrorCode.CANCELLED], logged.log);
        logLine(logged);
        end(ctx.extra.socket, payload);
      },
      onError: (ctx, _id, payload, errors) => {
        const logged = requestLines.get(payload);
        if (logged)
          noteErrorCodes(
            errors.map((e) => e.extensions?.code),
            logged.log,
          );
        logLine(logged);
        end(ctx.extra.socket, payload);
        // with what to do instead, as HTTP says it (useRequestErrorCodes)
        const named = (mutations ??= new Set(Object.keys(yoga.getEnveloped().schema.getMutationType()?.getFields() ?? {})));
        return errors.map((e) => {
          const message = withHint(e.message, named, payload.operationName);
          return asOverHttp(
            message === e.message ? e : new GraphQLErrorClass(message, { nodes: e.nodes, path: e.path, extensions: e.extensions }),
          );
        });
      },
      // (a result without yoga's HTTP hint goes as it is)
      onNext: (_ctx, _id, payload, _args, result: ExecutionResult) => {
        const logged = requestLines.get(payload);
        if (logged) {
          logged.answered = true;
          if (result.errors?.length)
            noteErrorCodes(
              result.errors.map((e) => e.extensions?.code),
              logged.log,
            );
        }
        return result.errors?.some((e) => e.extensions?.http !== undefined)
          ? { ...result, errors: result.errors.map(asOverHttp) }
          : undefined;
      },
    },
    wss,
    0, // keepAlive below instead: graphql-ws's would close a client that reads, slowly, while its reading is held
  );
  // the handshake takes the client's own subprotocol when it asks for none this server speaks, so that the close that
  // follows says which to speak: without one it asked for, browsers and ws fail the connection as a bare 1006
  wss.options.handleProtocols = (protocols) =>
    protocols.has(GRAPHQL_TRANSPORT_WS_PROTOCOL) ? GRAPHQL_TRANSPORT_WS_PROTOCOL : (protocols.values().next().value ?? false);
  return {
    get connections() {
      return wss.clients.size;
    },
    /** Bytes of answers its connections hold, not yet taken by the network. */
    get unsentBytes() {
      let n = 0;
      for (const c of wss.clients) n += c.bufferedAmount;
      return n;
    },
    /** Close every connection (1001); one that has not answered within `timeoutMs` is cut (ws would wait 30 s). */
    async close(timeoutMs: number) {
      // the queries and mutations in flight are answered first, as HTTP requests are (subscriptions were completed)
      closing = true;
      const deadline = Date.now() + timeoutMs;
      const inFlight = () => [...wss.clients].some((c) => (operations.get(c)?.size ?? 0) > 0);
      while (inFlight() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const c of wss.clients) c.close(1001, 'server shutting down');
      const closed = new Promise<void>((resolve) => wss.close(() => resolve()));
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now()))))]);
      clearTimeout(timer);
      for (const c of wss.clients) c.terminate();
      await closed;
    },
  };
}

/** How long a client has to answer a close the server sent before its connection is cut (ws waits 30 s). */
const CLOSE_ANSWER_MS = 2000;

/**
 * The reason a client of other WebSocket subprotocols (`asked`, the header's list; `protocol` the one the handshake took)
 * is closed with: at most 123 bytes, as a close reason holds.
 */
function notSpoken(protocol: string, asked: string): string {
  if (protocol === '') return 'no subprotocol: ask for graphql-transport-ws (the graphql-ws client library speaks it)';
  if (protocol === 'graphql-ws')
    return 'graphql-ws (subscriptions-transport-ws) is not spoken here: use graphql-transport-ws (the graphql-ws client library)';
  const all = asked
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .join(', ');
  const named = all.length > 40 ? `${all.slice(0, 37)}...` : all;
  return `${named}: not spoken here: use the graphql-transport-ws subprotocol (the graphql-ws client library)`;
}

/**
 * The server's closes of a connection. ws closes one whose message is past its limit with 1009 and no reason: the
 * close says which limit, and what to do (at most 123 bytes, as a close reason may hold). And a client that does not
 * read the close (nor anything: a client that sent a message too large and stopped reading) is cut after
 * CLOSE_ANSWER_MS, where ws waited 30 s for its answer, the connection and its slot of MAX_WS_CONNECTIONS_PER_CLIENT
 * held all along.
 */
function closeFirmly(socket: WebSocket, maxBytes: number): void {
  const close = socket.close.bind(socket);
  socket.close = (code?: number, reason?: string | Buffer) => {
    close(
      code,
      code === 1009 && !reason?.length
        ? `a message is at most ${maxBytes} bytes (MAX_WS_MESSAGE_BYTES); send large photos as multipart uploads over HTTP`
        : reason,
    );
    const cut = setTimeout(() => socket.terminate(), CLOSE_ANSWER_MS);
    socket.once('close', () => clearTimeout(cut));
  };
}

/**
 * An error as HTTP answers it: yoga's `extensions.http` (the status and headers of its HTTP answer, stripped there
 * when it writes one) is no part of it over a WebSocket.
 */
function asOverHttp(error: GraphQLError): GraphQLFormattedError {
  const formatted = error.toJSON();
  if (!formatted.extensions || !('http' in formatted.extensions)) return formatted;
  // eslint-disable-next-line @typescript-eslint/no-unused-vars
  const { http, ...extensions } = formatted.extensions;
  return { ...formatted, extensions };
}
