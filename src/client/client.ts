/**
 * The reference client: typed functions over the gateway's GraphQL API on HTTP, uploads as GraphQL multipart requests
 * (encoded by ./multipart.ts). It imports nothing of the server, so a program that only talks to a gateway can use it:
 *
 *   const gw = new GatewayClient({ url: 'http://127.0.0.1:4000' });
 *   const { predictions } = await gw.classify('mobilenet', 'photo.jpg', { topK: 3 });
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { encodeMultipart, type UploadFile } from './multipart.ts';

export const DEFAULT_URL = 'http://127.0.0.1:4000';

export type VersionState = 'START' | 'LOADING' | 'AVAILABLE' | 'UNLOADING' | 'END';

export interface ModelVersionInfo {
  version: number;
  state: VersionState;
  errorCode: string | null;
  errorMessage: string | null;
}

export interface ModelSummary {
  name: string;
  task: string;
  description: string;
  ready: boolean;
  versions: ModelVersionInfo[];
  /** Why the model.json on disk is not in force (the versions keep what they loaded), else null. */
  configurationError: string | null;
}

export interface Box {
  /** Normalized to 0..1 of the original image. */
  xMin: number;
  yMin: number;
  xMax: number;
  yMax: number;
}

export interface Prediction {
  classId: number;
  label: string | null;
  confidence: number;
}

export interface Classification {
  /** Best first. */
  predictions: Prediction[];
}

export interface DetectedObject extends Prediction {
  box: Box;
}

export interface Detection {
  imageWidth: number;
  imageHeight: number;
  objects: DetectedObject[];
  /** Base64 PNG with the boxes drawn, when asked for. */
  annotatedImage?: string | null;
}

export interface SegmentClass {
  classId: number;
  label: string | null;
  pixelFraction: number;
}

export interface Segmentation {
  width: number;
  height: number;
  classes: SegmentClass[];
  /** Base64 PNG, one class id per pixel, when asked for. */
  mask?: string | null;
  /** Base64 PNG of the mask in colour over the photo, when asked for. */
  overlay?: string | null;
}

/** A photo: a file path, or bytes with the name the server should see. */
export type ImageSource = string | UploadFile;

/** An error of an answer: its code, its message and the field it concerns (its GraphQL path, as detect.annotatedImage). */
export interface FieldError {
  code: string;
  message: string;
  /** '' when the error concerns no field. */
  path: string;
}

/** What the gateway answered with an error (`code` is its `extensions.code`), or UNREACHABLE / HTTP_<status>. */
export class GatewayClientError extends Error {
  override name = 'GatewayClientError';
  constructor(
    readonly code: string,
    message: string,
    /**
     * A partial answer (HTTP 200, data beside the errors of fields that came back null, as annotatedImage past
     * MAX_RESPONSE_BYTES): what came back (the data of `request`; the result of classify, detect, segment) and every error.
     */
    readonly partial?: { data: unknown; errors: FieldError[] },
  ) {
    super(message);
  }
}

/** What `Authorization: Bearer <token>` can carry: visible ASCII, one word. */
export const isHeaderToken = (token: string): boolean => /^[\x21-\x7e]+$/.test(token);

/** An http(s) address that parses. */
export function isGatewayUrl(url: string): boolean {
  try {
    return /^https?:$/.test(new URL(url).protocol);
  } catch {
    return false;
  }
}

export interface ClientOptions {
  /** The gateway, e.g. http://127.0.0.1:4000 (a URL ending in /graphql is taken as the endpoint). */
  url?: string;
  /** Sent as `Authorization: Bearer <token>` (API token, or the admin token for load/unload). */
  token?: string | null;
  /** The longest answer read, in bytes (default 256 MiB), past which the request fails with RESPONSE_TOO_LARGE. */
  maxResponseBytes?: number;
  /**
   * The longest a request may take, answer included, in ms, past which it fails with TIMEOUT (default: none; a load
   * waits until the model has loaded, and a server that trickles its answer keeps the connection's own timeouts at bay).
   */
  timeoutMs?: number | null;
}

/**
 * A gateway's largest answer is a few images of MAX_RESPONSE_BYTES (64 MB by default) in base64 with their JSON: this
 * leaves room for a gateway that raised it, and keeps a server that sends without end (a compromised one, or something
 * else at that address) from taking all of this machine's memory (an endless answer held 7.9 GB after a minute).
 */
export const DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024;

/**
 * The most values (counted by the commas, objects and lists of its text) an answer may hold to be parsed. JSON.parse
 * makes each {} an object of some 60 bytes of heap: 16 MB of [{},{},...] held 590 MB, 240 MB (under the byte limit)
 * more than 6.4 GB, whatever the byte limit said. A gateway's answers are a few hundred values and base64 strings
 * (which cost what they weigh); a million values is some 70 MB of heap.
 */
export const MAX_RESPONSE_VALUES = 1_000_000;

/** How many of `chars` the text holds, counting no further than `limit` + 1. */
function countChars(text: string, chars: string, limit: number): number {
  let n = 0;
  for (const c of chars) for (let i = text.indexOf(c); i !== -1 && n <= limit; i = text.indexOf(c, i + 1)) n++;
  return n;
}

/** The longest timeoutMs: what a Node timer can wait (2^31-1 ms, 24.8 days); past it, it fires after 1 ms. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** The body as text, read up to `limit` bytes (as they come, after any Content-Encoding is undone). */
async function readBounded(res: Response, limit: number, endpoint: string): Promise<string> {
  const tooLarge = (bytes: string) =>
    new GatewayClientError('RESPONSE_TOO_LARGE', `${endpoint} answered ${bytes} bytes, more than the ${limit} this client reads`);
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > limit) {
    await res.body?.cancel().catch(() => {});
    throw tooLarge(String(declared));
  }
  if (!res.body) return '';
  const decoder = new TextDecoder();
  let text = '';
  let bytes = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    bytes += chunk.byteLength;
    if (bytes > limit) throw tooLarge(`over ${limit}`); // leaving the loop cancels the stream, and with it the connection
    text += decoder.decode(chunk, { stream: true });
  }
  return text + decoder.decode();
}

interface GraphqlAnswer<T> {
  data?: T | null;
  errors?: { message: string; extensions?: { code?: string } }[];
}

/**
 * What an answer must hold: a type ('string', 'number', 'boolean'; with '?', or null), [shape] for a list of it, or an
 * object's fields. A gateway's answer is checked against it before anything reads it (a list that was a string, a box
 * that was null, a label nested 200000 deep crashed the CLI with a stack trace), and only the fields named are kept.
 */
type Shape = string | [Shape] | { [field: string]: Shape };

function checked(value: unknown, shape: Shape, where: string, endpoint: string): unknown {
  const malformed = (expected: string) => {
    const got =
      value === undefined
        ? 'nothing'
        : value === null
          ? 'null'
          : Array.isArray(value)
            ? 'a list'
            : `a ${typeof value}`.replace(/^a o/, 'an o');
    return new GatewayClientError('MALFORMED_ANSWER', `${endpoint} answered ${got} for ${where}, not ${expected} (is it a gateway?)`);
  };
  if (typeof shape === 'string') {
    if (value === null && shape.endsWith('?')) return null;
    const type = shape.replace(/\?$/, '');
    if (typeof value !== type) throw malformed(`a ${type}`);
    return value;
  }
  if (Array.isArray(shape)) {
    if (!Array.isArray(value)) throw malformed('a list');
    return value.map((v, i) => checked(v, shape[0], `${where}[${i}]`, endpoint));
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw malformed('an object');
  const picked: Record<string, unknown> = {};
  for (const [field, s] of Object.entries(shape)) {
    // a field left out is one not asked for (annotatedImage without --out)
    const v = (value as Record<string, unknown>)[field];
    if (v !== undefined || !(typeof s === 'string' && s.endsWith('?'))) picked[field] = checked(v, s, `${where}.${field}`, endpoint);
  }
  return picked;
}

/** The errors of an answer, checked as its data is, each with its code and the path of the field it concerns. */
function fieldErrors(errors: unknown, status: number, endpoint: string): FieldError[] {
  if (errors === undefined || errors === null) return [];
  checked(errors, [{ message: 'string' }], 'errors', endpoint);
  return (errors as { message: string; extensions?: unknown; path?: unknown }[]).map(({ message, extensions, path }) => {
    const code = (extensions as { code?: unknown } | null | undefined)?.code;
    const steps = Array.isArray(path) && path.every((p) => typeof p === 'string' || typeof p === 'number') ? path : [];
    return {
      code: typeof code === 'string' ? code : `HTTP_${status}`,
      message,
      path: steps.map((p, i) => (typeof p === 'number' ? `[${p}]` : i ? `.${p}` : p)).join(''),
    };
  });
}

const VERSION_SHAPE: Shape = { version: 'number', state: 'string', errorCode: 'string?', errorMessage: 'string?' };
const MODEL_SHAPE: Shape = {
  name: 'string',
  task: 'string',
  description: 'string',
  ready: 'boolean',
  versions: [VERSION_SHAPE],
  configurationError: 'string?',
};
const PREDICTION_SHAPE = { classId: 'number', label: 'string?', confidence: 'number' };
const BOX_SHAPE: Shape = { xMin: 'number', yMin: 'number', xMax: 'number', yMax: 'number' };
const SHAPES: Record<string, Shape> = {
  classify: { predictions: [PREDICTION_SHAPE] },
  detect: { imageWidth: 'number', imageHeight: 'number', objects: [{ ...PREDICTION_SHAPE, box: BOX_SHAPE }], annotatedImage: 'string?' },
  segment: {
    width: 'number',
    height: 'number',
    classes: [{ classId: 'number', label: 'string?', pixelFraction: 'number' }],
    mask: 'string?',
    overlay: 'string?',
  },
};

/** Why a file could not be read, in words after its code (ENOENT alone told a newcomer little). */
const FILE_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EISDIR: 'a folder: give the images in it, as DIR/*.jpg',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  ENOTDIR: 'a part of the path is not a folder',
};

/** "ENOENT (no such file)": an fs error's code, with what it means where `words` knows it. */
export function fileError(e: unknown, words: Record<string, string> = FILE_ERRORS): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (!code) return (e as Error).message;
  return words[code] ? `${code} (${words[code]})` : code;
}

async function readImage(file: string): Promise<Uint8Array> {
  try {
    return await readFile(file);
  } catch (e) {
    throw new GatewayClientError('UNREADABLE_FILE', `cannot read ${file}: ${fileError(e)}`);
  }
}

const MODEL_FIELDS = 'name task description ready versions { version state errorCode errorMessage } configurationError';

export class GatewayClient {
  readonly endpoint: string;
  readonly token: string | null;
  readonly maxResponseBytes: number;
  readonly timeoutMs: number | null;

  constructor({ url = DEFAULT_URL, token = null, maxResponseBytes = DEFAULT_MAX_RESPONSE_BYTES, timeoutMs = null }: ClientOptions = {}) {
    // said here, not as UNREACHABLE at the first request (whose message, fetch's, quoted the token)
    if (token && !isHeaderToken(token))
      throw new TypeError(
        'token: it holds a character an HTTP header cannot carry (a space, a control character or one past ASCII): give the token as the gateway has it',
      );
    if (!isGatewayUrl(url)) throw new TypeError(`url: expected the gateway's http:// or https:// address, got ${JSON.stringify(url)}`);
    const base = url.replace(/\/+$/, '');
    this.endpoint = /\/graphql$/.test(base) ? base : `${base}/graphql`;
    this.token = token || null;
    this.maxResponseBytes = maxResponseBytes;
    if (timeoutMs !== null && !(Number.isFinite(timeoutMs) && timeoutMs > 0 && timeoutMs <= MAX_TIMEOUT_MS))
      throw new TypeError(`timeoutMs must be a number > 0 and at most ${MAX_TIMEOUT_MS} (24.8 days), or null`);
    this.timeoutMs = timeoutMs;
  }

  /** The request as a whole, answer included, with this client's time limit. */
  async request<T>(query: string, variables: Record<string, unknown> = {}, files: Record<string, UploadFile> = {}): Promise<T> {
    if (this.timeoutMs === null) return this.send<T>(query, variables, files);
    const signal = AbortSignal.timeout(this.timeoutMs);
    try {
      return await this.send<T>(query, variables, files, signal);
    } catch (e) {
      if (!signal.aborted) throw e;
      throw new GatewayClientError('TIMEOUT', `${this.endpoint} did not answer in full within ${this.timeoutMs / 1000} s (--timeout)`);
    }
  }

  /**
   * One GraphQL operation; `files` maps variable paths ("image.file") to uploads, which makes it a multipart request.
   * Resolves to `data` when no error came back, else rejects with the first error's code and message.
   */
  private async send<T>(
    query: string,
    variables: Record<string, unknown>,
    files: Record<string, UploadFile>,
    signal?: AbortSignal,
  ): Promise<T> {
    const auth: Record<string, string> = this.token ? { authorization: `Bearer ${this.token}` } : {};
    let init: RequestInit;
    if (Object.keys(files).length) {
      const { body, contentType } = encodeMultipart({ query, variables }, files);
      // yoga's CSRF prevention wants this header on multipart requests
      init = { method: 'POST', body, headers: { 'content-type': contentType, 'x-graphql-yoga-csrf': '1', ...auth } };
    } else {
      init = { method: 'POST', body: JSON.stringify({ query, variables }), headers: { 'content-type': 'application/json', ...auth } };
    }
    let res: Response;
    try {
      // a redirect is not followed: fetch sent the query (and a 307's body) on to wherever it pointed, another host
      // included (without the token), and failed a photo's upload there as UNREACHABLE; the user is told where instead
      res = await fetch(this.endpoint, { ...init, signal, redirect: 'manual', headers: { accept: 'application/json', ...init.headers } });
    } catch (e) {
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new GatewayClientError(
        'UNREACHABLE',
        `cannot reach ${this.endpoint}: ${cause?.code ?? cause?.message ?? (e as Error).message}`,
      );
    }
    if (res.status >= 300 && res.status < 400 && res.headers.has('location')) {
      await res.body?.cancel().catch(() => {});
      const to = new URL(res.headers.get('location')!, this.endpoint).href;
      throw new GatewayClientError('REDIRECTED', `${this.endpoint} redirects (${res.status}) to ${to}: give that address instead`);
    }
    const text = await readBounded(res, this.maxResponseBytes, this.endpoint);
    if (countChars(text, ',{[', MAX_RESPONSE_VALUES) > MAX_RESPONSE_VALUES)
      throw new GatewayClientError(
        'RESPONSE_TOO_LARGE',
        `${this.endpoint} answered more than ${MAX_RESPONSE_VALUES} values (commas, objects and lists), more than this client parses`,
      );
    let answer: GraphqlAnswer<T>;
    try {
      answer = JSON.parse(text) as GraphqlAnswer<T>;
    } catch {
      throw new GatewayClientError(`HTTP_${res.status}`, `${this.endpoint} answered ${res.status} ${text.slice(0, 200)}`);
    }
    if (typeof answer !== 'object' || answer === null || Array.isArray(answer))
      throw new GatewayClientError(
        `HTTP_${res.status}`,
        `${this.endpoint} answered ${res.status} ${text.slice(0, 200)}, not a GraphQL answer`,
      );
    const errors = fieldErrors(answer.errors, res.status, this.endpoint);
    const data = typeof answer.data === 'object' && !Array.isArray(answer.data) ? answer.data : null;
    if (errors.length) throw new GatewayClientError(errors[0].code, errors[0].message, data ? { data, errors } : undefined);
    if (!data) throw new GatewayClientError(`HTTP_${res.status}`, `${this.endpoint} answered ${res.status} without data`);
    return data;
  }

  async listModels(): Promise<ModelSummary[]> {
    const { models } = await this.request<{ models: unknown }>(`query Models { models { ${MODEL_FIELDS} } }`);
    return checked(models, [MODEL_SHAPE], 'models', this.endpoint) as ModelSummary[];
  }

  /** One model with its class labels (null when the repository has no such model). */
  async model(name: string): Promise<(ModelSummary & { labels: string[] | null }) | null> {
    const q = `query Model($name: String!) { model(name: $name) { ${MODEL_FIELDS} labels } }`;
    const { model } = await this.request<{ model: unknown }>(q, { name });
    if (model === null) return null;
    const labels = (model as { labels?: unknown }).labels ?? null;
    return {
      ...(checked(model, MODEL_SHAPE, 'model', this.endpoint) as ModelSummary),
      labels: labels === null ? null : (checked(labels, ['string'], 'model.labels', this.endpoint) as string[]),
    };
  }

  async classify(
    model: string,
    image: ImageSource,
    { topK = 5, minConfidence = null, version = null }: { topK?: number; minConfidence?: number | null; version?: number | null } = {},
  ): Promise<Classification> {
    const q = `mutation Classify($model: String!, $version: Int, $image: ImageInput!, $topK: Int, $minConfidence: Float) {
      classify(model: $model, version: $version, image: $image, topK: $topK, minConfidence: $minConfidence) {
        predictions { classId label confidence } } }`;
    return this.run<Classification>('classify', q, { model, version, topK, minConfidence }, image);
  }

  async detect(
    model: string,
    image: ImageSource,
    {
      minConfidence = null,
      iouThreshold = null,
      maxDetections = null,
      version = null,
      annotated = false,
    }: {
      minConfidence?: number | null;
      iouThreshold?: number | null;
      maxDetections?: number | null;
      version?: number | null;
      /** Also return the photo with the boxes drawn (annotatedImage). */
      annotated?: boolean;
    } = {},
  ): Promise<Detection> {
    const q = `mutation Detect($model: String!, $version: Int, $image: ImageInput!, $minConfidence: Float, $iouThreshold: Float, $maxDetections: Int) {
      detect(model: $model, version: $version, image: $image, minConfidence: $minConfidence, iouThreshold: $iouThreshold, maxDetections: $maxDetections) {
        imageWidth imageHeight objects { classId label confidence box { xMin yMin xMax yMax } } ${annotated ? 'annotatedImage' : ''} } }`;
    return this.run<Detection>('detect', q, { model, version, minConfidence, iouThreshold, maxDetections }, image);
  }

  async segment(
    model: string,
    image: ImageSource,
    { version = null, mask = false, overlay = false }: { version?: number | null; mask?: boolean; overlay?: boolean } = {},
  ): Promise<Segmentation> {
    const q = `mutation Segment($model: String!, $version: Int, $image: ImageInput!) {
      segment(model: $model, version: $version, image: $image) {
        width height classes { classId label pixelFraction } ${mask ? 'mask' : ''} ${overlay ? 'overlay' : ''} } }`;
    return this.run<Segmentation>('segment', q, { model, version }, image);
  }

  /** Admin: load a repository model (or reload an unloaded one); resolves once it is AVAILABLE or has failed. */
  async loadModel(name: string): Promise<ModelSummary> {
    const q = `mutation Load($name: String!) { loadModel(name: $name) { ${MODEL_FIELDS} } }`;
    return checked(
      (await this.request<{ loadModel: unknown }>(q, { name })).loadModel,
      MODEL_SHAPE,
      'loadModel',
      this.endpoint,
    ) as ModelSummary;
  }

  /** Admin: unload every version of a model (it stays unloaded until loadModel). */
  async unloadModel(name: string): Promise<ModelSummary> {
    const q = `mutation Unload($name: String!) { unloadModel(name: $name) { ${MODEL_FIELDS} } }`;
    const { unloadModel } = await this.request<{ unloadModel: unknown }>(q, { name });
    return checked(unloadModel, MODEL_SHAPE, 'unloadModel', this.endpoint) as ModelSummary;
  }

  private async run<T>(field: string, query: string, variables: Record<string, unknown>, image: ImageSource): Promise<T> {
    const file: UploadFile = typeof image === 'string' ? { name: path.basename(image), bytes: await readImage(image) } : image;
    let data: Record<string, unknown>;
    try {
      data = await this.request<Record<string, unknown>>(query, { ...variables, image: { file: null } }, { 'image.file': file });
    } catch (e) {
      const value = e instanceof GatewayClientError ? (e.partial?.data as Record<string, unknown> | undefined)?.[field] : null;
      if (!(e instanceof GatewayClientError)) throw e;
      // the result itself failed (null beside its error): nothing of it came
      if (value === null || value === undefined) throw new GatewayClientError(e.code, e.message);
      // the result came back without some of its fields (an image too large to send): the caller gets what did come
      throw new GatewayClientError(e.code, e.message, {
        data: checked(value, SHAPES[field], field, this.endpoint),
        errors: e.partial!.errors,
      });
    }
    const value = data[field];
    if (value === null || value === undefined) throw new GatewayClientError('EMPTY_ANSWER', `${field} answered null without an error`);
    return checked(value, SHAPES[field], field, this.endpoint) as T;
  }
}
