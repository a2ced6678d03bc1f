import { GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { quoted } from '../../../errors.ts';

/** The Content-Types yoga's parsers read in a POST, matched as written (lower case, no space before a parameter). */
const READ = [
  'application/json',
  'application/graphql+json',
  'multipart/form-data',
  'application/x-www-form-urlencoded',
  'application/graphql',
];

const TAKES =
  'send application/json ({"query": "...", "variables": {...}}), multipart/form-data to upload files (the GraphQL multipart request spec, see the README\'s curl examples), application/x-www-form-urlencoded, or application/graphql (the document alone); or a GET with ?query=...';

const refusal = (message: string) => new GraphQLError(message, { extensions: { code: 'BAD_REQUEST', http: { status: 415 } } });

/** What a POST's Content-Type (or its lack) is told: what /graphql reads, and how to write a type it reads but in other case. */
function unsupportedType(contentType: string | null): GraphQLError {
  if (!contentType?.trim()) return refusal(`a POST to /graphql needs a Content-Type: ${TAKES}`);
  const type = contentType.split(',')[0].split(';')[0].trim().toLowerCase();
  const written = READ.includes(type) ? ` (types are read as written: write ${quoted(type)})` : '';
  return refusal(`/graphql does not read a body of Content-Type ${quoted(contentType)}${written}: ${TAKES}`);
}

/**
 * A POST whose body no parser of yoga's reads (its Content-Type, or none): yoga answered 415 with an empty body. The
 * refusal is an error of the request (415 BAD_REQUEST) saying what to send, as JSON like every other. Last of the
 * plugins that see the parser: the others leave a request without one alone, and its body is not read.
 */
export function useUnsupportedBody(): Plugin {
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      if (request.method !== 'POST' || requestParser) return;
      const refused = unsupportedType(request.headers.get('content-type'));
      setRequestParser(() => {
        throw refused;
      });
    },
  };
}
