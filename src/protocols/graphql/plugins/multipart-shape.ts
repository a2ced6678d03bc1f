import type { Plugin } from 'graphql-yoga';
import { ErrorCode, GatewayError } from '../../../errors.ts';
import { isGraphQLError, toGraphQLError } from '../errors.ts';

const SPEC =
  'the GraphQL multipart request spec wants "operations" as a JSON object (or a list of them) and "map" as a JSON object of part name to a list of paths such as ["variables.file"]';

/**
 * A multipart request whose `operations` or `map` parse as JSON but have the wrong shape (a number, a path that is no
 * string): yoga's parser then fails with a plain TypeError, which would be masked as a 500; when they are not JSON at
 * all (or missing), yoga answers 200 with an error without a code. Both are the client's mistake: 400 INVALID_INPUT,
 * saying what the spec wants.
 */
export function useMultipartShape(): Plugin {
  const refuse = (what: string) => toGraphQLError(new GatewayError(ErrorCode.INVALID_INPUT, `${what}: ${SPEC}`), { requestLevel: true });
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      if (!requestParser || !request.headers.get('content-type')?.toLowerCase().startsWith('multipart/form-data')) return;
      setRequestParser(async (req) => {
        let params: unknown;
        try {
          params = await requestParser(req);
        } catch (e) {
          if (e instanceof Error && !isGraphQLError(e) && e.name !== 'AbortError') throw refuse('a malformed multipart request');
          // yoga's own words for a field that is missing or not JSON ("Multipart form field "map" must be a valid JSON
          // string"), which come without a code or status; limits and other typed errors pass as they are
          if (isGraphQLError(e) && e.extensions?.code === undefined && /multipart form field/i.test(e.message)) throw refuse(e.message);
          throw e;
        }
        // a list is batching, which yoga refuses itself (and a list's length is the client's: never walked here)
        if (!Array.isArray(params) && (typeof params !== 'object' || params === null)) throw refuse('"operations" is not a JSON object');
        return params as never;
      });
    },
  };
}
