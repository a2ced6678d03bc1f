import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { ROOT, freePort, have, sharedRepository, startRedis, until } from '../bench/cluster-lib.ts';
import { RedisBus } from '../src/cluster/bus.ts';
import { Cluster, type ClusterOptions } from '../src/cluster/index.ts';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import { createLogger } from '../src/log.ts';
import { ModelManager } from '../src/repository/manager.ts';

/**
 * The cluster's unloaded-models hash (`<prefix>:unloaded`) when Redis loses it, goes back in time, or holds what no
 * gateway wrote. As in test/cluster.test.ts: a real redis-server, real models, replicas in process (a ModelManager
 * and its Cluster each), so that their logs can be read.
 */
const missing = !have('redis-server');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A redis-server that keeps an RDB file in its own folder (SAVE writes it; a crash loses what came after). */
async function startRedisWithSnapshots() {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-redis-'));
  const port = await freePort();
  let child: ChildProcess | null = null;
  const start = async () => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    const c = new Redis(`redis://127.0.0.1:${port}`, { lazyConnect: true, retryStrategy: () => 50 });
    c.on('error', () => undefined); // refused until it listens
    await until(
      () =>
        c.ping().then(
          () => true,
          () => false,
        ),
      10_000,
      'redis-server',
    );
    c.disconnect();
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    start,
    /** Redis dies (kill -9): what was written since the last SAVE is lost. */
    async crash() {
      const exited = new Promise((r) => child!.once('exit', r));
      child!.kill('SIGKILL');
      await exited;
    },
    async stop() {
      if (child && child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child!.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

describe.skipIf(missing)('the cluster state in Redis', () => {
  const stops: (() => Promise<unknown>)[] = [];
  const lines: string[] = [];
  const logger = createLogger('info', {}, (l) => lines.push(l));

  afterEach(async () => {
    // clusters, then managers, then Redis and the repository
    for (const stop of stops.splice(0).reverse()) await stop().catch(() => undefined);
    lines.length = 0;
  });

  async function repository(models: string[]) {
    const repo = await sharedRepository(models);
    stops.push(() => repo.remove());
    return repo.dir;
  }
  /**
   * A TCP proxy in front of Redis (at `port`) for one test: `refusing` turns new connections away (as a replica's
   * reconnection backoff would, for a while); `dropping` drops every byte both ways with the sockets left open (a
   * partition: no reset, no reply).
   */
  async function redisProxy(port: number) {
    const connections: { said: string; silent: boolean }[] = [];
    const proxy = {
      url: '',
      refusing: false,
      dropping: false,
      /**
       * Drop every byte, both ways, of the open connections whose client sent a command matching `command` (an idle
       * flow forgotten by a NAT or a load balancer: the others go on). How many it silenced.
       */
      silence: (command: RegExp) => connections.filter((c) => command.test(c.said)).map((c) => (c.silent = true)).length,
    };
    const sockets = new Set<net.Socket>();
    const server = net.createServer((client) => {
      if (proxy.refusing) return void client.destroy();
      const upstream = net.connect(port, '127.0.0.1');
      const connection = { said: '', silent: false };
      connections.push(connection);
      client.on('data', (d) => connection.said.length < 4096 && (connection.said += d.toString('latin1')));
      client.on('close', () => connections.splice(connections.indexOf(connection), 1));
      for (const [from, to] of [
        [client, upstream],
        [upstream, client],
      ] as const) {
        sockets.add(from);
        from.on('data', (d) => proxy.dropping || connection.silent || to.write(d));
        from.on('error', () => undefined);
        from.on('close', () => to.destroy());
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    stops.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    });
    proxy.url = `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    return proxy;
  }
  /** Cut a replica behind `proxy` off from Redis (connections refused, bytes dropped) until it sees the bus lost. */
  async function cutOff(proxy: { refusing: boolean; dropping: boolean }, c: Cluster, who: string) {
    proxy.refusing = true;
    proxy.dropping = true;
    await until(() => !c.status().connected, 30_000, `${who} cut off`);
  }
  /** A Redis, a repository with mobilenet, and a folder outside it holding a copy of text-direction. */
  async function oneFolder() {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    return { redis, dir: await repository(['mobilenet']), outside: await outsideFolder() };
  }
  /** A connection of the test's own to Redis, closed after the test. */
  function adminOf(url: string) {
    const admin = new Redis(url);
    stops.push(async () => admin.disconnect());
    return admin;
  }
  /** The record of a model loaded by path, as Redis keeps it (null: none). */
  const recordOf = async (admin: Redis, name: string) => {
    const json = await admin.hget('gateway:paths', name);
    return json === null ? null : (JSON.parse(json) as { path: string });
  };
  /** A Redis, a repository with mobilenet, and two folders outside it (a, b) that each hold a copy of text-direction. */
  async function twoFolders() {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    return { redis, dir: await repository(['mobilenet']), a: await outsideFolder(), b: await outsideFolder() };
  }
  /**
   * Two replicas serving the model "lines" loaded by path from folder a, the second behind a proxy and cut off from
   * Redis; both may load from folder b too.
   */
  async function servedFromACutOff() {
    const { redis, dir, a, b } = await twoFolders();
    const proxy = await redisProxy(redis.port);
    const r1 = await replica('r1', redis.url, dir, {}, [a.root, b.root]);
    const r2 = await replica('r2', proxy.url, dir, {}, [a.root, b.root]);
    await r1.m.load('lines', { path: a.model });
    await until(() => r2.m.get('lines')?.versions.get(1)?.state === 'AVAILABLE', 20_000, 'replica 2 to load it from a');
    await cutOff(proxy, r2.c, 'replica 2');
    return { redis, proxy, dir, a, b, r1, r2 };
  }
  async function replica(
    name: string,
    url: string,
    dir: string,
    options: Partial<ClusterOptions> = {},
    modelRoots: string[] = [],
    beforeJoin: (c: Cluster) => void = () => undefined,
  ) {
    const m = new ModelManager({
      root: dir,
      engine: createOnnxRuntimeEngine(),
      logger,
      pollIntervalMs: 0,
      loadOptions: { instances: 1 },
      modelRoots,
    });
    stops.push(() => m.close());
    await m.start();
    const c = new Cluster({ url, replica: name, manager: m, logger, maxBackoffMs: 100, ...options });
    stops.push(() => c.close());
    await until(() => c.status().connected, 10_000, `${name} connected`);
    beforeJoin(c);
    await c.join();
    return { m, c };
  }
  const state = (m: ModelManager, model: string) => m.get(model)!.versions.get(1)!.state;
  const settled = (m: ModelManager, model: string) => ['AVAILABLE', 'END'].includes(state(m, model));

  it('lost while every replica stays connected (FLUSHALL, an eviction): a replica started afterwards still applies the unloads', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const dir = await repository(['mobilenet']);
    const r1 = await replica('r1', redis.url, dir);
    const r2 = await replica('r2', redis.url, dir);
    await r1.m.unload('mobilenet');
    await until(() => state(r2.m, 'mobilenet') === 'END', 10_000, 'replica 2 to unload mobilenet too');

    const admin = adminOf(redis.url);
    await admin.flushall(); // no connection is lost: no replica catches up
    await sleep(8000); // longer than the stream's quiet read (5 s), after which a replica looks where the stream stands

    // a rolling restart, or a new pod from the autoscaler
    const r3 = await replica('r3', redis.url, dir);
    await until(() => settled(r3.m, 'mobilenet'), 20_000, 'replica 3 settled');
    expect([state(r1.m, 'mobilenet'), state(r2.m, 'mobilenet'), state(r3.m, 'mobilenet')]).toEqual(['END', 'END', 'END']);
  }, 60_000);

  it('a Redis user (ACL) that may not run a command the bus needs is said at error, naming REDIS_URL, and in the status; its changes go out once it may', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const admin = adminOf(redis.url);
    await admin.call('ACL', 'SETUSER', 'gw', 'on', '>pw', '~*', '&*', '+@all', '-@scripting');
    const dir = await repository(['mobilenet']);
    const r1 = await replica('r1', redis.url.replace('redis://', 'redis://gw:pw@'), dir);
    const r2 = await replica('r2', redis.url, dir);
    await r1.m.unload('mobilenet');
    const denied = () => lines.map((l) => JSON.parse(l)).filter((l) => /the Redis user of REDIS_URL may not run/.test(l.msg));
    await until(() => denied().length > 0, 10_000, 'the refusal said');
    expect(denied()[0]).toMatchObject({ level: 'error', replica: 'r1' });
    expect(denied()[0].msg).toMatch(/NOPERM.*'eval(sha)?'.*README/);
    expect(r1.c.status()).toMatchObject({ connected: true, error: expect.stringMatching(/may not run/) });
    await sleep(1000); // retried meanwhile: said once
    expect(denied().map((l) => l.msg)).toEqual([denied()[0].msg]);
    expect(state(r2.m, 'mobilenet')).toBe('AVAILABLE');

    await admin.call('ACL', 'SETUSER', 'gw', '+@scripting');
    await until(() => state(r2.m, 'mobilenet') === 'END', 15_000, 'the kept unload to reach replica 2');
    await until(() => r1.c.status().error === null, 10_000, 'the error to clear');
  }, 40_000);

  it('two replicas given one REPLICA_NAME are told so, once, as the first message of the other arrives', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const dir = await repository(['mobilenet']);
    const r1 = await replica('same', redis.url, dir);
    const r2 = await replica('same', redis.url, dir);
    await r1.m.unload('mobilenet');
    await until(() => state(r2.m, 'mobilenet') === 'END', 10_000, 'the unload applied'); // (it still works)
    await r2.m.load('mobilenet');
    await until(() => state(r1.m, 'mobilenet') === 'AVAILABLE', 20_000, 'the load applied');
    const said = lines.map((l) => JSON.parse(l)).filter((l) => /another replica is named "same" too/.test(l.msg));
    expect(said.length).toBeGreaterThanOrEqual(1);
    expect(said.length).toBeLessThanOrEqual(2); // once on each
    expect(said[0]).toMatchObject({ level: 'warn' });
    expect(said[0].msg).toMatch(/REPLICA_NAME/);
  }, 40_000);

  it('a Redis in cluster mode, which the bus does not support, is said at error, naming REDIS_URL, and in the status', async () => {
    const conf = path.join(await mkdtemp(path.join(os.tmpdir(), 'gw-redis-cluster-')), 'nodes.conf');
    stops.push(() => rm(path.dirname(conf), { recursive: true, force: true }));
    const redis = await startRedis({ args: ['--cluster-enabled', 'yes', '--cluster-config-file', conf] });
    stops.push(() => redis.stop());
    const admin = adminOf(redis.url);
    await admin.call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383'); // one node, every slot
    await until(async () => /cluster_state:ok/.test(String(await admin.call('CLUSTER', 'INFO'))), 10_000, 'the cluster up');
    const r1 = await replica('r1', redis.url, await repository(['mobilenet']));
    await r1.m.unload('mobilenet');
    const said = () => lines.map((l) => JSON.parse(l)).filter((l) => /REDIS_URL leads to a Redis in cluster mode/.test(l.msg));
    await until(() => said().length > 0, 10_000, 'the mistake said');
    expect(said()[0]).toMatchObject({ level: 'error' });
    expect(r1.c.status()).toMatchObject({ connected: true, error: expect.stringMatching(/cluster mode/) });
  }, 30_000);

  it('a Redis user (ACL) that may not read the stream is said at error and in the status, and gets the events once it may', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const admin = adminOf(redis.url);
    await admin.call('ACL', 'SETUSER', 'gw', 'on', '>pw', '~*', '&*', '+@all', '-xread');
    const dir = await repository(['mobilenet']);
    const r1 = await replica('r1', redis.url.replace('redis://', 'redis://gw:pw@'), dir);
    const r2 = await replica('r2', redis.url, dir);
    const seen: string[] = [];
    const own = new WeakSet<object>();
    r1.m.prependListener('status', (e) => own.add(e));
    r1.c.feed.on('status', (e) => !own.has(e) && seen.push(`${e.model} ${e.state}`));
    const denied = () => lines.filter((l) => /may not run what the gateway needs \(reading the stream: NOPERM/.test(l));
    await until(() => denied().length > 0, 10_000, 'the refusal said');
    expect(r1.c.status().error).toMatch(/reading the stream/);
    await admin.call('ACL', 'SETUSER', 'gw', '+xread');
    await r2.m.unload('mobilenet');
    await until(() => seen.includes('mobilenet END'), 15_000, "replica 2's events on replica 1");
    await until(() => r1.c.status().error === null, 10_000, 'the error to clear');
    expect(denied()).toHaveLength(1);
  }, 40_000);

  it("a Redis user with only the ACL README's Scale out gives runs a replica: changes and status events both ways, a catch-up", async () => {
    const { redis, dir, outside } = await oneFolder();
    const admin = adminOf(redis.url);
    const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
    const acl = /`ACL SETUSER gateway on >PASSWORD ([^`]+)`/.exec(readme)?.[1];
    expect(acl, "the ACL in README's Scale out").toBeTruthy();
    await admin.call('ACL', 'SETUSER', 'gateway', 'on', '>pw', ...acl!.split(' '));
    const r1 = await replica('r1', redis.url.replace('redis://', 'redis://gateway:pw@'), dir, {}, [outside.root]);
    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]);
    const seen: string[] = [];
    const own = new WeakSet<object>(); // (the replicas of one process share its replica name)
    r1.m.prependListener('status', (e) => own.add(e));
    r1.c.feed.on('status', (e) => !own.has(e) && seen.push(`${e.model} ${e.state}`));
    await r1.m.unload('mobilenet');
    await until(() => state(r2.m, 'mobilenet') === 'END', 10_000, "r1's unload on r2");
    await r2.m.load('lines', { path: outside.model });
    await until(() => r1.m.get('lines')?.versions.get(1)?.state === 'AVAILABLE', 20_000, "r2's load by path on r1");
    await until(() => seen.includes('lines AVAILABLE'), 10_000, "r2's status events on r1");
    // a catch-up (the scripts, the hashes) after a lost connection
    await admin.call('CLIENT', 'KILL', 'USER', 'gateway');
    await until(() => r1.c.status().connected, 10_000, 'r1 back');
    await r2.m.load('mobilenet');
    await until(() => state(r1.m, 'mobilenet') === 'AVAILABLE', 20_000, "r2's load on r1");
    expect(r1.c.status().error).toBeNull();
    expect(lines.filter((l) => /NOPERM|can't|failed|could not/.test(l))).toEqual([]);
  }, 60_000);

  it('an entry that is not JSON does not keep a replica from applying the state of every other model, nor fill the log', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const dir = await repository(['mobilenet', 'text-direction']);
    const r1 = await replica('r1', redis.url, dir);
    await r1.m.unload('mobilenet');
    const admin = adminOf(redis.url);
    // another program on the prefix, or an operator's hand: the README says such a state "is taken for the sender's"
    await admin.hset('gateway:unloaded', 'text-direction', 'not json');

    const r2 = await replica('r2', redis.url, dir); // joins: must apply mobilenet's unload
    await until(() => settled(r2.m, 'mobilenet'), 20_000, 'replica 2 settled');
    await sleep(4000);
    expect(state(r2.m, 'mobilenet')).toBe('END');
    const failed = lines.filter((l) => /catch-up failed/.test(l));
    expect(failed.length).toBeLessThanOrEqual(2);
  }, 60_000);

  it('Redis restarted from an older snapshot: the replicas still agree, on the changes they all applied since', async () => {
    const redis = await startRedisWithSnapshots();
    stops.push(() => redis.stop());
    const dir = await repository(['mobilenet', 'text-direction']);
    const r1 = await replica('r1', redis.url, dir);
    const r2 = await replica('r2', redis.url, dir);
    const both = (model: string, s: string) =>
      until(() => state(r1.m, model) === s && state(r2.m, model) === s, 15_000, `${model} ${s} on both`);
    await r1.m.unload('mobilenet');
    await r2.m.unload('text-direction');
    await both('mobilenet', 'END');
    await both('text-direction', 'END');

    const admin = new Redis(redis.url, { retryStrategy: () => 100 });
    admin.on('error', () => undefined);
    stops.push(async () => admin.disconnect());
    await admin.save(); // a snapshot (RDB: Redis' default persistence)
    await r2.m.load('mobilenet');
    await r1.m.load('text-direction');
    await both('mobilenet', 'AVAILABLE');
    await both('text-direction', 'AVAILABLE');

    await redis.crash(); // the two loads were not in the snapshot
    // seen gone before Redis is back (after it, a replica may have reconnected between two looks)
    await until(() => !r1.c.status().connected || !r2.c.status().connected, 10_000, 'a replica to see Redis gone');
    await redis.start();
    await until(() => r1.c.status().connected && r2.c.status().connected, 20_000, 'both reconnected');
    await sleep(3000); // their catch-ups
    await until(
      () => ['mobilenet', 'text-direction'].every((model) => settled(r1.m, model) && settled(r2.m, model)),
      20_000,
      'both settled',
    );
    const seen = (m: ModelManager) => ({ mobilenet: state(m, 'mobilenet'), 'text-direction': state(m, 'text-direction') });
    // every replica applied both loads; a snapshot older than them must not split the cluster
    expect(seen(r1.m)).toEqual(seen(r2.m));
    expect(seen(r1.m)).toEqual({ mobilenet: 'AVAILABLE', 'text-direction': 'AVAILABLE' });
  }, 90_000);

  it("a replica whose subscription's connection alone goes silent (an idle flow a NAT forgot) gets the others' changes again", async () => {
    const { redis, dir } = await oneFolder();
    const proxy = await redisProxy(redis.port);
    const r1 = await replica('r1', redis.url, dir);
    const r2 = await replica('r2', proxy.url, dir);
    expect(proxy.silence(/subscribe/i)).toBe(1); // its publisher, pinged, and its stream reader go on
    await r1.m.unload('mobilenet');
    await until(() => state(r2.m, 'mobilenet') === 'END', 30_000, 'replica 2 to apply the unload');
  }, 60_000);

  it("a replica whose stream reader's connection alone goes silent gets the others' status events again", async () => {
    const { redis, dir } = await oneFolder();
    const proxy = await redisProxy(redis.port);
    const r1 = await replica('r1', redis.url, dir);
    const r2 = await replica('r2', proxy.url, dir);
    // the events r2's feed hands on that r2's manager did not make (the replicas share this process's replica name)
    const own = new WeakSet<object>();
    r2.m.prependListener('status', (e) => own.add(e));
    const seen: string[] = [];
    r2.c.feed.on('status', (e) => !own.has(e) && seen.push(`${e.model} ${e.state}`));
    expect(proxy.silence(/xread/i)).toBe(1);
    await r1.m.unload('mobilenet');
    await until(() => seen.includes('mobilenet END'), 30_000, "replica 1's events on replica 2");
  }, 60_000);

  it('a Redis that stops answering (a network partition: no reset, no reply) is shown as lost in the status', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const proxy = await redisProxy(redis.port);
    const dir = await repository(['mobilenet']);
    const r1 = await replica('r1', proxy.url, dir);
    const r2 = await replica('r2', redis.url, dir); // on the other side of the partition
    expect(r1.c.status().connected).toBe(true);
    proxy.dropping = true;
    await r1.m.unload('mobilenet'); // its publish gets no answer
    // /ready's cluster.connected and gateway_cluster_bus_connected come from this status
    await until(() => !r1.c.status().connected, 30_000, 'the bus shown as lost');
    expect(r1.c.status().error).toMatch(/did not answer a PING/);
    // the partition heals: connected again
    proxy.dropping = false;
    await until(() => r1.c.status().connected, 30_000, 'the bus back');
    // and the unload made meanwhile reaches the other replica, not lost with the cut connection
    await until(() => r2.m.get('mobilenet')?.versions.get(1)?.state === 'END', 30_000, 'the unload applied on replica 2');
  }, 60_000);

  it('replaced when older: a change published since Redis came back is not undone, and the other replicas adopt the state', async () => {
    const redis = await startRedisWithSnapshots();
    stops.push(() => redis.stop());
    const proxy = await redisProxy(Number(new URL(redis.url).port)); // turns replica 1 away for a while
    const dir = await repository(['mobilenet', 'text-direction']);
    const r1 = await replica('r1', proxy.url, dir);
    const admin = new Redis(redis.url, { retryStrategy: () => 100 });
    admin.on('error', () => undefined);
    stops.push(async () => admin.disconnect());
    const counted = (n: number) => until(async () => (await admin.hget('gateway:unloaded', '#')) === String(n), 10_000, `${n} changes`);
    await admin.save(); // the snapshot: nothing unloaded
    // four changes after it, on replica 1: both models unloaded
    await r1.m.unload('mobilenet');
    await r1.m.unload('text-direction');
    await r1.m.load('text-direction');
    await r1.m.unload('text-direction');
    await counted(4);

    proxy.refusing = true;
    await redis.crash();
    await redis.start(); // from the snapshot, which counts none of them
    await until(() => !r1.c.status().connected, 10_000, 'replica 1 to see Redis gone');
    // a replica that starts meanwhile (a rolling restart, the autoscaler), on which mobilenet is unloaded and loaded
    // again: the newest change of the cluster
    const r2 = await replica('r2', redis.url, dir);
    await r2.m.unload('mobilenet');
    await r2.m.load('mobilenet');
    await counted(2);

    proxy.refusing = false; // replica 1, back, has received change 4 of a hash that counts 2: older
    await until(() => r1.c.status().connected, 20_000, 'replica 1 reconnected');
    await sleep(6000); // its catch-up, then the state checks of both
    const seen = (m: ModelManager) => ({ mobilenet: state(m, 'mobilenet'), 'text-direction': state(m, 'text-direction') });
    expect(seen(r1.m)).toEqual(seen(r2.m));
    expect(seen(r1.m)).toEqual({ mobilenet: 'AVAILABLE', 'text-direction': 'END' });
  }, 120_000);

  /** A folder outside the repository (under MODEL_ROOTS) holding a copy of the text-direction model, and its model.json. */
  async function outsideFolder() {
    const { dir } = await sharedRepository(['text-direction']);
    stops.push(() => rm(dir, { recursive: true, force: true }));
    const config = JSON.parse(await readFile(path.join(dir, 'text-direction', 'model.json'), 'utf8')) as Record<string, unknown>;
    delete config.$schema;
    return { root: dir, model: path.join(dir, 'text-direction', '1', 'model.onnx'), config };
  }
  const described = (m: ModelManager, model: string) => {
    const x = m.get(model);
    return x && { source: x.source, state: state(m, model), description: x.config.description, metadata: x.config.metadata };
  };

  it('a model loaded by path is loaded by a replica that starts later, as the others serve it; unloaded, it starts unloaded; deleted, not at all', async () => {
    const { redis, dir, outside } = await oneFolder();
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    await r1.m.load('lines', { path: outside.model, config: { ...outside.config, description: 'given with the path' } });
    await r1.m.update('lines', { metadata: { team: 'ocr', license: null } });
    const expected = {
      source: 'path',
      state: 'AVAILABLE',
      description: 'given with the path',
      metadata: { source: (outside.config.metadata as Record<string, unknown>).source, upstream: 'PaddlePaddle/PaddleOCR', team: 'ocr' },
    };
    expect(described(r1.m, 'lines')).toEqual(expected);

    // a rolling restart, or a new pod from the autoscaler
    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]);
    await until(() => described(r2.m, 'lines')?.state === 'AVAILABLE', 20_000, 'replica 2 to load it');
    expect(described(r2.m, 'lines')).toEqual(expected);
    expect(r2.m.get('lines')!.config.labels).toEqual(['0', '180']); // the configuration given with the path

    await r1.m.unload('lines');
    await until(() => state(r2.m, 'lines') === 'END', 10_000, 'replica 2 to unload it');
    const r3 = await replica('r3', redis.url, dir, {}, [outside.root]);
    await until(() => state(r3.m, 'lines') === 'END', 20_000, 'replica 3 to hold it unloaded');

    await r2.m.delete('lines');
    await until(() => !r1.m.get('lines') && !r3.m.get('lines'), 10_000, 'the others to forget it');
    const r4 = await replica('r4', redis.url, dir, {}, [outside.root]);
    await sleep(1000);
    expect(r4.m.get('lines')).toBeUndefined();
    expect(r4.m.get('mobilenet')?.versions.get(1)?.state).toBe('AVAILABLE');
  }, 90_000);

  it('a model loaded by path while a replica was cut off from Redis is loaded there when it is back; one it cannot reach is said', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const proxy = await redisProxy(redis.port);
    const dir = await repository(['mobilenet']);
    const outside = await outsideFolder();
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    const r2 = await replica('r2', proxy.url, dir, { stateCheckMs: 500 }, [outside.root]);
    const r3 = await replica('r3', redis.url, dir); // without that root
    await cutOff(proxy, r2.c, 'replica 2');
    await r1.m.load('lines', { path: outside.model });
    await until(
      () => r3.m.get('lines') === undefined && lines.some((l) => /could not be loaded here|did not apply here/.test(l)),
      10_000,
      'replica 3 to refuse it',
    );
    proxy.dropping = false;
    proxy.refusing = false;
    await until(() => r2.c.status().connected, 30_000, 'replica 2 back');
    await until(() => r2.m.get('lines')?.versions.get(1)?.state === 'AVAILABLE', 20_000, 'replica 2 to load it');
    expect(r2.m.get('lines')!.source).toBe('path');
  }, 90_000);

  it('a key of another type where the models loaded by path are kept stops neither changes nor catch-ups', async () => {
    const { redis, dir, outside } = await oneFolder();
    const admin = adminOf(redis.url);
    await admin.set('gateway:paths', 'an operator wrote this');
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]);
    await r1.m.load('lines', { path: outside.model });
    await r1.m.update('lines', { description: 'edited' });
    await r1.m.unload('mobilenet');
    await until(() => r2.m.get('lines')?.config.description === 'edited', 10_000, 'replica 2 to apply the load and the update');
    await until(() => state(r2.m, 'mobilenet') === 'END', 10_000, 'replica 2 to unload mobilenet');
    const r3 = await replica('r3', redis.url, dir, {}, [outside.root]);
    await until(() => state(r3.m, 'mobilenet') === 'END', 10_000, 'replica 3 to apply the unloaded state');
    // said once by each replica as it joined
    const said = lines.filter((l) => /models loaded by path in Redis cannot be read/.test(l));
    expect(said.map((l) => (JSON.parse(l) as { replica: string }).replica).sort()).toEqual(['r1', 'r2', 'r3']);
  }, 60_000);

  it('a key of another type where the models loaded by path are kept does not leave a load uncounted: a model unloaded, then loaded again, is served by a replica that starts later', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const dir = await repository(['mobilenet']);
    const admin = adminOf(redis.url);
    await admin.set('gateway:paths', 'an operator wrote this');
    const r1 = await replica('r1', redis.url, dir);
    await r1.m.unload('mobilenet');
    await until(async () => (await admin.hget('gateway:unloaded', 'mobilenet')) !== null, 10_000, 'the unload to be counted');
    await r1.m.load('mobilenet'); // a model of the repository: nothing to do with the paths key
    expect(state(r1.m, 'mobilenet')).toBe('AVAILABLE');
    await until(async () => (await admin.hget('gateway:unloaded', 'mobilenet')) === null, 5_000, 'the load to be counted');
    const r2 = await replica('r2', redis.url, dir);
    await sleep(500);
    expect(state(r2.m, 'mobilenet')).toBe('AVAILABLE');
  }, 60_000);

  it('the PING watchdog does not cut a Redis that answered at once while this process was busy past the timeout', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const bus = new RedisBus({ url: redis.url, logger, channels: ['gateway:admin'], name: 'busy', pingTimeoutMs: 300 });
    stops.push(() => bus.close());
    await until(() => bus.connected, 10_000, 'the bus connected');
    let cut = 0;
    bus.on('disconnected', () => cut++);
    // the event loop held for 600 ms by other work right after each PING is sent (a long synchronous task, a GC
    // pause): the PONG has come when it is free again, and must be read before the watchdog takes Redis for gone
    const ping = bus.publisher.ping.bind(bus.publisher) as () => Promise<string>;
    bus.publisher.ping = (() => {
      setImmediate(() => {
        const until = Date.now() + 600;
        while (Date.now() < until);
      });
      return ping();
    }) as typeof bus.publisher.ping;
    await sleep(2000);
    expect(cut).toBe(0);
    expect(bus.connected).toBe(true);
  });

  it('a change published while a joining replica reads the models loaded by path is not undone by the older unloaded state it read first', async () => {
    const redis = await startRedis();
    stops.push(() => redis.stop());
    const dir = await repository(['mobilenet']);
    const r1 = await replica('r1', redis.url, dir);
    await r1.m.unload('mobilenet');
    // replica 3 joins: it reads the unloaded state (mobilenet unloaded), then the models loaded by path; between the
    // two reads, replica 1 loads mobilenet again, and that change reaches replica 3 before the second read answers
    const r3 = await replica('r3', redis.url, dir, {}, [], (c) => {
      const publisher = (c as unknown as { bus: { publisher: Redis } }).bus.publisher;
      const multi = publisher.multi.bind(publisher) as () => ReturnType<Redis['multi']>;
      let first = true;
      publisher.multi = (() => {
        const tx = multi();
        if (!first) return tx;
        first = false;
        const exec = tx.exec.bind(tx);
        tx.exec = (async () => {
          await r1.m.load('mobilenet');
          await until(
            () => lines.some((l) => /applying an admin change of another replica/.test(l) && /"replica":"r3"/.test(l)),
            10_000,
            'replica 3 to receive the load',
          );
          return exec();
        }) as typeof tx.exec;
        return tx;
      }) as typeof publisher.multi;
    });
    await sleep(2000);
    await until(() => settled(r3.m, 'mobilenet'), 20_000, 'replica 3 settled');
    // the load is the newest change of the cluster: every replica serves mobilenet
    expect(state(r1.m, 'mobilenet')).toBe('AVAILABLE');
    expect(state(r3.m, 'mobilenet')).toBe('AVAILABLE');
  }, 60_000);

  it('a model loaded by path with a configuration, then loaded again by name: a replica that starts later serves it as the others do', async () => {
    const { redis, dir, outside } = await oneFolder();
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    await r1.m.load('lines', { path: outside.model, config: { ...outside.config, description: 'given with the path' } });
    await r1.m.unload('lines');
    await r1.m.load('lines'); // loadModel(name): served again
    expect(described(r1.m, 'lines')?.state).toBe('AVAILABLE');
    const served = { ...described(r1.m, 'lines'), labels: r1.m.get('lines')!.config.labels };

    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]);
    await until(() => described(r2.m, 'lines')?.state === 'AVAILABLE', 20_000, 'replica 2 to load it');
    expect({ ...described(r2.m, 'lines'), labels: r2.m.get('lines')!.config.labels }).toEqual(served);
  }, 60_000);

  it('a replica cut off while the model it serves by path is loaded from another path comes back serving the new one', async () => {
    const { proxy, b, r1, r2 } = await servedFromACutOff();
    // meanwhile the cluster moves the name to another file: unloadModel, then loadModel(name, path)
    await r1.m.unload('lines');
    await r1.m.load('lines', { path: b.model });
    proxy.dropping = false;
    proxy.refusing = false;
    await until(() => r2.c.status().connected, 30_000, 'replica 2 back');
    await sleep(3000); // its catch-up
    expect(r1.m.get('lines')!.file).toBe(await realpath(b.model));
    expect(r2.m.get('lines')?.file).toBe(await realpath(b.model));
  }, 90_000);

  it('two replicas loading one name from two paths at once end up serving the same file, the one of the load published last', async () => {
    const { redis, dir, a, b } = await twoFolders();
    const r1 = await replica('r1', redis.url, dir, {}, [a.root, b.root]);
    const r2 = await replica('r2', redis.url, dir, {}, [a.root, b.root]);
    const admin = adminOf(redis.url);
    await Promise.all([r1.m.load('lines', { path: a.model }), r2.m.load('lines', { path: b.model })]);
    await sleep(3000); // each applies the other's load
    const kept = (await recordOf(admin, 'lines'))!;
    const last = await realpath(kept.path); // the load published last, which a replica that starts later serves
    expect([r1.m.get('lines')?.file, r2.m.get('lines')?.file]).toEqual([last, last]);
  }, 60_000);

  it('a model loaded by path and deleted on a replica of the previous version (a rolling upgrade) is not loaded again by a replica that starts later', async () => {
    const { redis, dir, outside } = await oneFolder();
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    await r1.m.load('lines', { path: outside.model });
    // a replica of the version before <prefix>:paths deletes it: its publish script (as it was, for a delete) counts
    // the change, drops the model's unloaded state and publishes it; it knows nothing of the paths hash
    const admin = adminOf(redis.url);
    const previousDelete = `
local epoch = redis.call('HGET', KEYS[1], '.')
local seq = redis.call('HINCRBY', KEYS[1], '#', 1)
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1], string.sub(ARGV[3], 1, -2) .. ',"seq":' .. seq .. ',"epoch":' .. cjson.encode(epoch or '') .. '}')
return seq`;
    const message = { v: 1, from: 'a-replica-of-the-previous-version', replica: 'old', op: { op: 'delete', name: 'lines' }, n: 1 };
    await admin.eval(previousDelete, 1, 'gateway:unloaded', 'gateway:admin', 'lines', JSON.stringify(message));
    await until(() => !r1.m.get('lines'), 10_000, 'replica 1 to forget it');

    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]); // the next pod of the rolling upgrade
    await sleep(2000);
    expect(r2.m.get('lines')).toBeUndefined();
    expect(r1.m.get('lines')).toBeUndefined();
  }, 60_000);

  it('lost while connected (FLUSHALL) and written back first by a replica that cannot load a model loaded by path: a replica that starts later still loads it', async () => {
    const { redis, dir, outside } = await oneFolder();
    const r1 = await replica('r1', redis.url, dir, { stateCheckMs: 3000 }, [outside.root]);
    const r2 = await replica('r2', redis.url, dir, { stateCheckMs: 200 }); // without that root (README: "serves without it")
    await r1.m.load('lines', { path: outside.model });
    const admin = adminOf(redis.url);
    await admin.flushall();
    await until(async () => (await admin.hget('gateway:unloaded', '.')) !== null, 10_000, 'the state written back');
    await sleep(4000); // replica 1's check too
    expect(r2.m.get('lines')).toBeUndefined();
    const r3 = await replica('r3', redis.url, dir, {}, [outside.root]); // a rolling restart, or the autoscaler
    await sleep(2000);
    expect(r3.m.get('lines')?.versions.get(1)?.state).toBe('AVAILABLE');
  }, 60_000);

  it('an update made on a replica cut off from Redis, published when it is back, does not write the path it served over the one loaded since', async () => {
    const { redis, proxy, dir, a, b, r1, r2 } = await servedFromACutOff();
    await r1.m.unload('lines');
    await r1.m.load('lines', { path: b.model }); // the cluster now serves the name from b
    await r2.m.update('lines', { description: 'edited while cut off' }); // kept, published once back
    proxy.dropping = false;
    proxy.refusing = false;
    await until(() => r2.c.status().connected, 30_000, 'replica 2 back');
    await sleep(3000);
    const admin = adminOf(redis.url);
    const kept = (await recordOf(admin, 'lines'))!;
    expect(kept.path).toBe(b.model); // what the last load published says, and replica 1 serves
    const r3 = await replica('r3', redis.url, dir, {}, [a.root, b.root]);
    await sleep(1000);
    expect(r3.m.get('lines')?.file).toBe(r1.m.get('lines')!.file);
  }, 90_000);

  it('a model loaded by path here while this replica catches up is not replaced by the older record the catch-up read', async () => {
    const { redis, dir, a, b } = await twoFolders();
    const r1 = await replica('r1', redis.url, dir, {}, [a.root, b.root]);
    await r1.m.load('lines', { path: b.model });
    // replica 3 joins; as its catch-up reads the models loaded by path, a client loads the name there from another path
    let local: Promise<unknown> = Promise.resolve();
    const r3 = await replica('r3', redis.url, dir, {}, [a.root, b.root], (c) => {
      const { bus, manager } = c as unknown as { bus: { publisher: Redis }; manager: ModelManager };
      const multi = bus.publisher.multi.bind(bus.publisher) as () => ReturnType<Redis['multi']>;
      let first = true;
      bus.publisher.multi = (() => {
        const tx = multi();
        if (!first) return tx;
        first = false;
        const exec = tx.exec.bind(tx);
        tx.exec = (async () => {
          local = manager.load('lines', { path: a.model });
          await until(() => manager.get('lines'), 10_000, 'the load begun');
          return exec();
        }) as typeof tx.exec;
        return tx;
      }) as typeof bus.publisher.multi;
    });
    await local; // answered: the client's load is the newest change of the cluster
    await sleep(3000);
    const admin = adminOf(redis.url);
    const kept = (await recordOf(admin, 'lines'))!;
    expect(kept.path).toBe(a.model);
    expect([r1.m.get('lines')?.file, r3.m.get('lines')?.file]).toEqual([await realpath(a.model), await realpath(a.model)]);
  }, 60_000);

  it('a model loaded by path that no replica can load any more (its file gone) can be deleted, and is not loaded again when a file comes back there', async () => {
    const { redis, dir, outside } = await oneFolder();
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    await r1.m.load('lines', { path: outside.model });
    await r1.c.close(); // the replicas that served it are gone (a rolling restart)
    await r1.m.close();
    const file = await readFile(outside.model);
    await rm(outside.model); // and so is its file
    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]);
    expect(r2.m.get('lines')).toBeUndefined(); // said in the log, at warn
    // the operator deletes what the cluster lists nowhere but still keeps
    const deleted = await r2.m.delete('lines').then(
      () => 'deleted',
      (e: Error) => e.message,
    );
    await writeFile(outside.model, file); // another file there, later
    const r3 = await replica('r3', redis.url, dir, {}, [outside.root]);
    await sleep(1000);
    expect({ deleted, r3: r3.m.get('lines')?.versions.get(1)?.state ?? 'none' }).toEqual({ deleted: 'deleted', r3: 'none' });
  }, 60_000);

  it('a replica that starts later and fails to load a model loaded by path (its file is no model any more) serves without it: ready', async () => {
    const { redis, dir, outside } = await oneFolder();
    const r1 = await replica('r1', redis.url, dir, {}, [outside.root]);
    await r1.m.load('lines', { path: outside.model });
    await writeFile(outside.model, 'not a model any more'); // replica 1 serves the copy it loaded
    expect(r1.m.ready).toBe(true);
    const r2 = await replica('r2', redis.url, dir, {}, [outside.root]); // a rolling restart, or the autoscaler
    await until(() => settled(r2.m, 'mobilenet') && r2.m.get('lines')?.versions.get(1)?.state !== 'LOADING', 20_000, 'replica 2 settled');
    await sleep(500);
    // README: "a replica that cannot load it says so in its log, at warn, and serves without it"; /ready sums up m.ready
    expect(r2.c.status().joined && r2.m.ready).toBe(true);
  }, 60_000);
});
