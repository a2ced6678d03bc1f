import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture, startGateway, type TestGateway } from './helpers.ts';

/**
 * CORS_ORIGINS names the only origins a browser page may call from. With two or more of them, an origin that is not
 * listed got `Access-Control-Allow-Origin: null` with `Access-Control-Allow-Credentials: true` (whatwg-node's answer
 * for an unlisted origin), and `null` is the origin of every sandboxed frame (`<iframe sandbox="allow-scripts">`),
 * of data: URLs and of file: pages: any page on the web could run queries and inference through its visitors'
 * browsers and read the answers, as if it were listed.
 */
describe('CORS_ORIGINS with several origins', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: { mobilenet: fixture('mobilenet') },
      env: { CORS_ORIGINS: 'https://app.example,https://admin.example' },
    });
  });
  afterAll(() => gw?.close());

  const preflight = (origin: string) =>
    fetch(`${gw.url}/graphql`, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' },
    });
  const post = (origin: string) =>
    fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { origin, 'content-type': 'application/json' },
      body: JSON.stringify({ query: '{ models { name } }' }),
    });

  it('a listed origin is allowed, by name', async () => {
    for (const origin of ['https://app.example', 'https://admin.example']) {
      expect((await preflight(origin)).headers.get('access-control-allow-origin')).toBe(origin);
      const res = await post(origin);
      expect(res.headers.get('access-control-allow-origin')).toBe(origin);
      expect(res.headers.get('vary') ?? '').toMatch(/origin/i);
    }
  });

  it('a sandboxed frame (Origin: null) of any page is not allowed: no preflight passes, no answer is readable', async () => {
    const pre = await preflight('null');
    const allowed = (h: Headers) => h.get('access-control-allow-origin');
    // a browser lets the page read the answer when this header is "null" (or "*"), the origin it sent
    expect(allowed(pre.headers)).not.toBe('null');
    const res = await post('null');
    expect(allowed(res.headers)).not.toBe('null');
  });

  it('an unlisted origin gets no Access-Control-Allow-Origin at all', async () => {
    for (const origin of ['https://evil.example', 'null']) {
      expect((await preflight(origin)).headers.get('access-control-allow-origin'), origin).toBeNull();
      expect((await post(origin)).headers.get('access-control-allow-origin'), origin).toBeNull();
    }
  });
});
