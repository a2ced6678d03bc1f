import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { have, startRedis } from '../bench/cluster-lib.ts';
import { loadConfig } from '../src/config.ts';
import { ROOT, until } from './helpers.ts';

/**
 * An operator's configuration mistakes: each one stops the start (or is said at start), naming the setting and what to
 * write, before a port is bound or a model loaded; none is taken silently for something else.
 */
const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });

/** The server as npm start runs it (as nobody when the tests run as root, who reads whatever a mode says). */
function start(env: Record<string, string>, { asUser = false, cmd }: { asUser?: boolean; cmd?: string[] } = {}) {
  const node = cmd ?? [process.execPath, '--import', 'tsx', path.join(ROOT, 'src', 'main.ts')];
  const [bin, ...args] =
    asUser && process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...node] : node;
  const child = spawn(bin, args, {
    cwd: ROOT,
    env: {
      ...process.env,
      HOME: os.tmpdir(),
      HOST: '127.0.0.1',
      PORT: '0',
      GRPC_PORT: 'off',
      MODEL_POLL_INTERVAL_MS: '0',
      DRAIN_DELAY_MS: '0',
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  /** Its exit code, or 'started' once it listens (then it is stopped). */
  const outcome = async (): Promise<number | null | 'started'> => {
    const first = await Promise.race([
      exit,
      until(() => /"msg":"listening"/.test(out), 40_000, 'listening').then(() => 'started' as const),
    ]);
    if (first === 'started') {
      child.kill('SIGINT');
      await exit;
    }
    return first;
  };
  return { child, exit, outcome, output: () => out };
}

const fatalLine = (text: string) =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { level: string; msg: string })
    .find((l) => l.level === 'fatal');

/** An empty repository the server's user may read. */
async function emptyRepository(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-cfg-'));
  await chmod(dir, 0o755);
  return dir;
}

describe('configuration mistakes are told at start, naming the setting', () => {
  it('GRPC_PORT equal to PORT: a configuration error (exit 2) naming both, not "in use: stop what uses it"', async () => {
    const port = await freePort();
    const repo = await emptyRepository();
    try {
      const p = start({ PORT: String(port), GRPC_PORT: String(port), MODEL_REPOSITORY: repo });
      expect(await p.outcome()).toBe(2);
      const fatal = fatalLine(p.output());
      expect(fatal?.msg).toMatch(/GRPC_PORT.*PORT/);
      // nothing else uses the port: the gateway bound it itself, a moment before
      expect(fatal?.msg).not.toMatch(/in use/);
    } finally {
      await rm(repo, { recursive: true, force: true });
    }
  });

  it('a REDIS_URL whose password has a character that breaks the URL (# / ?) is refused without showing it, saying to percent-encode it', () => {
    for (const secret of ['Kx7#Vq9', 'Kx7/Vq9', 'Kx7?Vq9', 'Kx7/Vq9#Wz@Vq9']) {
      const url = `redis://user:${secret}@cache:6379/0`;
      expect(() => loadConfig({ REDIS_URL: url }, []), url).toThrow(/^REDIS_URL: .* is not a URL/);
      expect(() => loadConfig({ REDIS_URL: url }, []), url).not.toThrow(/Kx7|Vq9/);
      expect(() => loadConfig({ REDIS_URL: url }, []), url).toThrow(/percent-encoded \(# as %23, \/ as %2F, \? as %3F, @ as %40\)/);
    }
  });

  it('a REDIS_URL refused at start is not printed with its password', async () => {
    for (const url of ['http://user:hunter2@cache:6379', 'redis://user:hunter2@cache:99999']) {
      expect(() => loadConfig({ REDIS_URL: url }, []), url).toThrow(/^REDIS_URL: /);
      expect(() => loadConfig({ REDIS_URL: url }, []), url).not.toThrow(/hunter2/);
    }
    // and the process's one fatal line (what a log collector keeps)
    const p = start({ REDIS_URL: 'http://user:hunter2@cache:6379' });
    expect(await p.outcome()).toBe(2);
    expect(fatalLine(p.output())?.msg).toMatch(/^REDIS_URL: /);
    expect(p.output()).not.toMatch(/hunter2/);
  });

  it('IMAGE_ROOTS and MODEL_ROOTS the server cannot read stop the start (they answered "does not exist" to every request)', async () => {
    const repo = await emptyRepository();
    // mkdtemp makes it 0700: the server's user (nobody, or the test's own user once the mode is 000) cannot enter it
    const closed = await mkdtemp(path.join(os.tmpdir(), 'gw-closed-'));
    if (process.getuid?.() !== 0) await chmod(closed, 0o000);
    try {
      for (const setting of ['IMAGE_ROOTS', 'MODEL_ROOTS']) {
        const p = start({ MODEL_REPOSITORY: repo, [setting]: closed }, { asUser: true });
        expect(await p.outcome(), setting).toBe(1);
        expect(fatalLine(p.output())?.msg, setting).toMatch(new RegExp(`^${setting} .*${closed}.*(read|permission)`));
      }
    } finally {
      await chmod(closed, 0o700);
      await rm(closed, { recursive: true, force: true });
      await rm(repo, { recursive: true, force: true });
    }
  });

  it('flags given to npm instead of the server (npm start --api-tokens=..., no "--") stop the start', async () => {
    const repo = await emptyRepository();
    try {
      // npm takes them as its own configuration (npm_config_api_tokens in the script's environment): the server started
      // on its defaults, inference open to anyone, with nothing said but npm's own "Unknown cli config" warnings
      const p = start(
        { MODEL_REPOSITORY: repo },
        { cmd: ['npm', 'start', '--silent', '--api-tokens=s3cret', '--max-upload-bytes=1048576'] },
      );
      expect(await p.outcome()).toBe(2);
      expect(fatalLine(p.output())?.msg).toMatch(/--api-tokens.*npm start -- /);
    } finally {
      await rm(repo, { recursive: true, force: true });
    }
  });

  it('a per-client connection limit above the total one is refused, and its default follows a lower total', () => {
    // one client could hold every connection: the per-client cap, there for that, never applies
    expect(() => loadConfig({ MAX_CONNECTIONS: '100', MAX_CONNECTIONS_PER_CLIENT: '200' }, [])).toThrow(/MAX_CONNECTIONS_PER_CLIENT/);
    expect(loadConfig({ MAX_CONNECTIONS: '100' }, []).maxConnectionsPerClient).toBeLessThan(100);
  });

  it("an ADMIN_TOKEN read from a file with its line break is the token without it, as API_TOKENS' entries are", () => {
    // ADMIN_TOKEN="$(cat file)" drops it, a Kubernetes secret made from a file keeps it: the start was refused
    expect(loadConfig({ ADMIN_TOKEN: 's3cret\n' }, []).adminToken).toBe('s3cret');
    expect(loadConfig({ API_TOKENS: 'a1,b2\n' }, []).apiTokens).toEqual(['a1', 'b2']);
    // nothing but white space is no token (not "no token": it was meant to be one)
    expect(() => loadConfig({ ADMIN_TOKEN: ' \n' }, [])).toThrow(/^ADMIN_TOKEN: /);
    expect(() => loadConfig({ ADMIN_TOKEN: 'two words' }, [])).toThrow(/^ADMIN_TOKEN: /);
  });

  it.skipIf(!have('redis-server'))(
    'a REDIS_URL database Redis does not have is said, naming REDIS_URL, and database 0 is not used in its place',
    async () => {
      const redis = await startRedis();
      const repo = await emptyRepository();
      const db0 = new Redis(`${redis.url}/0`);
      try {
        const p = start({ MODEL_REPOSITORY: repo, REDIS_URL: `${redis.url}/99999` });
        await until(() => /"msg":"repository loaded"/.test(p.output()), 40_000, 'the server to start');
        await new Promise((r) => setTimeout(r, 2000));
        p.child.kill('SIGINT');
        await p.exit;
        // it wrote its state into database 0, shared with whatever else uses it there (another deployment)
        expect(await db0.keys('*')).toEqual([]);
        expect(p.output()).toMatch(/REDIS_URL/);
        expect(p.output()).not.toMatch(/"msg":"cluster bus connected"/);
      } finally {
        db0.disconnect();
        await redis.stop();
        await rm(repo, { recursive: true, force: true });
      }
    },
    60_000,
  );
});
