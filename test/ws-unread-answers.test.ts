import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { fixture, openGraphqlWs, startGateway, until, type TestGateway } from './helpers.ts';
import { slowModel, slowModelInput } from './onnx-builder.ts';

/**
 * A WebSocket client that sends operations and reads none of their answers: each answer is held in the server's memory
 * until the network takes it. Past a message's worth held for a connection (MAX_WS_MESSAGE_BYTES) the server stops
 * reading it, and its queries and mutations wait; before, those read in already all ran and held their answers (h55:
 * ~65 MB per connection with 1 MB answers, 1.4 GB for 16 connections of one client).
 */
describe('WebSocket answers a client does not read', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: {
        mobilenet: fixture('mobilenet'),
        slow: { onnx: slowModel(), config: { task: 'raw', batching: { maxBatchSize: 1, maxQueueSize: 64 } } },
      },
    });
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

  it('an operation waiting its turn behind 8 running is let go at once when its client completes it (its id free again)', async () => {
    const { ws, messages } = await openGraphqlWs<{ id?: string; type: string; payload?: any }>(gw.url);
    const slow = `mutation($d: String!) { infer(model: "slow", inputs: [{ name: "shape", dtype: INT64, shape: [1, 2], data: $d }]) { outputs { name } } }`;
    const send = (id: string, query: string, variables?: object) =>
      ws.send(JSON.stringify({ id, type: 'subscribe', payload: { query, variables } }));
    for (let i = 0; i < 8; i++) send(`s${i}`, slow, { d: slowModelInput(2000) });
    send('w', slow, { d: slowModelInput(2000) }); // the ninth waits
    await new Promise((r) => setTimeout(r, 100));
    ws.send(JSON.stringify({ id: 'w', type: 'complete' }));
    send('w', '{ models { name } }');
    await until(
      async () => messages.some((m) => (m.id === 'w' && m.type !== 'next') || (m.id === 'w' && m.payload?.data)),
      10_000,
      'an answer to w',
    );
    const first = messages.find((m) => m.id === 'w')!;
    // answered, not refused as an id still in use, and before the eight ahead of it are done
    expect(first).toMatchObject({ type: 'next', payload: { data: { models: [{ name: 'mobilenet' }, { name: 'slow' }] } } });
    expect(messages.filter((m) => m.id?.startsWith('s') && m.type === 'complete').length).toBeLessThan(8);
    await until(async () => messages.filter((m) => m.id?.startsWith('s') && m.type === 'complete').length === 8, 60_000, 'the eight');
    ws.close();
  }, 90_000);
});
