import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { fixture, openGraphqlWs, startGateway, until, type TestGateway } from './helpers.ts';

/**
 * A WebSocket client that sends operations and reads none of their answers: each answer is held in the server's memory
 * until the network takes it. Past a message's worth held for a connection (MAX_WS_MESSAGE_BYTES) the server stops
 * reading it, and its queries and mutations wait; before, those read in already all ran and held their answers (h55:
 * ~65 MB per connection with 1 MB answers, 1.4 GB for 16 connections of one client).
 */
describe('WebSocket answers a client does not read', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
  });
  afterAll(() => gw?.close());

  const unsent = async () =>
    Number(/^gateway_websocket_unsent_bytes (\d+)/m.exec(await (await fetch(`${gw.url}/metrics`)).text())?.[1] ?? NaN);

  it('are held up to a few answers past a message worth; once it reads, every operation is answered', async () => {
    const { ws, messages } = await openGraphqlWs<{ id?: string; type: string }>(gw.url);
    // about 1.5 MB per answer: 64 copies of mobilenet's thousand labels
    const query = `{ ${Array.from({ length: 64 }, (_, i) => `a${i}: models { labels }`).join(' ')} }`;
    const socket = (ws as unknown as { _socket: Socket })._socket;
    socket.pause(); // the client reads nothing more
    const N = 30;
    for (let i = 0; i < N; i++) ws.send(JSON.stringify({ id: `q${i}`, type: 'subscribe', payload: { query } }));
    let most = 0;
    for (let t = 0; t < 20; t++) {
      most = Math.max(most, await unsent());
      await new Promise((r) => setTimeout(r, 100));
    }
    // the network's buffers take some; past the 1 MB of a message, the 8 queries that may run at once (as over HTTP)
    expect(most).toBeGreaterThan(1024 * 1024); // (it is behind: the test holds what it means to)
    expect(most).toBeLessThan(8 * 1.6 * 1024 * 1024 + 1024 * 1024);
    socket.resume();
    await until(async () => messages.filter((m) => m.type === 'complete').length === N, 30_000, 'every answer');
    expect(messages.filter((m) => m.type === 'next').length).toBe(N);
    expect(await unsent()).toBe(0);
    ws.close();
  }, 60_000);
});
