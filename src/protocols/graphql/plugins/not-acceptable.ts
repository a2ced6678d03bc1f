import type { ExecutionResult } from 'graphql';
import { isAsyncIterable, processRegularResult, type Plugin } from 'graphql-yoga';
import { quoted } from '../../../errors.ts';
import { badRequest } from '../errors.ts';
import { noteErrorCodes } from '../../../log.ts';

/** The media types yoga's result processors answer in: a query or mutation in any of them, a subscription in a stream. */
const ANSWERS = ['application/graphql-response+json', 'application/json', 'text/event-stream', 'multipart/mixed'];

/** The media types an Accept header names, read as yoga reads them: none is any, a charset other than UTF-8 is none. */
function named(accept: string | null): string[] {
  return (accept || '*/*')
    .replace(/\s/g, '')
    .toLowerCase()
    .split(',')
    .flatMap((entry) => {
      const [type, ...params] = entry.split(';');
      return (params.find((p) => p.includes('charset=')) ?? 'charset=utf-8') === 'charset=utf-8' ? [type] : [];
    });
}

const matches = (asked: string, type: string) => {
  const [askedType, askedSub] = asked.split('/');
  const [mainType, subType] = type.split('/');
  return (askedType === '*' || askedType === mainType) && (askedSub === '*' || askedSub === subType);
};

const refusal = (message: string) => badRequest(406, message);

const notAcceptable = (accept: string | null) =>
  refusal(
    `/graphql answers in application/graphql-response+json, application/json, text/event-stream (server-sent events) or multipart/mixed, in UTF-8, and Accept: ${quoted(accept ?? '')} names none of them: accept application/json (or send no Accept header)`,
  );

const streamOnly = (accept: string | null) =>
  refusal(
    `a subscription answers as a stream of events, and Accept: ${quoted(accept ?? '')} names no stream type: send Accept: text/event-stream (server-sent events), or subscribe over WebSocket (graphql-ws) at /graphql`,
  );

/**
 * A request whose Accept header names no type /graphql answers in: yoga ran its operation (a mutation did its work),
 * then answered 406 with an empty body. It is refused before its body is read, as the GraphQL over HTTP spec has it
 * ("respond with a 406 Not Acceptable status code and stop processing the request"); a subscription (known to be one
 * only once it runs) whose Accept names no stream type is ended by useUnansweredStreams. Either is answered 406
 * BAD_REQUEST with a JSON error naming what to accept: the list of choices RFC 9110 asks of a 406, in the one type
 * every other error of /graphql comes in. A request refused before it ran (a token, the CSRF header), which yoga
 * answered with the same empty 406, keeps its own error and status, as JSON too. Last of the plugins: it chooses over
 * the others' parsers, and it sees the result once every other one has chosen no way to answer it.
 */
export function useNotAcceptable(): Plugin {
  return {
    onRequestParse({ request, setRequestParser }) {
      const accept = request.headers.get('accept');
      if (named(accept).some((asked) => ANSWERS.some((type) => matches(asked, type)))) return;
      const refused = notAcceptable(accept);
      setRequestParser(() => {
        throw refused;
      });
    },
    onResultProcess({ request, resultProcessor, setResultProcessor }) {
      if (resultProcessor) return;
      setResultProcessor((result, fetchAPI) => {
        // a request refused before it ran (a token, the CSRF header, this plugin's parser): its own error and status
        const r = result as ExecutionResult;
        if (!isAsyncIterable(result) && r.data === undefined && r.errors?.length)
          return processRegularResult(result, fetchAPI, 'application/json');
        noteErrorCodes(['BAD_REQUEST']);
        const accept = request.headers.get('accept');
        return processRegularResult(
          { errors: [isAsyncIterable(result) ? streamOnly(accept) : notAcceptable(accept)] },
          fetchAPI,
          'application/json',
        );
      }, 'application/json');
    },
  };
}
