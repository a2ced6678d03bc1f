import { randomUUID } from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { elementCount, toBytes } from '../../engine/types.ts';
import { requestContext, type Logger } from '../../log.ts';
import {
  bytesCount,
  checkCount,
  contentsField,
  contentsValues,
  engineDtype,
  NO_SHARED_MEMORY,
  parseBytes,
  parseShape,
  serializeBytes,
  tensorToContents,
  tooManyValues,
  valuesToBytes,
  type Contents,
} from './codec.ts';
import {
  checkInputNames,
  checkInputType,
  type InferTarget,
  type KserveCore,
  type V2InferRequest,
  type V2InferResponse,
  type V2Input,
  type Who,
} from './core.ts';
import { invalid, mapError } from './errors.ts';
import { notValidJsonText } from '../../json-text.ts';
import { LOADER_OPTIONS, PROTO_PATH } from './proto/index.ts';
import { MessageFrames, REQUESTS, messageElements } from './wire.ts';
import { ErrorCode, GatewayError } from '../../errors.ts';
import { capConnections } from '../../connections.ts';
import { ClientAddresses, UNATTRIBUTED } from '../../client-address.ts';
import type { BytesInFlight } from '../../bytes-in-flight.ts';
import { inTurn, LONG_VALUES } from '../../turns.ts';

/**
 * The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` from proto/open_inference_grpc.proto, served
 * with @grpc/grpc-js on its own port. Tokens come in the `authorization` metadata; errors are gRPC status codes from
 * errors.ts (the gateway's code in the `error-code` trailer). Requests may carry tensors in `raw_input_contents` or in
 * typed `contents`; the response answers in the same form (raw when an output has no typed field, as FP16).
 */

interface Parameter {
  parameter_choice?: string;
  [k: string]: unknown;
}
type ParameterMap = Record<string, Parameter> | undefined;

const paramValue = (p: Parameter | undefined): unknown => (p?.parameter_choice ? p[p.parameter_choice] : undefined);

interface InferRequestMessage {
  model_name: string;
  model_version: string;
  id: string;
  parameters: ParameterMap;
  inputs: { name: string; datatype: string; shape: string[]; parameters: ParameterMap; contents: Contents | null }[];
  outputs: { name: string; parameters: ParameterMap }[];
  raw_input_contents: Buffer[];
}

/** How an image's bytes are sent here, said when a BYTES element is an image as text (base64). */
const SEND_BYTES = "send the image's bytes themselves in bytes_contents (or raw_input_contents), not as text";

/**
 * Decode ModelInferRequest, its inputs checked against the model's (`target`) before their data is read; `raw` says
 * whether it used raw_input_contents (the response mirrors it).
 */
export function decodeInferRequest(
  msg: InferRequestMessage,
  target: InferTarget,
  maxItems = Infinity,
): { request: V2InferRequest; raw: boolean } {
  // an unknown input name is said before anything else of the inputs
  checkInputNames(
    target,
    msg.inputs.map((i) => i.name),
  );
  const raw = msg.raw_input_contents.length > 0;
  if (raw && msg.raw_input_contents.length !== msg.inputs.length)
    throw invalid(`raw_input_contents holds ${msg.raw_input_contents.length} entries for ${msg.inputs.length} inputs`);
  const inputs = msg.inputs.map((i, k): V2Input => {
    const name = i.name;
    checkInputType(target, name, i.datatype);
    if (i.parameters?.shared_memory_region !== undefined)
      throw invalid(`input ${name}: ${NO_SHARED_MEMORY}: send typed contents or raw_input_contents`);
    const shape = parseShape(i.shape, name);
    const typed = Object.entries(i.contents ?? {})
      .filter(([, v]) => Array.isArray(v) && v.length > 0)
      .map(([field]) => field);
    // values that would be ignored without a word (Triton refuses them too)
    if (raw && typed.length > 0)
      throw invalid(`input ${name}: typed contents (${typed.join(', ')}) beside raw_input_contents: send one of them`);
    if (raw) {
      const b = msg.raw_input_contents[k];
      const bytes = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
      if (i.datatype === 'BYTES')
        return { name, datatype: i.datatype, shape, data: parseBytes(bytes, bytesCount(shape, name, maxItems), name) };
      engineDtype(i.datatype, name);
      return { name, datatype: i.datatype, shape, data: bytes };
    }
    // nothing sent for it, in either place (a client that forgot raw_input_contents): where its data goes
    const count = elementCount(shape);
    if (typed.length === 0 && count > 0) {
      const field = i.datatype === 'BYTES' ? 'bytes_contents' : contentsField(engineDtype(i.datatype, name));
      throw invalid(
        `input ${name} carries no data: send its ${count} ${i.datatype === 'BYTES' ? 'elements' : 'values'} in contents.${field}, or its bytes in raw_input_contents`,
      );
    }
    if (i.datatype === 'BYTES') {
      const stray = typed.filter((f) => f !== 'bytes_contents');
      if (stray.length > 0) throw invalid(`input ${name}: BYTES elements go in bytes_contents, not ${stray.join(', ')}`);
      const elements = (i.contents?.bytes_contents ?? []) as Buffer[];
      checkCount(name, shape, elements.length);
      return { name, datatype: i.datatype, shape, data: elements.map((e) => new Uint8Array(e.buffer, e.byteOffset, e.byteLength)) };
    }
    const dtype = engineDtype(i.datatype, name);
    const values = contentsValues(dtype, i.contents, name);
    const field = contentsField(dtype);
    const stray = typed.filter((f) => f !== field);
    if (stray.length > 0) throw invalid(`input ${name}: ${i.datatype} values go in ${field}, not ${stray.join(', ')}`);
    checkCount(name, shape, values.length);
    return { name, datatype: i.datatype, shape, data: valuesToBytes(dtype, values, name) };
  });
  const outputs = msg.outputs.length
    ? msg.outputs.map((o) => {
        if (o.parameters?.shared_memory_region !== undefined) throw invalid(`output ${o.name}: ${NO_SHARED_MEMORY}`);
        const c = o.parameters?.classification;
        // a count in int64_param (a string of digits, as the loader gives int64), as Triton takes it: text or a double is
        // not one (REST takes a JSON number, the same rule), and was read as one here
        if (c !== undefined && c.parameter_choice !== 'int64_param')
          throw invalid(
            `output ${o.name}: classification must be a positive integer in int64_param, got ${c.parameter_choice || 'no value'}`,
          );
        return { name: o.name, classification: c === undefined ? null : Number(paramValue(c)) };
      })
    : null;
  return { request: { id: msg.id || null, inputs, outputs }, raw };
}

/**
 * Encode ModelInferResponse in the request's form: raw, or typed contents where every output has a field and they hold
 * at most `maxJsonValues` values (protobufjs encodes typed values one by one on the event loop, 0.37 us each here);
 * raw otherwise, which the protocol allows whatever the request's form.
 */
export function encodeInferResponse(r: V2InferResponse, raw: boolean, maxJsonValues = Infinity) {
  const values = tensorValues(r);
  const typed = !raw && values <= maxJsonValues;
  const contents = !typed ? null : r.outputs.map((o) => (o.elements ? { bytes_contents: o.elements } : tensorToContents(o.tensor!)));
  const useRaw = !contents || contents.some((c) => c === null);
  return {
    model_name: r.model_name,
    model_version: r.model_version,
    id: r.id ?? '',
    outputs: r.outputs.map((o, k) => ({
      name: o.name,
      datatype: o.datatype,
      shape: o.shape,
      contents: useRaw ? null : contents![k],
    })),
    raw_output_contents: useRaw ? r.outputs.map((o) => (o.elements ? serializeBytes(o.elements) : toBytes(o.tensor!.data))) : [],
  };
}

/** Values of an answer's tensors (what typed contents would hold). */
const tensorValues = (r: V2InferResponse) => r.outputs.reduce((n, o) => n + (o.tensor ? o.tensor.data.length : 0), 0);

type Handler = (request: never, who: Who, call: grpc.ServerUnaryCall<unknown, unknown>) => unknown;

/**
 * The peer address of a call as a plain address: grpc-js gives "127.0.0.1:5000" or "::1:5000" (older versions
 * "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000").
 */
const peerAddress = (peer: string) => /^(?:ipv[46]:)?\[?(.+?)\]?:\d+$/.exec(peer)?.[1] ?? peer;

export interface GrpcServerOptions {
  core: KserveCore;
  logger: Logger;
  /** Largest message received (the gateway's MAX_UPLOAD_BYTES, not gRPC's 4 MiB default). */
  maxMessageBytes?: number;
  /** Values of typed contents in a request, and in an answer before it goes raw instead (MAX_JSON_VALUES). */
  maxJsonValues?: number;
  /** Open connections in all and per client address (as the HTTP port's, counted apart). */
  maxConnections?: number;
  maxConnectionsPerClient?: number;
  /** How long a call's message may take to arrive (REQUEST_TIMEOUT_MS, as a REST body): then the call is ended. */
  requestTimeoutMs?: number;
  /** Calls open at once on one connection (HTTP/2 streams). */
  maxStreamsPerConnection?: number;
  /** Images (BYTES elements) one request may carry (MAX_IMAGES_PER_REQUEST), checked before they are split. */
  maxItems?: number;
  /** The process's budget of request bytes (MAX_BYTES_IN_FLIGHT), shared with the HTTP port. */
  bytesInFlight?: BytesInFlight;
  /** Who each call's client is (TRUSTED_PROXIES: x-forwarded-for in the call's metadata); default: its peer. */
  clients?: ClientAddresses;
}

export interface KserveGrpcServer {
  server: grpc.Server;
  /** Bind and serve; resolves to the port (a free one when `port` is 0). */
  listen(host: string, port: number): Promise<number>;
  /** Stop accepting, let calls in flight finish (at most timeoutMs, then they are cancelled). */
  close(timeoutMs: number): Promise<void>;
}

export function loadServiceDefinition(): grpc.ServiceDefinition {
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS)) as unknown as {
    inference: { GRPCInferenceService: { service: grpc.ServiceDefinition } };
  };
  return pkg.inference.GRPCInferenceService.service;
}

/**
 * A call whose message (and end of stream) has not arrived within `ms` is ended (DEADLINE_EXCEEDED), as a slow REST
 * body is cut, and its HTTP/2 stream is reset, so that the part of the message received is let go (after a status alone
 * the stream stays half open for as long as the client keeps it); so is any call answered before its client ended its
 * stream (refused, cancelled, a message that does not inflate or decode). The time the call then takes to compute is
 * not bounded here.
 *
 * Its bytes take from the process's budget (MAX_BYTES_IN_FLIGHT) as they arrive, until the call ends; a compressed
 * message, once it has all come and before grpc-js inflates it, the largest message besides (it may inflate to that),
 * of which what it did not inflate to is given back when it is read. Past the budget the call is refused (UNAVAILABLE,
 * QUEUE_FULL) and its stream reset, as the HTTP port refuses a body.
 */
function receiveBounded(
  ms: number,
  budget: BytesInFlight | undefined,
  maxMessageBytes: number,
  clients: ClientAddresses,
  logger: Logger,
): grpc.ServerInterceptor {
  return (method, call) => {
    // grpc-js keeps the stream to itself (the first interceptor is handed its own call, which holds it): tested in
    // security.test.ts, so an upgrade that moves it fails there
    const stream = (call as unknown as { stream?: http2.ServerHttp2Stream }).stream;
    let timer: NodeJS.Timeout | undefined;
    let halfClosed = false;
    /** A message is read: what a compressed one took to inflate and did not inflate to is given back. */
    let received = (_message: unknown) => undefined as void;
    /** What the call holds, given back. */
    let letGo = () => undefined as void;
    /**
     * The call is answered or cancelled: nothing more of it is read. A client that has not ended its stream is told to
     * stop (RST_STREAM NO_ERROR after the answer, RFC 9113 8.1), or the stream would stay half open, and what it sent
     * held, for as long as its connection lasts.
     */
    const stop = () => {
      clearTimeout(timer);
      letGo();
      if (!halfClosed) setImmediate(() => stream?.close(http2.constants.NGHTTP2_NO_ERROR));
    };
    // grpc-js's own call also holds the metadata, read from the headers before any message (tested with the stream)
    const peer = peerAddress(call.getPeer());
    const forwardedFor = (call as unknown as { metadata?: grpc.Metadata }).metadata?.get('x-forwarded-for').map(String) ?? [];
    // A call relayed by a trusted proxy must say whose it is (see ClientAddresses.of). grpc-js drops a header value with
    // a character it does not allow (a tab, say), so a client behind a proxy that appends to the header could even make
    // it vanish.
    const client = clients.of(peer, forwardedFor);
    if (budget && stream && client !== null) {
      const frames = new MessageFrames();
      let held = 0;
      letGo = () => {
        stream.off('data', onData);
        budget.give(held, client);
        held = 0;
      };
      received = (message) => {
        if (!frames.nextWasCompressed()) return;
        const back = Math.min(held, maxMessageBytes - (wireBytes(message) ?? maxMessageBytes));
        if (back <= 0) return;
        held -= back;
        budget.give(back, client);
      };
      const onData = (chunk: Buffer) => {
        // a compressed message may inflate to the largest message (grpc-js inflates each once it has come, a second
        // message of a unary call included)
        const n = chunk.length + frames.compressedIn(chunk) * maxMessageBytes;
        const refused = budget.take(n, client, held);
        if (!refused) {
          held += n;
          return;
        }
        stop();
        const m = mapError(refused);
        const trailer = new grpc.Metadata();
        trailer.set('error-code', m.code);
        call.sendStatus({ code: m.grpc, details: m.message, metadata: trailer });
      };
      // before grpc-js's own listener, so that a refused chunk is counted before grpc-js reads it
      stream.prependListener('data', onData);
      stream.once('close', () => letGo());
    }
    return new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        if (client === null) {
          stop();
          const m = mapError(invalid(UNATTRIBUTED));
          logger.info({ rpc: method.path.split('/').pop(), code: grpc.status[m.grpc] }, 'grpc');
          const trailer = new grpc.Metadata();
          trailer.set('error-code', m.code);
          return call.sendStatus({ code: m.grpc, details: m.message, metadata: trailer });
        }
        timer = setTimeout(() => {
          stop();
          call.sendStatus({
            code: grpc.status.DEADLINE_EXCEEDED,
            details: `the request message did not arrive within ${ms} ms (REQUEST_TIMEOUT_MS)`,
          });
        }, ms);
        // a unary call starts when the client ends its stream, not when the message is in: kept until then
        next({
          onReceiveMessage: (message, nextMessage) => {
            received(message);
            nextMessage(message);
          },
          onReceiveHalfClose: (nextHalfClose) => {
            halfClosed = true;
            clearTimeout(timer);
            nextHalfClose();
          },
          onCancel: stop,
        });
      },
      sendStatus: (status, nextStatus) => {
        stop();
        nextStatus(status);
      },
    });
  };
}

const WIRE_BYTES = Symbol('bytes as decoded');
/** A decoded request with its size once inflated, for receiveBounded. */
function withWireBytes<T>(message: T, n: number): T {
  if (message !== null && typeof message === 'object') Object.defineProperty(message, WIRE_BYTES, { value: n });
  return message;
}
const wireBytes = (message: unknown): number | undefined =>
  message !== null && typeof message === 'object' ? (message as { [WIRE_BYTES]?: number })[WIRE_BYTES] : undefined;

/** Who calls: the token of the call's metadata, and where it comes from (a trusted proxy relays, whatever it says). */
function whoOf(metadata: grpc.Metadata, peer: string, clients: ClientAddresses): Who {
  const auth = metadata.get('authorization')[0];
  const remoteAddress = peerAddress(peer);
  return {
    authorization: auth === undefined ? null : String(auth),
    caller: { remoteAddress, forwarded: clients.relayed(remoteAddress, (h) => metadata.get(h)[0]) },
  };
}

/** RPCs open to probes without a token. */
const PROBES = new Set(['ServerLive', 'ServerReady']);

/**
 * The token is checked at the call's metadata, before its message is read and decoded: a caller without one costs
 * no decoding (the handlers check again, with the admin rules).
 */
function tokensFirst(core: KserveCore, logger: Logger, clients: ClientAddresses): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, nextMetadata) => {
            const rpc = method.path.split('/').pop() ?? '';
            if (!PROBES.has(rpc)) {
              try {
                core.checkApi(whoOf(metadata, call.getPeer(), clients));
              } catch (e) {
                const m = mapError(e);
                logger.info({ rpc, code: grpc.status[m.grpc] }, 'grpc');
                const trailer = new grpc.Metadata();
                trailer.set('error-code', m.code);
                return call.sendStatus({ code: m.grpc, details: m.message, metadata: trailer });
              }
            }
            nextMetadata(metadata);
          },
        }),
    });
}

/**
 * HTTP/2 flow-control windows of the gRPC port: how much a client may send on one stream (a call), and on its whole
 * connection, before the server's event loop has read it. HTTP/2's own are 64 KiB, which grpc-js leaves as they are
 * (gRPC's C and Go servers grow theirs, to 16 MB, as they measure the link): a message then crossed 64 KiB per turn of
 * the server's event loop, whatever the link, and a connection's calls shared that. In a probe where HTTP clients kept
 * the loop busy, gRPC messages of 1-3 MB took 9-54 s to arrive (their handlers 1-8 s; HTTP bodies of the same size,
 * which the kernel's socket buffers carry, came at once). What a client sends within them is read as it comes and
 * counted against MAX_BYTES_IN_FLIGHT as before (receiveBounded); a connection holds at most its window unread, as a
 * socket's receive buffer holds an HTTP body (Linux grows one to 6 MiB).
 */
export const STREAM_WINDOW = 1 << 20;
export const CONNECTION_WINDOW = 4 << 20;

/**
 * Make the injector with the windows above. grpc-js takes no option for them on a server: its HTTP/2 server is made
 * from `commonServerOptions` (the settings a connection starts with: each stream's window) and kept in `http2Servers`
 * (whose sessions then widen the connection's). Tested in kserve-grpc.test.ts ('a message of MiBs'), so that an
 * upgrade of grpc-js that moves them fails there.
 */
function widenWindows<T>(server: grpc.Server, makeInjector: () => T): T {
  const internals = server as unknown as { commonServerOptions?: http2.ServerOptions; http2Servers?: Map<http2.Http2Server, unknown> };
  const options = internals.commonServerOptions;
  if (options) options.settings = { ...options.settings, initialWindowSize: STREAM_WINDOW };
  const before = new Set(internals.http2Servers?.keys() ?? []);
  const injector = makeInjector();
  for (const h2 of internals.http2Servers?.keys() ?? [])
    if (!before.has(h2)) h2.on('session', (session: http2.ServerHttp2Session) => session.setLocalWindowSize(CONNECTION_WINDOW));
  return injector;
}

/** Set on a request refused before it was decoded (too many elements, or not a message): the error to answer. */
const REFUSED = Symbol('refused before decoding');
/** Set on a request of many elements, decoded in a turn of its own when its handler runs (turns.ts): how to decode it. */
const DEFERRED = Symbol('decoded in its turn');

/** Fields (map entries, names) a message other than ModelInfer's may hold: a load's config and files are a few. */
const MAX_OTHER_ELEMENTS = 1024;

export function createGrpcServer({
  core,
  logger,
  maxMessageBytes = 50 * 1024 * 1024,
  maxJsonValues = 524_288,
  maxConnections = 2048,
  maxConnectionsPerClient = 256,
  requestTimeoutMs = 120_000,
  maxStreamsPerConnection = 100,
  maxItems = 64,
  bytesInFlight,
  clients = new ClientAddresses(),
}: GrpcServerOptions): KserveGrpcServer {
  // grpc-js writes its own diagnostics to stderr as plain text; the gateway's output is JSON lines only (what matters,
  // a bind failure, reaches the caller of listen())
  const grpcLog = (...a: unknown[]) => logger.debug({ component: 'grpc-js' }, a.map(String).join(' '));
  grpc.setLogger({ error: grpcLog, info: grpcLog, debug: grpcLog });
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': -1,
    'grpc.max_concurrent_streams': maxStreamsPerConnection,
    // the first interceptor is handed grpc-js's own call (receiveBounded reaches its stream)
    interceptors: [receiveBounded(requestTimeoutMs, bytesInFlight, maxMessageBytes, clients, logger), tokensFirst(core, logger, clients)],
  });
  // connections are accepted here and handed to grpc-js, so that they are counted as the HTTP port's are (grpc-js has
  // no such limit of its own)
  const listener = net.createServer();
  capConnections(listener, { maxConnections, maxPerClient: maxConnectionsPerClient, logger, port: 'grpc', clients });
  const injector = widenWindows(server, () => server.createConnectionInjector(grpc.ServerCredentials.createInsecure()));
  listener.on('connection', (socket) => {
    if (!socket.destroyed) injector.injectConnection(socket);
  });

  const unary =
    (rpc: string, fn: Handler): grpc.handleUnaryCall<unknown, unknown> =>
    (call, callback) => {
      const given = call.metadata.get('x-request-id')[0];
      const requestId = typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
      const t0 = performance.now();
      requestContext.run({ requestId }, () => {
        // one line per call, as an HTTP request has, with the gateway's code of its error (as the error-code trailer)
        const done = (code: grpc.status, error?: string) => {
          if (!PROBES.has(rpc))
            logger.info(
              { rpc, code: grpc.status[code], ms: Math.round((performance.now() - t0) * 10) / 10, ...(error ? { errors: [error] } : {}) },
              'grpc',
            );
        };
        Promise.resolve()
          .then(async () => {
            const deferred = (call.request as { [DEFERRED]?: () => object } | null)?.[DEFERRED];
            // (a call cancelled while it waited has its decoding skipped)
            const request = deferred
              ? await inTurn(() => {
                  if (call.cancelled) throw new GatewayError(ErrorCode.CANCELLED, 'the call was cancelled');
                  return deferred();
                })
              : call.request;
            // a message refused as it was read (above)
            const refused = (request as { [REFUSED]?: Error } | null)?.[REFUSED];
            if (refused) throw refused;
            return fn(request as never, whoOf(call.metadata, call.getPeer(), clients), call);
          })
          .then(
            (response) => {
              done(grpc.status.OK);
              callback(null, response);
            },
            (e: unknown) => {
              const m = mapError(e);
              if (!m.expected) logger.error({ err: e, rpc }, 'unexpected error (kserve grpc)');
              done(m.grpc, m.code);
              const trailer = new grpc.Metadata();
              trailer.set('error-code', m.code);
              callback({ code: m.grpc, details: m.message, metadata: trailer });
            },
          );
      });
    };

  const loadParams = (parameters: ParameterMap) => {
    const files: { name: string; bytes: Uint8Array }[] = [];
    let config: unknown;
    for (const [k, p] of Object.entries(parameters ?? {})) {
      const v = paramValue(p);
      if (k === 'config') {
        // as Triton: model.json as JSON text (bytes were read as an object of numbered fields, empty ones as no config)
        if (p?.parameter_choice !== 'string_param' || typeof v !== 'string')
          throw invalid(`parameter config must be string_param (model.json as JSON text), got ${p?.parameter_choice || 'no value'}`);
        try {
          config = JSON.parse(v);
        } catch (e) {
          throw invalid(`parameter config is ${notValidJsonText(v, e)}`);
        }
      } else if (k.startsWith('file:')) {
        if (!(v instanceof Uint8Array)) throw invalid(`parameter ${k} must be bytes_param`);
        files.push({ name: k.slice(5), bytes: v });
      }
    }
    return { config, files };
  };

  // every request carries its size once inflated (receiveBounded gives back what a compressed one did not need), and
  // its elements are counted on the wire before it is decoded (wire.ts): protobufjs builds each on the event loop,
  // before a handler can check who is calling (4M parameters of a RepositoryModelLoad held it 10-16 s). ModelInfer's
  // typed contents may be many (MAX_JSON_VALUES); the other messages hold a few names and parameters.
  const definition = loadServiceDefinition();
  const serializeInferResponse = definition.ModelInfer.responseSerialize;
  const measured = Object.fromEntries(
    Object.entries(definition).map(([name, m]) => {
      const max = name === 'ModelInfer' ? maxJsonValues : MAX_OTHER_ELEMENTS;
      const type = `a ${name}Request`;
      const decodeNow = (buf: Buffer): object => {
        try {
          return m.requestDeserialize(buf) as object;
        } catch {
          return { [REFUSED]: invalid(`the message is not ${type} this server reads`) };
        }
      };
      const decode = (buf: Buffer): object => {
        const elements = messageElements(buf, max, REQUESTS[name] ?? {});
        if (elements === null) return { [REFUSED]: invalid(`the message is not ${type} this server reads (proto3, no groups)`) };
        if (elements > max)
          return {
            [REFUSED]:
              name === 'ModelInfer'
                ? tooManyValues('this request', maxJsonValues, 'send large tensors in raw_input_contents')
                : new GatewayError(ErrorCode.LIMIT_EXCEEDED, `${type} holds more than ${max} fields and parameters`),
          };
        // protobufjs builds typed values one by one (0.1-0.3 s for MAX_JSON_VALUES): several such messages that came
        // together were decoded back to back, holding the event loop for all of them
        return elements > LONG_VALUES ? { [DEFERRED]: () => decodeNow(buf) } : decodeNow(buf);
      };
      return [
        name,
        {
          ...m,
          requestDeserialize: (buf: Buffer) => withWireBytes(decode(buf), buf.length),
          // an answer encoded in a turn of its own (ModelInfer) comes as its bytes
          responseSerialize: (value: unknown) => (Buffer.isBuffer(value) ? value : m.responseSerialize(value)),
        },
      ];
    }),
  ) as grpc.ServiceDefinition;
  server.addService(measured, {
    ServerLive: unary('ServerLive', () => ({ live: core.live() })),
    ServerReady: unary('ServerReady', () => ({ ready: core.ready() })),
    // an unknown model or version is not ready, as Triton answers it (REST's 404 is a "false" there already)
    ModelReady: unary('ModelReady', (r: { name: string; version: string }, auth) => ({
      ready: core.modelReady(auth, r.name, r.version, { unknown: false }),
    })),
    ServerMetadata: unary('ServerMetadata', (_r, auth) => core.serverMetadata(auth)),
    ModelMetadata: unary('ModelMetadata', (r: { name: string; version: string }, auth) => core.modelMetadata(auth, r.name, r.version)),
    ModelInfer: unary('ModelInfer', async (r: InferRequestMessage, auth, call) => {
      // the model first: a missing one is NOT_FOUND whatever the message holds
      const target = core.inferTarget(auth, r.model_name, r.model_version);
      const { request, raw } = decodeInferRequest(r, target, maxItems);
      // a call the client cancels (or whose deadline passes): the work not yet started for it is dropped
      const leaving = new AbortController();
      const left = () => leaving.abort();
      call.once('cancelled', left);
      if (call.cancelled) leaving.abort(); // gone before the handler ran
      try {
        const result = await core.infer(auth, target, request, {
          signal: leaving.signal,
          client: clients.shareOf(peerAddress(call.getPeer()), call.metadata.get('x-forwarded-for').map(String)),
          sendBytes: SEND_BYTES,
        });
        const encode = () => encodeInferResponse(result, raw, maxJsonValues);
        // typed values are encoded one by one: a long answer is made into its bytes in a turn of its own
        return !raw && tensorValues(result) > LONG_VALUES ? await inTurn(() => serializeInferResponse(encode())) : encode();
      } finally {
        call.off('cancelled', left);
      }
    }),
    ModelStatistics: unary('ModelStatistics', (r: { name: string; version: string }, auth) => ({
      model_stats: core.modelStatistics(auth, r.name, r.version),
    })),
    ModelConfig: unary('ModelConfig', (r: { name: string; version: string }, auth) => ({
      config: core.modelConfig(auth, r.name, r.version),
    })),
    RepositoryIndex: unary('RepositoryIndex', (r: { ready: boolean }, auth) => ({ models: core.repositoryIndex(auth, r.ready) })),
    RepositoryModelLoad: unary('RepositoryModelLoad', async (r: { model_name: string; parameters: ParameterMap }, auth) => {
      await core.load(auth, r.model_name, loadParams(r.parameters));
      return {};
    }),
    RepositoryModelUnload: unary('RepositoryModelUnload', async (r: { model_name: string }, auth) => {
      await core.unload(auth, r.model_name);
      return {};
    }),
  });

  return {
    server,
    listen: (host, port) =>
      new Promise((resolve, reject) => {
        listener.once('error', reject);
        listener.listen(port, host.replace(/^\[(.*)\]$/, '$1'), () => {
          listener.off('error', reject);
          resolve((listener.address() as net.AddressInfo).port);
        });
      }),
    close: (timeoutMs) =>
      new Promise((resolve) => {
        listener.close();
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, timeoutMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
