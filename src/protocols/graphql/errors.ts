import { GraphQLError, type ExecutionResult } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { ErrorCode, GatewayError, clientGone, cutQuotedValues, isGatewayError } from '../../errors.ts';
import { noteErrorCodes, type Logger } from '../../log.ts';

/**
 * The one place where the gateway's errors become GraphQL errors. A GatewayError keeps its code in
 * `extensions.code`. Errors of the request as a whole (refused before execution, or about who is calling) carry their
 * HTTP status; errors of one field do not: a response that carries data is HTTP 200, as GraphQL over HTTP says.
 * Anything unexpected is logged once (with the request id) and masked.
 */
export function toGraphQLError(e: GatewayError, opts: { path?: readonly (string | number)[]; requestLevel?: boolean } = {}): GraphQLError {
  const withStatus = opts.requestLevel ?? (e.code === ErrorCode.UNAUTHENTICATED || e.code === ErrorCode.FORBIDDEN);
  // a body refused for its size is not read to its end: the connection closes after the answer (lingering, so that a
  // client still sending reads it), as the HTTP server's own 413 and KServe REST's do
  const http = withStatus
    ? { status: e.status, ...(e.code === ErrorCode.PAYLOAD_TOO_LARGE ? { headers: { connection: 'close' } } : {}) }
    : undefined;
  return new GraphQLError(e.message, {
    path: opts.path,
    extensions: { code: e.code, ...(http ? { http } : {}), ...(e.details ?? {}) },
  });
}

/** A request /graphql cannot take as sent (its body, its type, its Accept): BAD_REQUEST with its HTTP status. */
export function badRequest(status: number, message: string, headers?: Record<string, string>): GraphQLError {
  return new GraphQLError(message, { extensions: { code: 'BAD_REQUEST', http: { status, ...(headers ? { headers } : {}) } } });
}

/**
 * A document refused for a limit: HTTP 400 LIMIT_EXCEEDED whatever the Accept header (yoga keeps validation errors at
 * 200 for application/json clients unless told the status is not the spec's choice).
 */
export function limitError(message: string): GraphQLError {
  return new GraphQLError(message, { extensions: { code: ErrorCode.LIMIT_EXCEEDED, http: { status: 400, spec: false } } });
}

/**
 * The multipart parser (busboy, inside yoga's fetch API) reports its limits as plain errors whose only distinguishing
 * mark is their text ("File size limit exceeded", "Files limit exceeded", ...); this is the one place that reads it.
 */
function multipartLimit(message: string, code?: unknown): GatewayError | null {
  // yoga's own body limit (MAX_UPLOAD_BYTES, for bodies sent without Content-Length) says REQUEST_ENTITY_TOO_LARGE,
  // or, inside the multipart parser, "... invalid multipart data: Request body too large"
  if (code === 'REQUEST_ENTITY_TOO_LARGE' || /request body (too large|is larger than)/i.test(message)) {
    return new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, `the request body is larger than MAX_UPLOAD_BYTES`);
  }
  if (!/limit exceeded/i.test(message)) return null;
  return /size/i.test(message)
    ? new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, message)
    : new GatewayError(ErrorCode.LIMIT_EXCEEDED, message);
}

/**
 * Errors yoga raises before execution (parsing the request body, validating the document) do not pass maskError:
 * they get the same typed codes here, as the response is made, and graphql-js's words for a newcomer's slips their
 * hint (withHint).
 */
export function useRequestErrorCodes(mutations: ReadonlySet<string> = new Set()): Plugin {
  // the operationName each request sent, for the hint of an operation that cannot be resolved
  const operationNames = new WeakMap<Request, unknown>();
  return {
    onParams({ params, request }) {
      operationNames.set(request, (params as { operationName?: unknown }).operationName);
    },
    onResultProcess({ result, setResult, request }) {
      if (!result || Array.isArray(result) || Symbol.asyncIterator in (result as object)) return;
      const r = result as ExecutionResult;
      // for the request's log line: an answer with errors may be HTTP 200
      if (r.errors?.length) noteErrorCodes(r.errors.map((e) => e.extensions?.code));
      if (!r.errors?.length || r.data !== undefined) return;
      let changed = false;
      const errors = r.errors.map((e) => {
        const limit = multipartLimit(e.message, e.extensions?.code);
        if (limit) {
          changed = true;
          return toGraphQLError(limit, { requestLevel: true });
        }
        // a document refused for a limit while it was parsed (MAX_QUERY_TOKENS): yoga marks every parse error as the
        // GraphQL over HTTP spec's (HTTP 200 for application/json), over the 400 limitError gave it
        const http = e.extensions?.http as { spec?: boolean } | undefined;
        if (e.extensions?.code === ErrorCode.LIMIT_EXCEEDED && http?.spec) {
          changed = true;
          return limitError(e.message);
        }
        // a request that is not a well-formed GraphQL-over-HTTP request (no query): yoga marks its refusal as the spec's
        // too (HTTP 200 for application/json), where the spec has 400 for it, as for every other malformed parameter
        const malformed = e.extensions?.code === 'BAD_REQUEST' && http?.spec === true;
        const message = withHint(e.message, mutations, operationNames.get(request));
        if (message === e.message && !malformed) return e;
        changed = true;
        const extensions = malformed ? { ...e.extensions, http: { ...http, spec: false } } : e.extensions;
        return new GraphQLError(message, { nodes: e.nodes, extensions });
      });
      if (changed) setResult({ ...r, errors });
    },
  };
}

export const isGraphQLError = (e: unknown): e is GraphQLError => e instanceof Error && e.name === 'GraphQLError';

/** The header useCSRFPrevention asks of GET and multipart requests. */
export const CSRF_HEADER = 'x-graphql-yoga-csrf';

/** useCSRFPrevention's refusal says only "Required CSRF header(s) not present": this one says which and why. */
const csrfRefusal = (message: string) =>
  /^Required CSRF header/.test(message)
    ? new GatewayError(
        ErrorCode.FORBIDDEN,
        `this request needs the header ${CSRF_HEADER} (any value), or, for a POST of a JSON body, content-type: application/json: a page of another site can send neither without asking, so GET, form and multipart requests without the header are refused (CSRF prevention)`,
      )
    : null;

/**
 * graphql-js's and yoga's words for a newcomer's slips, with what to write instead: a request without a query, or
 * without the operationName its document needs, the upload scalar under the name most clients know (Upload), an
 * inference field asked in a query, a File variable left null; and values echoed back in full (an image sent as base64
 * text in a File variable came back as 50 KB of message) cut short (cutQuotedValues).
 */
export function withHint(message: string, mutations: ReadonlySet<string>, operationName?: unknown): string {
  if (message === 'Must provide query string.')
    return `${message} (send the document as "query": {"query": "{ models { name } }"} in a JSON body, or ?query= in a GET)`;
  if (message === 'Could not determine what operation to execute.') {
    if (operationName !== undefined && operationName !== null && typeof operationName !== 'string')
      return `${message} ("operationName" must be a string: the name of one of the document's operations, as written there; leave it out for a document of one operation)`;
    if (typeof operationName === 'string' && operationName !== '')
      return `${message} ("operationName" is ${cutQuotedValues(JSON.stringify(operationName))}, which names no operation of the document: send the name of one of its operations, as written after query, mutation or subscription, or leave it out for a document of one operation)`;
    return `${message} (a document of several operations runs one: send "operationName" with the name of one of them, as written in the document)`;
  }
  if (/^Unknown type "Upload"/.test(message)) return `${message} (this schema's upload scalar is File: write $f: File!)`;
  const field = /^Cannot query field "(\w+)" on type "Query"/.exec(message)?.[1];
  if (field && mutations.has(field)) return `${message} (${field} is a mutation: write mutation { ${field}(...) { ... } })`;
  const variable = /^Variable "\$(\w+)" of non-null type "\[?File!?\]?!?" must not be null/.exec(message)?.[1];
  if (variable)
    return `${message} (a file is sent as a part of a multipart request, bound to "variables.${variable}" by its "map": see the README's curl examples)`;
  return message.length > 200 ? cutQuotedValues(message) : message;
}

/** yoga's maskError: typed errors through, multipart limits typed, the unexpected logged and masked. */
export function maskError(logger: Logger) {
  return (error: unknown): Error => {
    const original = (error as { originalError?: unknown }).originalError ?? error;
    const path = isGraphQLError(error) ? error.path : undefined;
    if (isGatewayError(original)) return toGraphQLError(original, { path });
    if (isGraphQLError(error) && (original === error || isGraphQLError(original))) {
      const refused = multipartLimit(error.message, error.extensions?.code) ?? csrfRefusal(error.message);
      if (refused) return toGraphQLError(refused, { requestLevel: true });
      // graphql-js's own request errors (a variable of the wrong type, ...) come without a code: give them one
      if (error.extensions?.code === undefined && !error.path)
        return new GraphQLError(error.message, { nodes: error.nodes, extensions: { ...error.extensions, code: 'BAD_USER_INPUT' } });
      return error;
    }
    const message = original instanceof Error ? original.message : String(original);
    const limit = multipartLimit(message);
    if (limit) return toGraphQLError(limit, { requestLevel: true });
    // a body its client stopped sending and left (Node's "aborted", read by the JSON body's parser): the client's
    // doing, answered to no one, and logged as the request's CANCELLED line, not as a bug with a stack
    if (message === 'aborted' && (original as NodeJS.ErrnoException).code === 'ECONNRESET')
      return toGraphQLError(clientGone(), { path, requestLevel: !path });
    logger.error({ err: original }, 'unexpected error');
    // a field's error leaves the answer's other data, HTTP 200 (yoga would make the whole response a 500)
    const extensions = path ? { code: 'INTERNAL_SERVER_ERROR' } : { code: 'INTERNAL_SERVER_ERROR', http: { status: 500 } };
    return new GraphQLError('Unexpected error.', { path, extensions });
  };
}
