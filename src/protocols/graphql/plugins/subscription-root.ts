import { GraphQLError, Kind, type SelectionSetNode, type ValidationContext, type ASTVisitor } from 'graphql';
import type { Plugin } from 'graphql-yoga';

/**
 * A subscription's root field may not be skipped (`@skip`, `@include` on it or on a fragment that holds it): the
 * GraphQL specification's rule (graphql-js 17's SingleFieldSubscriptionsRule; graphql-js 16 and graphql-tools' executor
 * lack it). Without it the executor found no root field and threw a TypeError: a 500 and an error logged as a bug on
 * every such request; and a skip by a variable was refused over SSE as a variable "not provided", taken over WebSocket.
 */
export function useSubscriptionRootRule(): Plugin {
  return {
    onValidate({ addValidationRule }) {
      addValidationRule(subscriptionRootRule);
    },
  };
}

const CONDITIONAL = new Set(['skip', 'include']);

export function subscriptionRootRule(context: ValidationContext): ASTVisitor {
  return {
    OperationDefinition(node) {
      if (node.operation !== 'subscription') return;
      const seen = new Set<string>();
      const conditional = (set: SelectionSetNode): boolean =>
        set.selections.some((s) => {
          if (s.directives?.some((d) => CONDITIONAL.has(d.name.value))) return true;
          if (s.kind === Kind.INLINE_FRAGMENT) return conditional(s.selectionSet);
          if (s.kind === Kind.FRAGMENT_SPREAD && !seen.has(s.name.value)) {
            seen.add(s.name.value);
            const fragment = context.getFragment(s.name.value);
            return fragment ? conditional(fragment.selectionSet) : false;
          }
          return false;
        });
      if (conditional(node.selectionSet))
        context.reportError(
          new GraphQLError(
            `${node.name ? `Subscription "${node.name.value}"` : 'Anonymous Subscription'} must not use \`@skip\` or \`@include\` directives in the top level selection.`,
            { nodes: node },
          ),
        );
    },
  };
}
