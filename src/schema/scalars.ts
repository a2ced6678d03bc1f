import { GraphQLError, Kind, type ValueNode } from 'graphql';
import { builder } from './builder.ts';

function literal(node: ValueNode, variables?: Record<string, unknown> | null): unknown {
  switch (node.kind) {
    case Kind.STRING: case Kind.BOOLEAN: return node.value;
    case Kind.INT: case Kind.FLOAT: return Number(node.value);
    case Kind.NULL: return null;
    case Kind.LIST: return node.values.map((v) => literal(v, variables));
    case Kind.OBJECT: return Object.fromEntries(node.fields.map((f) => [f.name.value, literal(f.value, variables)]));
    case Kind.VARIABLE: return variables?.[node.name.value];
    default: return undefined;
  }
}

builder.scalarType('JSON', {
  description: 'Any JSON value.',
  serialize: (v) => v,
  parseValue: (v) => v,
  parseLiteral: (node, variables) => literal(node, variables),
});

builder.scalarType('File', {
  description: 'A file sent by the GraphQL multipart request spec (input only).',
  serialize: () => {
    throw new GraphQLError('File is an input-only scalar');
  },
  parseValue: (v) => {
    // yoga hands over its own File implementation (not always the global class): check the shape
    const f = v as { arrayBuffer?: unknown; name?: unknown } | null;
    if (!f || typeof f !== 'object' || typeof f.arrayBuffer !== 'function') {
      throw new GraphQLError('File: expected an uploaded file (GraphQL multipart request)');
    }
    return v as File;
  },
});

builder.scalarType('DateTime', {
  description: 'An ISO-8601 date-time string.',
  serialize: (v) => v.toISOString(),
  parseValue: (v) => {
    const d = new Date(String(v));
    if (Number.isNaN(d.getTime())) throw new GraphQLError('DateTime: not a date');
    return d;
  },
});
