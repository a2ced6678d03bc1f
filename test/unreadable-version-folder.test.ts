import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, addModel, fixture, modelFile, until, untilAnswers } from './helpers.ts';

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });

/** The server as npm start runs it, not as root (as root, it runs as nobody), on `root`. */
async function serverAsUser(root: string) {
  const port = await freePort();
  const node = [process.execPath, '--import', 'tsx', path.join(ROOT, 'src', 'main.ts')];
  const [cmd, ...args] = process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...node] : node;
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, HOME: os.tmpdir(), PORT: String(port), GRPC_PORT: 'off', MODEL_REPOSITORY: root, MODEL_POLL_INTERVAL_MS: '100' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.once('exit', r));
  const url = `http://127.0.0.1:${port}`;
  try {
    await untilAnswers(`${url}/ready`, 'server ready');
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${(e as Error).message}: ${stderr.slice(-500)}`);
  }
  return {
    gql: async (query: string) =>
      (
        (await (
          await fetch(`${url}/graphql`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ query }),
          })
        ).json()) as { data: { model: { configurationError: string | null; versions: { version: number; state: string }[] } } }
      ).data,
    stop: async () => {
      child.kill('SIGINT');
      await exited;
      return stderr;
    },
  };
}

describe('a version folder the server may not enter (copied in under umask 077)', () => {
  it('leaves the rest of the model reconciled: a newer version beside it loads', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'gw-h51-'));
    await chmod(root, 0o755);
    await addModel(root, 'mobilenet', fixture('mobilenet'));
    const server = await serverAsUser(root);
    const dir = path.join(root, 'mobilenet');
    const model = async () => (await server.gql(`{ model(name: "mobilenet") { configurationError versions { version state } } }`)).model;
    try {
      // someone with umask 077 copies version 2 in: its folder is drwx------, not the server's
      await mkdir(path.join(dir, '.2'), { mode: 0o700 });
      await writeFile(path.join(dir, '.2', 'model.onnx'), await readFile(modelFile('mobilenet')), { mode: 0o600 });
      await rename(path.join(dir, '.2'), path.join(dir, '2'));
      // and version 3, readable
      await mkdir(path.join(dir, '.3'));
      await writeFile(path.join(dir, '.3', 'model.onnx'), await readFile(modelFile('mobilenet')));
      await rename(path.join(dir, '.3'), path.join(dir, '3'));
      // the model's folder reads fine; it said "mobilenet: its folder cannot be read (permission denied)" and froze the
      // whole model: version 3 never loaded (nor would a removed version unload)
      await until(
        async () => (await model()).versions.some((v) => v.version === 3 && v.state === 'AVAILABLE'),
        10_000,
        `version 3 AVAILABLE (${JSON.stringify(await model())})`,
      );
      // what to do names the folder to open up, and is still said after model.json is read again (it was cleared for good)
      expect((await model()).configurationError).toMatch(/mobilenet\/2: .*cannot be read \(permission denied\)/);
      const later = new Date(Date.now() + 2000);
      await utimes(path.join(dir, 'model.json'), later, later);
      await new Promise((r) => setTimeout(r, 1000)); // several scans
      expect((await model()).configurationError).toMatch(/mobilenet\/2: .*cannot be read/);
      await chmod(path.join(dir, '2'), 0o755);
      await until(async () => (await model()).configurationError === null, 10_000, 'the error gone once the folder reads');
    } finally {
      expect(await server.stop()).not.toMatch(/unhandled/);
      await rm(root, { recursive: true, force: true });
    }
  }, 40_000);
});
