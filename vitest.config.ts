import { defineConfig } from 'vitest/config';

export default defineConfig({
  // Node resolves graphql to its CommonJS build (package "main"), vite to its ESM build ("module"): pin one, or
  // GraphQLError from yoga and from our code would be different classes.
  resolve: { alias: [{ find: /^graphql$/, replacement: 'graphql/index.js' }] },
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // 2-core machines: two files at a time, each with its own gateway and ONNX Runtime sessions
    maxWorkers: 2,
    reporters: ['default'],
  },
});
