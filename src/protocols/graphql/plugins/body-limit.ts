import type { Plugin } from 'graphql-yoga';
import { ErrorCode, GatewayError } from '../../../errors.ts';
import { toGraphQLError } from '../errors.ts';

/**
 * The request body limit for bodies sent without Content-Length (chunked): counted as they stream in. Bodies with a
 * Content-Length were checked against the same limit by the HTTP server before anything was read, so they pass
 * untouched: yoga's own limiter wraps every body in a stream transform, which doubled the CPU time of a small
 * request (measured in bench/), and is turned off.
 */
export function useChunkedBodyLimit(maxBytes: number): Plugin {
  const tooLarge = () =>
    toGraphQLError(new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, `the request body is larger than ${maxBytes} bytes (MAX_UPLOAD_BYTES)`), {
      requestLevel: true,
    });
  return {
    onRequestParse({ request, requestParser, setRequestParser, fetchAPI }) {
      if (request.headers.has('content-length') || !request.body || !requestParser) return;
      let read = 0;
      const limited = request.body.pipeThrough(
        new (request.body instanceof ReadableStream ? globalThis.TransformStream : fetchAPI.TransformStream)({
          transform(chunk: Uint8Array, controller: TransformStreamDefaultController<Uint8Array>) {
            read += chunk.byteLength;
            if (read > maxBytes) controller.error(tooLarge());
            else controller.enqueue(chunk);
          },
        }),
        // past the limit the request is not destroyed (its connection would be reset under the 413): its answer closes
        // the connection, which lingers, reading the rest (server/linger.ts)
        { preventCancel: true },
      );
      const next = new fetchAPI.Request(request.url, {
        method: request.method,
        headers: request.headers,
        signal: request.signal,
        body: limited,
        duplex: 'half',
      } as RequestInit);
      setRequestParser(() => requestParser(next));
    },
  };
}
