/**
 * Baseline for `npm run bench:protocol`, not the product: a minimal yoga server taking the same multipart upload as the
 * gateway (a `File` in a mutation's input), yoga's defaults but for what the gateway turns off too (its body-limit
 * stream, logging, GraphiQL). What yoga and whatwg-node cost with none of the gateway's plugins.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createSchema, createYoga } from 'graphql-yoga';

const yoga = createYoga({
  schema: createSchema({
    typeDefs: /* GraphQL */ `
      scalar File
      type Prediction {
        classId: Int
      }
      type Classification {
        predictions: [Prediction!]!
      }
      input ImageInput {
        file: File
      }
      type Query {
        ok: Boolean
      }
      type Mutation {
        classify(model: String!, image: ImageInput!): Classification
      }
    `,
    resolvers: { Mutation: { classify: () => null } },
  }),
  maxRequestBodySize: false,
  logging: false,
  graphiql: false,
  landingPage: false,
});
const server = createServer(yoga).listen(Number(process.argv[2]), '127.0.0.1', () =>
  console.log(`ready ${(server.address() as AddressInfo).port}`),
);
process.once('SIGTERM', () => server.close(() => process.exit(0)));
