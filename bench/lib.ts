/** Shared by the benchmark and the soak script: start the real server as a child process and talk HTTP to it. */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants, copyFile, mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeMultipart } from '../src/client/multipart.ts';

export { PROTOCOL_ALONE_QUERY, mobilenetConfig } from './requests.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The project's own fixtures: photos in test/fixtures/images, models in the default repository (models/). */
export const IMAGES = path.join(ROOT, 'test', 'fixtures', 'images');
export const modelFile = (name: string) => path.join(ROOT, 'models', name, '1', 'model.onnx');
export const modelAsset = (name: string, file: string) => path.join(ROOT, 'models', name, file);

/**
 * Every server this process started is killed when it ends, however it ends (normal exit, an exception, Ctrl-C,
 * SIGTERM), so a failing benchmark never leaves a server behind.
 */
const children = new Set<ChildProcess>();
const killAll = () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
};
process.once('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}
process.once('uncaughtException', (e) => {
  console.error(e);
  process.exit(1); // 'exit' kills the servers
});

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** A GraphQL multipart request body with one file bound to $f, encoded once and reused. */
export function multipartBody(query: string, file: Uint8Array, name: string): { body: Uint8Array; type: string } {
  const { body, contentType } = encodeMultipart({ query, variables: { f: null } }, { f: { name, bytes: file } });
  return { body, type: contentType };
}

export function post(agent: http.Agent, port: number, body: Uint8Array, type: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: '/graphql',
        method: 'POST',
        agent,
        headers: { 'content-type': type, 'content-length': body.length, 'x-graphql-yoga-csrf': '1' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks).toString()));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export interface RunningServer {
  port: number;
  /** The KServe v2 gRPC port. */
  grpcPort: number;
  child: ChildProcess;
  stop(): Promise<number | null>;
}

/**
 * A temporary repository (model name -> .onnx path and model.json) served by `node --import tsx src/main.ts`,
 * as `npm start` runs it. Resolves once /ready answers 200.
 */
export async function startServer(
  models: Record<string, { onnx: string; config: unknown; files?: Record<string, string> }>,
  env: Record<string, string> = {},
  nodeArgs: string[] = [],
  /** The checkout whose src/main.ts to run (another commit's worktree, for A/B runs). */
  root = ROOT,
): Promise<RunningServer> {
  const repo = await mkdtemp(path.join(os.tmpdir(), 'gw-bench-'));
  for (const [name, m] of Object.entries(models)) {
    await mkdir(path.join(repo, name, '1'), { recursive: true });
    await copyFile(m.onnx, path.join(repo, name, '1', 'model.onnx'), constants.COPYFILE_FICLONE); // links out of the repository are refused
    await writeFile(path.join(repo, name, 'model.json'), JSON.stringify(m.config));
    for (const [f, src] of Object.entries(m.files ?? {})) await copyFile(src, path.join(repo, name, f), constants.COPYFILE_FICLONE);
  }
  const port = await freePort();
  const grpcPort = await freePort();
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', path.join(root, 'src', 'main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      PORT: String(port),
      GRPC_PORT: String(grpcPort),
      HOST: '127.0.0.1',
      MODEL_REPOSITORY: repo,
      LOG_LEVEL: 'warn',
      MODEL_POLL_INTERVAL_MS: '0',
      DRAIN_DELAY_MS: '0',
      ...env,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  children.add(child);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      children.delete(child);
      resolve(code);
    }),
  );
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    const code = await exited;
    await rm(repo, { recursive: true, force: true });
    return code;
  };
  for (let i = 0; ; i++) {
    if (
      await fetch(`http://127.0.0.1:${port}/ready`).then(
        (r) => r.ok,
        () => false,
      )
    )
      break;
    if (i > 600 || child.exitCode !== null) {
      await stop();
      throw new Error('gateway did not become ready');
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { port, grpcPort, child, stop };
}

/** Resident set size of a process, in MiB (Linux /proc). */
export async function rssMiB(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return Math.round((kb / 1024) * 10) / 10;
}

/** CPU time (user + system, all threads) a process has used so far, in seconds (Linux /proc). */
export async function cpuSeconds(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** The naive baseline server (bench/naive.ts) as a separate process; the photo is the request body. */
export async function startNaive(
  model: string,
  { exactInt8 = false }: { exactInt8?: boolean } = {},
): Promise<{ port: number; child: ChildProcess; stop(): Promise<void> }> {
  return startScript(path.join(ROOT, 'bench', 'naive.ts'), [model, ...(exactInt8 ? ['exact'] : [])]);
}

/**
 * A baseline server of the benchmark's own (`node --import tsx <script> <port> ...args`) as a separate process,
 * resolved once it prints "ready".
 */
export async function startScript(
  script: string,
  args: string[] = [],
): Promise<{ port: number; child: ChildProcess; stop(): Promise<void> }> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', script, String(port), ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      children.delete(child);
      resolve();
    }),
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => String(d).includes('ready') && resolve());
    child.once('exit', () => reject(new Error(`${path.basename(script)} did not start`)));
  });
  return {
    port,
    child,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** POST raw bytes (the naive server's request). */
export function postRaw(agent: http.Agent, port: number, body: Uint8Array): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: '/', method: 'POST', agent, headers: { 'content-length': body.length } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks).toString()));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
