import type { GraphQLError, ValidationContext } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { maxAliasesRule } from '@escape.tech/graphql-armor-max-aliases';
import { maxDepthRule } from '@escape.tech/graphql-armor-max-depth';
import { costLimitRule } from '@escape.tech/graphql-armor-cost-limit';
import { maxDirectivesRule } from '@escape.tech/graphql-armor-max-directives';
import { maxTokensPlugin } from '@escape.tech/graphql-armor-max-tokens';
import { limitError } from '../errors.ts';

/** A document past MAX_QUERY_BYTES, checked before it is parsed (over HTTP here, over WebSocket in websocket.ts). */
export function documentTooLarge(query: unknown, maxBytes: number): GraphQLError | null {
  const size = typeof query === 'string' ? Buffer.byteLength(query) : 0;
  return size > maxBytes ? limitError(`the GraphQL document is ${size} bytes; the limit is ${maxBytes} (MAX_QUERY_BYTES)`) : null;
}

export interface DocumentLimits {
  /** Largest document text (variables are not counted: base64 images may be large). */
  maxBytes?: number;
  maxDepth?: number;
  maxAliases?: number;
  maxTokens?: number;
  maxCost?: number;
  maxDirectives?: number;
}

/**
 * Limits on the document, counted by graphql-armor as the operation will execute: fragments are expanded every time
 * they are spread, so a fragment cannot hide aliases or depth. Introspection is not counted (GraphiQL's own schema
 * query is deeper than any limit a server would set, and cheap). A refused document is HTTP 400 LIMIT_EXCEEDED.
 */
export function useDocumentLimits({
  maxBytes = 100_000,
  maxDepth = 12,
  maxAliases = 64,
  maxTokens = 5000,
  maxCost = 5000,
  maxDirectives = 50,
}: DocumentLimits = {}): Plugin {
  // armor's words, and the setting that raises the limit ("Aliases limit of 64 exceeded, found 70." named none)
  const strip = (e: GraphQLError, setting?: string) =>
    setting ? `${e.message.replace(/^Syntax Error: /, '').replace(/\.$/, '')} (${setting})` : e.message.replace(/^Syntax Error: /, '');
  // armor's rules throw a GraphQLError without a code; report ours instead
  const report = (setting?: string) => ({
    propagateOnRejection: false,
    onReject: [(ctx: ValidationContext | null, e: GraphQLError) => ctx?.reportError(limitError(strip(e, setting)))],
  });
  const tokens = maxTokensPlugin({
    n: maxTokens,
    propagateOnRejection: true,
    onReject: [
      (_: unknown, e: GraphQLError) => {
        throw limitError(strip(e, 'MAX_QUERY_TOKENS'));
      },
    ],
  });
  return {
    // before the document is parsed (or looked up in the parse cache)
    onParams({ params }) {
      const tooLarge = documentTooLarge(params.query, maxBytes);
      if (tooLarge) throw tooLarge;
    },
    onParse: tokens.onParse as Plugin['onParse'],
    onValidate({ addValidationRule }) {
      addValidationRule(maxDepthRule({ n: maxDepth, flattenFragments: true, ...report('MAX_QUERY_DEPTH') }));
      addValidationRule(maxAliasesRule({ n: maxAliases, ...report('MAX_ALIASES') }));
      addValidationRule(costLimitRule({ maxCost, ...report('MAX_QUERY_COST') }));
      addValidationRule(maxDirectivesRule({ n: maxDirectives, ...report() }));
    },
  };
}
