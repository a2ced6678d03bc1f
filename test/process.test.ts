import { spawn } from 'node:child_process';
import { createKserveGrpcClient } from '../src/client/kserve-grpc.ts';
import net from 'node:net';
import path from 'node:path';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import { encodeMultipart } from '../src/client/multipart.ts';
import { ROOT, image, until, untilAnswers } from './helpers.ts';

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });

describe('the server process (as npm start runs it)', () => {
  it('warns on a public bind without ADMIN_TOKEN; on SIGTERM finishes requests, completes subscriptions and exits 0', async () => {
    const port = await freePort();
    const grpcPort = await freePort();
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: String(port),
        GRPC_PORT: String(grpcPort),
        HOST: '0.0.0.0',
        MODEL_REPOSITORY: path.join(ROOT, 'models'),
        MODEL_POLL_INTERVAL_MS: '0',
        // long enough for the work in flight on a busy CI machine; what is measured is that nothing waits for it
        SHUTDOWN_TIMEOUT_MS: '30000',
        DRAIN_DELAY_MS: '200',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const url = `http://127.0.0.1:${port}`;
    try {
      await untilAnswers(`${url}/ready`, 'server ready');
      expect(stderr).toMatch(/without ADMIN_TOKEN/);
      const lines = stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l));
      expect(lines.some((l) => l.msg === 'model version state' && l.to === 'AVAILABLE' && l.model === 'text-detection')).toBe(true);

      // subscriptions over SSE and WebSocket
      const sse = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ query: 'subscription { modelStatus { model state } }' }),
      });
      const sseDone = (async () => {
        let text = '';
        for await (const chunk of sse.body as unknown as AsyncIterable<Uint8Array>) text += Buffer.from(chunk).toString();
        return text;
      })();
      const ws = createClient({ url: `ws://127.0.0.1:${port}/graphql`, webSocketImpl: WebSocket, retryAttempts: 0 });
      const wsDone = new Promise<string>((resolve) =>
        ws.subscribe(
          { query: 'subscription { modelStatus { model } }' },
          { next: () => {}, error: (e) => resolve(`error ${String((e as any)?.code ?? e)}`), complete: () => resolve('complete') },
        ),
      );
      await new Promise((r) => setTimeout(r, 200));

      // slow requests in flight
      const page = await readFile(image('east_ocr_input.jpg'));
      const upload = encodeMultipart(
        { query: 'mutation($f: File!) { segment(model: "text-detection", image: { file: $f }) { regions(minPixels: 20) { pixels } } }' },
        { f: { name: 'page.jpg', bytes: page } },
      );
      const segment = () =>
        fetch(`${url}/graphql`, {
          method: 'POST',
          body: upload.body,
          headers: { 'content-type': upload.contentType, 'x-graphql-yoga-csrf': '1' },
        }).then((r) => r.json());
      const inflight = Array.from({ length: 4 }, segment);
      // and one over KServe v2 gRPC (npm start serves it on GRPC_PORT): SIGTERM drains it too
      const grpc = createKserveGrpcClient(`127.0.0.1:${grpcPort}`);
      const grpcInflight = grpc.ModelInfer({
        model_name: 'text-detection',
        inputs: [{ name: 'x', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [page] } }],
      });
      await new Promise((r) => setTimeout(r, 150));
      const t0 = Date.now();
      child.kill('SIGTERM');

      const answers = (await Promise.all(inflight)) as any[];
      for (const a of answers) {
        expect(a.errors).toBeUndefined();
        expect(a.data.segment.regions).toHaveLength(8);
      }
      const grpcAnswer = await grpcInflight;
      expect(grpcAnswer.outputs[0]).toMatchObject({ datatype: 'FP32' });
      expect(await exited).toBe(0);
      await expect(grpc.ServerLive()).rejects.toMatchObject({ code: 14 }); // UNAVAILABLE: the port is closed
      grpc.close();
      // the subscriptions and idle connections did not hold the exit until the shutdown timeout forced it
      expect(Date.now() - t0).toBeLessThan(30_000);
      expect(stderr).not.toMatch(/shutdown timed out/);
      expect(await sseDone).toMatch(/event: complete/);
      expect(await wsDone).toMatch(/complete|error 1001/);
      await ws.dispose();
      expect(stderr).toMatch(/"msg":"stopped"/);
      // every version unloaded on the way out
      expect(stderr).toMatch(/"model":"text-detection","version":1,"from":"UNLOADING","to":"END"/);
      await expect(fetch(`${url}/health`)).rejects.toThrow();
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 120_000);

  it('npm start itself: SIGTERM to npm reaches the server, which drains and exits 0 (no server left behind)', async () => {
    const port = await freePort();
    const empty = await mkdtemp(path.join(os.tmpdir(), 'gw-npm-start-'));
    const npm = spawn('npm', ['start', '--silent'], {
      cwd: ROOT,
      env: { ...process.env, PORT: String(port), GRPC_PORT: '0', MODEL_REPOSITORY: empty, DRAIN_DELAY_MS: '300', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    npm.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
    const url = `http://127.0.0.1:${port}`;
    try {
      await untilAnswers(`${url}/health`, 'server up');
      npm.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toMatch(/"msg":"draining"/);
      expect(stderr).toMatch(/"msg":"stopped"/);
      await expect(fetch(`${url}/health`)).rejects.toThrow(); // nothing still listening
    } finally {
      if (npm.exitCode === null) npm.kill('SIGKILL');
      await rm(empty, { recursive: true, force: true });
    }
  }, 90_000);

  it('SIGTERM while the repository still loads (listening already) drains and exits 0, not killed by the signal', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: String(port),
        GRPC_PORT: '0',
        MODEL_REPOSITORY: path.join(ROOT, 'models'),
        DRAIN_DELAY_MS: '0',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<[number | null, string | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])));
    try {
      await until(() => /"msg":"listening"/.test(stderr), 60_000, 'listening');
      expect(stderr).not.toMatch(/"msg":"repository loaded"/); // six models: still loading
      child.kill('SIGTERM');
      expect(await exited).toEqual([0, null]);
      expect(stderr).toMatch(/"msg":"draining"/);
      expect(stderr).toMatch(/"msg":"stopped"/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 120_000);

  it('ENGINE=openvino where the addon cannot load stops the start with a clear message', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
      cwd: ROOT,
      env: { ...process.env, ENGINE: 'openvino', PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise((resolve) => child.once('exit', resolve));
    expect(code).toBe(1);
    expect(stderr).toMatch(/openvino-node/);
  });

  it('a bad setting stops the start and names it', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts'), '--port', 'eighty'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(2);
    expect(stderr).toMatch(/--port: expected an integer/);
  });
});

describe('npm run soak / npm run bench', () => {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it('never leave a server process behind, also when they are stopped half-way', async () => {
    const soak = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench', 'soak.ts')], {
      cwd: ROOT,
      env: { ...process.env, SOAK_SECONDS: '120', SOAK_CONCURRENCY: '2' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    soak.stdout.on('data', (d) => (out += d));
    const exited = new Promise((resolve) => soak.once('exit', resolve));
    const started = await until(() => /server pid (\d+)/.exec(out), 60_000, 'the soak to start its server');
    const pid = Number(started[1]);
    expect(alive(pid)).toBe(true);
    soak.kill('SIGTERM');
    await exited;
    await until(() => !alive(pid), 10_000, `server ${pid} to end`);
  });
});

describe('start-up: the server starts, or says why in one line', () => {
  const start = (env: Record<string, string>, args: string[] = []) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts'), ...args], {
      cwd: ROOT,
      // gRPC off unless a test names a port: the default (8001) may be taken by another test file's server
      env: { ...process.env, HOST: '127.0.0.1', MODEL_POLL_INTERVAL_MS: '0', DRAIN_DELAY_MS: '0', GRPC_PORT: 'off', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    let exited = false;
    const exit = new Promise<number | null>((resolve) =>
      child.once('exit', (code) => {
        exited = true;
        resolve(code);
      }),
    );
    /** Resolves when /ready answers 200; fails at once, with the output, if the process ends first. */
    const ready = (port: number) =>
      until(
        () => {
          if (exited) throw new Error(`the server exited before it was ready:\n${out}`);
          return fetch(`http://127.0.0.1:${port}/ready`).then(
            (r) => r.ok,
            () => false,
          );
        },
        50_000,
        'ready',
      );
    return { child, exit, ready, output: () => out };
  };
  const jsonLines = (text: string) =>
    text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it.each([
    [
      'a missing MODEL_REPOSITORY',
      { MODEL_REPOSITORY: '/no/such/repository' },
      [],
      1,
      /MODEL_REPOSITORY \/no\/such\/repository does not exist/,
    ],
    [
      'a missing IMAGE_ROOTS directory',
      { IMAGE_ROOTS: `${ROOT}/test/fixtures/images:/no/such/images` },
      [],
      1,
      /^IMAGE_ROOTS names \/no\/such\/images, which does not exist or is not a directory/,
    ],
    [
      'a file as MODEL_ROOTS',
      { MODEL_ROOTS: `${ROOT}/package.json` },
      [],
      1,
      /^MODEL_ROOTS names .*package\.json, which does not exist or is not a directory/,
    ],
    ['a bad flag', {}, ['--port', 'eighty'], 2, /--port: expected an integer/],
    ['an unknown flag', {}, ['--prot', '80'], 2, /unknown flag --prot: did you mean --port\?/],
    [
      'a flag other servers have',
      {},
      ['--grpc-host', '0.0.0.0'],
      2,
      /unknown flag --grpc-host: gRPC listens on the address HTTP does, set --host$/,
    ],
  ])('%s: exit %#, one JSON line naming it, no stack trace', async (_, env, args, code, message) => {
    const p = start({ PORT: '0', ...env }, args);
    expect(await p.exit).toBe(code);
    const lines = jsonLines(p.output());
    expect(lines).toHaveLength(1);
    expect(lines[0].level).toBe('fatal');
    expect(lines[0].msg).toMatch(message);
  });

  it('a public bind with ADMIN_TOKEN but without API_TOKENS warns that inference is open', async () => {
    const empty = await mkdtemp(path.join(os.tmpdir(), 'gw-empty-'));
    const port = await freePort();
    const p = start({ PORT: String(port), HOST: '0.0.0.0', ADMIN_TOKEN: 'secret', MODEL_REPOSITORY: empty });
    try {
      await p.ready(port);
    } finally {
      p.child.kill('SIGTERM');
    }
    await p.exit;
    const warnings = jsonLines(p.output()).filter((l) => l.level === 'warn');
    expect(warnings.map((w) => w.msg)).toEqual([
      expect.stringMatching(/with ADMIN_TOKEN but without API_TOKENS: anyone who can reach this port can run inference/),
    ]);
    await rm(empty, { recursive: true, force: true });
  });

  it('DECODE_THREADS above the libuv pool warns and names UV_THREADPOOL_SIZE, engine threads above the cores name their settings, MAX_BYTES_IN_FLIGHT past half the memory names it, a setting misspelled in the environment names the one meant; sized right, no warning', async () => {
    const empty = await mkdtemp(path.join(os.tmpdir(), 'gw-empty-'));
    const warningsOf = async (env: Record<string, string>) => {
      const port = await freePort();
      const p = start({ PORT: String(port), MODEL_REPOSITORY: empty, DECODE_THREADS: '8', ...env });
      try {
        await p.ready(port);
      } finally {
        p.child.kill('SIGTERM');
      }
      await p.exit;
      return jsonLines(p.output())
        .filter((l) => l.level === 'warn')
        .map((l) => l.msg);
    };
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '4' })).toEqual([
      'DECODE_THREADS is 8 but the libuv pool has 4 threads: start the process with UV_THREADPOOL_SIZE=8 or more',
    ]);
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '8' })).toEqual([]);
    // engine threads beyond the cores: batches on the instances compete for them (64 x 2 is more than any test machine)
    const [engine] = await warningsOf({ UV_THREADPOOL_SIZE: '8', ENGINE_INSTANCES: '2', ENGINE_THREADS: '64' });
    expect(engine).toMatch(/^ENGINE_INSTANCES x ENGINE_THREADS is 2 x 64 = 128 engine threads for \d+ cores: .*ENGINE_THREADS/);
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '8', ENGINE_INSTANCES: '1', ENGINE_THREADS: '1' })).toEqual([]);
    // a budget of request bytes the memory cannot hold (a MAX_UPLOAD_BYTES too large for a small container does it)
    const [memory] = await warningsOf({ UV_THREADPOOL_SIZE: '8', MAX_BYTES_IN_FLIGHT: String(2 ** 50) });
    expect(memory).toMatch(
      /^MAX_BYTES_IN_FLIGHT is 1125899906842624 bytes, more than half of the \d+ this process may use: .*MAX_UPLOAD_BYTES/,
    );
    // a proxy block of every address believes anyone's X-Forwarded-For
    const [trust] = await warningsOf({ UV_THREADPOOL_SIZE: '8', TRUSTED_PROXIES: '127.0.0.1,0.0.0.0/1,128.0.0.0/1' });
    expect(trust).toMatch(/^TRUSTED_PROXIES trusts addresses all over the internet \(8.8.8.8 and 1.1.1.1 among them\): .*X-Forwarded-For/);
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '8', TRUSTED_PROXIES: '127.0.0.2,10.244.250.0/24' })).toEqual([]);
    // a setting's name misspelled in the environment was read by nothing, and the server started on the default without
    // a word (a misspelled flag is refused); other programs' variables (HOME, two letters from HOST) say nothing
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '8', MAX_UPLOAD_BYTE: '1000', LOGLEVEL: 'debug', HOME: os.homedir() })).toEqual([
      'MAX_UPLOAD_BYTE is not a setting of this server, so it is ignored: did you mean MAX_UPLOAD_BYTES? (npm start -- --help lists the settings)',
      'LOGLEVEL is not a setting of this server, so it is ignored: did you mean LOG_LEVEL? (npm start -- --help lists the settings)',
    ]);
    // beside the setting itself the look-alike is another program's (LOGLEVEL beside LOG_LEVEL); a setting other servers
    // have, said here with another (gRPC binds HOST), names that one, not the closest name (GRPC_PORT)
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '8', LOGLEVEL: 'debug', LOG_LEVEL: 'info', GRPC_HOST: '0.0.0.0' })).toEqual([
      'GRPC_HOST is not a setting of this server, so it is ignored: gRPC listens on the address HTTP does, set HOST (npm start -- --help lists the settings)',
    ]);
    // a setting in lower case or without its unit; a token setting given empty (a compose file's variable left unset)
    // is no token, which leaves the door open
    expect(await warningsOf({ UV_THREADPOOL_SIZE: '8', DRAIN_DELAY: '1000', log_level: 'debug', API_TOKENS: '' })).toEqual([
      'DRAIN_DELAY is not a setting of this server, so it is ignored: did you mean DRAIN_DELAY_MS? (npm start -- --help lists the settings)',
      'log_level is not a setting of this server, so it is ignored: did you mean LOG_LEVEL? (npm start -- --help lists the settings)',
      'API_TOKENS is set but empty, which is no token: anyone who can reach the server can run inference; give comma-separated tokens, or leave API_TOKENS out of the environment',
    ]);
    await rm(empty, { recursive: true, force: true });
  }, 150_000); // nine server starts, one after another: 7 s each on a loaded machine

  it('a port in use: exit 1, one JSON line saying so', async () => {
    const busy = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => busy.once('listening', r));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const p = start({ PORT: String(port), MODEL_REPOSITORY: path.join(ROOT, 'models') });
      expect(await p.exit).toBe(1);
      const lines = jsonLines(p.output());
      expect(lines.at(-1)!.msg).toMatch(new RegExp(`port ${port} on 127.0.0.1 is in use`));
      expect(lines.every((l) => typeof l.level === 'string')).toBe(true);
    } finally {
      busy.close();
    }
  });

  it('a gRPC port in use: exit 1, and the message names GRPC_PORT, not the HTTP port', async () => {
    const busy = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => busy.once('listening', r));
    const grpcPort = (busy.address() as net.AddressInfo).port;
    try {
      const p = start({ PORT: String(await freePort()), GRPC_PORT: String(grpcPort), MODEL_REPOSITORY: path.join(ROOT, 'models') });
      expect(await p.exit).toBe(1);
      const lines = jsonLines(p.output());
      expect(lines.at(-1)!.msg).toBe(
        `port ${grpcPort} on 127.0.0.1 is in use: stop what uses it, or set GRPC_PORT (or --grpc-port) to another port`,
      );
    } finally {
      busy.close();
    }
  });

  it('a start of the default repository prints nothing but JSON lines (onnxruntime included)', async () => {
    const port = await freePort();
    const grpcPort = await freePort();
    const p = start({ PORT: String(port), GRPC_PORT: String(grpcPort), MODEL_REPOSITORY: path.join(ROOT, 'models') });
    try {
      await p.ready(port);
    } finally {
      p.child.kill('SIGTERM');
    }
    expect(await p.exit).toBe(0);
    const lines = jsonLines(p.output());
    expect(lines.some((l) => l.msg === 'listening')).toBe(true);
    expect(lines.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
  });
});
