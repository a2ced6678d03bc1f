import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { freePort, sharedRepository } from '../bench/cluster-lib.ts';
import { IMAGES, ROOT, untilAnswers } from './helpers.ts';

/**
 * SIGTERM "lets the requests in flight finish" (README, Shutdown): over HTTP it does; queries and mutations sent over
 * the WebSocket ("Queries and mutations run over the WebSocket too") must be answered as well before the close.
 */
describe('drain on SIGTERM over WebSocket', () => {
  it('answers every query or mutation in flight on a WebSocket before closing it (1001)', async () => {
    const repo = await sharedRepository(['mobilenet']);
    const port = await freePort();
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: String(port),
        HOST: '127.0.0.1',
        GRPC_PORT: 'off',
        MODEL_REPOSITORY: repo.dir,
        MODEL_POLL_INTERVAL_MS: '0',
        IMAGE_ROOTS: IMAGES,
        DRAIN_DELAY_MS: '0',
      },
      stdio: ['ignore', 'ignore', 'ignore'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await untilAnswers(`http://127.0.0.1:${port}/ready`, 'ready');
      const ws = new WebSocket(`ws://127.0.0.1:${port}/graphql`, 'graphql-transport-ws');
      const answers = new Map<string, any[]>();
      const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
      ws.on('message', (d) => {
        const m = JSON.parse(String(d));
        if (m.id) answers.set(m.id, [...(answers.get(m.id) ?? []), m]);
      });
      await new Promise((r) => ws.once('open', r));
      ws.send(JSON.stringify({ type: 'connection_init' }));
      await new Promise((r) => ws.once('message', r)); // connection_ack
      const query =
        'mutation($i: [ImageInput!]!) { classifyBatch(model: "mobilenet", images: $i, topK: 1) { predictions { label } } }';
      const images = Array.from({ length: 16 }, () => ({ path: 'zebra.jpeg' }));
      const ids = ['a', 'b', 'c', 'd', 'e', 'f'];
      for (const id of ids) ws.send(JSON.stringify({ id, type: 'subscribe', payload: { query, variables: { i: images } } }));
      await new Promise((r) => setTimeout(r, 100));
      child.kill('SIGTERM');
      expect(await closed).toBe(1001);
      for (const id of ids) {
        const got = answers.get(id) ?? [];
        expect({ id, types: got.map((m) => m.type) }).toEqual({ id, types: ['next', 'complete'] });
        expect(got[0].payload.data.classifyBatch.map((c: any) => c.predictions[0].label)).toEqual(images.map(() => 'zebra'));
      }
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await repo.remove();
    }
  }, 60_000);
});
