// Over 250 lines on purpose: the whole /v2 REST mapping (routes, JSON and binary-extension bodies, errors) in one file.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { promisify } from 'node:util';
import { gunzip, inflate } from 'node:zlib';
import { decodeBase64, whyNotBase64 } from '../../base64.ts';
import { ErrorCode, GatewayError, clientGone, quoted } from '../../errors.ts';
import { jsonTooLarge, jsonValueCount, notValidJsonText, parsedAsJson } from '../../json-text.ts';
import type { Logger } from '../../log.ts';
import { toBytes } from '../../engine/types.ts';
import {
  bytesCount,
  checkCount,
  engineDtype,
  jsonBytesElement,
  NO_SHARED_MEMORY,
  parseBytes,
  parseShape,
  serializeBytes,
  tensorToJson,
  tooManyValues,
  valuesToBytes,
} from './codec.ts';
import {
  checkInputNames,
  checkInputType,
  type InferTarget,
  type KserveCore,
  type V2InferRequest,
  type V2Input,
  type V2Output,
  type Who,
} from './core.ts';
import { invalid, mapError } from './errors.ts';
import { ClientAddresses } from '../../client-address.ts';
import { sendJson, sendJsonText } from '../../send-json.ts';
import { holdOf } from '../../bytes-in-flight.ts';
import { imageFormat } from '../../vision/preprocess.ts';
import { inTurn, LONG_JSON_BYTES, LONG_VALUES } from '../../turns.ts';

const gunzipAsync = promisify(gunzip);
const inflateAsync = promisify(inflate);

/** A path segment, %-decoded; a broken escape (%E0) is the client's mistake, not a server error. */
function pathPart(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw invalid(`the URL path segment ${JSON.stringify(segment)} is not valid percent-encoding`);
  }
}
/**
 * The Open Inference Protocol over HTTP/REST, under /v2 on the gateway's HTTP port, with Triton's binary tensor data
 * extension (`Inference-Header-Content-Length`: a JSON header, then each binary tensor's bytes in order), the
 * classification extension and the model repository extension. Errors are `{"error": "<message>"}` with the status of
 * errors.ts (and the gateway's code in `x-error-code`). Hand-written on node:http: this adapter is the product (no
 * maintained Node library serves the protocol), and it is small: routing by path, JSON, and one binary layout.
 */
export interface RestRoute {
  match(pathname: string): boolean;
  handle(req: IncomingMessage, res: ServerResponse): void;
  errorBody(code: string, message: string): unknown;
  parsesJson(req: IncomingMessage): boolean;
}

const MODEL_PATH = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(?:\/(ready|infer|stats|config))?$/;
const REPOSITORY_PATH = /^\/v2\/repository\/models\/([^/]+)\/(load|unload)$/;
const HEADER_LENGTH = 'inference-header-content-length';
/** How an image's bytes are sent here, said when a BYTES element is an image as text (base64 not in {"b64": ...}). */
const SEND_BYTES = 'send it as {"b64": "..."} (or the raw bytes with the binary data extension)';

type Params = Record<string, unknown>;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
/**
 * A path this protocol does not serve (404) or a method it does not take there (405), answered without a gateway code;
 * or a body it cannot read (415), with one.
 */
class Refusal {
  constructor(
    readonly status: number,
    readonly message: string,
    readonly code?: ErrorCode,
  ) {}
}

const params = (v: unknown, where: string): Params => {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) throw invalid(`${where}: parameters must be an object`);
  return v;
};

/** A client's JSON value as a message repeats it: a string quoted (a line at most), an object or an array by its kind. */
const shown = (v: unknown): string =>
  typeof v === 'string' ? quoted(v) : Array.isArray(v) ? 'an array' : isObject(v) ? 'an object' : String(v);

/** A boolean parameter, or undefined when absent: any other value is refused (as Triton refuses it), not taken as false. */
function flag(p: Params, key: string, where: string): boolean | undefined {
  const v = p[key];
  if (v === undefined || typeof v === 'boolean') return v;
  throw invalid(`${where}: ${key} must be true or false, got ${shown(v)}`);
}

/**
 * The whole body, refused past `limit` bytes, inflated when it comes compressed (Content-Encoding gzip or deflate, as
 * tritonclient's request_compression_algorithm sends it): on the libuv pool, and no larger than `limit` once inflated
 * (a small bomb is refused as it inflates, not inflated whole). Inflating takes `limit` more from the process's budget
 * of request bytes (MAX_BYTES_IN_FLIGHT), what it did not inflate to given back after, the rest with the body.
 */
async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const body = await readRaw(req, limit);
  const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
  if (encoding === 'identity' || encoding === '') return body;
  const inflate = encoding === 'gzip' || encoding === 'x-gzip' ? gunzipAsync : encoding === 'deflate' ? inflateAsync : null;
  if (!inflate)
    throw new Refusal(
      415,
      `Content-Encoding ${encoding} is not read here: send gzip, deflate or an uncompressed body`,
      ErrorCode.INVALID_INPUT,
    );
  const hold = holdOf(req);
  const refused = hold?.take(limit);
  if (refused) throw refused;
  let inflated = 0;
  try {
    const out = await inflate(body, { maxOutputLength: limit });
    inflated = out.length;
    return out;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE')
      throw new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, `the request body inflates past ${limit} bytes (MAX_UPLOAD_BYTES)`);
    throw invalid(`the request body is not valid ${encoding} data (Content-Encoding)`);
  } finally {
    hold?.give(limit - inflated);
  }
}

/** The body as sent, refused past `limit` bytes (a Content-Length past it is refused by the HTTP server before this). */
function readRaw(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        // the rest is dropped as it comes (the answer closes the connection, lingering: a client still sending reads it)
        req.removeAllListeners('data');
        reject(new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, `request body exceeds the limit of ${limit} bytes (MAX_UPLOAD_BYTES)`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    // a client that hangs up mid-body ("aborted", ECONNRESET): its leaving, not a server error
    req.on('error', (e: NodeJS.ErrnoException) => reject(req.destroyed || e.code === 'ECONNRESET' ? clientGone() : e));
  });
}

/** Where JSON.parse stopped, without the text its message quotes: a message never repeats the body. */
function parseJson(bytes: Buffer | string, what: string, takes = '', emptyIsObject = true): unknown {
  if (bytes.length === 0 && emptyIsObject) return {};
  const text = bytes.toString();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw invalid(`${what} is ${notValidJsonText(text, e)}${takes}`);
  }
}

/** What the infer endpoint takes, said when a body is not that. */
const TAKES =
  "takes a v2 inference request as JSON, or the binary data extension (a JSON header then the tensors' bytes, Inference-Header-Content-Length header)";

/**
 * An upload sent to the infer endpoint (curl -F, or an image as the whole body), by its Content-Type or by its first
 * bytes, when it does not start as JSON does: what it is, or null.
 */
function uploadOf(body: Buffer, contentType: string | undefined): string | null {
  const start = body.subarray(0, 64).toString('latin1').trimStart();
  if (start.startsWith('{')) return null;
  const type = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (type === 'multipart/form-data') return 'a multipart/form-data form';
  if (/^image\/[\w.+-]+$/.test(type)) return `an ${type} body`;
  const format = imageFormat(body);
  return format && format !== 'svg' ? `a raw image (${format.toUpperCase()})` : null;
}

interface RestInfer {
  request: V2InferRequest;
  /** Names of the outputs to send as binary data. */
  binary: Set<string>;
  /** Every output binary when not named (request parameter binary_data_output). */
  allBinary: boolean;
}

/**
 * The elements of JSON `data`, flat or nested (as Triton, any nesting whose elements add up; the count is checked
 * against the shape after). Nested no deeper than the shape has dimensions: walked without recursion, so a body of
 * many thousand brackets is a clear 400, not a stack overflow.
 */
function flatData(data: unknown, rank: number, name: string): unknown[] {
  if (!Array.isArray(data)) return [data];
  const maxDepth = Math.max(1, rank);
  const out: unknown[] = [];
  const stack: { list: unknown[]; at: number }[] = [{ list: data, at: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.at === top.list.length) {
      stack.pop();
      continue;
    }
    const v = top.list[top.at++];
    if (!Array.isArray(v)) out.push(v);
    else if (stack.length >= maxDepth) throw invalid(`input ${name}: data is nested deeper than its shape's ${rank} dimension(s)`);
    else stack.push({ list: v, at: 0 });
  }
  return out;
}

/**
 * Decode an infer request: JSON, or a JSON header followed by binary tensors (Inference-Header-Content-Length). JSON is
 * parsed on the event loop, value by value: past `maxJsonValues` it is refused before parsing.
 */
export function parseInferRequest(
  body: Buffer,
  headerLength: string | undefined,
  target: InferTarget,
  {
    maxJsonBytes = Infinity,
    maxJsonValues = Infinity,
    maxItems = Infinity,
    contentType,
  }: { maxJsonBytes?: number; maxJsonValues?: number; maxItems?: number; contentType?: string } = {},
): RestInfer {
  const upload = uploadOf(body, contentType);
  if (upload)
    throw invalid(
      `this endpoint does not take ${upload}: it ${TAKES}; upload image files to the GraphQL endpoint (/graphql, multipart), or send an image here as a BYTES input ({"b64": "..."})`,
    );
  let json: Buffer = body;
  let binary: Buffer | null = null;
  if (headerLength !== undefined) {
    const n = Number(headerLength);
    if (!/^\d+$/.test(headerLength) || n > body.length)
      throw invalid(`Inference-Header-Content-Length ${JSON.stringify(headerLength)} does not fit a body of ${body.length} bytes`);
    json = body.subarray(0, n);
    binary = body.subarray(n);
  }
  // (HTTP refuses a JSON body past it from its headers; this is for a compressed one, and the JSON header of binary data)
  if (json.length > maxJsonBytes) throw new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, jsonTooLarge(json.length, maxJsonBytes));
  const values = jsonValueCount(json, maxJsonValues);
  if (values > maxJsonValues)
    throw tooManyValues(
      binary ? 'the JSON header' : 'the JSON of this request',
      maxJsonValues,
      'send large tensors as binary data (Inference-Header-Content-Length, "binary_data_size")',
    );
  const doc = parseJson(json, binary ? 'the JSON header of the inference request' : 'the inference request', `; this endpoint ${TAKES}`);
  if (!isObject(doc)) throw invalid('the inference request must be a JSON object');
  if (!Array.isArray(doc.inputs)) throw invalid('the inference request needs "inputs": [...]');
  // an unknown input name is said before anything else of the inputs
  checkInputNames(
    target,
    doc.inputs.map((raw: unknown) => (isObject(raw) ? raw.name : undefined)),
  );
  if (doc.id !== undefined && typeof doc.id !== 'string') throw invalid('"id" must be a string');
  const binaryOutput = flag(params(doc.parameters, 'request'), 'binary_data_output', 'request');
  let at = 0;
  const inputs = doc.inputs.map((raw: unknown, k: number): V2Input => {
    if (!isObject(raw) || typeof raw.name !== 'string') throw invalid(`inputs[${k}] needs a "name"`);
    const name = raw.name;
    if (typeof raw.datatype !== 'string') throw invalid(`input ${name} needs a "datatype"`);
    checkInputType(target, name, raw.datatype);
    const shape = parseShape(raw.shape, name);
    const p = params(raw.parameters, `input ${name}`);
    if (p.shared_memory_region !== undefined)
      throw invalid(`input ${name}: ${NO_SHARED_MEMORY}: send "data", or binary data (binary_data_size)`);
    const datatype = raw.datatype;
    if (p.binary_data_size !== undefined) {
      if (raw.data !== undefined) throw invalid(`input ${name} has both "data" and binary_data_size: send one of them`);
      const size = p.binary_data_size;
      if (!binary) throw invalid(`input ${name}: binary_data_size needs the Inference-Header-Content-Length header`);
      if (typeof size !== 'number' || !Number.isInteger(size) || size < 0)
        throw invalid(
          `input ${name}: binary_data_size must be the byte count of its data in the body (a non-negative integer), got ${shown(size)}`,
        );
      if (at + size > binary.length) throw invalid(`input ${name}: binary_data_size ${size} goes past the end of the body`);
      const bytes = new Uint8Array(binary.buffer, binary.byteOffset + at, size);
      at += size;
      if (datatype === 'BYTES')
        return {
          name,
          datatype,
          shape,
          data: parseBytes(bytes, bytesCount(shape, name, maxItems), name),
        };
      engineDtype(datatype, name);
      return { name, datatype, shape, data: bytes };
    }
    if (raw.data === undefined) throw invalid(`input ${name} has no "data" (nor binary_data_size)`);
    const values = flatData(raw.data, shape.length, name);
    checkCount(name, shape, values.length);
    if (datatype === 'BYTES') {
      bytesCount(shape, name, maxItems);
      return { name, datatype, shape, data: values.map((v) => jsonBytesElement(v, name)) };
    }
    return { name, datatype, shape, data: valuesToBytes(engineDtype(datatype, name), values, name) };
  });
  if (binary && at !== binary.length) throw invalid(`${binary.length - at} bytes of binary data after the last binary input`);
  const outputs = doc.outputs === undefined || doc.outputs === null ? null : doc.outputs;
  if (outputs !== null && !Array.isArray(outputs)) throw invalid('"outputs" must be an array');
  const binaryOutputs = new Set<string>();
  const requested = outputs?.map((raw: unknown, k: number) => {
    if (!isObject(raw) || typeof raw.name !== 'string') throw invalid(`outputs[${k}] needs a "name"`);
    const p = params(raw.parameters, `output ${raw.name}`);
    if (p.shared_memory_region !== undefined)
      throw invalid(`output ${raw.name}: ${NO_SHARED_MEMORY}: ask for JSON or binary data ("binary_data": true)`);
    const c = p.classification;
    // a count is a JSON number, as Triton takes it (gRPC: int64_param, the same rule); text is not one
    if (c !== undefined && typeof c !== 'number')
      throw invalid(`output ${raw.name}: classification must be a positive integer (a JSON number: "classification": 3), got ${shown(c)}`);
    if (flag(p, 'binary_data', `output ${raw.name}`) ?? binaryOutput) binaryOutputs.add(raw.name);
    return { name: raw.name, classification: c ?? null };
  });
  // an empty list asks for every output, as no list does (and as gRPC reads it)
  const named = requested?.length ? requested : null;
  return {
    request: { id: (doc.id as string | undefined) ?? null, inputs, outputs: named },
    binary: binaryOutputs,
    allBinary: named === null && binaryOutput === true,
  };
}

/** The outputs of an answer written as JSON (the others go as binary data), and how many values they hold. */
function jsonOutputs(r: Awaited<ReturnType<KserveCore['infer']>>, parsed: RestInfer) {
  const outputs = r.outputs.filter((o) => o.tensor && !(parsed.allBinary || parsed.binary.has(o.name)));
  return { outputs, values: outputs.reduce((n, o) => n + o.tensor!.data.length, 0) };
}

/**
 * Encode a response: JSON, or JSON then the binary outputs (with Inference-Header-Content-Length). The values of the
 * outputs written as JSON are counted first: past `maxJsonValues`, LIMIT_EXCEEDED says to ask for binary data.
 */
function sendInferResponse(
  res: ServerResponse,
  r: Awaited<ReturnType<KserveCore['infer']>>,
  parsed: RestInfer,
  maxJsonValues: number,
): void {
  const { outputs: asJson, values } = jsonOutputs(r, parsed);
  if (values > maxJsonValues)
    throw tooManyValues(
      `the answer's JSON (${asJson.map((o) => o.name).join(', ')})`,
      maxJsonValues,
      'ask for it as binary data ("binary_data_output": true, or "binary_data": true on the output)',
    );
  const parts: Uint8Array[] = [];
  // written as text: a tensor's data is JSON no JavaScript value gives (int64 digits past 2^53)
  const outputs = r.outputs.map((o: V2Output) => {
    const head = { name: o.name, datatype: o.datatype, shape: o.shape };
    const bytes = () => (o.elements ? serializeBytes(o.elements) : toBytes(o.tensor!.data));
    if (parsed.allBinary || parsed.binary.has(o.name)) {
      const b = bytes();
      parts.push(b);
      return JSON.stringify({ ...head, parameters: { binary_data_size: b.length } });
    }
    const data = o.elements ? JSON.stringify(o.elements.map((e) => Buffer.from(e).toString('utf8'))) : tensorToJson(o.tensor!);
    return `${JSON.stringify(head).slice(0, -1)},"data":${data}}`;
  });
  const top = JSON.stringify({ model_name: r.model_name, model_version: r.model_version, ...(r.id !== null ? { id: r.id } : {}) });
  const doc = `${top.slice(0, -1)},"outputs":[${outputs.join(',')}]}`;
  if (parts.length === 0) return sendJsonText(res, 200, doc);
  const header = Buffer.from(doc);
  const body = Buffer.concat([header, ...parts]);
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': body.length,
    'inference-header-content-length': header.length,
  });
  res.end(body);
}

/** Files of a load request: `"file:<path>": "<base64>"` parameters, installed under their base names. */
function loadOptions(doc: unknown): { config?: unknown; files: { name: string; bytes: Uint8Array }[] } {
  if (!isObject(doc)) throw invalid('the load request must be a JSON object');
  const p = params(doc.parameters, 'load');
  const files: { name: string; bytes: Uint8Array }[] = [];
  let config: unknown;
  for (const [k, v] of Object.entries(p)) {
    // JSON text, as over gRPC: empty text is none (parseJson reads an empty body as {}, and {} replaced model.json)
    if (k === 'config') config = typeof v === 'string' ? parseJson(v, 'parameter config', '', false) : v;
    else if (k.startsWith('file:')) {
      if (typeof v !== 'string') throw invalid(`parameter ${k} must be base64 (a string), got ${shown(v)}`);
      const bytes = decodeBase64(v);
      if (!bytes) throw invalid(`parameter ${k} is not base64: ${whyNotBase64(v)}`);
      files.push({ name: k.slice(5), bytes });
    }
  }
  return { config, files };
}

export function createRestRoute({
  core,
  logger,
  maxBodyBytes = 50 * 1024 * 1024,
  maxJsonBytes = 8 * 1024 * 1024,
  maxJsonValues = 524_288,
  maxItems = 64,
  clients = new ClientAddresses(),
}: {
  core: KserveCore;
  logger: Logger;
  /** Which peers are trusted proxies (TRUSTED_PROXIES): what they relay is never this machine's own. */
  clients?: ClientAddresses;
  maxBodyBytes?: number;
  /** Largest JSON parsed from a request, once inflated (MAX_JSON_BODY_BYTES). */
  maxJsonBytes?: number;
  /** Values of JSON parsed from a request, and of tensors written as JSON in its answer (MAX_JSON_VALUES). */
  maxJsonValues?: number;
  /** Images (BYTES elements) one request may carry (MAX_IMAGES_PER_REQUEST), checked before they are read. */
  maxItems?: number;
}): RestRoute {
  const fail = (res: ServerResponse, e: unknown) => {
    const m = mapError(e);
    if (!m.expected) logger.error({ err: e }, 'unexpected error (kserve rest)');
    if (res.headersSent) return void res.destroy();
    res.setHeader('x-error-code', m.code);
    if (m.code === ErrorCode.PAYLOAD_TOO_LARGE) res.setHeader('connection', 'close');
    if (m.http === 503) res.setHeader('retry-after', '1'); // as the HTTP server's own 503s (MAX_BYTES_IN_FLIGHT)
    sendJson(res, m.http, { error: m.message });
  };

  async function route(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const method = req.method ?? 'GET';
    const auth: Who = {
      authorization: req.headers.authorization,
      caller: {
        remoteAddress: req.socket.remoteAddress,
        origin: req.headers.origin,
        host: req.headers.host,
        forwarded: clients.relayed(req.socket.remoteAddress, (h) => req.headers[h]),
      },
    };
    const expect = (wanted: 'GET' | 'POST') => {
      if (method !== wanted && !(wanted === 'GET' && method === 'HEAD')) {
        res.setHeader('allow', wanted === 'GET' ? 'GET, HEAD' : wanted);
        throw new Refusal(405, `${method} is not allowed on ${path}`);
      }
    };
    if (path === '/v2' || path === '/v2/') {
      expect('GET');
      return sendJson(res, 200, core.serverMetadata(auth));
    }
    if (path === '/v2/health/live') {
      expect('GET');
      return sendJson(res, 200, { live: core.live() });
    }
    if (path === '/v2/health/ready') {
      expect('GET');
      const ready = core.ready();
      return sendJson(res, ready ? 200 : 503, { ready });
    }
    // Triton's statistics extension, every model's (before the model paths: as on Triton, a model named "stats" has its
    // statistics at /v2/models/stats/stats)
    if (path === '/v2/models/stats') {
      expect('GET');
      return sendJson(res, 200, { model_stats: core.modelStatistics(auth) });
    }
    const m = MODEL_PATH.exec(path);
    if (m) {
      const name = pathPart(m[1]);
      const version = m[2] === undefined ? null : pathPart(m[2]);
      if (m[3] === 'stats') {
        expect('GET');
        return sendJson(res, 200, { model_stats: core.modelStatistics(auth, name, version) });
      }
      if (m[3] === 'config') {
        expect('GET');
        return sendJson(res, 200, core.modelConfig(auth, name, version));
      }
      if (m[3] === 'ready') {
        expect('GET');
        const ready = core.modelReady(auth, name, version);
        return sendJson(res, ready ? 200 : 503, { name, ready });
      }
      if (m[3] === 'infer') {
        expect('POST');
        // the token, then the model: a missing one is NOT_FOUND whatever the body (which is not read)
        const target = core.inferTarget(auth, name, version);
        const body = await readBody(req, maxBodyBytes);
        const header = req.headers[HEADER_LENGTH];
        const parse = () =>
          parseInferRequest(body, Array.isArray(header) ? header[0] : header, target, {
            maxJsonBytes,
            maxJsonValues,
            maxItems,
            contentType: req.headers['content-type'],
          });
        // a long parse waits for its own turn of the event loop: several at once no longer hold it for all of theirs
        // (the JSON is what is long to parse: with binary data, its header only)
        const given = Number(Array.isArray(header) ? header[0] : header);
        const jsonBytes = header !== undefined && Number.isFinite(given) ? Math.min(given, body.length) : body.length;
        // (a client gone while it waited has its parse skipped)
        const parsed =
          jsonBytes > LONG_JSON_BYTES
            ? await inTurn(() => {
                if (res.socket?.destroyed) throw clientGone();
                return parse();
              })
            : parse();
        // a client that hangs up before its answer: the work not yet started for it is dropped (CANCELLED)
        const leaving = new AbortController();
        const left = () => {
          if (!res.writableFinished) leaving.abort();
        };
        res.once('close', left);
        if (res.socket?.destroyed) leaving.abort(); // gone while the body was read
        try {
          const result = await core.infer(auth, target, parsed.request, {
            signal: leaving.signal,
            client: clients.shareOf(req.socket.remoteAddress, req.headers['x-forwarded-for']),
            sendBytes: SEND_BYTES,
          });
          const send = () => sendInferResponse(res, result, parsed, maxJsonValues);
          // so is a long answer's writing, of values as JSON (the answers of one batch are ready together)
          return jsonOutputs(result, parsed).values > LONG_VALUES ? await inTurn(send) : send();
        } finally {
          res.off('close', left);
        }
      }
      expect('GET');
      return sendJson(res, 200, core.modelMetadata(auth, name, version));
    }
    if (path === '/v2/repository/index') {
      expect('POST');
      core.checkAdmin(auth); // before the body is read and parsed
      const doc = parseJson(await readBody(req, maxBodyBytes), 'the index request');
      if (!isObject(doc)) throw invalid('the index request must be a JSON object');
      if (doc.ready !== undefined && typeof doc.ready !== 'boolean')
        throw invalid(`the index request: "ready" must be true or false, got ${shown(doc.ready)}`);
      return sendJson(res, 200, core.repositoryIndex(auth, doc.ready === true));
    }
    const r = REPOSITORY_PATH.exec(path);
    if (r) {
      expect('POST');
      core.checkAdmin(auth); // before the body is read and parsed
      const name = pathPart(r[1]);
      const doc = parseJson(await readBody(req, maxBodyBytes), `the ${r[2]} request`);
      if (r[2] === 'load') await core.load(auth, name, loadOptions(doc));
      else await core.unload(auth, name);
      return sendJson(res, 200, {});
    }
    throw new Refusal(404, `nothing at ${path}`);
  }

  return {
    match: (p) => p === '/v2' || p.startsWith('/v2/'),
    errorBody: (_code, message) => ({ error: message }),
    // binary data, whatever its content type says: only its JSON header is parsed (bounded in parseInferRequest)
    parsesJson: (req) => req.headers[HEADER_LENGTH] === undefined && parsedAsJson(req.headers['content-type']),
    handle(req, res) {
      const path = (req.url ?? '/').split('?')[0];
      route(req, res, path).catch((e: unknown) => {
        if (e instanceof Refusal) {
          if (e.code) res.setHeader('x-error-code', e.code);
          return sendJson(res, e.status, { error: e.message });
        }
        fail(res, e);
      });
    },
  };
}
