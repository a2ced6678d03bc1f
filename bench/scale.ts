/**
 * npm run bench:scale: throughput of 1, 2 and 3 replicas behind HAProxy on this machine, side by side in one run.
 *
 * Three replica processes (`node --import tsx src/main.ts`, REDIS_URL to a real redis-server, one shared repository
 * with models/mobilenet) and three HAProxy instances in front of the first 1, 2 and 3 of them, plus one replica
 * without a proxy (the proxy's cost). The points run interleaved, round after round (BENCH_ROUNDS, default 3, of
 * BENCH_SECONDS, default 3, after a 1 s warm-up), at BENCH_CONCURRENCY (default 16) clients uploading the ten ImageNet
 * photos; each point is the median of its rounds. Writes bench/scale-results.json. Talks only to 127.0.0.1, and stops
 * everything it starts however the run ends. Needs the Debian packages redis-server and haproxy.
 */
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { have, killAll, sharedRepository, startHaproxy, startRedis, startReplica, type Replica } from './cluster-lib.ts';
import { IMAGES, ROOT, multipartBody, post, rssMiB } from './lib.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
/** Engine threads per replica (0: one per core, the server's default). */
const ENGINE_THREADS = process.env.BENCH_ENGINE_THREADS ?? '0';
const PHOTOS = ['airliner.jpeg', 'arctic-fox.jpeg', 'bee.jpeg', 'golden_retriever.jpeg', 'gorilla.jpeg', 'zebra.jpeg'];
const QUERY = 'mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { label } } }';

interface Point {
  setup: string;
  replicas: number;
  throughput: number;
  p50: number;
  p95: number;
  errors: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const round = (x: number) => Math.round(x * 10) / 10;

async function drive(port: number, bodies: { body: Uint8Array; type: string }[]): Promise<Omit<Point, 'setup' | 'replicas'>> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  let stop = false;
  let recording = false;
  let errors = 0;
  let n = 0;
  const latencies: number[] = [];
  const worker = async () => {
    while (!stop) {
      const b = bodies[n++ % bodies.length];
      const t0 = performance.now();
      const text = await post(agent, port, b.body, b.type).catch((e: Error) => `error ${e.message}`);
      if (!recording) continue;
      if (text.includes('"predictions"')) latencies.push(performance.now() - t0);
      else if (errors++ === 0) console.error(`error: ${text.slice(0, 200)}`);
    }
  };
  const workers = Array.from({ length: CONCURRENCY }, worker);
  await new Promise((r) => setTimeout(r, WARMUP_SECONDS * 1000));
  recording = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  recording = false;
  const seconds = (performance.now() - t0) / 1000;
  stop = true;
  await Promise.all(workers);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return {
    throughput: round(latencies.length / seconds),
    p50: round(percentile(latencies, 50)),
    p95: round(percentile(latencies, 95)),
    errors,
  };
}

async function main() {
  for (const p of ['redis-server', 'haproxy'])
    if (!have(p)) throw new Error(`bench:scale needs ${p} (apt-get install redis-server haproxy)`);
  const bodies = await Promise.all(PHOTOS.map(async (f) => multipartBody(QUERY, await readFile(path.join(IMAGES, f)), f)));
  const redis = await startRedis();
  const repo = await sharedRepository(['mobilenet']);
  const replicas: Replica[] = [];
  try {
    for (const name of ['r1', 'r2', 'r3'])
      replicas.push(
        await startReplica({
          name,
          repository: repo.dir,
          redisUrl: redis.url,
          quiet: true,
          env: { ENGINE_THREADS, ENGINE_INSTANCES: '1', LOG_LEVEL: 'warn', DRAIN_DELAY_MS: '0' },
        }),
      );
    const proxies = await Promise.all(
      [1, 2, 3].map((n) =>
        startHaproxy(
          replicas.slice(0, n).map((r) => ({ name: r.name, port: r.port })),
          { checkMs: 1000 },
        ),
      ),
    );
    const setups = [
      { setup: '1 replica, no proxy', replicas: 1, port: replicas[0].port },
      ...proxies.map((p, i) => ({ setup: `${i + 1} replica${i ? 's' : ''} behind HAProxy`, replicas: i + 1, port: p.port })),
    ];
    console.log(`${os.cpus().length} cores (${os.cpus()[0]?.model}), concurrency ${CONCURRENCY}, ENGINE_THREADS ${ENGINE_THREADS}`);
    const runs = new Map<string, Omit<Point, 'setup' | 'replicas'>[]>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const s of setups) {
        const r = await drive(s.port, bodies);
        console.log(
          `round ${round}  ${s.setup.padEnd(28)} ${String(r.throughput).padStart(7)} req/s  p50 ${r.p50} ms  p95 ${r.p95} ms  errors ${r.errors}`,
        );
        runs.set(s.setup, [...(runs.get(s.setup) ?? []), r]);
      }
    }
    const points: Point[] = setups.map((s) => {
      const rs = runs.get(s.setup)!;
      return {
        setup: s.setup,
        replicas: s.replicas,
        throughput: median(rs.map((r) => r.throughput)),
        p50: median(rs.map((r) => r.p50)),
        p95: median(rs.map((r) => r.p95)),
        errors: rs.reduce((a, r) => a + r.errors, 0),
      };
    });
    // each replica is a whole process: its own model sessions, arenas and caches
    const rss = Object.fromEntries(await Promise.all(replicas.map(async (r) => [r.name, await rssMiB(r.pid()!)] as const)));
    console.log(`resident memory after the run (MiB): ${JSON.stringify(rss)}`);
    const base = points.find((p) => p.setup.startsWith('1 replica behind'))!.throughput;
    console.log('\n| setup | req/s | vs 1 replica behind HAProxy | p50 ms | p95 ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: |');
    for (const p of points)
      console.log(`| ${p.setup} | ${p.throughput} | ${(p.throughput / base).toFixed(2)}x | ${p.p50} | ${p.p95} | ${p.errors} |`);
    await writeFile(
      path.join(ROOT, 'bench', 'scale-results.json'),
      JSON.stringify(
        {
          date: new Date().toISOString(),
          cpus: os.cpus().length,
          cpu: os.cpus()[0]?.model,
          node: process.version,
          concurrency: CONCURRENCY,
          engineThreads: ENGINE_THREADS,
          rounds: ROUNDS,
          seconds: SECONDS,
          points,
          replicaRssMiB: rss,
        },
        null,
        2,
      ) + '\n',
    );
    for (const p of proxies) await p.stop();
  } finally {
    await Promise.allSettled(replicas.map((r) => r.stop()));
    await redis.stop();
    await repo.remove();
    killAll();
  }
}

main().catch((e) => {
  console.error(e);
  killAll();
  process.exit(1);
});
