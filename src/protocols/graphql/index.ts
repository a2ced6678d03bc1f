import { setMaxListeners } from 'node:events';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createYoga, type YogaServerInstance } from 'graphql-yoga';
import { useCSRFPrevention } from '@graphql-yoga/plugin-csrf-prevention';
import { createFetch } from '@whatwg-node/fetch';
import type { Logger } from '../../log.ts';
import { accessFor, foreignOrigin, type Tokens } from '../../inference/access.ts';
import { LRUCache } from 'lru-cache';
import type { DocumentNode } from 'graphql';
import { ErrorCode, GatewayError } from '../../errors.ts';
import { RequestBudget, type BudgetLimits } from '../../inference/budget.ts';
import type { ModelStatusEvent } from '../../repository/version.ts';
import type { ImageReadLimits } from '../../inference/images.ts';
import type { InferenceService } from '../../inference/service.ts';
import type { Context } from './context.ts';
import { CSRF_HEADER, maskError, useRequestErrorCodes } from './errors.ts';
import { statusEvents, type StatusSource } from './events.ts';
import { useApiTokens } from './plugins/api-tokens.ts';
import { useUnansweredStreams } from './plugins/unanswered-streams.ts';
import { useSubscriptionRootRule } from './plugins/subscription-root.ts';
import { useChunkedBodyLimit } from './plugins/body-limit.ts';
import { useJsonErrors } from './plugins/json-errors.ts';
import { useVariableValueLimit } from './plugins/variable-values.ts';
import { useMultipartShape, watchRepeatedParts } from './plugins/multipart-shape.ts';
import { useGraphiQLPage } from './plugins/graphiql-page.ts';
import { useUnsupportedBody } from './plugins/unsupported-body.ts';
import { useNotAcceptable } from './plugins/not-acceptable.ts';
import { useVaryOrigin } from './plugins/vary-origin.ts';
import { useDocumentLimits, type DocumentLimits } from './plugins/limits.ts';
import { schema } from './schema/index.ts';
import { attachWebSocket, type WebSocketLimits } from './websocket.ts';
import { ClientAddresses, UNATTRIBUTED } from '../../client-address.ts';
import { holdOf } from '../../bytes-in-flight.ts';

export interface GraphqlOptions {
  service: InferenceService;
  logger: Logger;
  tokens: Tokens;
  imageLimits: ImageReadLimits;
  maxImagesPerRequest?: number;
  /** What one request may spend (images, renderings, bytes in and out). */
  budget?: Omit<BudgetLimits, 'maxImages'>;
  maxUploadBytes?: number;
  /** Most JSON values a request's body or WebSocket message holds (MAX_VARIABLE_VALUES). */
  maxVariableValues?: number;
  /** Largest JSON body once inflated (MAX_JSON_BODY_BYTES; HTTP refuses a larger one before it is read). */
  maxJsonBodyBytes?: number;
  maxFilesPerRequest?: number;
  documentLimits?: DocumentLimits;
  webSocketLimits?: WebSocketLimits;
  /** Open subscriptions (SSE and WebSocket) per client address. */
  maxSubscriptionsPerClient?: number;
  /** Who each request's client is (TRUSTED_PROXIES); default: its peer. */
  clients?: ClientAddresses;
  /** Origins allowed to call from a browser; none by default (same origin only). */
  corsOrigins?: readonly string[];
  /** Is a WebSocket upgrade answered at all (the host check of HTTP requests)? */
  allowUpgrade?: (req: IncomingMessage) => boolean;
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
  /**
   * End every subscription (SSE and WebSocket) and close WebSocket connections: those that have not answered the close
   * within `timeoutMs` (a client that stopped reading) are cut.
   */
  close(timeoutMs?: number): Promise<void>;
  /** Subscriptions (SSE and WebSocket) and WebSocket connections open now. */
  open(): { subscriptions: number; webSockets: number; webSocketUnsentBytes: number };
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

/** Caches of parsed and validated documents, bounded by the total size of the documents' text (4 MB each). */
function documentCaches() {
  const bounded = <T extends object>() =>
    new LRUCache<string, T>({ max: 1000, maxSize: 4 * 1024 * 1024, sizeCalculation: (_, key) => Math.max(1, key.length) });
  return { documentCache: bounded<DocumentNode>(), errorCache: bounded<Error>() };
}

/** GraphQL over HTTP (yoga: JSON, multipart uploads, SSE, GraphiQL) and WebSocket (graphql-ws), as small plugins. */
export function createGraphqlProtocol({
  service,
  logger,
  tokens,
  imageLimits,
  maxImagesPerRequest = 64,
  maxUploadBytes = 50 * 1024 * 1024,
  maxVariableValues = 65_536,
  maxJsonBodyBytes = 8 * 1024 * 1024,
  maxFilesPerRequest = 16,
  documentLimits = {},
  budget = {},
  webSocketLimits = {},
  maxSubscriptionsPerClient = 32,
  clients = new ClientAddresses(),
  corsOrigins = [],
  allowUpgrade = () => true,
  graphiql = true,
  statusSource = service.models,
}: GraphqlOptions): GraphqlProtocol {
  const shutdown = new AbortController();
  // every open subscription listens to it (bounded by the subscriptions per client and connection, not by Node's 10)
  setMaxListeners(0, shutdown.signal);
  let ws: { close(timeoutMs: number): Promise<void>; readonly connections: number; readonly unsentBytes: number } | null = null;
  const subscriptionsByClient = new Map<string, number>();

  /** A status stream for one client, within its share of subscriptions. */
  const clientStatusEvents = (client: string, filter: (e: ModelStatusEvent) => boolean): AsyncIterable<ModelStatusEvent> => {
    const open = subscriptionsByClient.get(client) ?? 0;
    if (open >= maxSubscriptionsPerClient) {
      throw new GatewayError(ErrorCode.LIMIT_EXCEEDED, `more than ${maxSubscriptionsPerClient} open subscriptions from one client`);
    }
    subscriptionsByClient.set(client, open + 1);
    return statusEvents(statusSource, filter, shutdown.signal, 1000, () => {
      const left = (subscriptionsByClient.get(client) ?? 1) - 1;
      if (left <= 0) subscriptionsByClient.delete(client);
      else subscriptionsByClient.set(client, left);
    });
  };

  const fetchAPI = createFetch({
    formDataLimits: {
      fileSize: maxUploadBytes,
      files: maxFilesPerRequest,
      fieldSize: maxUploadBytes,
      fields: 64,
      parts: maxFilesPerRequest + 64,
    },
  });
  watchRepeatedParts(fetchAPI.FormData);

  const yoga = createYoga<Record<string, unknown>, Context>({
    schema,
    graphqlEndpoint: '/graphql',
    landingPage: false,
    healthCheckEndpoint: '/yoga/health', // /health is the server's own (JSON)
    // GraphiQL: served by useGraphiQLPage (from the package itself, rendered once, gzipped)
    graphiql: false,
    // no cross-origin access unless CORS_ORIGINS names origins (yoga's default would answer any origin); an origin
    // not listed gets no CORS header at all: given the list, whatwg-node answers it "null" with credentials, which is
    // the origin of every sandboxed frame (any page can make one), and with one origin it names that one to anyone
    cors:
      corsOrigins.length > 0
        ? (request) => {
            const origin = request.headers.get('origin');
            return origin !== null && corsOrigins.includes(origin)
              ? {
                  origin: [...corsOrigins],
                  credentials: true,
                  allowedHeaders: ['content-type', 'authorization', CSRF_HEADER, 'x-request-id'],
                }
              : false;
          }
        : false,
    // the configured upload limit is the one that applies (yoga's own default is 25 MB): checked from Content-Length by
    // the HTTP server, and for chunked bodies by useChunkedBodyLimit
    maxRequestBodySize: false,
    // parsed documents are cached by their text: bounded by the text's size, not only by count, so large distinct
    // documents cannot fill the heap (an AST takes many times the memory of its text)
    parserAndValidationCache: documentCaches(),
    fetchAPI,
    // Yoga logs every GraphQL error it returns; those are the client's (typed, answered). Unexpected ones are logged
    // once by maskError, so yoga's own lines go to debug.
    logging: {
      debug: (...a: unknown[]) => logger.debug(String(a[0])),
      info: (...a: unknown[]) => logger.debug(String(a[0])),
      warn: (...a: unknown[]) => logger.debug(String(a[0])),
      error: (...a: unknown[]) => logger.debug(String(a[0])),
    },
    context: (initial): Context => {
      const { request } = initial;
      // over HTTP yoga gives the node request (req); over WebSocket, websocket.ts passes graphql-ws's (extra.request)
      const httpRequest = (initial as { req?: IncomingMessage }).req;
      const node = httpRequest ?? (initial as { extra?: { request?: IncomingMessage } }).extra?.request;
      const caller = {
        remoteAddress: node?.socket.remoteAddress,
        origin: request.headers.get('origin'),
        host: request.headers.get('host') ?? node?.headers.host,
        forwarded: clients.relayed(node?.socket.remoteAddress, (h) => request.headers.get(h)),
      };
      return {
        service,
        models: service.models,
        imageLimits,
        // over HTTP the request's hold of MAX_BYTES_IN_FLIGHT (its body's, kept until it is answered); over WebSocket,
        // websocket.ts gives each operation its own
        budget: new RequestBudget(
          { maxImages: maxImagesPerRequest, maxInputBytes: maxUploadBytes, ...budget },
          request.signal,
          httpRequest && holdOf(httpRequest),
          clients.shareOf(node?.socket.remoteAddress, node?.headers['x-forwarded-for']),
        ),
        requireAdmin: accessFor(request.headers.get('authorization'), tokens, caller).requireAdmin,
        // the client's key is read only by subscriptions
        statusEvents: (filter) => {
          const client = clients.of(node?.socket.remoteAddress, node?.headers['x-forwarded-for']);
          if (client === null) throw new GatewayError(ErrorCode.INVALID_INPUT, UNATTRIBUTED);
          return clientStatusEvents(client, filter);
        },
      };
    },
    maskedErrors: { maskError: maskError(logger) },
    plugins: [
      ...(corsOrigins.length > 0 ? [useVaryOrigin()] : []),
      useCSRFPrevention({ requestHeaders: [CSRF_HEADER] }),
      ...(graphiql
        ? [
            useGraphiQLPage('/graphql', {
              title: 'GraphQL inference gateway',
              defaultQuery: DEFAULT_QUERY,
              subscriptionsProtocol: 'WS',
              // yoga's GraphiQL kept its Headers tab (an admin token typed there) in localStorage for good, unsaid: now
              // held by the open page only (typed again after a reload)
              shouldPersistHeaders: false,
            }),
          ]
        : []),
      useApiTokens(tokens),
      useDocumentLimits(documentLimits),
      useSubscriptionRootRule(),
      useRequestErrorCodes(new Set(Object.keys(schema.getMutationType()?.getFields() ?? {}))),
      // before the chunked-body limit, which hands on the request it reads through: the map check reads its form again,
      // and an error about JSON in a body reads its text again
      useMultipartShape(),
      useJsonErrors(),
      useVariableValueLimit(maxVariableValues, maxJsonBodyBytes),
      useChunkedBodyLimit(maxUploadBytes),
      useUnansweredStreams(),
      // after every plugin that wraps the request's parser: a POST none reads is refused (415) without reading its body
      useUnsupportedBody(),
      // last: an Accept header naming no type it answers in is refused (406) before anything runs, or once a
      // subscription's stream has been ended
      useNotAcceptable(),
    ],
  });

  return {
    yoga,
    handle: (req, res) => void yoga(req, res),
    attach(server) {
      // browsers send no CORS preflight for a WebSocket: a page of another origin is refused here unless
      // CORS_ORIGINS names it, as its HTTP requests are
      const sameOriginOrAllowed = (req: IncomingMessage) => {
        const origin = req.headers.origin;
        return !foreignOrigin({ origin, host: req.headers.host }) || (origin !== undefined && corsOrigins.includes(origin));
      };
      ws = attachWebSocket(server, yoga, tokens, {
        clients,
        logger,
        maxVariableValues,
        maxQueryBytes: documentLimits.maxBytes,
        ...webSocketLimits,
        allowUpgrade: (req) => allowUpgrade(req) && sameOriginOrAllowed(req),
      });
    },
    open() {
      let subscriptions = 0;
      for (const n of subscriptionsByClient.values()) subscriptions += n;
      return { subscriptions, webSockets: ws?.connections ?? 0, webSocketUnsentBytes: ws?.unsentBytes ?? 0 };
    },
    async close(timeoutMs = 10_000) {
      shutdown.abort(); // ends every subscription stream (SSE and WebSocket) with "complete"
      await new Promise((r) => setTimeout(r, 50)); // let the completes flush
      await ws?.close(timeoutMs);
    },
  };
}
