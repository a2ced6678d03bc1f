import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeMultipart } from '../src/client/multipart.ts';
import { ROOT, fixture, modelAsset, modelFile, startGateway, type TestGateway } from './helpers.ts';

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

/**
 * README, Errors: every error carries `extensions.code` and says what to send; an error of the request as a whole is
 * its 4xx. A request /graphql cannot read (its Content-Type) was answered by yoga with an empty body.
 */
describe('a request /graphql cannot read or answer is a 4xx with a JSON error that says what to send', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
  });
  afterAll(() => gw?.close());

  const CSRF = { 'x-graphql-yoga-csrf': '1' };
  /** The answer's status, Content-Type and first error (null when its body is not JSON, or empty). */
  const answer = async (res: Response) => {
    const text = await res.text();
    let error: { message: string; extensions?: { code?: string } } | null = null;
    try {
      error = JSON.parse(text).errors[0];
    } catch {
      // an empty body
    }
    return { status: res.status, type: res.headers.get('content-type'), error, text };
  };

  it('a POST of a body /graphql does not read (or of none) is 415 naming the content types it reads', async () => {
    const cases: [string, RequestInit, string?][] = [
      ['application/xml', { headers: { 'content-type': 'application/xml' }, body: '<query>{ __typename }</query>' }],
      ['text/plain', { headers: { ...CSRF, 'content-type': 'text/plain' }, body: '{"query": "{ __typename }"}' }],
      ['no body, the query in the URL', { headers: CSRF }, '?query=%7B__typename%7D'],
    ];
    for (const [what, init, search = ''] of cases) {
      const r = await answer(await fetch(`${gw.url}/graphql${search}`, { method: 'POST', ...init }));
      expect([r.status, r.error?.extensions?.code], `${what}: ${r.text}`).toEqual([415, 'BAD_REQUEST']);
      expect(r.type, what).toMatch(/^application\/json/);
      expect(r.error!.message, what).toMatch(/application\/json/);
      expect(r.error!.message, what).toMatch(/multipart\/form-data/);
    }
    // yoga matches the type as written: the answer says how to write it
    const upper = await answer(
      await fetch(`${gw.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'Application/JSON' },
        body: '{"query": "{ __typename }"}',
      }),
    );
    expect([upper.status, upper.error?.extensions?.code], upper.text).toEqual([415, 'BAD_REQUEST']);
    expect(upper.error!.message).toMatch(/write "application\/json"/);
  });

  it('an Accept header naming no type /graphql answers in is 406 with a JSON error naming them, before anything runs', async () => {
    const post = (query: string, accept: string) =>
      fetch(`${gw.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept },
        body: JSON.stringify({ query }),
      });
    for (const accept of ['application/xml', 'text/html', 'application/json; charset=iso-8859-1']) {
      const r = await answer(await post('{ __typename }', accept));
      expect([r.status, r.error?.extensions?.code], `${accept}: ${r.text}`).toEqual([406, 'BAD_REQUEST']);
      expect(r.type, accept).toMatch(/^application\/json/);
      for (const type of ['application/json', 'application/graphql-response+json', 'text/event-stream', 'multipart/mixed'])
        expect(r.error!.message, accept).toContain(type);
    }
    // the GraphQL over HTTP spec: "respond with a 406 Not Acceptable status code and stop processing the request"; the
    // mutation was run (the model unloaded), then answered 406
    const refused = await answer(await post('mutation { unloadModel(name: "mobilenet") { name } }', 'application/xml'));
    expect([refused.status, refused.error?.extensions?.code], refused.text).toEqual([406, 'BAD_REQUEST']);
    const models = await gw.gql<{ models: { name: string; versions: { state: string }[] }[] }>('{ models { name versions { state } } }');
    expect(models.data?.models.find((m) => m.name === 'mobilenet')?.versions[0].state).toBe('AVAILABLE');
    // a subscription asked for as one JSON answer: said how to ask for its events
    const subscription = await answer(await post('subscription { modelStatus { model } }', 'application/json'));
    expect([subscription.status, subscription.error?.extensions?.code], subscription.text).toEqual([406, 'BAD_REQUEST']);
    expect(subscription.error!.message).toMatch(/Accept: text\/event-stream/);
  });

  it('a compressed body (Content-Encoding) is 415 naming the encoding, not read as if it were JSON or a form', async () => {
    const json = JSON.stringify({ query: '{ __typename }' });
    const { body: form, contentType } = encodeMultipart({ query: '{ __typename }', variables: {} }, {});
    const cases: [string, string, Uint8Array, Record<string, string>][] = [
      ['gzip', 'application/json', gzipSync(json), {}],
      ['deflate', 'application/json', deflateSync(json), {}],
      ['br', 'application/json', brotliCompressSync(json), {}],
      ['gzip', contentType, gzipSync(form), CSRF],
    ];
    for (const [encoding, type, body, headers] of cases) {
      const res = await fetch(`${gw.url}/graphql`, {
        method: 'POST',
        headers: { ...headers, 'content-type': type, 'content-encoding': encoding },
        body: new Uint8Array(body),
      });
      const r = await answer(res);
      expect([r.status, r.error?.extensions?.code], `${encoding} ${type}: ${r.text}`).toEqual([415, 'BAD_REQUEST']);
      expect(r.error!.message).toContain(`Content-Encoding: "${encoding}"`);
      expect(r.error!.message).toMatch(/uncompressed/);
      // RFC 9110: a 415 for a content coding says which codings are read
      expect(res.headers.get('accept-encoding')).toBe('identity');
    }
  });

  it('a request without a query, or with a parameter of the wrong type, is 400 whatever the Accept header', async () => {
    const url = `${gw.url}/graphql`;
    const json = (body: unknown, accept: Record<string, string>) =>
      fetch(url, { method: 'POST', headers: { ...accept, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    for (const accept of [undefined, 'application/json', 'application/graphql-response+json']) {
      const h: Record<string, string> = accept ? { accept } : {};
      const { body: multipart, contentType } = encodeMultipart({ variables: {} } as never, {});
      // yoga marked "Must provide query string." as the spec's: HTTP 200 for application/json
      const missing: [string, () => Promise<Response>][] = [
        ['a JSON body', () => json({ variables: {} }, h)],
        ['a GET', () => fetch(`${url}?variables=%7B%7D`, { headers: { ...h, ...CSRF } })],
        [
          'a form',
          () =>
            fetch(url, {
              method: 'POST',
              headers: { ...h, ...CSRF, 'content-type': 'application/x-www-form-urlencoded' },
              body: 'variables=%7B%7D',
            }),
        ],
        [
          'a multipart request',
          () => fetch(url, { method: 'POST', headers: { ...h, ...CSRF, 'content-type': contentType }, body: multipart }),
        ],
      ];
      for (const [what, send] of missing) {
        const r = await answer(await send());
        expect([r.status, r.error?.extensions?.code], `${what} without query, Accept: ${accept}: ${r.text}`).toEqual([400, 'BAD_REQUEST']);
        expect(r.error!.message, what).toMatch(/Must provide query string.*"query"/);
      }
      // the other parameters of the wrong type already were 400: kept so
      for (const body of [
        { query: 1 },
        { query: '{ __typename }', variables: 1 },
        { query: '{ __typename }', variables: [] },
        { query: '{ __typename }', operationName: 1 },
        { query: '{ __typename }', extensions: 1 },
      ]) {
        const r = await answer(await json(body, h));
        expect(r.status, `${JSON.stringify(body)}, Accept: ${accept}: ${r.text}`).toBe(400);
        expect(r.error?.extensions?.code).toBeDefined();
      }
    }
  });
});

/**
 * README, Examples: "Models at run time" is one document of three named operations (Unload, Load, Describe). Sent as
 * it is, without operationName (or with a name it does not hold), yoga answered only "Could not determine what
 * operation to execute.": nothing said that operationName picks one, where every other slip of a request says what
 * to send.
 */
describe('a document whose operation cannot be chosen says to send operationName', () => {
  let gw: TestGateway;
  let admin: string;
  beforeAll(async () => {
    const config = JSON.parse(await readFile(modelAsset('face-detection', 'model.json'), 'utf8'));
    gw = await startGateway({ models: { 'face-detection': { onnx: modelFile('face-detection'), config } } });
    const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
    admin = /```graphql\n(mutation Unload [\s\S]*?)```/.exec(readme)![1];
  });
  afterAll(() => gw?.close());

  for (const operationName of [undefined, 'Unlod']) {
    it(`operationName ${operationName ?? 'left out'}`, async () => {
      const r = await gw.gql(admin, {}, { operationName });
      expect(r.status).toBe(400);
      expect(r.errors?.[0].extensions?.code).toBe('OPERATION_RESOLUTION_FAILURE');
      expect(r.errors?.[0].message).toMatch(/operationName/);
    });
  }

  it('the one named runs', async () => {
    const r = await gw.gql(admin, {}, { operationName: 'Load' });
    expect(r.errors).toBeUndefined();
    expect(r.data.loadModel.versions[0].state).toBe('AVAILABLE');
  });
});
