import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { ErrorCode, GatewayError } from '../errors.ts';
import { noteErrorCodes, requestContext, type Logger, type RequestContext } from '../log.ts';
import { hostAllowed } from './hosts.ts';
import { sendJson } from '../send-json.ts';
import { jsonTooLarge, parsedAsJson } from '../json-text.ts';
import { capConnections } from '../connections.ts';
import { RequestHold, setHold, type BytesInFlight } from '../bytes-in-flight.ts';
import { ClientAddresses, UNATTRIBUTED } from '../client-address.ts';
import { lingerOnClose } from './linger.ts';
import { isClosing, markClosing } from '../closing-connections.ts';

/** A protocol (or the operations endpoints) mounted on the HTTP port. */
export interface Route {
  /** Does this route answer that path? */
  match(pathname: string): boolean;
  handle(req: IncomingMessage, res: ServerResponse): void;
  /**
   * Is this request's body parsed whole as JSON text (bounded by MAX_JSON_BODY_BYTES)? Default: by its content type
   * (parsedAsJson); a route whose bodies say otherwise (KServe's binary data) answers for itself.
   */
  parsesJson?(req: IncomingMessage): boolean;
  /** The error body this route's clients expect (default: GraphQL's `{"errors":[...]}`). */
  errorBody?(code: string, message: string): unknown;
}

export interface HttpOptions {
  logger: Logger;
  routes: readonly Route[];
  /** Largest request body; refused from Content-Length before anything is read. */
  maxBodyBytes: number;
  /** Largest JSON body (parsed on the event loop), refused the same way, or as it comes when sent chunked. */
  maxJsonBodyBytes?: number;
  /** Host names answered besides IP addresses and localhost (see hosts.ts). */
  allowedHosts?: readonly string[];
  /** Open connections in all, and per client address: past them a new connection is closed at once. */
  maxConnections?: number;
  maxConnectionsPerClient?: number;
  /** Who each request's client is (TRUSTED_PROXIES); default: its peer. */
  clients?: ClientAddresses;
  /** A client must send its headers, and its whole request, within these (slow bodies are cut). */
  headersTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Paths not worth a log line per request (probes and scrapes). */
  quietPaths?: readonly string[];
  /** The process's budget of request bytes (MAX_BYTES_IN_FLIGHT): what each body holds is countBody()'s, until answered. */
  bytesInFlight?: BytesInFlight;
}

const graphqlErrorBody = (code: string, message: string) => ({ errors: [{ message, extensions: { code } }] });

/**
 * The one HTTP listener: each request gets a request id (a sane `x-request-id` from the client, else a new one),
 * echoed in the response and carried by every log line written while it is handled; one log line per request; the
 * body limit; then the first route whose path matches.
 */
export function createHttpServer({
  logger,
  routes,
  maxBodyBytes,
  maxJsonBodyBytes = Infinity,
  allowedHosts = [],
  maxConnections = 2048,
  maxConnectionsPerClient = 256,
  headersTimeoutMs = 15_000,
  requestTimeoutMs = 120_000,
  quietPaths = ['/health', '/ready', '/metrics'],
  bytesInFlight,
  clients = new ClientAddresses(),
}: HttpOptions): Server {
  // requestTimeout and headersTimeout are enforced by a periodic check; Node checks every 30 s by default
  const server = createServer(
    {
      connectionsCheckingInterval: Math.min(1000, headersTimeoutMs, requestTimeoutMs),
      requestTimeout: requestTimeoutMs,
      headersTimeout: headersTimeoutMs,
    },
    (req, res) => {
      // a request that comes on a connection whose closing answer has begun (one the server gave itself, below, and
      // the requests parsed with it before markClosing takes the connection from the parser): its answer could never
      // be sent, so it is not run
      if (isClosing(req.socket)) return void req.resume();
      const given = req.headers['x-request-id'];
      const requestId = typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
      const pathname = (req.url ?? '/').split('?')[0];
      const t0 = performance.now();
      res.setHeader('x-request-id', requestId);
      const context: RequestContext = { requestId };
      requestContext.run(context, () => {
        if (!quietPaths.includes(pathname)) {
          // once the answer is sent, or the connection is gone before it was: a client that left before its answer
          // began is 499 CANCELLED (as nginx logs it); one that left during it (an SSE stream it closed) is cut short
          // (giveBackOnce: a pipelined request whose turn never came has no 'close' of its own, only its socket's)
          giveBackOnce(req, res, () => {
            const answered = res.writableFinished;
            // the server's own refusals and KServe's errors say their code in a header
            const refused = res.getHeader('x-error-code');
            if (answered && typeof refused === 'string') noteErrorCodes([refused], context);
            if (!res.headersSent && !context.errorCodes) noteErrorCodes([ErrorCode.CANCELLED], context);
            requestContext.run(context, () =>
              logger.info(
                {
                  method: req.method,
                  path: pathname,
                  status: res.headersSent ? res.statusCode : 499,
                  ...(res.headersSent && !answered ? { cutShort: true } : {}),
                  ms: Math.round((performance.now() - t0) * 10) / 10,
                  ...(context.errorCodes ? { errors: context.errorCodes } : {}),
                },
                'request',
              ),
            );
          });
        }
        const route = routes.find((r) => r.match(pathname));
        const refuse = (status: number, code: string, message: string, headers: Record<string, string> = {}) => {
          markClosing(req.socket);
          sendJson(res, status, (route?.errorBody ?? graphqlErrorBody)(code, message), {
            connection: 'close',
            'x-error-code': code,
            ...headers,
          });
        };
        if (!hostAllowed(req.headers.host, allowedHosts)) {
          const message = `this server does not answer to the host ${JSON.stringify(req.headers.host)}; its operator can allow it with ALLOWED_HOSTS`;
          return refuse(403, ErrorCode.FORBIDDEN, message);
        }
        const length = Number(req.headers['content-length'] ?? 0);
        if (length > maxBodyBytes)
          return refuse(
            413,
            ErrorCode.PAYLOAD_TOO_LARGE,
            `request body of ${length} bytes exceeds the limit of ${maxBodyBytes} bytes (MAX_UPLOAD_BYTES)`,
          );
        const json = route?.parsesJson ? route.parsesJson(req) : parsedAsJson(req.headers['content-type']);
        const maxJson = json ? maxJsonBodyBytes : Infinity;
        if (length > maxJson) return refuse(413, ErrorCode.PAYLOAD_TOO_LARGE, jsonTooLarge(length, maxJson));
        if (!route) {
          // a request without a body leaves nothing unread: its connection goes on (only one with a body is closed)
          if (length === 0 && req.headers['transfer-encoding'] === undefined)
            return sendJson(res, 404, graphqlErrorBody('NOT_FOUND', `nothing at ${pathname}`), { 'x-error-code': 'NOT_FOUND' });
          return refuse(404, 'NOT_FOUND', `nothing at ${pathname}`);
        }
        if (bytesInFlight && (length > 0 || req.headers['transfer-encoding'] !== undefined)) {
          const client = clients.of(req.socket.remoteAddress, req.headers['x-forwarded-for']);
          if (client === null) return refuse(400, ErrorCode.INVALID_INPUT, UNATTRIBUTED);
          const refuseFor = (e: GatewayError) => refuse(e.status, e.code, e.message, e.status === 503 ? { 'retry-after': '1' } : {});
          // what it says it will send must fit in what is left now, or it is refused before its body is read; nothing is
          // set aside for it (headers that promise a body and send none would hold the budget for nothing)
          const refused = bytesInFlight.fits(length, client);
          if (refused) return refuseFor(refused);
          countBody(req, res, { client, budget: bytesInFlight, refuse: refuseFor, max: maxJson });
        }
        const run = () =>
          requestContext.run(context, () => {
            // the client waits for this before it sends its body (Expect: 100-continue): only once the request is accepted
            if (continues.has(req)) res.writeContinue();
            try {
              route.handle(req, res);
            } catch (e) {
              // a bug in a route (a library's handler that throws): this request fails, the process serves on
              logger.error({ err: e, path: pathname }, 'a route threw (a bug in the gateway: please report it)');
              if (!res.headersSent) refuse(500, 'INTERNAL_SERVER_ERROR', 'Unexpected error.');
              else res.destroy(); // part of an answer is out: the client must see it cut short, not complete
            }
          });
        if (!inTurn(req, res, run))
          refuse(
            429,
            ErrorCode.LIMIT_EXCEEDED,
            `more than ${MAX_RUNNING + MAX_WAITING} requests pipelined on one connection: wait for answers before sending more`,
          );
      });
    },
  );
  // a request with Expect: 100-continue is handled as any other, and its client told to send the body only once it is
  // accepted (Node would answer 100 Continue before any check)
  server.on('checkContinue', (req, res) => {
    continues.add(req);
    server.emit('request', req, res);
  });
  capConnections(server, { maxConnections, maxPerClient: maxConnectionsPerClient, logger, port: 'http', clients });
  lingerOnClose(server);
  return server;
}

/** Requests of one connection handled at once, and parsed behind them waiting their turn (HTTP/1.1 pipelining). */
const MAX_RUNNING = 8;
const MAX_WAITING = 128;
const lanes = new WeakMap<Socket, { running: number; waiting: (() => void)[] }>();

/**
 * Run a request's route in a turn of the event loop of its own, once the requests ahead of it on its connection leave
 * room (answered, or their connection gone). A client that pipelines requests had them run back to back without the
 * loop turning: each answer sent let Node parse the next request from what it already held, and so on, in one chain of
 * callbacks, the 20,000 small requests of one 2.6 MB write holding every other client 3 s and more; and where Node
 * parsed them together (requests without a body) all ran at once. False when the connection already has MAX_WAITING
 * requests waiting: the client is refused, and the connection closed.
 */
function inTurn(req: IncomingMessage, res: ServerResponse, run: () => void): boolean {
  const socket = req.socket;
  let lane = lanes.get(socket);
  if (!lane) {
    const mine = (lane = { running: 0, waiting: [] as (() => void)[] });
    lanes.set(socket, mine);
    socket.once('close', () => (mine.waiting.length = 0));
  }
  const own = lane;
  const start = () => {
    own.running++;
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      own.running--;
      const next = own.waiting.shift();
      if (next) next();
    };
    res.once('finish', leave);
    res.once('close', leave);
    setImmediate(() => (socket.destroyed ? leave() : run()));
  };
  if (own.running < MAX_RUNNING && own.waiting.length === 0) start();
  else if (own.waiting.length < MAX_WAITING) own.waiting.push(start);
  else return false;
  return true;
}

/** Requests whose client waits for 100 Continue before it sends the body (as Node decided: it emitted checkContinue). */
const continues = new WeakSet<IncomingMessage>();

/**
 * Run `give` once: when the answer is sent, or when the connection closes first (a pipelined request whose answer
 * never got the socket emits no 'close' of its own). One 'close' listener per connection, however deep the pipeline.
 */
const pending = new WeakMap<Socket, Set<() => void>>();
function giveBackOnce(req: IncomingMessage, res: ServerResponse, give: () => void): void {
  const socket = req.socket;
  let gives = pending.get(socket);
  if (!gives) {
    const all = (gives = new Set());
    pending.set(socket, all);
    socket.once('close', () => {
      for (const g of all) g();
    });
  }
  const mine = gives;
  const once = () => {
    if (!mine.delete(once)) return;
    res.off('close', once);
    give();
  };
  mine.add(once);
  res.once('close', once);
}

/**
 * Its route stops waiting for the rest of a request's body (its stream ends with `error`), while its connection stays
 * open to close as answered: lingering, reading what the client still sends (IncomingMessage's own destroy would
 * destroy the socket too, and the kernel would reset the connection under the answer).
 */
function abandon(req: IncomingMessage, error: Error): void {
  // as IncomingMessage's: the error is emitted only to a route that listens for it (else it would be uncaught)
  (req as unknown as { _destroy(e: Error | null, done: (e: Error | null) => void): void })._destroy = (e, done) =>
    process.nextTick(() => done(req.listenerCount('error') > 0 ? e : null));
  req.destroy(error);
}

/**
 * A response the server has given itself (a body refused as it came): its route, which may still answer (one that
 * does not read the body, or on the error of its destroyed request), answers nowhere instead of writing headers
 * twice (ERR_HTTP_HEADERS_SENT, thrown where the route does not expect it).
 */
function answeredHere(res: ServerResponse): void {
  const nothing = function (this: ServerResponse) {
    return this;
  };
  /** A write's callback, if any (its last argument), is still called: a route may wait for it. */
  const written =
    (result: unknown) =>
    (...args: unknown[]) => {
      const done = args.at(-1);
      if (typeof done === 'function') process.nextTick(done as () => void);
      return result;
    };
  Object.assign(res, {
    writeHead: nothing,
    setHeader: nothing,
    setHeaders: nothing,
    appendHeader: nothing,
    removeHeader: () => undefined,
    flushHeaders: () => undefined,
    writeEarlyHints: () => undefined,
    write: written(true),
    end: written(res),
  });
}

/**
 * What a body holds of the budget: the bytes that have come, counted as Node's HTTP parser hands them to the request
 * (its push(), before any reader sees them), until its answer is sent or its client leaves; a route may hold more for
 * it (holdOf: KServe REST inflating it). Past the budget (a body that fitted when its headers came, beside others that
 * came since) it is answered 503 QUEUE_FULL as it comes, and past `max` (MAX_JSON_BODY_BYTES, for a JSON body sent
 * without its length) 413 PAYLOAD_TOO_LARGE; nothing more of it reaches its route (what still comes is read and
 * dropped), and once that answer is sent its route is told the body ends there with an error, so that it stops waiting
 * for the rest; the connection closes as lingerOnClose closes it.
 */
function countBody(
  req: IncomingMessage,
  res: ServerResponse,
  { client, budget, refuse, max = Infinity }: { client: string; budget: BytesInFlight; refuse: (e: GatewayError) => void; max?: number },
): void {
  const hold = new RequestHold(budget, client);
  setHold(req, hold);
  let over = false;
  let came = 0;
  const push = req.push;
  req.push = function (chunk: unknown, encoding?: BufferEncoding): boolean {
    // dropped; and read on (true: Node's parser does not pause the connection), so that the client can finish sending
    // and read its answer before the connection closes (lingerOnClose)
    if (over) return true;
    // once answered, what still comes is dropped here, read on whoever stopped reading (a route that answered before
    // the body's end): the next request on the connection, or its lingering close, must not wait behind it
    if (chunk === null) return push.call(this, chunk, encoding);
    if (hold.done) return true;
    came += (chunk as Buffer).length;
    const refused =
      came > max ? new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, jsonTooLarge(null, max)) : hold.take((chunk as Buffer).length);
    if (refused) {
      over = true;
      const error = Object.assign(new Error(`request body refused as it came: ${refused.message}`), { code: 'ECONNRESET' });
      if (res.headersSent) req.destroy(error);
      else {
        refuse(refused);
        answeredHere(res);
        res.once('finish', () => abandon(req, error));
      }
      return true;
    }
    return push.call(this, chunk, encoding);
  };
  giveBackOnce(req, res, () => hold.release());
}
