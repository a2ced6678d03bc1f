import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createYoga, type YogaServerInstance } from 'graphql-yoga';
import { useCSRFPrevention } from '@graphql-yoga/plugin-csrf-prevention';
import { renderGraphiQL } from '@graphql-yoga/render-graphiql';
import { createFetch } from '@whatwg-node/fetch';
import type { Logger } from '../../log.ts';
import { accessFor, type Tokens } from '../../inference/access.ts';
import { RequestBudget } from '../../inference/budget.ts';
import type { ImageReadLimits } from '../../inference/images.ts';
import type { InferenceService } from '../../inference/service.ts';
import type { Context } from './context.ts';
import { maskError } from './errors.ts';
import { statusEvents, type StatusSource } from './events.ts';
import { useApiTokens } from './plugins/api-tokens.ts';
import { useDocumentLimits, type DocumentLimits } from './plugins/limits.ts';
import { schema } from './schema/index.ts';
import { attachWebSocket, type WebSocketLimits } from './websocket.ts';

export interface GraphqlOptions {
  service: InferenceService;
  logger: Logger;
  tokens: Tokens;
  imageLimits: ImageReadLimits;
  maxImagesPerRequest?: number;
  maxUploadBytes?: number;
  maxFilesPerRequest?: number;
  documentLimits?: DocumentLimits;
  webSocketLimits?: WebSocketLimits;
  corsOrigins?: readonly string[] | null;
  graphiql?: boolean;
  /** What modelStatus subscribers see (default: this process's model manager). */
  statusSource?: StatusSource;
}

export interface GraphqlProtocol {
  yoga: YogaServerInstance<Record<string, unknown>, Context>;
  /** The node request handler for /graphql. */
  handle(req: IncomingMessage, res: ServerResponse): void;
  /** graphql-ws on the same server and path. */
  attach(server: Server): void;
  /** End every subscription (SSE and WebSocket) and close WebSocket connections. */
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

/** GraphQL over HTTP (yoga: JSON, multipart uploads, SSE, GraphiQL) and WebSocket (graphql-ws), as small plugins. */
export function createGraphqlProtocol({
  service,
  logger,
  tokens,
  imageLimits,
  maxImagesPerRequest = 64,
  maxUploadBytes = 50 * 1024 * 1024,
  maxFilesPerRequest = 16,
  documentLimits = {},
  webSocketLimits = {},
  corsOrigins = null,
  graphiql = true,
  statusSource = service.models,
}: GraphqlOptions): GraphqlProtocol {
  const shutdown = new AbortController();
  let ws: { close(): Promise<void> } | null = null;

  const yoga = createYoga<Record<string, unknown>, Context>({
    schema,
    graphqlEndpoint: '/graphql',
    landingPage: false,
    healthCheckEndpoint: '/yoga/health', // /health is the server's own (JSON)
    graphiql: graphiql ? { title: 'GraphQL inference gateway', defaultQuery: DEFAULT_QUERY, subscriptionsProtocol: 'WS' } : false,
    // GraphiQL served from the package itself: yoga's default page loads its scripts from a CDN, which a gateway on a
    // closed network cannot reach
    renderGraphiQL,
    cors: corsOrigins
      ? {
          origin: [...corsOrigins],
          credentials: true,
          allowedHeaders: ['content-type', 'authorization', 'x-graphql-yoga-csrf', 'x-request-id'],
        }
      : undefined,
    fetchAPI: createFetch({
      formDataLimits: {
        fileSize: maxUploadBytes,
        files: maxFilesPerRequest,
        fieldSize: maxUploadBytes,
        fields: 64,
        parts: maxFilesPerRequest + 64,
      },
    }),
    // Yoga logs every GraphQL error it returns; those are the client's (typed, answered). Unexpected ones are logged
    // once by maskError, so yoga's own lines go to debug.
    logging: {
      debug: (...a: unknown[]) => logger.debug(String(a[0])),
      info: (...a: unknown[]) => logger.debug(String(a[0])),
      warn: (...a: unknown[]) => logger.debug(String(a[0])),
      error: (...a: unknown[]) => logger.debug(String(a[0])),
    },
    context: ({ request }): Context => ({
      service,
      models: service.models,
      imageLimits,
      budget: new RequestBudget(maxImagesPerRequest),
      requireAdmin: accessFor(request.headers.get('authorization'), tokens).requireAdmin,
      statusEvents: (filter) => statusEvents(statusSource, filter, shutdown.signal),
    }),
    maskedErrors: { maskError: maskError(logger) },
    plugins: [useCSRFPrevention({ requestHeaders: ['x-graphql-yoga-csrf'] }), useApiTokens(tokens), useDocumentLimits(documentLimits)],
  });

  return {
    yoga,
    handle: (req, res) => void yoga(req, res),
    attach(server) {
      ws = attachWebSocket(server, yoga, tokens, webSocketLimits);
    },
    async close() {
      shutdown.abort(); // ends every subscription stream (SSE and WebSocket) with "complete"
      await new Promise((r) => setTimeout(r, 50)); // let the completes flush
      await ws?.close();
    },
  };
}
