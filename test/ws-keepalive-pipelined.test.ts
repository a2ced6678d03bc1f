import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { fixture, openGraphqlWs, startGateway, until, type TestGateway } from './helpers.ts';

/**
 * WS_KEEPALIVE_MS against a client that pipelines operations: it reads every answer and its WebSocket library answers
 * each ping at once, but its pong travels behind the operations it sent before, which the server reads one per turn
 * of the event loop. The pong is read late, and the connection must not be taken for a dead one.
 */
describe('WebSocket keep-alive and a client whose pong waits behind its own operations', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, env: { WS_KEEPALIVE_MS: '500' } });
  });
  afterAll(() => gw?.close());

  it('a client that reads everything and answers every ping is not cut off (1006) with operations unanswered', async () => {
    const { ws, messages } = await openGraphqlWs<{ id?: string; type: string }>(gw.url);
    let closed: { code: number; reason: string } | null = null;
    ws.on('close', (code, reason) => (closed = { code, reason: String(reason) }));
    const N = 6000;
    for (let i = 0; i < N; i++) ws.send(JSON.stringify({ id: `q${i}`, type: 'subscribe', payload: { query: '{ models { name } }' } }));
    await until(() => closed !== null || messages.filter((m) => m.type === 'complete').length === N, 60_000, 'every answer or a close');
    expect(closed).toBeNull();
    expect(messages.filter((m) => m.type === 'complete').length).toBe(N);
    expect(ws.readyState).toBe(WebSocket.OPEN);
    ws.close();
  }, 90_000);
});
