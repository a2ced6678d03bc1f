import { GraphQLError, Kind, type ASTVisitor, type FragmentDefinitionNode, type SelectionSetNode, type ValidationContext } from 'graphql';
import { ErrorCode } from '../errors.ts';

const limitError = (message: string) => new GraphQLError(message, { extensions: { code: ErrorCode.LIMIT_EXCEEDED, http: { status: 400 } } });

/**
 * Rejects operations deeper than maxDepth (fragments followed, cycles cut). Introspection (`__schema`, `__type`) is
 * not counted, as in graphql-armor: GraphiQL's own schema query is 15 levels deep, and its depth is cheap.
 */
export function depthLimitRule(maxDepth: number) {
  return (context: ValidationContext): ASTVisitor => {
    const fragments = new Map<string, FragmentDefinitionNode>();
    for (const d of context.getDocument().definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
    const depth = (set: SelectionSetNode | undefined, seen: Set<string>): number => {
      if (!set) return 0;
      let max = 0;
      for (const sel of set.selections) {
        let d = 0;
        if (sel.kind === Kind.FIELD) d = sel.name.value.startsWith('__') ? 0 : sel.selectionSet ? 1 + depth(sel.selectionSet, seen) : 1;
        else if (sel.kind === Kind.INLINE_FRAGMENT) d = depth(sel.selectionSet, seen);
        else if (!seen.has(sel.name.value)) {
          const f = fragments.get(sel.name.value);
          d = f ? depth(f.selectionSet, new Set([...seen, sel.name.value])) : 0;
        }
        if (d > max) max = d;
        if (max > maxDepth) return max;
      }
      return max;
    };
    return {
      OperationDefinition(node) {
        const d = depth(node.selectionSet, new Set());
        if (d > maxDepth) context.reportError(limitError(`query depth ${d} exceeds the limit of ${maxDepth}`));
      },
    };
  };
}

/** Rejects operations with more aliased fields than maxAliases (one request must not monopolise the engine). */
export function aliasLimitRule(maxAliases: number) {
  return (context: ValidationContext): ASTVisitor => {
    let count = 0;
    let reported = false;
    return {
      Field(node) {
        if (node.alias && ++count > maxAliases && !reported) {
          reported = true;
          context.reportError(limitError(`more than ${maxAliases} aliases in one operation`));
        }
      },
    };
  };
}
