// The benchmark's own requests still mean what it reports: its protocol-alone upload is answered without an error
// by the gateway (a map check once refused it, and the protocol's cost came out NaN in a full run) and by each
// baseline of `npm run bench:protocol`, which answer the same thing.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeMultipart } from '../src/client/multipart.ts';
import { PROTOCOL_ALONE_QUERY, mobilenetConfig } from '../bench/requests.ts';
import { IMAGES, ROOT, fixture, startGateway, type TestGateway } from './helpers.ts';

async function upload(url: string): Promise<{ status: number; body: unknown }> {
  const bytes = await readFile(path.join(IMAGES, 'airliner.jpeg'));
  const { body, contentType } = encodeMultipart(
    { query: PROTOCOL_ALONE_QUERY, variables: { f: null } },
    { f: { name: 'airliner.jpeg', bytes } },
  );
  const res = await fetch(`${url}/graphql`, { method: 'POST', body, headers: { 'content-type': contentType, 'x-graphql-yoga-csrf': '1' } });
  return { status: res.status, body: await res.json() };
}

/** A baseline server of bench/protocol/ on an ephemeral port (it prints "ready <port>"). */
async function startBaseline(name: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench', 'protocol', `${name}.ts`), '0'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      const m = /ready (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`${name}.ts exited (${code})`)));
  });
  return { url: `http://127.0.0.1:${port}`, child };
}

describe('the benchmark requests', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: { ...fixture('mobilenet'), config: mobilenetConfig({ maxBatchSize: 16 }) } } });
  });
  afterAll(async () => gw?.close());

  it('the protocol-alone upload is answered by the gateway without inference and without an error', async () => {
    expect(await upload(gw.url)).toEqual({ status: 200, body: { data: { __typename: 'Mutation' } } });
  });

  for (const name of ['yoga', 'lean', 'bare'])
    it(`bench/protocol/${name}.ts answers it as the gateway does`, async () => {
      const { url, child } = await startBaseline(name);
      try {
        expect(await upload(url)).toEqual({ status: 200, body: { data: { __typename: 'Mutation' } } });
      } finally {
        child.kill('SIGTERM');
      }
    });
});
