import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { ModelManager } from '../repository/manager.ts';
import type { Cluster } from '../cluster/index.ts';
import { InferenceService } from '../inference/service.ts';
import { createGraphqlProtocol, type GraphqlProtocol } from '../protocols/graphql/index.ts';
import { createHttpServer } from './http.ts';
import { opsRoutes } from './ops.ts';

export interface Gateway {
  server: Server;
  graphql: GraphqlProtocol;
  listen(): Promise<{ port: number; host: string; url: string }>;
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
  const service = new InferenceService(models, { maxImagePixels: config.maxImagePixels });
  const tokens = { adminToken: config.adminToken, apiTokens: config.apiTokens };
  const graphql = createGraphqlProtocol({
    service,
    logger,
    tokens,
    imageLimits: { imageRoots: config.imageRoots, maxImageBytes: config.maxUploadBytes },
    maxImagesPerRequest: config.maxImagesPerRequest,
    maxUploadBytes: config.maxUploadBytes,
    maxFilesPerRequest: config.maxFilesPerRequest,
    documentLimits: { maxDepth: config.maxQueryDepth, maxAliases: config.maxAliases },
    webSocketLimits: {
      maxConnectionsPerClient: config.maxWsConnectionsPerClient,
      maxSubscriptionsPerConnection: config.maxSubscriptionsPerConnection,
    },
    corsOrigins: config.corsOrigins,
    graphiql: config.graphiql,
    statusSource: cluster?.feed ?? models,
  });
  const server = createHttpServer({
    logger,
    maxBodyBytes: config.maxUploadBytes,
    routes: [
      ...opsRoutes(models, metrics, { draining: () => draining, cluster: () => cluster?.status() }),
      { match: () => true, handle: graphql.handle },
    ],
  });
  // before the routes answer: while draining, no connection is kept alive for a next request
  server.prependListener('request', (_req, res) => {
    if (draining) res.setHeader('connection', 'close');
  });
  server.requestTimeout = 0;
  graphql.attach(server);

  let closing: Promise<void> | null = null;
  return {
    server,
    graphql,
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
    drain() {
      draining = true;
    },
    close() {
      draining = true;
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        await graphql.close();
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
