import type { GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { notValidJsonText } from '../../../json-text.ts';
import { badRequest, isGraphQLError } from '../errors.ts';
import { bodyKind } from './body-kind.ts';

/**
 * JSON in a request that does not parse, said as the client's mistake and where:
 * - a JSON body: yoga answers "POST body sent invalid JSON." and puts the parse error in `extensions.originalError`,
 *   whose message (whatwg-node's) quotes the whole body back: a megabyte sent, a megabyte answered;
 * - the `variables` or `extensions` parameter of a GET or of a form (application/x-www-form-urlencoded): yoga's
 *   JSON.parse throws a plain SyntaxError, masked as a 500 "Unexpected error." and logged as the server's.
 * Both are 400 BAD_REQUEST (whatever the client accepts, as the GraphQL over HTTP spec says of a request that does not
 * parse), saying which text, the position, line and column, and JSON.parse's reason (also where Node 20 names no
 * position), quoting none of it.
 */
export function useJsonErrors(): Plugin {
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      // what parses JSON: a GET, a JSON body, a form (a multipart request's fields are useMultipartShape's)
      const kind = bodyKind(request);
      if (!requestParser || kind === null || kind === 'multipart') return;
      setRequestParser(async (req) => {
        try {
          return await requestParser(req);
        } catch (e) {
          const refused = await jsonRefusal(req, e);
          if (refused) throw refused;
          throw e;
        }
      });
    },
  };
}

const refusal = (message: string) => badRequest(400, message);

async function jsonRefusal(req: Request, e: unknown): Promise<GraphQLError | null> {
  // the request keeps the text it parsed (whatwg-node's); a body that cannot be read again gives no position
  const text = () =>
    req.text().then(
      (t) => t,
      () => '',
    );
  if (isGraphQLError(e)) {
    const original = e.extensions?.originalError;
    if (e.message !== 'POST body sent invalid JSON.' || original === undefined) return null;
    return refusal(`the request body is ${notValidJsonText(await text(), original)}`);
  }
  if (!(e instanceof SyntaxError)) return null;
  // GET: the query string; a form: its body
  const params = new URLSearchParams(req.method === 'GET' ? new URL(req.url).search : await text());
  for (const name of ['variables', 'extensions']) {
    const value = params.get(name);
    if (!value) continue;
    try {
      JSON.parse(value);
    } catch (error) {
      return refusal(`the "${name}" parameter is ${notValidJsonText(value, error)}`);
    }
  }
  return null;
}
