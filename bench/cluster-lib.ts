/**
 * A cluster on one machine, for test/cluster.test.ts and `npm run bench:scale`: a real redis-server, replica
 * processes (`node --import tsx src/main.ts`, as `npm start` runs it) and HAProxy health-checking their /ready in
 * front, each on its own free port of 127.0.0.1. Needs the Debian packages redis-server and haproxy. Every process
 * started here is killed when the parent ends (killAll), so a failing test or benchmark leaves none behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const children = new Set<ChildProcess>();
/** Kill (SIGKILL) every process started here that is still running. */
export function killAll(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}
process.once('exit', killAll);

function track(child: ChildProcess): Promise<number | null> {
  children.add(child);
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      children.delete(child);
      resolve(code);
    }),
  );
}

/** Is a program on the PATH? */
export const have = (program: string): boolean => spawnSync('sh', ['-c', `command -v ${program}`]).status === 0;

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export async function until<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string): Promise<NonNullable<T>> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const pingRedis = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.setTimeout(1000);
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      // (a Redis that wants a password answers NOAUTH: it is up all the same)
      resolve(/^(\+PONG|-NOAUTH)/.test(d.toString()));
    });
    s.once('error', () => resolve(false));
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });

export interface RedisServer {
  port: number;
  url: string;
  /** Stop it (SIGTERM; nothing is saved: it was started with --save ''). */
  stop(): Promise<void>;
  /** Start it again on the same port, empty. */
  start(): Promise<void>;
}

/** A real redis-server on a free port, no persistence; `args`: more of its settings (`--requirepass`, ...). */
export async function startRedis({ args = [] }: { args?: string[] } = {}): Promise<RedisServer> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  let exited: Promise<number | null> = Promise.resolve(null);
  const start = async () => {
    child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning', ...args],
      {
        stdio: ['ignore', 'ignore', 'inherit'],
      },
    );
    exited = track(child);
    await until(() => pingRedis(port), 10_000, 'redis-server');
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    start,
    async stop() {
      if (child && child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

export interface Replica {
  name: string;
  port: number;
  url: string;
  /** Its stderr (JSON log lines) since it was last started. */
  logs(): string;
  /** SIGTERM (drain, then shutdown); resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Start the process again, same name, port and settings; resolves once /ready is 200. */
  start(): Promise<void>;
  pid(): number | undefined;
  gql<T = any>(query: string, variables?: Record<string, unknown>): Promise<{ data?: T; errors?: { message: string; extensions?: any }[] }>;
}

export const isReady = (url: string) =>
  fetch(`${url}/ready`).then(
    (r) => r.status === 200,
    () => false,
  );

/** One replica process: PORT, MODEL_REPOSITORY and REDIS_URL given, REPLICA_NAME = name. Resolves once /ready is 200. */
export async function startReplica(opts: {
  name: string;
  repository: string;
  redisUrl?: string;
  port?: number;
  env?: Record<string, string>;
  quiet?: boolean;
}): Promise<Replica> {
  const port = opts.port ?? (await freePort());
  const url = `http://127.0.0.1:${port}`;
  let child: ChildProcess;
  let exited: Promise<number | null>;
  let stderr = '';
  const start = async () => {
    stderr = '';
    child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: String(port),
        HOST: '127.0.0.1',
        MODEL_REPOSITORY: opts.repository,
        REPLICA_NAME: opts.name,
        MODEL_POLL_INTERVAL_MS: '0',
        ENGINE_THREADS: '1',
        // several replicas share this machine's cores: one engine instance each
        ENGINE_INSTANCES: '1',
        GRPC_PORT: 'off',
        LOG_LEVEL: 'info',
        ...(opts.redisUrl ? { REDIS_URL: opts.redisUrl } : {}),
        ...opts.env,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr!.on('data', (d) => {
      if (!opts.quiet) stderr += d;
      // CLUSTER_LOG_DIR=<dir>: every replica's log lines also go to <dir>/<name>.log (to read after a failure)
      if (process.env.CLUSTER_LOG_DIR) appendFileSync(path.join(process.env.CLUSTER_LOG_DIR, `${opts.name}.log`), d);
    });
    exited = track(child);
    const ended = exited.then(() => true);
    await until(async () => (await isReady(url)) || (await Promise.race([ended, Promise.resolve(false)])), 120_000, `${opts.name} ready`);
    if (child.exitCode !== null) throw new Error(`${opts.name} exited with ${child.exitCode}: ${stderr.slice(-2000)}`);
  };
  await start();
  return {
    name: opts.name,
    port,
    url,
    logs: () => stderr,
    pid: () => child.pid,
    start,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    async gql(query, variables = {}) {
      const res = await fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ query, variables }),
      });
      return res.json() as Promise<any>;
    },
  };
}

export interface Haproxy {
  port: number;
  url: string;
  /** Each server's state as HAProxy sees it (UP, DOWN, ...), from its stats page. */
  states(): Promise<Record<string, string>>;
  stop(): Promise<void>;
}

/**
 * HAProxy in front of the replicas: round robin, health checks on GET /ready every `checkMs` (one failed check takes a
 * server out, one good one brings it back). With `redispatch`, a connection refused by one server is retried on
 * another (`option redispatch`: a request that was never sent can go elsewhere; one that was sent is not replayed);
 * without it (the test's choice), HAProxy behaves like a plain load balancer that does not retry, and only the
 * replicas' drain keeps requests from failing during a rolling restart.
 */
export async function startHaproxy(
  backends: { name: string; port: number }[],
  { checkMs = 200, redispatch = true }: { checkMs?: number; redispatch?: boolean } = {},
): Promise<Haproxy> {
  const port = await freePort();
  const statsPort = await freePort();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-haproxy-'));
  const cfg = path.join(dir, 'haproxy.cfg');
  await writeFile(cfg, haproxyConfig({ port, statsPort, backends, checkMs, redispatch }));
  const child = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = track(child);
  await until(
    () =>
      fetch(`http://127.0.0.1:${statsPort}/stats;csv`).then(
        (r) => r.ok,
        () => child.exitCode !== null && Promise.reject(new Error(`haproxy exited: ${stderr}`)),
      ),
    10_000,
    'haproxy',
  );
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    async states() {
      const csv = await (await fetch(`http://127.0.0.1:${statsPort}/stats;csv`)).text();
      const [header, ...rows] = csv.trim().split('\n');
      const cols = header.replace(/^# /, '').split(',');
      const [px, sv, st] = ['pxname', 'svname', 'status'].map((c) => cols.indexOf(c));
      return Object.fromEntries(
        rows
          .map((r) => r.split(','))
          .filter((r) => r[px] === 'replicas' && r[sv] !== 'FRONTEND' && r[sv] !== 'BACKEND')
          .map((r) => [r[sv], r[st]]),
      );
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function haproxyConfig({
  port,
  statsPort,
  backends,
  checkMs,
  redispatch,
}: {
  port: number;
  statsPort: number;
  backends: { name: string; port: number }[];
  checkMs: number;
  redispatch: boolean;
}): string {
  return `global
  nbthread 1
  maxconn 2000

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
${redispatch ? '  option redispatch\n  retry-on conn-failure\n' : '  no option redispatch\n'}
frontend gateway
  bind 127.0.0.1:${port}
  default_backend replicas

backend replicas
  balance roundrobin
  option httpchk
  http-check send meth GET uri /ready
  http-check expect status 200
  default-server inter ${checkMs}ms fall 1 rise 1
${backends.map((b) => `  server ${b.name} 127.0.0.1:${b.port} check`).join('\n')}

listen stats
  bind 127.0.0.1:${statsPort}
  stats enable
  stats uri /stats
`;
}

/** A shared repository for the replicas: a copy (not links) of the named default models, in a temporary folder. */
export async function sharedRepository(models: string[]): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-shared-'));
  for (const m of models) await cp(path.join(ROOT, 'models', m), path.join(dir, m), { recursive: true, dereference: true });
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}
