import { GraphQLError } from 'graphql';
import { DateTimeResolver, JSONResolver } from 'graphql-scalars';
import { builder } from './builder.ts';

builder.addScalarType('JSON', JSONResolver);
builder.addScalarType('DateTime', DateTimeResolver);

builder.scalarType('File', {
  description: 'A file sent by the GraphQL multipart request spec (input only).',
  serialize: () => {
    throw new GraphQLError('File is an input-only scalar');
  },
  parseValue: (v) => {
    // yoga hands over its own File implementation (not always the global class): check the shape
    const f = v as { arrayBuffer?: unknown } | null;
    if (!f || typeof f !== 'object' || typeof f.arrayBuffer !== 'function')
      throw new GraphQLError(
        'File: expected an uploaded file (a part of a GraphQL multipart request); an image sent as text goes in image: { base64: "..." } instead',
      );
    return v as File;
  },
});
