import type { Logger } from '../../log.ts';
import type { Tokens } from '../../inference/access.ts';
import type { InferenceService } from '../../inference/service.ts';
import { ClientAddresses } from '../../client-address.ts';
import { createKserveCore } from './core.ts';
import { createGrpcServer, type GrpcServerOptions, type KserveGrpcServer } from './grpc.ts';
import { createRestRoute, type RestRoute } from './rest.ts';

export interface KserveOptions {
  service: InferenceService;
  logger: Logger;
  tokens: Tokens;
  /** Items (batch entries, images) in one request. */
  maxImagesPerRequest?: number;
  /** Largest REST body and gRPC message received. */
  maxUploadBytes?: number;
  /** Bytes of tensors one response may carry. */
  maxResponseBytes?: number;
  /** Tensor values decoded or encoded one by one (REST JSON, gRPC typed contents), in and out. */
  maxJsonValues?: number;
  /** Largest REST JSON (a body, or the JSON header of binary data), once inflated: parsed on the event loop. */
  maxJsonBodyBytes?: number;
  /** The gRPC port's connections, in all and per client, how long a call may take to arrive, and the process's budget of request bytes. */
  grpcConnections?: Pick<GrpcServerOptions, 'maxConnections' | 'maxConnectionsPerClient' | 'requestTimeoutMs' | 'bytesInFlight'>;
  /** Who each request's client is, and which peers are trusted proxies (TRUSTED_PROXIES); default: every peer is a client. */
  clients?: ClientAddresses;
  /** Whether the server is ready besides its models (a SIGTERM drain, the cluster bus joined), as /ready says. */
  serverReady?: () => boolean;
}

export interface KserveProtocol {
  /** REST under /v2, mounted on the gateway's HTTP port. */
  route: RestRoute;
  /** The gRPC service, on its own port (GRPC_PORT). */
  grpc: KserveGrpcServer;
}

/** The Open Inference Protocol (KServe v2): REST on the HTTP port and gRPC on its own, over one InferenceService. */
export function createKserveProtocol({
  service,
  logger,
  tokens,
  maxImagesPerRequest = 64,
  maxUploadBytes = 50 * 1024 * 1024,
  maxResponseBytes = 64 * 1024 * 1024,
  maxJsonValues = 524_288,
  maxJsonBodyBytes = 8 * 1024 * 1024,
  grpcConnections = {},
  clients = new ClientAddresses(),
  serverReady,
}: KserveOptions): KserveProtocol {
  const core = createKserveCore({ service, tokens, maxImagesPerRequest, maxResponseBytes, maxJsonValues, serverReady });
  return {
    route: createRestRoute({
      core,
      logger,
      maxBodyBytes: maxUploadBytes,
      maxJsonBytes: maxJsonBodyBytes,
      maxJsonValues,
      maxItems: maxImagesPerRequest,
      clients,
    }),
    grpc: createGrpcServer({
      core,
      logger,
      maxMessageBytes: maxUploadBytes,
      maxJsonValues,
      maxItems: maxImagesPerRequest,
      ...grpcConnections,
      clients,
    }),
  };
}
