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
  annotatedImage?: string;
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
  mask?: string;
  /** Base64 PNG of the mask in colour over the photo, when asked for. */
  overlay?: string;
}

/** A photo: a file path, or bytes with the name the server should see. */
export type ImageSource = string | UploadFile;

/** What the gateway answered with an error (`code` is its `extensions.code`), or UNREACHABLE / HTTP_<status>. */
export class GatewayClientError extends Error {
  override name = 'GatewayClientError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
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

async function readImage(file: string): Promise<Uint8Array> {
  try {
    return await readFile(file);
  } catch (e) {
    throw new GatewayClientError('UNREADABLE_FILE', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

const MODEL_FIELDS = 'name task description ready versions { version state errorCode errorMessage }';

export class GatewayClient {
  readonly endpoint: string;
  readonly token: string | null;
  readonly maxResponseBytes: number;
  readonly timeoutMs: number | null;

  constructor({ url = DEFAULT_URL, token = null, maxResponseBytes = DEFAULT_MAX_RESPONSE_BYTES, timeoutMs = null }: ClientOptions = {}) {
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
    let answer: GraphqlAnswer<T>;
    try {
      answer = JSON.parse(text) as GraphqlAnswer<T>;
    } catch {
      throw new GatewayClientError(`HTTP_${res.status}`, `${this.endpoint} answered ${res.status} ${text.slice(0, 200)}`);
    }
    const error = answer.errors?.[0];
    if (error) throw new GatewayClientError(error.extensions?.code ?? `HTTP_${res.status}`, error.message);
    if (!answer.data) throw new GatewayClientError(`HTTP_${res.status}`, `${this.endpoint} answered ${res.status} without data`);
    return answer.data;
  }

  async listModels(): Promise<ModelSummary[]> {
    return (await this.request<{ models: ModelSummary[] }>(`query Models { models { ${MODEL_FIELDS} } }`)).models;
  }

  /** One model with its class labels (null when the repository has no such model). */
  async model(name: string): Promise<(ModelSummary & { labels: string[] | null }) | null> {
    const q = `query Model($name: String!) { model(name: $name) { ${MODEL_FIELDS} labels } }`;
    return (await this.request<{ model: (ModelSummary & { labels: string[] | null }) | null }>(q, { name })).model;
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
    return (await this.request<{ loadModel: ModelSummary }>(q, { name })).loadModel;
  }

  /** Admin: unload every version of a model (it stays unloaded until loadModel). */
  async unloadModel(name: string): Promise<ModelSummary> {
    const q = `mutation Unload($name: String!) { unloadModel(name: $name) { ${MODEL_FIELDS} } }`;
    return (await this.request<{ unloadModel: ModelSummary }>(q, { name })).unloadModel;
  }

  private async run<T>(field: string, query: string, variables: Record<string, unknown>, image: ImageSource): Promise<T> {
    const file: UploadFile = typeof image === 'string' ? { name: path.basename(image), bytes: await readImage(image) } : image;
    const data = await this.request<Record<string, T | null>>(query, { ...variables, image: { file: null } }, { 'image.file': file });
    const value = data[field];
    if (!value) throw new GatewayClientError('EMPTY_ANSWER', `${field} answered null without an error`);
    return value;
  }
}
