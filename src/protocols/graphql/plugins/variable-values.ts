import type { Plugin } from 'graphql-yoga';
import { ErrorCode, GatewayError } from '../../../errors.ts';
import { jsonValueCount } from '../../../json-text.ts';
import { toGraphQLError } from '../errors.ts';

/** The refusal of a request or message holding more than `max` JSON values, said the same over HTTP and WebSocket. */
export const tooManyVariableValues = (max: number) =>
  toGraphQLError(
    new GatewayError(
      ErrorCode.LIMIT_EXCEEDED,
      `this request holds more than ${max} values (MAX_VARIABLE_VALUES): variables are parsed and coerced value by value on the server's event loop; send images and tensors as files or base64, one value each`,
    ),
    { requestLevel: true },
  );

/**
 * The document is bounded before it is parsed (MAX_QUERY_BYTES, tokens, depth...); this bounds the rest of a request:
 * a JSON body, a multipart request's `operations` or a form's `variables`, holding more than `max` values is refused
 * from its text, before JSON.parse builds it and graphql-js coerces its variables value by value (a list of 1M items
 * held the event loop about a second; a 50 MB body of 25M, over 20 s). Counted by jsonValueCount, an over-count
 * (commas in strings count).
 */
export function useVariableValueLimit(max: number): Plugin {
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      // a GET's variables are bounded by the size of its headers; a body by MAX_UPLOAD_BYTES only
      const type = request.method === 'GET' ? '' : (request.headers.get('content-type')?.toLowerCase() ?? '');
      const form = type.startsWith('application/x-www-form-urlencoded');
      const multipart = type.startsWith('multipart/form-data');
      if (!requestParser || (!type.includes('json') && !form && !multipart)) return;
      setRequestParser(async (req) => {
        // read once: the request keeps its body, and its form, for the parser (whatwg-node's)
        let json: unknown = multipart ? (await req.formData()).get('operations') : await req.text();
        if (form && typeof json === 'string') json = new URLSearchParams(json).get('variables');
        if (typeof json === 'string' && jsonValueCount(json, max) > max) throw tooManyVariableValues(max);
        return requestParser(req);
      });
    },
  };
}
