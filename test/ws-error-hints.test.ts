import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
