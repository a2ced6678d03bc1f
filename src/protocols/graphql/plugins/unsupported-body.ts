import type { GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { quoted } from '../../../errors.ts';
import { badRequest } from '../errors.ts';

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

const refusal = (message: string) => badRequest(415, message);

/** What a POST's Content-Type (or its lack) is told: what /graphql reads, and how to write a type it reads but in other case. */
function unsupportedType(contentType: string | null): GraphQLError {
  if (!contentType?.trim()) return refusal(`a POST to /graphql needs a Content-Type: ${TAKES}`);
  const type = contentType.split(',')[0].split(';')[0].trim().toLowerCase();
  const written = READ.includes(type) ? ` (types are read as written: write ${quoted(type)})` : '';
  return refusal(`/graphql does not read a body of Content-Type ${quoted(contentType)}${written}: ${TAKES}`);
}

/**
 * A compressed body: yoga reads a body as it comes, so a gzip one was answered as JSON that does not parse. Refused
 * rather than inflated (KServe REST inflates, for tritonclient): GraphQL clients send bodies uncompressed, and an
 * inflater here would be one more bound to keep (MAX_JSON_BODY_BYTES, MAX_UPLOAD_BYTES for multipart and its files,
 * MAX_BYTES_IN_FLIGHT while it inflates) on a body that yoga, busboy and the plugins before this one read as a stream.
 */
const compressed = (encoding: string) =>
  badRequest(
    415,
    `/graphql does not read a compressed body (Content-Encoding: ${quoted(encoding)}): send it uncompressed (KServe v2 REST, /v2/..., inflates gzip and deflate)`,
    // RFC 9110: a 415 for a content coding says, in Accept-Encoding, which codings are read
    { 'accept-encoding': 'identity' },
  );

/**
 * A POST whose body no parser of yoga's reads (its Content-Type, or none): yoga answered 415 with an empty body; or
 * that comes compressed (Content-Encoding). Either is refused as an error of the request (415 BAD_REQUEST) saying what
 * to send, as JSON like every other. Last of the plugins that see the parser: the others leave a request without one
 * alone, the parser they wrap is dropped, and the body is not read.
 */
export function useUnsupportedBody(): Plugin {
  return {
    onRequestParse({ request, requestParser, setRequestParser }) {
      if (request.method !== 'POST') return;
      const encoding = request.headers.get('content-encoding')?.trim().toLowerCase() ?? '';
      const refused = !requestParser
        ? unsupportedType(request.headers.get('content-type'))
        : encoding !== '' && encoding !== 'identity'
          ? compressed(encoding)
          : null;
      if (!refused) return;
      setRequestParser(() => {
        throw refused;
      });
    },
  };
}
