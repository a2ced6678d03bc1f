import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GraphQLError, type ExecutionArgs } from 'graphql';
import { createYoga, type Plugin, type YogaServerInstance } from 'graphql-yoga';
import { useCSRFPrevention } from '@graphql-yoga/plugin-csrf-prevention';
import { renderGraphiQL } from '@graphql-yoga/render-graphiql';
import { createFetch } from '@whatwg-node/fetch';
import { WebSocketServer } from 'ws';
import { useServer } from 'graphql-ws/use/ws';
import type { Config } from './config.ts';
import { ErrorCode, GatewayError, isGatewayError } from './errors.ts';
import type { Logger } from './log.ts';
import type { ModelRepository } from './repository/repository.ts';
import { schema, type Context } from './schema/index.ts';
import { renderMetrics } from './server/metrics.ts';
import { aliasLimitRule, depthLimitRule } from './server/limits.ts';
import { accessFor } from './server/access.ts';

export interface GatewayDeps {
  config: Config;
  repository: ModelRepository;
  logger: Logger;
}

export interface Gateway {
  server: Server;
  yoga: YogaServerInstance<Record<string, unknown>, Context>;
  listen(): Promise<{ port: number; host: string; url: string }>;
  /** Stop accepting, end subscriptions, finish requests in flight (bounded by shutdownTimeoutMs). */
  close(): Promise<void>;
}

const DEFAULT_QUERY = `# Welcome to the GraphQL inference gateway.
# Queries read models and their shapes; inference runs as mutations (classify, detect, segment, infer, and
# classifyBatch / detectBatch / segmentBatch for several images at once). Images are uploaded with the GraphQL
# multipart request spec (curl examples in the README) or sent as base64:
#   mutation { classify(model: "mobilenet", image: { base64: "..." }, topK: 3) { predictions { label confidence } } }
query Models {
  models {
    name
    task
    description
    versions { version state errorCode }
    inputs { name dtype shape layout }
    outputs { name dtype shape }
  }
}
`;

/**
 * Our error as a GraphQL error. Errors of the request as a whole (refused before execution, or who is calling) carry
 * their HTTP status; errors of one field do not: a response that carries data is HTTP 200, as GraphQL over HTTP says.
 */
const gqlError = (e: GatewayError, extra?: { path?: readonly (string | number)[]; requestLevel?: boolean }) => {
  const withStatus = extra?.requestLevel ?? (e.code === ErrorCode.UNAUTHENTICATED || e.code === ErrorCode.FORBIDDEN);
  return new GraphQLError(e.message, { path: extra?.path, extensions: { code: e.code, ...(withStatus ? { http: { status: e.status } } : {}), ...(e.details ?? {}) } });
};

/** /health, /ready and /metrics, answered before GraphQL sees the request. */
function useEndpoints(repository: ModelRepository): Plugin {
  return {
    onRequest({ url, endResponse, fetchAPI }) {
      const json = (status: number, body: unknown) => endResponse(new fetchAPI.Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } }));
      if (url.pathname === '/health') return json(200, { status: 'ok' });
      if (url.pathname === '/ready') {
        const models = repository.models().map((m) => ({ name: m.name, ready: m.ready, versions: [...m.versions.values()].map((v) => ({ version: v.version, state: v.state, errorCode: v.errorCode })) }));
        return json(repository.ready ? 200 : 503, { ready: repository.ready, models });
      }
      if (url.pathname === '/metrics') {
        return endResponse(new fetchAPI.Response(renderMetrics(repository), { status: 200, headers: { 'content-type': 'text/plain; version=0.0.4' } }));
      }
    },
  };
}

/** Rejects bodies larger than the limit from Content-Length, before anything is read. */
function useBodyLimit(maxBytes: number): Plugin {
  return {
    onRequest({ request, endResponse, fetchAPI }) {
      const len = Number(request.headers.get('content-length') ?? 0);
      if (len > maxBytes) {
        const body = { errors: [{ message: `request body of ${len} bytes exceeds the limit of ${maxBytes}`, extensions: { code: ErrorCode.PAYLOAD_TOO_LARGE } }] };
        endResponse(new fetchAPI.Response(JSON.stringify(body), { status: 413, headers: { 'content-type': 'application/json', connection: 'close' } }));
      }
    },
  };
}

/**
 * Yoga reports multipart limits (MAX_FILES_PER_REQUEST, MAX_UPLOAD_BYTES per file) as BAD_REQUEST; give them the
 * gateway's stable codes so clients can branch on them.
 */
function useLimitErrorCodes(): Plugin {
  const recode = (e: { message?: string; extensions?: Record<string, unknown> }) => {
    const m = e.message ?? '';
    if (!/limit exceeded/i.test(m)) return e;
    const tooBig = /size/i.test(m);
    return { ...e, extensions: { ...e.extensions, code: tooBig ? ErrorCode.PAYLOAD_TOO_LARGE : ErrorCode.LIMIT_EXCEEDED, http: { status: tooBig ? 413 : 400 } } };
  };
  return {
    onResultProcess({ result, setResult }) {
      if (!result || Array.isArray(result) || Symbol.asyncIterator in (result as object)) return;
      const r = result as { errors?: readonly { message?: string; extensions?: Record<string, unknown> }[] };
      if (r.errors?.some((e) => /limit exceeded/i.test(e.message ?? ''))) setResult({ ...r, errors: r.errors.map(recode) } as never);
    },
  };
}

/** API_TOKENS: every GraphQL request carries one. */
function useApiTokens(config: Config): Plugin {
  return {
    onRequestParse({ request }) {
      try {
        accessFor(request.headers.get('authorization'), config.adminToken, config.apiTokens).checkApi();
      } catch (e) {
        if (isGatewayError(e)) throw gqlError(e, { requestLevel: true });
        throw e;
      }
    },
  };
}

/** One JSON log line per request, with a request id (taken from x-request-id when sane) echoed in the response. */
function useRequestLog(logger: Logger): Plugin {
  const started = new WeakMap<Request, { id: string; t0: number }>();
  return {
    onRequest({ request }) {
      const given = request.headers.get('x-request-id');
      started.set(request, { id: given && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID(), t0: performance.now() });
    },
    onResponse({ request, response }) {
      const s = started.get(request);
      if (!s) return;
      response.headers.set('x-request-id', s.id);
      const path = new URL(request.url, 'http://x').pathname;
      if (path === '/health' || path === '/metrics') return;
      logger.info('request', { requestId: s.id, method: request.method, path, status: response.status, ms: Math.round((performance.now() - s.t0) * 10) / 10 });
    },
  };
}

function useValidationLimits(config: Config): Plugin {
  return {
    onValidate({ addValidationRule }) {
      addValidationRule(depthLimitRule(config.maxQueryDepth));
      addValidationRule(aliasLimitRule(config.maxAliases));
    },
  };
}

/** Yoga + plugins + graphql-ws on one port. Every option has its default in Config. */
export function createGateway({ config, repository, logger }: GatewayDeps): Gateway {
  const shutdown = new AbortController();

  const buildContext = (authorization: string | null | undefined): Context => {
    const access = accessFor(authorization, config.adminToken, config.apiTokens);
    return {
      repository,
      limits: {
        maxImagePixels: config.maxImagePixels,
        imageRoots: config.imageRoots,
        maxImagesPerRequest: config.maxImagesPerRequest,
        maxImageBytes: config.maxUploadBytes,
      },
      shutdown: shutdown.signal,
      imageCount: { n: 0 },
      requireAdmin: access.requireAdmin,
    };
  };

  const yoga = createYoga<Record<string, unknown>, Context>({
    schema,
    graphqlEndpoint: '/graphql',
    landingPage: false,
    healthCheckEndpoint: '/yoga/health', // /health is ours (JSON)
    graphiql: config.graphiql ? { title: 'GraphQL inference gateway', defaultQuery: DEFAULT_QUERY, subscriptionsProtocol: 'WS' } : false,
    // GraphiQL served from the package itself: yoga's default page loads its scripts from a CDN, which a gateway on a
    // closed network cannot reach
    renderGraphiQL,
    cors: config.corsOrigins ? { origin: config.corsOrigins, credentials: true, allowedHeaders: ['content-type', 'authorization', 'x-graphql-yoga-csrf', 'x-request-id'] } : undefined,
    fetchAPI: createFetch({
      formDataLimits: { fileSize: config.maxUploadBytes, files: config.maxFilesPerRequest, fieldSize: config.maxUploadBytes, fields: 64, parts: config.maxFilesPerRequest + 64 },
    }),
    // Yoga logs every GraphQL error it returns; those are the client's (typed, answered). Unexpected ones are logged
    // once by maskError below, so yoga's own lines go to debug.
    logging: {
      debug: (...a: unknown[]) => logger.debug(String(a[0])),
      info: (...a: unknown[]) => logger.debug(String(a[0])),
      warn: (...a: unknown[]) => logger.debug(String(a[0])),
      error: (...a: unknown[]) => logger.debug(String(a[0])),
    },
    context: ({ request }) => buildContext(request.headers.get('authorization')),
    maskedErrors: {
      maskError(error) {
        const original = (error as { originalError?: unknown }).originalError ?? error;
        if (isGatewayError(original)) return gqlError(original, { path: error instanceof GraphQLError ? error.path : undefined });
        const isGraphQLError = (e: unknown) => e instanceof Error && e.name === 'GraphQLError';
        if (isGraphQLError(error) && (original === error || isGraphQLError(original))) return error as GraphQLError;
        const message = original instanceof Error ? original.message : String(original);
        logger.error('unexpected error', { error: message, stack: original instanceof Error ? original.stack : undefined });
        return new GraphQLError('Unexpected error.', { path: error instanceof GraphQLError ? error.path : undefined, extensions: { code: 'INTERNAL_SERVER_ERROR', http: { status: 500 } } });
      },
    },
    plugins: [
      useRequestLog(logger),
      useEndpoints(repository),
      useBodyLimit(config.maxUploadBytes),
      useLimitErrorCodes(),
      useCSRFPrevention({ requestHeaders: ['x-graphql-yoga-csrf'] }),
      useApiTokens(config),
      useValidationLimits(config),
    ],
  });

  const server = createServer(yoga);
  server.requestTimeout = 0;

  // graphql-ws on the same port and path, through yoga's envelop (same schema, plugins, masking).
  const clientAddress = (req: IncomingMessage) => req.socket.remoteAddress ?? 'unknown';
  const connections = new Map<string, number>();
  const wss = new WebSocketServer({
    server,
    path: '/graphql',
    maxPayload: 1024 * 1024,
    verifyClient: (info, done) => {
      const n = connections.get(clientAddress(info.req)) ?? 0;
      if (n >= config.maxWsConnectionsPerClient) done(false, 429, 'Too many WebSocket connections');
      else done(true);
    },
  });
  wss.on('connection', (socket, req) => {
    const addr = clientAddress(req);
    connections.set(addr, (connections.get(addr) ?? 0) + 1);
    socket.on('close', () => {
      const n = (connections.get(addr) ?? 1) - 1;
      if (n <= 0) connections.delete(addr);
      else connections.set(addr, n);
    });
  });
  type Root = { execute: (a: ExecutionArgs) => unknown; subscribe: (a: ExecutionArgs) => unknown };
  const subscriptions = new WeakMap<object, Set<string>>();
  useServer(
    {
      execute: (args) => (args.rootValue as Root).execute(args) as never,
      subscribe: (args) => (args.rootValue as Root).subscribe(args) as never,
      onConnect: (ctx) => {
        const auth = (ctx.connectionParams?.authorization as string | undefined) ?? ctx.extra.request.headers.authorization;
        try {
          accessFor(auth, config.adminToken, config.apiTokens).checkApi();
          return true;
        } catch {
          return false; // graphql-ws closes with 4403 Forbidden
        }
      },
      onSubscribe: async (ctx, id, payload) => {
        let subs = subscriptions.get(ctx.extra.socket);
        if (!subs) subscriptions.set(ctx.extra.socket, (subs = new Set()));
        if (subs.size >= config.maxSubscriptionsPerConnection) {
          return [gqlError(new GatewayError(ErrorCode.LIMIT_EXCEEDED, `more than ${config.maxSubscriptionsPerConnection} operations on one connection`))];
        }
        const auth = (ctx.connectionParams?.authorization as string | undefined) ?? ctx.extra.request.headers.authorization ?? null;
        const { schema: s, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          request: { headers: new Headers(auth ? { authorization: auth } : {}) },
          params: payload,
        });
        let document;
        try {
          document = parse(payload.query);
        } catch (e) {
          return [e as GraphQLError];
        }
        const errors = validate(s, document);
        if (errors.length) return errors;
        subs.add(id);
        return {
          schema: s,
          operationName: payload.operationName,
          document,
          variableValues: payload.variables,
          contextValue: await contextFactory(),
          rootValue: { execute, subscribe } satisfies Root,
        };
      },
      onComplete: (ctx, id) => void subscriptions.get(ctx.extra.socket)?.delete(id),
      onError: (ctx, id) => void subscriptions.get(ctx.extra.socket)?.delete(id),
    },
    wss,
  );

  let closing: Promise<void> | null = null;
  return {
    server,
    yoga,
    listen: () =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(config.port, config.host, () => {
          server.off('error', reject);
          const a = server.address() as AddressInfo;
          const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
          resolve({ port: a.port, host: a.address, url: `http://${host}:${a.port}` });
        });
      }),
    close() {
      closing ??= (async () => {
        shutdown.abort(); // ends every subscription stream (SSE and WebSocket) with "complete"
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        await new Promise((r) => setTimeout(r, 50)); // let completes flush
        for (const c of wss.clients) c.close(1001, 'server shutting down');
        await new Promise<void>((resolve) => wss.close(() => resolve()));
        const timer = setTimeout(() => server.closeAllConnections(), config.shutdownTimeoutMs);
        const idle = setInterval(() => server.closeIdleConnections(), 100);
        await closed;
        clearTimeout(timer);
        clearInterval(idle);
      })();
      return closing;
    },
  };
}
