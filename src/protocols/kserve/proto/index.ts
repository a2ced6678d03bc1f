import type * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

/**
 * The contract the gRPC server and its clients share: the Open Inference Protocol proto file beside this module and the
 * options both sides load it with. Imports nothing else, so the client (src/client) may use it.
 */
export const PROTO_PATH = fileURLToPath(new URL('./open_inference_grpc.proto', import.meta.url));
/** keepCase: the proto's snake_case names; longs as strings: int64 values past 2^53 survive. */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
