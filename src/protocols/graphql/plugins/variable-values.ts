import type { Plugin } from 'graphql-yoga';
import { ErrorCode, GatewayError } from '../../../errors.ts';
import { jsonTooLarge, jsonValueCount } from '../../../json-text.ts';
import { toGraphQLError } from '../errors.ts';
import { bodyKind } from './body-kind.ts';

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
 * a JSON body, a multipart request's `operations` or `map`, or a form's `variables` or `extensions`, holding more than
 * `max` values is refused
 * from its text, before JSON.parse builds it and graphql-js coerces its variables value by value (a list of 1M items
 * held the event loop about a second; a 50 MB body of 25M, over 20 s). Counted by jsonValueCount, an over-count
 * (commas in strings count).
 */
export function useVariableValueLimit(max: number, maxJsonBytes = Infinity): Plugin {
  // PAYLOAD_TOO_LARGE for a body, or a multipart field, of JSON past MAX_JSON_BODY_BYTES
  const tooLarge = (field: string | null, size: number) =>
    toGraphQLError(
      new GatewayError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        field === null ? jsonTooLarge(size, maxJsonBytes) : `the multipart field ${field}: ${jsonTooLarge(size, maxJsonBytes)}`,
      ),
      { requestLevel: true },
    );
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      // a GET's variables are bounded by the size of its headers; a body by MAX_UPLOAD_BYTES only
      const kind = bodyKind(request);
      if (!requestParser || kind === null || kind === 'get') return;
      const form = kind === 'form';
      const multipart = kind === 'multipart';
      setRequestParser(async (req) => {
        const check = (texts: unknown[]) => {
          for (const text of texts) if (typeof text === 'string' && jsonValueCount(text, max) > max) throw tooManyVariableValues(max);
        };
        if (!multipart) {
          // read once: the request keeps its body for the parser (whatwg-node's)
          const text = await req.text();
          // HTTP refuses a JSON or form body past MAX_JSON_BODY_BYTES from its headers, or as it comes where the process
          // counts request bytes (MAX_BYTES_IN_FLIGHT): this holds where it does not (characters, at most its bytes)
          if (text.length > maxJsonBytes) throw tooLarge(null, text.length);
          if (!form) check([text]);
          else {
            const params = new URLSearchParams(text);
            check([params.get('variables'), params.get('extensions')]);
          }
          return requestParser(req);
        }
        // a form is checked as yoga's parser reads it, between busboy and JSON.parse: read here first, a form that
        // fails (cut short, no boundary) would be kept half-read by the request and served as if whole
        let refused: unknown = null;
        const read = req.formData.bind(req);
        req.formData = ((...a: Parameters<typeof read>) =>
          read(...a).then((parts) => {
            try {
              // its JSON fields are parsed as a JSON body is, and bounded the same (the files are parts of their own)
              for (const name of ['operations', 'map']) {
                const field = parts.get(name);
                if (typeof field === 'string' && field.length > maxJsonBytes) throw tooLarge(name, field.length);
              }
              check([parts.get('operations'), parts.get('map')]);
            } catch (e) {
              throw (refused = e);
            }
            return parts;
          })) as typeof req.formData;
        try {
          return await requestParser(req);
        } catch (e) {
          throw refused ?? e; // yoga's parser words any error of the form as invalid multipart data
        }
      });
    },
  };
}
