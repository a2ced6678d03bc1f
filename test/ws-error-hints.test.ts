import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { fixture, openGraphqlWs, startGateway, until, type TestGateway } from './helpers.ts';

/** A request's mistakes say what to do over WebSocket as over HTTP (withHint): the same document, the same words. */
describe('error hints over WebSocket', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
  });
  afterAll(() => gw?.close());

  it.each([
    [
      'an inference field asked in a query',
      '{ classify(model: "mobilenet", image: { base64: "AA" }) { predictions { label } } }',
      undefined,
    ],
    ['two operations without operationName', 'query A { models { name } } query B { models { name } }', undefined],
    ['an operationName naming no operation', 'query A { models { name } }', 'Z'],
    ['the Upload scalar', 'query ($f: Upload!) { m: model(name: "x") { name } q: models { name } }', undefined],
  ])('%s', async (_, query, operationName) => {
    const http = await gw.gql(query, {}, { operationName });
    const { ws, messages } = await openGraphqlWs<{ id?: string; type: string; payload?: unknown }>(gw.url);
    ws.send(JSON.stringify({ id: '1', type: 'subscribe', payload: { query, operationName } }));
    const answer = await until(() => messages.find((m) => m.id === '1' && m.type !== 'complete'), 5000, 'an answer');
    const errors = (answer.type === 'error' ? answer.payload : (answer.payload as { errors: unknown[] }).errors) as { message: string }[];
    expect(errors.map((e) => e.message)).toEqual(http.errors?.map((e) => e.message));
    ws.close();
  });
});

/**
 * A client that does not speak graphql-transport-ws (Apollo's old subscriptions-transport-ws, whose subprotocol is
 * "graphql-ws"; a hand-written client that names none) is told which protocol to speak: it got a handshake without the
 * subprotocol it asked for, which browsers and ws fail as an opaque 1006.
 */
describe('a WebSocket client of another subprotocol', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
  });
  afterAll(() => gw?.close());

  const closeOf = (protocols: string[]) =>
    new Promise<{ code: number; reason: string; protocol: string }>((resolve, reject) => {
      const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/graphql`, protocols);
      ws.on('error', reject);
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString(), protocol: ws.protocol }));
    });

  it.each([
    [['graphql-ws'], /^graphql-ws \(subscriptions-transport-ws\) is not spoken here: use graphql-transport-ws/],
    [['mqtt', 'v2.graphql'], /^mqtt, v2\.graphql: not spoken here: use the graphql-transport-ws subprotocol/],
    [[], /^no subprotocol: ask for graphql-transport-ws/],
  ])('%j: closed with 4406 saying which to speak', async (protocols, reason) => {
    const closed = await closeOf(protocols);
    expect(closed.code).toBe(4406);
    expect(closed.reason).toMatch(reason);
    // nothing was held for it: the server serves as before
    expect((await gw.gql('{ models { name } }')).data.models).toHaveLength(1);
  });
});
