import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config.ts';
import { errorMessage } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { ModelManager } from '../repository/manager.ts';
import type { Cluster } from '../cluster/index.ts';
import { InferenceService } from '../inference/service.ts';
import { ClientAddresses } from '../client-address.ts';
import { createGraphqlProtocol, type GraphqlProtocol } from '../protocols/graphql/index.ts';
import { createKserveProtocol } from '../protocols/kserve/index.ts';
import { hostAllowed } from './hosts.ts';
import { createHttpServer } from './http.ts';
import { BytesInFlight } from '../bytes-in-flight.ts';
import { opsRoutes, serverReady, type ReadyState } from './ops.ts';
import { uiRoute } from './ui.ts';

export interface Gateway {
  server: Server;
  graphql: GraphqlProtocol;
  /** HTTP (and gRPC, unless GRPC_PORT=off) listening; grpcPort is null without gRPC. */
  listen(): Promise<{ port: number; host: string; url: string; grpcPort: number | null }>;
  /**
   * The start of a rolling restart's drain: /ready answers 503 from now on and every response closes its connection
   * (clients and load balancers reconnect elsewhere), while requests are still accepted and served. close() follows.
   */
  drain(): void;
  /** Stop accepting, end subscriptions, finish requests in flight (bounded by shutdownTimeoutMs). */
  close(): Promise<void>;
}

/** The servers of one process: the inference service, the protocols on one HTTP port, the operations endpoints. */
export function createGateway({
  config,
  models,
  logger,
  metrics,
  cluster = null,
}: {
  config: Config;
  models: ModelManager;
  logger: Logger;
  metrics: Metrics;
  /** The Redis bus between replicas (REDIS_URL); null for one process. */
  cluster?: Cluster | null;
}): Gateway {
  let draining = false;
  /** What /ready and KServe's readiness say besides the models. */
  const readyState: ReadyState = { draining: () => draining, cluster: () => cluster?.status() };
  const service = new InferenceService(models, {
    maxImagePixels: config.maxImagePixels,
    imageFormats: config.imageFormats,
    decodeTimeoutMs: config.decodeTimeoutMs,
    decodeThreads: config.decodeThreads,
  });
  metrics.decoding = () => service.decoding;
  const bytesInFlight = new BytesInFlight(config.maxBytesInFlight);
  metrics.bytesInFlight = () => bytesInFlight.bytes;
  const tokens = { adminToken: config.adminToken, apiTokens: config.apiTokens };
  const clients = new ClientAddresses(config.trustedProxies, config.clientIpv6Prefix);
  const graphql = createGraphqlProtocol({
    service,
    logger,
    tokens,
    imageLimits: { imageRoots: config.imageRoots, maxImageBytes: config.maxUploadBytes },
    maxImagesPerRequest: config.maxImagesPerRequest,
    maxUploadBytes: config.maxUploadBytes,
    maxVariableValues: config.maxVariableValues,
    maxJsonBodyBytes: config.maxJsonBodyBytes,
    maxFilesPerRequest: config.maxFilesPerRequest,
    budget: { maxRendered: config.maxRenderedImagesPerRequest, maxResponseBytes: config.maxResponseBytes },
    documentLimits: {
      maxBytes: config.maxQueryBytes,
      maxTokens: config.maxQueryTokens,
      maxCost: config.maxQueryCost,
      maxDepth: config.maxQueryDepth,
      maxAliases: config.maxAliases,
    },
    webSocketLimits: {
      maxConnectionsPerClient: config.maxWsConnectionsPerClient,
      maxSubscriptionsPerConnection: config.maxSubscriptionsPerConnection,
      maxPayloadBytes: config.maxWsMessageBytes,
      keepAliveMs: config.wsKeepAliveMs,
      bytesInFlight,
    },
    maxSubscriptionsPerClient: config.maxSubscriptionsPerClient,
    clients,
    corsOrigins: config.corsOrigins,
    allowUpgrade: (req) => hostAllowed(req.headers.host, config.allowedHosts),
    graphiql: config.graphiql,
    statusSource: cluster?.feed ?? models,
  });
  metrics.streams = () => graphql.open();
  const kserve = createKserveProtocol({
    service,
    logger,
    tokens,
    maxImagesPerRequest: config.maxImagesPerRequest,
    maxUploadBytes: config.maxUploadBytes,
    maxResponseBytes: config.maxResponseBytes,
    maxJsonValues: config.maxJsonValues,
    maxJsonBodyBytes: config.maxJsonBodyBytes,
    grpcConnections: {
      maxConnections: config.maxConnections,
      maxConnectionsPerClient: config.maxConnectionsPerClient,
      requestTimeoutMs: config.requestTimeoutMs,
      bytesInFlight,
    },
    clients,
    // as /ready: not while draining, nor before this replica has joined the cluster
    serverReady: () => serverReady(readyState),
  });
  const grpc = config.grpcPort === null ? null : kserve.grpc;
  const server = createHttpServer({
    logger,
    maxBodyBytes: config.maxUploadBytes,
    maxJsonBodyBytes: config.maxJsonBodyBytes,
    allowedHosts: config.allowedHosts,
    maxConnections: config.maxConnections,
    maxConnectionsPerClient: config.maxConnectionsPerClient,
    headersTimeoutMs: config.headersTimeoutMs,
    requestTimeoutMs: config.requestTimeoutMs,
    bytesInFlight,
    clients,
    routes: [
      ...opsRoutes(models, metrics, readyState),
      kserve.route,
      uiRoute(),
      // yoga's endpoint (it would also serve any path ending in /graphql, and answer others an empty 404: they get the
      // HTTP server's typed NOT_FOUND)
      { match: (p) => p === '/graphql' || p === '/graphql/', handle: graphql.handle },
    ],
  });
  // before the routes answer: while draining, no connection is kept alive for a next request
  server.prependListener('request', (_req, res) => {
    if (draining) res.setHeader('connection', 'close');
  });
  graphql.attach(server);

  let closing: Promise<void> | null = null;
  return {
    server,
    graphql,
    async listen() {
      const http = await new Promise<{ port: number; host: string; url: string }>((resolve, reject) => {
        server.once('error', reject);
        server.listen(config.port, config.host, () => {
          server.off('error', reject);
          const a = server.address() as AddressInfo;
          const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
          resolve({ port: a.port, host: a.address, url: `http://${host}:${a.port}` });
        });
      });
      try {
        const grpcPort = grpc && config.grpcPort !== null ? await grpc.listen(config.host, config.grpcPort) : null;
        return { ...http, grpcPort };
      } catch (e) {
        await new Promise((resolve) => server.close(resolve));
        // a bind failure of the gRPC port: its errno code, and which port it was
        const message = errorMessage(e);
        throw Object.assign(new Error(message), {
          code: (e as NodeJS.ErrnoException).code ?? /EADDRINUSE|EACCES|EADDRNOTAVAIL/.exec(message)?.[0],
          port: config.grpcPort,
          setting: 'GRPC_PORT',
        });
      }
    },
    drain() {
      draining = true;
    },
    close() {
      draining = true;
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        // SHUTDOWN_TIMEOUT_MS counts from here, for HTTP requests, WebSocket connections and gRPC calls alike
        const timer = setTimeout(() => server.closeAllConnections(), config.shutdownTimeoutMs);
        const grpcClosed = grpc?.close(config.shutdownTimeoutMs);
        await graphql.close(config.shutdownTimeoutMs);
        const idle = setInterval(() => server.closeIdleConnections(), 100);
        await closed;
        await grpcClosed;
        clearTimeout(timer);
        clearInterval(idle);
      })();
      return closing;
    },
  };
}
