/**
 * What the page says to the gateway: GraphQL only, on the page's own origin. Queries and admin mutations are JSON
 * POSTs; an image goes as a GraphQL multipart request (the browser's FormData is the encoder here: it is the
 * platform's, so the page needs none of its own); model status streams over the `modelStatus` subscription with
 * graphql-ws, which reconnects by itself.
 */
import { createClient } from 'graphql-ws';

export interface VersionInfo {
  version: number;
  state: 'START' | 'LOADING' | 'AVAILABLE' | 'UNLOADING' | 'END';
  errorCode: string | null;
  errorMessage: string | null;
}

export interface ModelInfo {
  name: string;
  task: string;
  description: string;
  ready: boolean;
  versions: VersionInfo[];
}

export interface Box {
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

export interface DetectedObject extends Prediction {
  box: Box;
}

export interface SegmentClass {
  classId: number;
  label: string | null;
  pixelFraction: number;
}

export type Result =
  | { task: 'classification'; predictions: Prediction[] }
  | { task: 'detection'; imageWidth: number; imageHeight: number; objects: DetectedObject[] }
  | { task: 'segmentation'; width: number; height: number; classes: SegmentClass[]; mask: string | null };

/** The tasks the page can show; `raw` models take tensors, which a photo is not. */
export const TASKS = ['classification', 'detection', 'segmentation'] as const;

/**
 * An error the server answered (its `extensions.code` and message), or NETWORK_ERROR when it did not answer. `part` is
 * the field of an answer that came without it (its path under the operation's field, `mask`), the rest having come.
 */
export class RequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly part?: string,
  ) {
    super(message);
  }
}

interface GraphqlResponse {
  data?: Record<string, unknown> | null;
  errors?: { message: string; path?: (string | number)[]; extensions?: { code?: string } }[];
}

/** What an answer with data holds: the data, and the errors of the fields it lacks (a GraphQL partial result). */
interface Answer {
  data: Record<string, unknown>;
  errors: RequestError[];
}

/**
 * A token goes as a header (and as the WebSocket's `authorization`, which the gateway checks as one): one with a
 * control character or a letter past U+00FF cannot, and fetch() would throw as if the gateway had not answered.
 */
function tokenError(token: string): RequestError | null {
  return /^[\t\x20-\x7e\x80-\xff]*$/.test(token)
    ? null
    : new RequestError(
        'INVALID_TOKEN',
        'the Token field holds a character a header cannot carry (a control character, or a letter past ISO-8859-1): nothing was sent with it',
      );
}

/** How long a request may go unanswered before the page gives it up, and the user's way to give it up sooner. */
export interface Waiting {
  /** Past it, the request is given up: TIMEOUT. */
  timeoutMs: number;
  /** Aborted when the user cancels: CANCELLED. */
  signal?: AbortSignal;
}

/** A time for people: seconds up to two minutes, then minutes. */
export const duration = (ms: number) => (ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`);

async function post(body: BodyInit, headers: Record<string, string>, token: string, waiting: Waiting): Promise<Answer> {
  const refused = tokenError(token);
  if (refused) throw refused;
  // one signal ends the request, answer included (a server may send its headers and stall in the body): the user's
  // cancel, or the bound
  const stop = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    stop.abort();
  }, waiting.timeoutMs);
  const cancel = () => stop.abort();
  if (waiting.signal?.aborted) stop.abort();
  waiting.signal?.addEventListener('abort', cancel, { once: true });
  const givenUp = () =>
    timedOut
      ? new RequestError('TIMEOUT', `no answer within ${duration(waiting.timeoutMs)}: the page stopped waiting`)
      : new RequestError('CANCELLED', 'cancelled: the page stopped waiting for the answer');
  let res: Response;
  let text: string;
  try {
    res = await fetch('/graphql', {
      method: 'POST',
      body,
      headers: { accept: 'application/json', ...headers, ...(token ? { authorization: `Bearer ${token}` } : {}) },
      signal: stop.signal,
    });
    try {
      text = await res.text();
    } catch (e) {
      if (stop.signal.aborted) throw givenUp();
      throw new RequestError('NETWORK_ERROR', `the gateway's answer broke off (${(e as Error).message})`);
    }
  } catch (e) {
    if (e instanceof RequestError) throw e;
    if (stop.signal.aborted) throw givenUp();
    throw new RequestError('NETWORK_ERROR', `the gateway did not answer (${(e as Error).message})`);
  } finally {
    clearTimeout(timer);
    waiting.signal?.removeEventListener('abort', cancel);
  }
  let answer: GraphqlResponse;
  try {
    answer = JSON.parse(text) as GraphqlResponse;
  } catch {
    throw new RequestError(`HTTP_${res.status}`, text.slice(0, 300) || res.statusText);
  }
  const data = answer.data ?? null;
  // an error is the answer when a field it concerns has no data (GraphQL partial results keep the rest)
  const missing = !data || Object.values(data).some((v) => v === null);
  if (missing) {
    const e = answer.errors?.[0];
    throw new RequestError(e?.extensions?.code ?? `HTTP_${res.status}`, e?.message ?? `empty answer (HTTP ${res.status})`);
  }
  // the other errors are of parts of it: shown beside what came, each saying which part it concerns
  const errors = (answer.errors ?? []).map(
    (e) => new RequestError(e.extensions?.code ?? `HTTP_${res.status}`, e.message, e.path?.slice(1).join('.') || undefined),
  );
  return { data: data!, errors };
}

export const gql = async (query: string, variables: Record<string, unknown>, token: string, waiting: Waiting) =>
  (await post(JSON.stringify({ query, variables }), { 'content-type': 'application/json' }, token, waiting)).data;

/** A GraphQL multipart request with one file in variable `image.file`. */
function upload(query: string, variables: Record<string, unknown>, file: Blob, fileName: string, token: string, waiting: Waiting) {
  const form = new FormData();
  form.append('operations', JSON.stringify({ query, variables: { ...variables, image: { file: null } } }));
  form.append('map', JSON.stringify({ 0: ['variables.image.file'] }));
  form.append('0', file, fileName);
  // yoga's CSRF prevention: a multipart request must carry a header a cross-site form cannot send
  return post(form, { 'x-graphql-yoga-csrf': '1' }, token, waiting);
}

/** What the page reads of a model, in the list and in the answer to a load or an unload. */
const MODEL_FIELDS = 'name task description ready versions { version state errorCode errorMessage }';
const MODELS = `query Models { models { ${MODEL_FIELDS} } }`;

export async function listModels(token: string, waiting: Waiting): Promise<ModelInfo[]> {
  return (await gql(MODELS, {}, token, waiting)).models as ModelInfo[];
}

const RUN: Record<(typeof TASKS)[number], string> = {
  classification: `mutation Classify($model: String!, $image: ImageInput!) {
    classify(model: $model, image: $image, topK: 5) { predictions { classId label confidence } } }`,
  detection: `mutation Detect($model: String!, $image: ImageInput!) {
    detect(model: $model, image: $image) { imageWidth imageHeight objects { classId label confidence box { xMin yMin xMax yMax } } } }`,
  segmentation: `mutation Segment($model: String!, $image: ImageInput!) {
    segment(model: $model, image: $image) { width height classes { classId label pixelFraction } mask } }`,
};

/** Runs the model of that task on the image: its result, and the errors of the parts of it that did not come. */
export async function run(
  task: (typeof TASKS)[number],
  model: string,
  file: Blob,
  fileName: string,
  token: string,
  waiting: Waiting,
): Promise<{ result: Result; errors: RequestError[] }> {
  const { data, errors } = await upload(RUN[task], { model }, file, fileName, token, waiting);
  const [value] = Object.values(data) as [Record<string, unknown>];
  return { result: { task, ...value } as Result, errors };
}

/**
 * Loads or unloads the model: the model as the answer left it. A load that failed is answered, not refused: its
 * versions say why (`errorCode`, `errorMessage`).
 */
export async function setLoaded(model: string, loaded: boolean, token: string, waiting: Waiting): Promise<ModelInfo> {
  const query = loaded
    ? `mutation Load($name: String!) { loadModel(name: $name) { ${MODEL_FIELDS} } }`
    : `mutation Unload($name: String!) { unloadModel(name: $name) { ${MODEL_FIELDS} } }`;
  const [answer] = Object.values(await gql(query, { name: model }, token, waiting)) as [ModelInfo];
  return answer;
}

export type Connection = 'connecting' | 'live' | 'offline';

/**
 * Why the WebSocket closed, for people. The server refuses a connection without a valid token (API_TOKENS) with
 * graphql-ws's 4403 "Forbidden", whether no token was given or a wrong one: the page knows which.
 */
function closedBecause(e: unknown, token: string): string | undefined {
  const close = e as CloseEvent | undefined;
  if (close?.code === 4403) return token ? 'FORBIDDEN the token is not valid' : 'UNAUTHENTICATED this gateway needs a token: type it above';
  return close?.reason || undefined;
}

/**
 * Follows `modelStatus` over WebSocket: `changed()` after every event and after every (re)connection (events missed
 * while away are caught up by re-reading the list). A stream the server ends (shutdown) is subscribed again. Returns
 * a function that stops it all.
 */
export function followStatus(token: string, on: { changed(): void; connection(c: Connection, why?: string): void }): () => void {
  const refused = tokenError(token);
  if (refused) {
    on.connection('offline', `${refused.code} ${refused.message}`);
    return () => {};
  }
  let stopped = false;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`;
  const client = createClient({
    url,
    connectionParams: token ? { authorization: `Bearer ${token}` } : {},
    retryAttempts: Infinity,
    shouldRetry: () => true,
    retryWait: (n) => new Promise((r) => setTimeout(r, Math.min(500 * 2 ** n, 5000))),
    on: {
      connecting: () => on.connection('connecting'),
      connected: () => {
        on.connection('live');
        on.changed();
      },
      // the close of a client stopped (the token changed) comes after the next one has said how it is: not its to say
      closed: (e) => !stopped && on.connection('offline', closedBecause(e, token)),
    },
  });
  let stop: () => void = () => {};
  const subscribe = () => {
    stop = client.subscribe(
      { query: 'subscription Status { modelStatus { model version state } }' },
      {
        next: (r) => {
          if (r.errors?.length) on.connection('offline', `${r.errors[0].extensions?.code ?? ''} ${r.errors[0].message}`.trim());
          else on.changed();
        },
        error: (e) => {
          const why = Array.isArray(e) ? e.map((x: { message: string }) => x.message).join('; ') : closedBecause(e, token);
          on.connection('offline', why || undefined);
          if (!stopped) setTimeout(() => !stopped && subscribe(), 2000);
        },
        complete: () => {
          if (!stopped) setTimeout(() => !stopped && subscribe(), 1000);
        },
      },
    );
  };
  subscribe();
  return () => {
    stopped = true;
    stop();
    // dropped while it waits to reconnect, the client rejects its pending connection ({code: 1000, "All
    // Subscriptions Gone"}) and dispose() with it: expected here, not an error of the page
    void Promise.resolve(client.dispose()).catch(() => {});
  };
}
