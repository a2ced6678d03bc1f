import type { Plugin } from 'graphql-yoga';
import { isGatewayError } from '../../../errors.ts';
import { accessFor, type Tokens } from '../../../inference/access.ts';
import { toGraphQLError } from '../errors.ts';

/** API_TOKENS: every GraphQL request over HTTP carries one (WebSocket connections are checked in websocket.ts). */
export function useApiTokens(tokens: Tokens): Plugin {
  return {
    onRequestParse({ request }) {
      try {
        accessFor(request.headers.get('authorization'), tokens).checkApi();
      } catch (e) {
        throw isGatewayError(e) ? toGraphQLError(e, { requestLevel: true }) : e;
      }
    },
  };
}
