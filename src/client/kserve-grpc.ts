/**
 * A KServe v2 (Open Inference Protocol) gRPC client built from the same proto file the server serves, with
 * @grpc/grpc-js and @grpc/proto-loader: each RPC as a promise. Used by the tests and the benchmark; a client in any
 * language generated from that proto (or the official one) works the same.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS, PROTO_PATH } from '../protocols/kserve/proto/index.ts';

export const RPCS = [
  'ServerLive',
  'ServerReady',
  'ModelReady',
  'ServerMetadata',
  'ModelMetadata',
  'ModelInfer',
  'RepositoryIndex',
  'RepositoryModelLoad',
  'RepositoryModelUnload',
  'ModelStatistics',
  'ModelConfig',
] as const;
export type Rpc = (typeof RPCS)[number];

/** A failed call: the gRPC status code, its message, and the gateway's code (the `error-code` trailer). */
export interface KserveGrpcError extends Error {
  code: grpc.status;
  details: string;
  metadata?: grpc.Metadata;
}

// Responses are the decoded protobuf objects, read by field name (snake_case, int64 as strings).
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Message = Record<string, any>;

/** `signal` cancels the call (the server then drops the work it has not started). */
export type KserveGrpcClient = {
  [R in Rpc]: (request?: object, metadata?: Record<string, string>, options?: { signal?: AbortSignal }) => Promise<Message>;
} & {
  raw: grpc.Client;
  close(): void;
};

export function createKserveGrpcClient(address: string, options: grpc.ClientOptions = {}): KserveGrpcClient {
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS)) as unknown as {
    inference: { GRPCInferenceService: grpc.ServiceClientConstructor };
  };
  const client = new pkg.inference.GRPCInferenceService(address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': -1,
    'grpc.max_send_message_length': -1,
    // HTTP/2's 64 KiB window moves an answer 64 KiB per turn of this process's event loop: raw detector outputs of
    // MBs took seconds to arrive beside other work (the gateway's own port offers 1 MiB a call, README)
    'grpc-node.flow_control_window': 1 << 20,
    ...options,
  });
  const call =
    (rpc: Rpc) =>
    (request: object = {}, metadata: Record<string, string> = {}, { signal }: { signal?: AbortSignal } = {}) =>
      new Promise<Message>((resolve, reject) => {
        const md = new grpc.Metadata();
        for (const [k, v] of Object.entries(metadata)) md.set(k, v);
        const method = client[rpc] as (
          req: object,
          md: grpc.Metadata,
          cb: (err: KserveGrpcError | null, res: Message) => void,
        ) => grpc.ClientUnaryCall;
        const cancel = () => pending.cancel();
        const pending = method.call(client, request, md, (err, response) => {
          signal?.removeEventListener('abort', cancel);
          if (err) reject(err);
          else resolve(response);
        });
        if (signal?.aborted) cancel();
        else signal?.addEventListener('abort', cancel, { once: true });
      });
  return {
    ...(Object.fromEntries(RPCS.map((r) => [r, call(r)])) as { [R in Rpc]: ReturnType<typeof call> }),
    raw: client,
    close: () => client.close(),
  };
}

/** The gateway's error code of a failed call (from the `error-code` trailer). */
export const errorCodeOf = (e: unknown): string | undefined => (e as KserveGrpcError).metadata?.get('error-code')[0]?.toString();
