/**
 * npm run bench:protocol: what the protocol alone costs, the gateway's against three baselines, side by side in one
 * interleaved run. The request is the benchmark's protocol-alone upload (a small photo in a GraphQL multipart request,
 * answered without inference) and every server is a separate process on 127.0.0.1:
 * - gateway: the real server (`npm start`), every rule on (limits, tokens, CSRF, typed errors, metrics, logs);
 * - yoga: bench/protocol/yoga.ts, a minimal yoga server taking the same upload, none of the gateway's plugins;
 * - lean: bench/protocol/lean.ts, the least a GraphQL multipart upload costs in Node (node:http, busboy, graphql-js on
 *   a cached document, no rule at all): the ceiling of a "lean upload path in front of yoga";
 * - bare: bench/protocol/bare.ts, node:http reading the body and answering fixed JSON: the floor of HTTP on loopback.
 * Per round and server: CPU per request at c16 (the server's CPU time from /proc over its answers), the latency at c1
 * with requests back to back, and at c1 with an idle pause before each request (a client that thinks between calls,
 * as a c1 inference request leaves the main thread idle while the image decodes and the engine runs).
 * With bench/results.json (the last full `npm run bench`), it computes for each server's cost the best a gateway
 * speaking it could do against the in-process pipeline at c16 on these cores. Writes bench/protocol-results.json.
 *
 * BENCH_ROUNDS (5), BENCH_SECONDS (3, each c16 point), BENCH_IDLE_MS (5, the pause), BENCH_MODES (a subset).
 */
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import {
  IMAGES,
  PROTOCOL_ALONE_QUERY,
  ROOT,
  cpuSeconds,
  mobilenetConfig,
  modelFile,
  multipartBody,
  post,
  startScript,
  startServer,
} from './lib.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const IDLE_MS = Number(process.env.BENCH_IDLE_MS ?? 5);
const C1_REQUESTS = 300;
const selected = process.env.BENCH_MODES?.split(',');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs: number[]): [number, number] => [round(Math.min(...xs)), round(Math.max(...xs))];

const photo = await readFile(path.join(IMAGES, 'airliner.jpeg'));
const { body, type } = multipartBody(PROTOCOL_ALONE_QUERY, photo, 'airliner.jpeg');
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

interface Subject {
  mode: string;
  port: number;
  pid: number;
  stop(): Promise<unknown>;
}
const starters: Record<string, () => Promise<Subject>> = {
  gateway: async () => {
    const s = await startServer({ mobilenet: { onnx: modelFile('mobilenet'), config: mobilenetConfig({ maxBatchSize: 16 }) } });
    return { mode: 'gateway', port: s.port, pid: s.child.pid!, stop: s.stop };
  },
  ...Object.fromEntries(
    ['yoga', 'lean', 'bare'].map((mode) => [
      mode,
      async () => {
        const s = await startScript(path.join(ROOT, 'bench', 'protocol', `${mode}.ts`));
        return { mode, port: s.port, pid: s.child.pid!, stop: s.stop };
      },
    ]),
  ),
};
const subjects: Subject[] = [];
for (const [mode, start] of Object.entries(starters)) if (!selected || selected.includes(mode)) subjects.push(await start());

async function call(s: Subject) {
  const text = await post(agent, s.port, body, type);
  if (!text.includes('"__typename"')) throw new Error(`${s.mode}: ${text.slice(0, 200)}`);
}

/** c16 for `seconds`: the server's CPU per request, the client's, and req/s. */
async function saturated(s: Subject, seconds: number) {
  let stop = false;
  let answered = 0;
  const workers = Array.from({ length: 16 }, async () => {
    while (!stop) {
      await call(s);
      answered++;
    }
  });
  await sleep(500);
  const [cpu0, n0, client0, t0] = [await cpuSeconds(s.pid), answered, process.cpuUsage(), performance.now()];
  await sleep(seconds * 1000);
  const [cpu1, n1, client, t1] = [await cpuSeconds(s.pid), answered, process.cpuUsage(client0), performance.now()];
  stop = true;
  await Promise.all(workers);
  const n = n1 - n0;
  return {
    cpuPerRequestMs: ((cpu1 - cpu0) * 1000) / n,
    clientCpuPerRequestMs: (client.user + client.system) / 1000 / n,
    throughput: (n * 1000) / (t1 - t0),
  };
}

/** p50 of lone requests, back to back or each after a pause. */
async function lone(s: Subject, pauseMs: number) {
  const latencies: number[] = [];
  for (let i = 0; i < C1_REQUESTS; i++) {
    if (pauseMs > 0) await sleep(pauseMs);
    const t0 = performance.now();
    await call(s);
    latencies.push(performance.now() - t0);
  }
  return median(latencies);
}

try {
  for (const s of subjects) await saturated(s, 10); // warm up: V8 optimizes each server's path (the gateway's takes ~1000 requests)
  const rounds = new Map(subjects.map((s) => [s.mode, [] as { cpu: number; client: number; rps: number; c1: number; c1Idle: number }[]]));
  for (let k = 0; k < ROUNDS; k++) {
    for (const s of k % 2 ? [...subjects].reverse() : subjects) {
      const c16 = await saturated(s, SECONDS);
      const c1 = await lone(s, 0);
      const c1Idle = await lone(s, IDLE_MS);
      rounds.get(s.mode)!.push({ cpu: c16.cpuPerRequestMs, client: c16.clientCpuPerRequestMs, rps: c16.throughput, c1, c1Idle });
      console.log(
        `round ${k + 1} ${s.mode.padEnd(8)} c16: ${round(c16.cpuPerRequestMs)} ms CPU per request, ${Math.round(c16.throughput)} req/s; c1 p50 ${round(c1)} ms, after ${IDLE_MS} ms idle ${round(c1Idle)} ms`,
      );
    }
  }
  // the last full run's in-process pipeline and load generator, for the bound each protocol cost puts on a gateway
  const last = JSON.parse(await readFile(path.join(ROOT, 'bench', 'results.json'), 'utf8')) as {
    date: string;
    points: { set: string; mode: string; concurrency: number; cpuPerImageMs: number | null; clientCpuPerRequestMs: number | null }[];
  };
  const at = (mode: string) => last.points.find((p) => p.set === 'small' && p.mode === mode && p.concurrency === 16);
  const inProcess = at('in-process')?.cpuPerImageMs ?? NaN;
  const loadGenerator = at('gateway')?.clientCpuPerRequestMs ?? NaN;
  const results = Object.fromEntries(
    subjects.map((s) => {
      const r = rounds.get(s.mode)!;
      const cpu = r.map((x) => x.cpu);
      return [
        s.mode,
        {
          'c16: CPU per request (ms)': { median: round(median(cpu)), spread: spread(cpu) },
          'c16: req/s': round(median(r.map((x) => x.rps)), 1),
          'c16: load generator CPU per request (ms)': round(median(r.map((x) => x.client))),
          'c1 back to back: p50 (ms)': round(median(r.map((x) => x.c1))),
          [`c1 after ${IDLE_MS} ms idle: p50 (ms)`]: round(median(r.map((x) => x.c1Idle))),
          // a gateway adding to the in-process pipeline this protocol's cost and nothing else, its clients on the same cores
          'best possible gateway / in-process at c16, with this cost': round(inProcess / (inProcess + median(cpu) + loadGenerator)),
        },
      ];
    }),
  );
  console.log('\nmedians over the rounds:');
  for (const [mode, r] of Object.entries(results))
    console.log(
      `  ${mode.padEnd(8)} ${Object.entries(r)
        .map(([k, v]) => `${k}: ${typeof v === 'number' ? v : `${v.median} [${v.spread.join('-')}]`}`)
        .join('; ')}`,
    );
  console.log(
    `(the bound uses the in-process CPU per image, ${inProcess} ms, and the load generator's ${loadGenerator} ms per request at c16 from bench/results.json of ${last.date})`,
  );
  if (!selected) {
    const out = {
      date: new Date().toISOString(),
      machine: `${os.cpus()[0]?.model ?? 'unknown'}, ${os.availableParallelism()} cores, Node ${process.versions.node}`,
      rounds: ROUNDS,
      secondsPerRound: SECONDS,
      idleMs: IDLE_MS,
      boundFrom: { run: last.date, inProcessCpuPerImageMs: inProcess, loadGeneratorCpuPerRequestMs: loadGenerator },
      results,
    };
    await writeFile(path.join(ROOT, 'bench', 'protocol-results.json'), JSON.stringify(out, null, 2) + '\n');
    console.log('wrote bench/protocol-results.json');
  }
} finally {
  agent.destroy();
  for (const s of subjects) await s.stop();
}
