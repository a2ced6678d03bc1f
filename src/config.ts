// Over 250 lines on purpose: every setting with its parser, default and help text in one table (the README's
// configuration table and --help are generated from it), and the one place that reads env and flags.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type { LogLevel } from './log.ts';
import { ENGINE_NAMES, type EngineName } from './engine/index.ts';
import type { LoadOptions } from './engine/types.ts';
import { parseTrustedProxy } from './client-address.ts';
import { DEFAULT_IMAGE_FORMATS } from './vision/formats.ts';
import { closest } from './did-you-mean.ts';

type ExactInt8 = NonNullable<LoadOptions['exactInt8']>;

/**
 * The only place that reads the environment and the command line. Every setting has an env name and a flag
 * (PORT / --port, MODEL_REPOSITORY / --model-repository, ...); flags win. Bad values fail at start with a message
 * that names the setting.
 */
export interface Config {
  port: number;
  /** gRPC port of the KServe v2 service; null: no gRPC. */
  grpcPort: number | null;
  host: string;
  modelRepository: string;
  /** Extra directories loadModel(path:) may read. */
  modelRoots: string[];
  /** Directories ImageInput.path may read; none by default. */
  imageRoots: string[];
  engine: EngineName;
  engineThreads: number;
  engineInstances: number;
  engineAloneThreads: number;
  decodeThreads: number;
  vipsConcurrency: number;
  logLevel: LogLevel;
  pollIntervalMs: number;
  dynamicBatch: boolean;
  exactInt8: ExactInt8;
  engineLoadTimeoutMs: number;
  engineCallTimeoutMs: number;
  fusedPreprocessing: boolean;
  maxImagePixels: number;
  maxUploadBytes: number;
  maxJsonBodyBytes: number;
  maxBytesInFlight: number;
  maxFilesPerRequest: number;
  maxImagesPerRequest: number;
  maxQueryDepth: number;
  maxAliases: number;
  maxWsConnectionsPerClient: number;
  maxWsMessageBytes: number;
  maxSubscriptionsPerConnection: number;
  wsKeepAliveMs: number;
  adminToken: string | null;
  apiTokens: string[];
  corsOrigins: string[];
  allowedHosts: string[];
  /** Proxies whose X-Forwarded-For names the client (addresses and CIDR blocks); none by default. */
  trustedProxies: string[];
  /** The bits of an IPv6 address that name its client, for per-client limits. */
  clientIpv6Prefix: number;
  shutdownTimeoutMs: number;
  graphiql: boolean;
  maxQueryBytes: number;
  maxVariableValues: number;
  maxQueryTokens: number;
  maxQueryCost: number;
  maxResponseBytes: number;
  maxJsonValues: number;
  maxRenderedImagesPerRequest: number;
  imageFormats: string[];
  decodeTimeoutMs: number;
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerClient: number;
  maxSubscriptionsPerClient: number;
  /** Scale out (src/cluster): the Redis bus, this replica's name, the drain before a shutdown. */
  redisUrl: string | null;
  redisKeyPrefix: string;
  replicaName: string;
  drainDelayMs: number;
}

/**
 * Threads for the machine, as measured on 2 cores (bench/, README): one intra-op thread per engine call per two cores
 * (two cost 10% more CPU per image at batch 8), and images decoded two per core. A decode passes its work between a
 * libuv thread and a libvips worker, so two per core keep the cores busy: with one per core, 1920x1080 and 4000x3000
 * photos served 5-10% fewer requests (and batched 1.4 instead of 4.5 at c16); small photos did not care.
 */
export const cores = () => Math.max(1, Math.min(os.availableParallelism?.() ?? os.cpus().length, cgroupCpus()));

/**
 * The CPUs a cgroup v2 quota allows (`cpu.max`: "<quota> <period>" or "max <period>"), rounded up: a container limited
 * to 2 CPUs on a 64-core node must not size its threads for 64, and Node 20 reports the node's cores.
 */
export function cpusFromCgroup(cpuMax: string): number {
  const [quota, period] = cpuMax.trim().split(/\s+/);
  const n = Number(quota) / Number(period);
  return quota !== 'max' && Number.isFinite(n) && n > 0 ? Math.max(1, Math.ceil(n)) : Infinity;
}
function cgroupCpus(): number {
  try {
    return cpusFromCgroup(readFileSync('/sys/fs/cgroup/cpu.max', 'utf8'));
  } catch {
    return Infinity; // no cgroup v2 quota here
  }
}
export const defaultEngineThreads = () => Math.max(1, Math.floor(cores() / 2));
/**
 * Two instances of ENGINE_THREADS (half the cores) each: one batch computes on each, so the engine, the longest stage,
 * no longer runs on one half of the machine while the other waits (mobilenet at c16 on 2 cores: +30-50% req/s, bench/).
 */
export const defaultEngineInstances = () => (cores() > 1 ? 2 : 1);
/**
 * A lone request (nothing else running or waiting) gets every core, in a second session whose threads spin between
 * operators: mobilenet answers in 1.9 ms instead of 3.0 on 2 cores. One core has nothing to add.
 */
export const defaultAloneThreads = () => (cores() > 1 ? cores() : 0);
/**
 * An eighth of the memory the process may use (a container's cgroup limit, else the machine's): 3 GB on a 24 GB
 * machine, room for 60 of the largest requests at once, while what a request becomes (tensors, base64 decoded, the
 * answer) and the models keep the rest.
 */
export const defaultBytesInFlight = () => Math.floor(processMemory() / 8);
/** The memory this process may use: its cgroup limit (a container's), else the machine's. */
export const processMemory = () => {
  const limit = process.constrainedMemory?.() ?? 0;
  return limit > 0 && limit < os.totalmem() ? limit : os.totalmem();
};
/** The libuv pool as Node sized it when the process started: UV_THREADPOOL_SIZE as libuv reads it, 4 when unset. */
export const uvThreadpoolSize = () => {
  const v = process.env.UV_THREADPOOL_SIZE;
  return v === undefined ? 4 : Math.min(1024, Math.max(1, Number.parseInt(v, 10) || 0));
};
/**
 * Decodes run on the libuv pool: more at once than it has threads would only wait there, and one of its threads is
 * left to file and DNS work (image paths, uploads, the watcher), which would otherwise queue behind a slow decode.
 */
export const defaultDecodeThreads = () => Math.max(1, Math.min(2 * cores(), uvThreadpoolSize() - 1));

/**
 * The formats the server can read. By default the raster formats whose decoding is cheap or can be cut short
 * (DEFAULT_IMAGE_FORMATS in vision/formats.ts); AVIF and HEIF (AV1: a flat 40 MP AVIF of 2 KB takes 1.8 s to decode
 * here, a noisy one 5 s, and libheif cannot be interrupted by DECODE_TIMEOUT_MS) and SVG (a vector format whose
 * rendering can be made arbitrarily costly) only when configured.
 */
export const IMAGE_FORMATS = ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif', 'heif', 'svg'] as const;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

interface Setting<K extends keyof Config> {
  key: K;
  env: string;
  parse: (raw: string, name: string) => Config[K];
  fallback: Config[K];
  help: string;
  /** How the default reads in the README when it depends on the machine. */
  shown?: string;
}

const int =
  (min: number, max = Number.MAX_SAFE_INTEGER) =>
  (raw: string, name: string): number => {
    const n = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || n < min || n > max)
      throw new ConfigError(`${name}: expected an integer ${min}..${max}, got ${JSON.stringify(raw)}`);
    return n;
  };
/** A duration in milliseconds: Node runs a timer set past 2^31-1 ms (24.8 days) after 1 ms, so none is taken. */
export const MAX_TIMER_MS = 2_147_483_647;
const ms = (min: number) => int(min, MAX_TIMER_MS);
const str = (raw: string) => raw;
const portOrOff = (raw: string, name: string): number | null => {
  if (/^off$/i.test(raw.trim())) return null;
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(`${name}: expected an integer 0..65535 or off, got ${JSON.stringify(raw)}`);
  return int(0, 65535)(raw, name);
};
const list = (sep: string) => (raw: string) =>
  raw
    .split(sep)
    .map((s) => s.trim())
    .filter(Boolean);
const bool = (raw: string, name: string): boolean => {
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name}: expected true or false, got ${JSON.stringify(raw)}`);
};
const oneOf =
  <T extends string>(values: readonly T[]) =>
  (raw: string, name: string): T => {
    if (!values.includes(raw as T)) throw new ConfigError(`${name}: expected one of ${values.join(', ')}, got ${JSON.stringify(raw)}`);
    return raw as T;
  };
/** The names people write for a format (its file extension) read as the format's own. */
const ALIASES: Record<string, string> = { jpg: 'jpeg', tif: 'tiff', heic: 'heif' };
const listOf =
  <T extends string>(values: readonly T[]) =>
  (raw: string, name: string): T[] => {
    const given = list(',')(raw).map((v) => oneOf(values)(ALIASES[v.toLowerCase()] ?? v.toLowerCase(), name));
    if (given.length === 0)
      throw new ConfigError(
        `${name}: names no format (${JSON.stringify(raw)}): give comma-separated formats (${values.join(', ')}), or unset it`,
      );
    return given;
  };

/** Origins as a browser sends them (scheme://host[:port], nothing after): any other spelling never matches one. */
const origins = (raw: string, name: string): string[] =>
  list(',')(raw).map((entry) => {
    let url: URL | null = null;
    try {
      url = new URL(entry);
    } catch {
      // said below
    }
    if (!url || !/^https?:$/.test(url.protocol) || url.origin !== entry)
      throw new ConfigError(
        `${name}: ${JSON.stringify(entry)} is not an origin as a browser sends it: scheme, host and port only (https://app.example.com, http://localhost:8080), no path or trailing slash${entry === '*' ? "; * is not accepted (any page on the web could call with its visitors' credentials): name the origins" : ''}`,
      );
    return entry;
  });

/** Host names as the Host header names them, without port or scheme (the port is the server's); * for any. */
const hostNames = (raw: string, name: string): string[] =>
  list(',')(raw).map((entry) => {
    const label = '[a-z\\d_]([a-z\\d_-]{0,61}[a-z\\d_])?';
    if (entry !== '*' && !new RegExp(`^${label}(\\.${label})*\\.?$`, 'i').test(entry))
      throw new ConfigError(
        `${name}: ${JSON.stringify(entry)} is not a host name: name hosts without scheme, port or path (gateway.example.com), or * for any`,
      );
    return entry;
  });

const trustedProxies = (raw: string, name: string): string[] =>
  list(',')(raw).map((entry) => {
    try {
      parseTrustedProxy(entry);
    } catch (e) {
      throw new ConfigError(`${name}: ${(e as Error).message}`);
    }
    return entry;
  });

/** A URL as a message may print it: what comes before its @ (a password, or a user) is left out. */
// (up to the last @: a password with a / ? or # in it, not percent-encoded, is why such a URL does not parse)
const withoutCredentials = (raw: string) => raw.replace(/^([a-z][a-z\d+.-]*:\/\/).*@/i, '$1***@');
const redisUrl = (raw: string, name: string): string => {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(
      /^rediss?:\/\//i.test(raw)
        ? `${name}: ${JSON.stringify(withoutCredentials(raw))} is not a URL: redis://[user:password@]host[:port]/[database], a port 1..65535${raw.includes('@') ? '; in a user name or password, characters other than letters, digits and - . _ ~ are written percent-encoded (# as %23, / as %2F, ? as %3F, @ as %40)' : ''}`
        : `${name}: expected a redis:// or rediss:// URL, got ${JSON.stringify(withoutCredentials(raw))}`,
    );
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:')
    throw new ConfigError(`${name}: expected a redis:// or rediss:// URL, got ${JSON.stringify(withoutCredentials(raw))}`);
  // ioredis would take a URL without a host as localhost, and a database that is not a number as 0
  if (!url.hostname) throw new ConfigError(`${name}: the URL names no host (redis://host:6379/0)`);
  if (!/^(\/\d*)?$/.test(url.pathname))
    throw new ConfigError(`${name}: the URL's path is the database number (redis://host:6379/0), got ${JSON.stringify(url.pathname)}`);
  return raw;
};
/** An address to bind: an IP address, or a host name this machine resolves (a mistyped address fails here, not at listen). */
const host = (raw: string, name: string): string => {
  const h = raw.trim();
  if (net.isIP(h)) return h;
  const label = '[a-z\\d]([a-z\\d-]{0,61}[a-z\\d])?';
  if (/^[\d.]+$/.test(h) || !new RegExp(`^${label}(\\.${label})*\\.?$`, 'i').test(h) || h.length > 253)
    throw new ConfigError(
      `${name}: expected an address of this machine (127.0.0.1, 0.0.0.0 for every interface, ::, or a host name), got ${JSON.stringify(raw)}`,
    );
  return h;
};
/** A secret sent as "Authorization: Bearer <token>": printable, no spaces (never echoed in the error). */
const bearerToken = (raw: string, name: string): string => {
  if (!/^[\x21-\x7e]{1,4096}$/.test(raw))
    throw new ConfigError(
      `${name}: a token travels as "Authorization: Bearer <token>", so it must be printable ASCII with no spaces (at most 4096 characters); the value given is not`,
    );
  return raw;
};
const token = (raw: string, name: string): string => {
  if (!/^[\w.:@-]{1,128}$/.test(raw))
    throw new ConfigError(`${name}: letters, digits and . _ : @ - only (at most 128), got ${JSON.stringify(raw)}`);
  return raw;
};

const s = <K extends keyof Config>(
  key: K,
  env: string,
  parse: Setting<K>['parse'],
  fallback: Config[K],
  help: string,
  shown?: string,
): Setting<K> => ({ key, env, parse, fallback, help, shown });

/** Every setting, its default and its meaning: the README's configuration table is generated from the same words. */
export const SETTINGS = [
  s('port', 'PORT', int(0, 65535), 4000, 'HTTP port (GraphQL, GraphiQL, SSE, WebSocket, /health, /ready, /metrics)'),
  s(
    'grpcPort',
    'GRPC_PORT',
    portOrOff,
    8001,
    'gRPC port of the KServe v2 (Open Inference Protocol) service; 0 picks a free port, off turns gRPC off',
  ),
  s('host', 'HOST', host, '127.0.0.1', 'Address to bind; 0.0.0.0 for every interface'),
  s('modelRepository', 'MODEL_REPOSITORY', str, './models', 'The model repository: <name>/model.json and <name>/<version>/model.onnx'),
  s('modelRoots', 'MODEL_ROOTS', list(':'), [], 'Colon-separated directories loadModel(path:) may read besides the repository'),
  s('imageRoots', 'IMAGE_ROOTS', list(':'), [], 'Colon-separated directories ImageInput.path may read'),
  s('engine', 'ENGINE', oneOf(ENGINE_NAMES), 'onnxruntime', 'Inference engine: onnxruntime or openvino (optional package)'),
  s(
    'engineThreads',
    'ENGINE_THREADS',
    int(0, 256),
    defaultEngineThreads(),
    'Threads per engine call (intra-op); 0 lets the engine choose (one per core)',
    'cores / 2, at least 1',
  ),
  s(
    'engineInstances',
    'ENGINE_INSTANCES',
    int(1, 64),
    defaultEngineInstances(),
    'Engine instances per model version (as Triton instance_group count): each holds its own copy of the model and runs one batch at a time, so batches compute side by side; a model.json "instances" overrides it. Memory grows with it',
    '2, or 1 on one core',
  ),
  s(
    'engineAloneThreads',
    'ENGINE_ALONE_THREADS',
    int(0, 256),
    defaultAloneThreads(),
    'Threads for an engine call that runs alone (one image, nothing else running or waiting), in a second session per model whose threads spin while it runs: a lone request is answered sooner; 0 or 1: no second session (less memory)',
    'the cores, or 0 on one core',
  ),
  s(
    'decodeThreads',
    'DECODE_THREADS',
    int(1, 1024),
    defaultDecodeThreads(),
    'Images decoded and resized at once; the others wait their turn, taken in turn between requests (on the libuv pool: UV_THREADPOOL_SIZE, 4 unless set, must be at least this)',
    'twice the cores, at most the libuv pool (UV_THREADPOOL_SIZE, 4 unless set) less one',
  ),
  s(
    'vipsConcurrency',
    'VIPS_CONCURRENCY',
    int(0, 1024),
    1,
    'Threads libvips uses for one image (0: one per core); images run in parallel already',
  ),
  s(
    'logLevel',
    'LOG_LEVEL',
    oneOf(['debug', 'info', 'warn', 'error', 'silent'] as const),
    'info',
    'Log level of the JSON log lines on stderr',
  ),
  s(
    'pollIntervalMs',
    'MODEL_POLL_INTERVAL_MS',
    ms(0),
    1000,
    'How often the repository is rescanned for new or removed versions (0: never)',
  ),
  s('dynamicBatch', 'DYNAMIC_BATCH', bool, true, 'Make a batch dimension fixed at 1 dynamic where a trial run shows it is safe'),
  s(
    'engineLoadTimeoutMs',
    'ENGINE_LOAD_TIMEOUT_MS',
    ms(0),
    600_000,
    'Longest time loading one model version may take (reading, optimizing, the warm-up run); past it the engine is stopped and the version ends with MODEL_LOAD_FAILED; 0: no limit',
  ),
  s(
    'engineCallTimeoutMs',
    'ENGINE_CALL_TIMEOUT_MS',
    ms(0),
    120_000,
    'Longest time one ONNX Runtime call may take, from when its engine starts it; past it the call and those queued behind it fail with DEADLINE_EXCEEDED, and the version goes down and reloads its engine once that call has ended (a hung engine would otherwise hold its requests, and every one queued behind them, for ever); 0: no limit',
  ),
  s(
    'exactInt8',
    'ENGINE_EXACT_INT8',
    oneOf(['auto', 'on', 'off'] as const),
    'auto',
    'Quantized ONNX models: compute int8 products exactly on every CPU (ONNX Runtime session option x64quantprecision: int8 weights stored as uint8). auto: on x86-64 CPUs without VNNI, whose int8 kernel saturates (a quantized model answers differently there, often much worse) and costs less; on: always; off: never (faster on those CPUs, answers that depend on the CPU)',
  ),
  s(
    'fusedPreprocessing',
    'FUSED_PREPROCESSING',
    bool,
    true,
    'Let the engine do the per-pixel preprocessing (ONNX: prepended to the graph); false keeps it on the main thread',
  ),
  s(
    'maxImagePixels',
    'MAX_IMAGE_PIXELS',
    int(1),
    40_000_000,
    'Largest image (width x height) accepted; checked from the header before decoding',
  ),
  s(
    'maxUploadBytes',
    'MAX_UPLOAD_BYTES',
    int(1),
    50 * 1024 * 1024,
    'Largest request body and uploaded file, in bytes (also the largest gRPC message)',
  ),
  s(
    'maxJsonBodyBytes',
    'MAX_JSON_BODY_BYTES',
    int(1024),
    8 * 1024 * 1024,
    'Largest JSON request body (GraphQL, KServe v2 REST; also a GraphQL form, and the JSON fields of a multipart request): JSON is parsed on the event loop (50 MB of it held every other client about a second), so larger images go as multipart uploads or KServe binary data',
  ),
  s(
    'maxBytesInFlight',
    'MAX_BYTES_IN_FLIGHT',
    int(1),
    defaultBytesInFlight(),
    'Bytes of requests held at once, counted as they arrive: an HTTP body until its answer, a gRPC message until its call ends, the message of a WebSocket operation until it ends, an image read from IMAGE_ROOTS until its request is answered, and MAX_UPLOAD_BYTES more while a compressed one inflates (what it does not inflate to given back); a request whose Content-Length does not fit in what is left is refused from its headers; past it, or past half of it for one client address, a request is refused (503 QUEUE_FULL, gRPC UNAVAILABLE). At least four times MAX_UPLOAD_BYTES',
    'an eighth of the memory or of the cgroup limit, at least four times MAX_UPLOAD_BYTES',
  ),
  s('maxFilesPerRequest', 'MAX_FILES_PER_REQUEST', int(1), 16, 'Files in one multipart request'),
  s(
    'maxImagesPerRequest',
    'MAX_IMAGES_PER_REQUEST',
    int(1),
    64,
    'Images (and infer calls) in one request: GraphQL, or the batch of a KServe v2 infer',
  ),
  s('maxQueryDepth', 'MAX_QUERY_DEPTH', int(1), 12, 'Deepest selection in one operation'),
  s('maxAliases', 'MAX_ALIASES', int(1), 64, 'Aliased fields in one operation'),
  s('maxWsConnectionsPerClient', 'MAX_WS_CONNECTIONS_PER_CLIENT', int(1), 16, 'Open WebSocket connections per client address'),
  s(
    'maxWsMessageBytes',
    'MAX_WS_MESSAGE_BYTES',
    int(1024),
    1024 * 1024,
    'Largest WebSocket message (a GraphQL operation with its variables), at most MAX_JSON_BODY_BYTES; a connection that sends a larger one is closed (1009) with the reason. Also how much of its answers a client may leave unread before the server stops reading it. Photos larger than this go as multipart uploads over HTTP',
    '1048576, or MAX_JSON_BODY_BYTES when smaller',
  ),
  s(
    'maxSubscriptionsPerConnection',
    'MAX_SUBSCRIPTIONS_PER_CONNECTION',
    int(1),
    32,
    'Operations in progress (subscriptions, and queries or mutations sent over it) per WebSocket connection',
  ),
  s(
    'wsKeepAliveMs',
    'WS_KEEPALIVE_MS',
    ms(100),
    12_000,
    'A WebSocket client is pinged this often and closed if it has not answered by the next ping, or, while the server has stopped reading it for its unread answers, if it read none of them since the last',
  ),
  s(
    'adminToken',
    'ADMIN_TOKEN',
    // a secret read from a file keeps its line break, which no header can carry: the token is what is inside (as
    // API_TOKENS' entries are trimmed); nothing but white space is still refused
    (raw, name) => (raw ? bearerToken(raw.trim() || raw, name) : null),
    null,
    'When set, admin operations (loadModel, unloadModel, updateModel, deleteModel) need Authorization: Bearer <token>; unset, they are allowed only from loopback and never from a browser page of another origin',
  ),
  s(
    'apiTokens',
    'API_TOKENS',
    (raw, name) => {
      const tokens = list(',')(raw).map((t) => bearerToken(t, name));
      if (tokens.length === 0)
        throw new ConfigError(
          `${name}: names no token (${JSON.stringify(raw)}): give comma-separated tokens, or unset it to let anyone run inference`,
        );
      return tokens;
    },
    [],
    'Comma-separated tokens; when set, every GraphQL and KServe v2 request needs one (or the admin token); /health, /ready, /metrics and the v2 health probes stay open',
  ),
  s('corsOrigins', 'CORS_ORIGINS', origins, [], 'Comma-separated origins allowed to call from a browser; none: same origin only'),
  s(
    'allowedHosts',
    'ALLOWED_HOSTS',
    hostNames,
    [],
    'Comma-separated host names the server answers to besides IP addresses and localhost (DNS rebinding protection); * for any',
  ),
  s(
    'trustedProxies',
    'TRUSTED_PROXIES',
    trustedProxies,
    [],
    'Comma-separated proxies (addresses or CIDR blocks) whose X-Forwarded-For names the client: per-client limits then count each client behind them, and their own connections are not capped per client; none: every peer is the client',
  ),
  s(
    'clientIpv6Prefix',
    'CLIENT_IPV6_PREFIX',
    int(1, 128),
    64,
    'Global IPv6 clients (2000::/3) are counted by this prefix of their address in per-client limits (a host usually has a whole /64 to pick addresses from); 128 counts every address apart',
  ),
  s('shutdownTimeoutMs', 'SHUTDOWN_TIMEOUT_MS', ms(0), 10_000, 'How long SIGTERM waits for requests in flight before closing connections'),
  s('graphiql', 'GRAPHIQL', bool, true, 'Serve GraphiQL at /graphql to browsers'),
  s('maxQueryBytes', 'MAX_QUERY_BYTES', int(64), 100_000, 'Largest GraphQL document (the query text; variables are not counted)'),
  s(
    'maxVariableValues',
    'MAX_VARIABLE_VALUES',
    int(16),
    65_536,
    "Most JSON values (list items, objects' members) one GraphQL request's body or WebSocket message holds: they are parsed and coerced one by one on the event loop (images and tensors are base64: one value)",
  ),
  s('maxQueryTokens', 'MAX_QUERY_TOKENS', int(16), 5_000, 'Most tokens in one GraphQL document'),
  s('maxQueryCost', 'MAX_QUERY_COST', int(10), 5_000, 'Largest cost of one operation (graphql-armor cost limit, fragments expanded)'),
  s('maxResponseBytes', 'MAX_RESPONSE_BYTES', int(1024), 64 * 1024 * 1024, 'Most bytes of tensors and images one response may carry'),
  s(
    'maxJsonValues',
    'MAX_JSON_VALUES',
    int(1),
    524_288,
    'Most tensor values a KServe request or answer carries as JSON (REST) or gRPC typed contents; past it: binary data or raw contents',
  ),
  s(
    'maxRenderedImagesPerRequest',
    'MAX_RENDERED_IMAGES_PER_REQUEST',
    int(1),
    8,
    'Costly image fields (mask, overlay, annotatedImage, the decoded photo behind objects.classify) computed for one request',
  ),
  s(
    'imageFormats',
    'IMAGE_FORMATS',
    listOf(IMAGE_FORMATS),
    [...DEFAULT_IMAGE_FORMATS],
    'Image formats accepted; avif, heif and svg only when listed (their decoding is costly and cannot be cut short)',
  ),
  s(
    'decodeTimeoutMs',
    'DECODE_TIMEOUT_MS',
    int(100, 3_600_000), // libvips' timeout, in whole seconds, is at most an hour (sharp refuses more on every call)
    10_000,
    'Longest time one image may take to decode and resize (or to be drawn: annotatedImage, overlay)',
  ),
  s(
    'requestTimeoutMs',
    'REQUEST_TIMEOUT_MS',
    ms(1000),
    120_000,
    "Longest time a client may take to send a whole request (slow uploads are cut); on gRPC, how long a call's message may take to arrive",
  ),
  s('headersTimeoutMs', 'HEADERS_TIMEOUT_MS', ms(1000), 15_000, 'Longest time a client may take to send the request headers'),
  s(
    'maxConnections',
    'MAX_CONNECTIONS',
    int(1),
    2048,
    'Open connections in all, on the HTTP port and on the gRPC port (each its own count)',
  ),
  s(
    'maxConnectionsPerClient',
    'MAX_CONNECTIONS_PER_CLIENT',
    int(1),
    256,
    'Open connections per client address, on the HTTP port and on the gRPC port (each its own count), at most MAX_CONNECTIONS',
    '256, or an eighth of MAX_CONNECTIONS when smaller',
  ),
  s('maxSubscriptionsPerClient', 'MAX_SUBSCRIPTIONS_PER_CLIENT', int(1), 32, 'Open subscriptions (SSE and WebSocket) per client address'),
  s(
    'redisUrl',
    'REDIS_URL',
    redisUrl,
    null,
    'Redis shared by the replicas (redis://host:6379/0): status events and admin changes reach every replica; a database Redis does not have keeps the bus down, said in the log and /ready (never database 0 in its place); unset: one process, no Redis',
  ),
  s(
    'redisKeyPrefix',
    'REDIS_KEY_PREFIX',
    token,
    'gateway',
    'Prefix of the Redis channels and keys, so several deployments can share one Redis',
  ),
  s(
    'replicaName',
    'REPLICA_NAME',
    token,
    `${os.hostname()}-${process.pid}`,
    'This replica in status events (ModelStatusEvent.replica), logs and /ready; the pod name on Kubernetes',
    '<host name>-<pid>',
  ),
  s(
    'drainDelayMs',
    'DRAIN_DELAY_MS',
    ms(0),
    5000,
    'On SIGTERM, /ready answers 503 at once and the server keeps serving this long (so a load balancer stops sending), then shuts down',
  ),
] as const;

const flagName = (env: string) => '--' + env.toLowerCase().replace(/_/g, '-');

export function loadConfig(env: Record<string, string | undefined> = process.env, argv: readonly string[] = process.argv.slice(2)): Config {
  // a flag written after "npm start" without "--" is npm's: npm passes it on as npm_config_<name> only (npm 11 among its
  // own warnings, "Unknown cli config"), and the server started on its defaults (--api-tokens=... left inference open)
  const npmTook =
    env.npm_lifecycle_event === undefined ? [] : SETTINGS.filter((st) => env[`npm_config_${st.env.toLowerCase()}`] !== undefined);
  if (npmTook.length > 0) {
    const named = npmTook.map((st) => flagName(st.env));
    throw new ConfigError(
      `${named.join(', ')} ${named.length > 1 ? 'were' : 'was'} read by npm, not by the server: write the server's flags after "--" (npm start -- ${named[0]}=<value>), or set ${npmTook.map((st) => st.env).join(', ')}`,
    );
  }
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') throw new ConfigError(usage());
    if (!a.startsWith('--')) throw new ConfigError(`unexpected argument ${JSON.stringify(a)}\n\n${usage()}`);
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    // "--flag --other": the flag's value is missing (--flag=--x gives one that starts so)
    const next = eq > 0 ? undefined : argv[i + 1];
    if (next?.startsWith('--')) throw new ConfigError(`${a} needs a value (write ${a}=<value> for a value that starts with --)`);
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (!SETTINGS.some((st) => flagName(st.env) === name)) {
      const elsewhere = SAID_ELSEWHERE[name.slice(2).toUpperCase().replace(/-/g, '_')];
      const meant = closest(
        name,
        SETTINGS.map((st) => flagName(st.env)),
      );
      throw new ConfigError(
        `unknown flag ${name}${elsewhere ? `: ${elsewhere.why}, set ${flagName(elsewhere.meant)}` : meant ? `: did you mean ${meant}?` : ''}\n\n${usage()}`,
      );
    }
    // an empty one would fall back to the default over the environment's value (--api-tokens= turned tokens off)
    if (value === undefined || value.trim() === '') throw new ConfigError(`${name} needs a value (leave the flag out for the default)`);
    flags.set(name, value);
  }
  const config = {} as Record<string, unknown>;
  for (const st of SETTINGS) {
    const flag = flags.get(flagName(st.env));
    const raw = flag ?? env[st.env];
    const name = flag !== undefined ? flagName(st.env) : st.env;
    config[st.key] = raw === undefined || raw === '' ? st.fallback : st.parse(raw, name);
  }
  const c = config as unknown as Config;
  // the gRPC listener would find the port taken by the HTTP one, bound a moment before ("in use": by the gateway itself)
  if (c.grpcPort !== null && c.grpcPort !== 0 && c.grpcPort === c.port)
    throw new ConfigError(
      `GRPC_PORT (${c.grpcPort}) is the HTTP port too (PORT): they cannot share one; set GRPC_PORT (or --grpc-port) to another port, 0 for a free one, or off`,
    );
  // Node's HTTP server refuses this pair when it starts listening, with a stack trace that names neither setting
  if (c.requestTimeoutMs < c.headersTimeoutMs)
    throw new ConfigError(
      `REQUEST_TIMEOUT_MS (${c.requestTimeoutMs}) is below HEADERS_TIMEOUT_MS (${c.headersTimeoutMs}): the whole request cannot take less time than its headers; lower HEADERS_TIMEOUT_MS too`,
    );
  // the default follows a smaller MAX_JSON_BODY_BYTES (set before this setting came, it must still start); a value
  // given above it is a mistake
  if (!flags.has(flagName('MAX_WS_MESSAGE_BYTES')) && !env.MAX_WS_MESSAGE_BYTES)
    c.maxWsMessageBytes = Math.min(c.maxWsMessageBytes, c.maxJsonBodyBytes);
  else if (c.maxWsMessageBytes > c.maxJsonBodyBytes)
    throw new ConfigError(
      `MAX_WS_MESSAGE_BYTES (${c.maxWsMessageBytes}) is above MAX_JSON_BODY_BYTES (${c.maxJsonBodyBytes}): a WebSocket message is JSON parsed on the event loop, as a JSON body is, and is bounded by the same; lower MAX_WS_MESSAGE_BYTES or raise MAX_JSON_BODY_BYTES`,
    );
  // the default follows a smaller MAX_CONNECTIONS (an eighth of it, as 256 is of 2048: one client alone could otherwise
  // hold every connection); a value given above it is a mistake
  if (!flags.has(flagName('MAX_CONNECTIONS_PER_CLIENT')) && !env.MAX_CONNECTIONS_PER_CLIENT)
    c.maxConnectionsPerClient = Math.min(c.maxConnectionsPerClient, Math.max(1, Math.floor(c.maxConnections / 8)));
  else if (c.maxConnectionsPerClient > c.maxConnections)
    throw new ConfigError(
      `MAX_CONNECTIONS_PER_CLIENT (${c.maxConnectionsPerClient}) is above MAX_CONNECTIONS (${c.maxConnections}): one client could hold every connection, and its own limit would never apply; lower MAX_CONNECTIONS_PER_CLIENT or raise MAX_CONNECTIONS`,
    );
  // the default follows a larger MAX_UPLOAD_BYTES (a client may hold half, and a compressed body of the largest size
  // holds twice it); a value given below that is a mistake
  if (!flags.has(flagName('MAX_BYTES_IN_FLIGHT')) && !env.MAX_BYTES_IN_FLIGHT)
    c.maxBytesInFlight = Math.max(c.maxBytesInFlight, 4 * c.maxUploadBytes);
  else if (c.maxBytesInFlight < 4 * c.maxUploadBytes)
    throw new ConfigError(
      `MAX_BYTES_IN_FLIGHT (${c.maxBytesInFlight}) is below four times MAX_UPLOAD_BYTES (${c.maxUploadBytes}): one client may hold half of it, and a compressed request of the largest size holds twice MAX_UPLOAD_BYTES (its inflated size besides); raise MAX_BYTES_IN_FLIGHT or lower MAX_UPLOAD_BYTES`,
    );
  return c;
}

/**
 * Variables of the environment that look like a setting misspelled (MAX_UPLOAD_BYTE, LOGLEVEL, ENGINE_THREAD): the
 * server reads none of them, so it would start on the default without a word, where a misspelled flag is refused.
 * They are not refused (the environment holds every other program's variables too), but said once at start: a setting
 * in lower case or without its unit (_MS, _BYTES), and upper-case names of 7 characters or more a few letters from a
 * setting's (HOME is two letters from HOST).
 */
export function misspelledSettings(
  env: Record<string, string | undefined> = process.env,
): { variable: string; meant: string; why?: string }[] {
  const names = SETTINGS.map((st) => st.env as string);
  const found: { variable: string; meant: string; why?: string }[] = [];
  for (const variable of Object.keys(env)) {
    if (names.includes(variable)) continue;
    const elsewhere = SAID_ELSEWHERE[variable];
    if (elsewhere) {
      found.push({ variable, ...elsewhere });
      continue;
    }
    // a setting in lower case (log_level), or without its unit (DRAIN_DELAY for DRAIN_DELAY_MS): a mistake, whatever
    // else is set
    const variant = names.find((n) => n === variable.toUpperCase() || n === `${variable}_MS` || n === `${variable}_BYTES`);
    // a name a few letters from a setting's, unless the setting is set too: then it is another program's (LOGLEVEL
    // beside LOG_LEVEL)
    const lookAlike = variable.length >= 7 && /^[A-Z][A-Z0-9_]*$/.test(variable) ? closest(variable, names) : null;
    const meant = variant ?? (lookAlike && env[lookAlike] === undefined ? lookAlike : null);
    if (meant) found.push({ variable, meant });
  }
  return found;
}

/**
 * Settings other servers have that this one says with another (gRPC binds HOST as HTTP does: GRPC_HOST read as a
 * misspelled GRPC_PORT pointed at the wrong one): the setting meant, and why.
 */
const SAID_ELSEWHERE: Record<string, { meant: string; why: string }> = {
  GRPC_HOST: { meant: 'HOST', why: 'gRPC listens on the address HTTP does' },
  GRPC_ADDRESS: { meant: 'HOST', why: 'gRPC listens on the address HTTP does' },
  HTTP_PORT: { meant: 'PORT', why: 'the HTTP port is PORT' },
  REST_PORT: { meant: 'PORT', why: 'KServe REST is served on the HTTP port' },
  METRICS_PORT: { meant: 'PORT', why: 'metrics are served on the HTTP port, at /metrics' },
};

/**
 * Token settings given empty in the environment (a compose file's `API_TOKENS: ${API_TOKENS}` with the variable unset):
 * an empty value is the default, no token, as for any setting; for these it leaves a door open, so it is said at start
 * (an empty flag, --api-tokens=, is refused).
 */
export function emptyTokenSettings(env: Record<string, string | undefined> = process.env): ('ADMIN_TOKEN' | 'API_TOKENS')[] {
  return (['ADMIN_TOKEN', 'API_TOKENS'] as const).filter((name) => env[name] === '');
}

export function usage(): string {
  return (
    'Usage: npm start -- [flags]\n\n' +
    // each help text ends with its default, said once (the help texts do not say it)
    SETTINGS.map((st) => `  ${flagName(st.env).padEnd(36)} ${st.env.padEnd(32)} ${st.help} (default: ${shownDefault(st)})`).join('\n')
  );
}

/** A setting's default as people read it (--help, the README's table): its words where it depends on the machine. */
export function shownDefault(st: { fallback: unknown; shown?: string }): string {
  if (st.shown) return st.shown;
  const v = st.fallback;
  return v === null ? 'unset' : Array.isArray(v) ? (v.length ? v.join(',') : 'none') : String(v);
}

/** How models are loaded (src/main.ts, and the tests' gateways, load them alike). */
export function loadOptionsOf(config: Config): LoadOptions {
  return {
    intraOpThreads: config.engineThreads,
    instances: config.engineInstances,
    aloneThreads: config.engineAloneThreads,
    dynamicBatch: config.dynamicBatch,
    exactInt8: config.exactInt8,
    timeoutMs: config.engineLoadTimeoutMs,
    callTimeoutMs: config.engineCallTimeoutMs,
  };
}
