import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeMultipart } from '../src/client/multipart.ts';
import { freePort, sharedRepository } from '../bench/cluster-lib.ts';
import { ROOT, image, until, untilAnswers } from './helpers.ts';

/** The drain of a rolling restart, on one process (no Redis, no load balancer needed). */
describe('drain on SIGTERM', () => {
  it('/ready turns 503 at once, requests are still served (connection: close) for DRAIN_DELAY_MS, then the process exits 0', async () => {
    const repo = await sharedRepository(['mobilenet']);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: String(port),
        HOST: '127.0.0.1',
        GRPC_PORT: 'off',
        MODEL_REPOSITORY: repo.dir,
        MODEL_POLL_INTERVAL_MS: '0',
        DRAIN_DELAY_MS: '4000',
        REPLICA_NAME: 'solo',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await untilAnswers(`${url}/ready`, 'ready');
      const ready = await (await fetch(`${url}/ready`)).json();
      expect(ready).toMatchObject({ ready: true, replica: 'solo' });
      expect(ready.cluster).toBeUndefined(); // no REDIS_URL: no bus

      child.kill('SIGTERM');
      const draining = await until(
        async () => {
          const r = await fetch(`${url}/ready`);
          return r.status === 503 && ((await r.json()) as any);
        },
        4000,
        '/ready to turn 503',
      );
      expect(draining).toMatchObject({ ready: false, draining: true });

      const { body, contentType } = encodeMultipart(
        { query: 'mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { label } } }' },
        { f: { name: 'zebra.jpeg', bytes: await readFile(image('zebra.jpeg')) } },
      );
      const res = await fetch(`${url}/graphql`, {
        method: 'POST',
        body,
        headers: { 'content-type': contentType, 'x-graphql-yoga-csrf': '1' },
      });
      expect(res.headers.get('connection')).toBe('close');
      expect((await res.json()).data.classify.predictions[0].label).toBe('zebra');
      expect(child.exitCode).toBeNull(); // still serving

      expect(await exited).toBe(0);
      const lines = stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l));
      expect(lines.find((l) => l.msg === 'draining')).toMatchObject({ signal: 'SIGTERM', drainDelayMs: 4000 });
      expect(lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['draining', 'shutting down', 'stopped']));
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await repo.remove();
    }
  });
});
