import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture, startGateway, type TestGateway } from './helpers.ts';

/**
 * README, Errors: "an error of the request as a whole (a limit, a token, variables of the wrong type, a body that is
 * not JSON) is its 4xx or 5xx"; limits.ts: "A refused document is HTTP 400 LIMIT_EXCEEDED", whatever the Accept
 * header. The depth, alias, cost and directive limits are; MAX_QUERY_TOKENS was HTTP 200 for a client that takes
 * application/json (curl's default), as yoga marks every parse error "as the spec says".
 */
describe('a document refused for a limit is HTTP 400 whatever the Accept header', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, env: { MAX_QUERY_TOKENS: '1000' } });
  });
  afterAll(() => gw?.close());

  const post = (query: string, accept?: string) =>
    fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(accept ? { accept } : {}) },
      body: JSON.stringify({ query }),
    });

  for (const accept of [undefined, 'application/json', 'application/graphql-response+json']) {
    it(`MAX_QUERY_TOKENS (Accept: ${accept ?? 'none'})`, async () => {
      const res = await post(`{ ${'__typename '.repeat(1001)}}`, accept);
      const body = (await res.json()) as { errors: { message: string; extensions: { code: string } }[] };
      expect(body.errors[0].extensions.code).toBe('LIMIT_EXCEEDED');
      expect(body.errors[0].message).toMatch(/Token limit of 1000/);
      expect(res.status).toBe(400);
    });

    it(`MAX_ALIASES, for comparison (Accept: ${accept ?? 'none'})`, async () => {
      const res = await post(`{ ${Array.from({ length: 65 }, (_, i) => `a${i}: models { name }`).join(' ')} }`, accept);
      expect(((await res.json()) as any).errors[0].extensions.code).toBe('LIMIT_EXCEEDED');
      expect(res.status).toBe(400);
    });
  }
});
