/**
 * npm run bench: the gateway against the in-process limit and a naive server, side by side in one interleaved run.
 *
 * Modes (each a separate process but the in-process one, all on 127.0.0.1):
 * - in-process: the limit without a server: decode, preprocess, the same batcher and engine, in this process;
 * - gateway: the real server as `npm start` runs it, GraphQL multipart uploads, batching on;
 * - gateway, batching off: the same server, a copy of the model with maxBatchSize 1;
 * - naive: bench/naive.ts, the server a user writes in an afternoon (one image per call on the main thread);
 * - grpc jpeg / grpc raw tensor: the gateway's KServe v2 gRPC, the photo as BYTES / the preprocessed tensor.
 * Photo sets: the ten small ImageNet photos, and large photos (1920x1080 and 4000x3000 JPEGs made here). Reported per
 * point: req/s, latency percentiles, mean batch, and CPU time per image (the serving process's CPU time over the
 * images it answered: steadier than throughput on a shared machine). Stage costs measured alone give the CPU limit of
 * this machine. Writes bench/results.json and bench/chart.svg; talks only to 127.0.0.1; every server it starts is
 * stopped however the run ends.
 *
 * BENCH_CONCURRENCY (1,2,4,16,64), BENCH_LARGE_CONCURRENCY (1,16), BENCH_ROUNDS (5), BENCH_SECONDS (3),
 * BENCH_WARMUP_SECONDS (1, before each point), BENCH_SERVER_WARMUP_SECONDS (10, each mode at c16 before the first round), BENCH_MODES (a subset; writes nothing), BENCH_BASELINE (another checkout, or `.`, one more
 * mode: "baseline gateway", with the same repository, and its protocol alone beside the gateway's), BENCH_BASELINE_ENV (K=V,K=V: settings for that server, to compare settings in one run),
 * BENCH_BASELINE_NODE_ARGS (node flags for that server, space-separated: V8 flags are not allowed in NODE_OPTIONS).
 */
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { defaultAloneThreads, defaultDecodeThreads, defaultEngineInstances, defaultEngineThreads } from '../src/config.ts';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import { exactInt8Here } from '../src/engine/onnx/exact-int8.ts';
import { Admissions } from '../src/batching/admission.ts';
import { Batcher } from '../src/batching/batcher.ts';
import { parseModelConfig, postprocessingOf } from '../src/repository/model-config.ts';
import { signatureOf } from '../src/repository/store.ts';
import { prepareImageInput } from '../src/inference/plans.ts';
import { preprocess, probeImage } from '../src/vision/preprocess.ts';
import { classify } from '../src/vision/classification.ts';
import { createKserveGrpcClient, type KserveGrpcClient } from '../src/client/kserve-grpc.ts';
import pLimit from 'p-limit';
import { renderChart } from './chart.ts';
import {
  IMAGES,
  PROTOCOL_ALONE_QUERY,
  ROOT,
  cpuSeconds,
  mobilenetConfig,
  modelFile,
  multipartBody,
  post,
  postRaw,
  startNaive,
  startServer,
} from './lib.ts';

// the same threads as the server (src/main.ts and the inference service), for the in-process mode and the stage costs
sharp.concurrency(1);
const decodes = pLimit(defaultDecodeThreads());

const MODEL = modelFile('mobilenet');
const SMALL = [
  'airliner.jpeg',
  'arctic-fox.jpeg',
  'bee.jpeg',
  'golden_retriever.jpeg',
  'gorilla.jpeg',
  'magnetic_compass.jpeg',
  'peacock.jpeg',
  'pelican.jpeg',
  'snail.jpeg',
  'zebra.jpeg',
];
const list = (v: string | undefined, fallback: string) => (v ?? fallback).split(',').filter(Boolean).map(Number);
const CONCURRENCY = list(process.env.BENCH_CONCURRENCY, '1,2,4,16,64');
const LARGE_CONCURRENCY = list(process.env.BENCH_LARGE_CONCURRENCY, '1,16');
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 1);
/**
 * Every mode serves this long at c16 before the first round, so that no point is measured on code V8 has not yet
 * optimized. Without it c1, the first points, ran on a fresh server: the gateway's main thread spent 5.7 ms per request
 * in its first 130 requests and 3.3-4.2 after 800 (V8 was still optimizing ~130 functions between its 470th and 920th
 * request), where the naive server's few functions are hot within a few requests. Servers in production run warm.
 */
const SERVER_WARMUP_SECONDS = Number(process.env.BENCH_SERVER_WARMUP_SECONDS ?? 10);
/** Modes run interleaved, round after round, so drift on a shared machine hits them alike; medians are reported. */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const MAX_PIXELS = 40_000_000;
const CORES = os.availableParallelism?.() ?? os.cpus().length;

const BATCHING = { maxBatchSize: 16, maxDelayMs: Number(process.env.BENCH_DELAY_MS ?? 0), maxQueueSize: 1024 };
const config = mobilenetConfig;

interface Point {
  set: string;
  mode: string;
  concurrency: number;
  requests: number;
  errors: number;
  seconds: number;
  throughput: number;
  p50: number;
  p95: number;
  p99: number;
  meanBatchSize: number | null;
  /** CPU time of the serving process per image answered, in ms. */
  cpuPerImageMs: number | null;
  /** CPU time of the load generator (this process) per request, in ms: it shares the machine with the server. */
  clientCpuPerRequestMs: number | null;
}

interface Runner {
  mode: string;
  run: (i: number) => Promise<void>;
  stats?: () => Promise<{ items: number; batches: number }>;
  /** CPU seconds the serving process has used so far. */
  cpu: () => Promise<number>;
  /** The serving process is this one (in-process): there is no separate load generator to measure. */
  selfServed?: boolean;
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Serve `runner` from `concurrency` workers for `seconds`, measuring nothing. */
async function warmUp(runner: Runner, concurrency: number, seconds: number): Promise<void> {
  let stop = false;
  let counter = 0;
  let errors = 0;
  const worker = async () => {
    while (!stop) await runner.run(counter++).catch(() => errors++);
  };
  const workers = Array.from({ length: concurrency }, worker);
  await sleep(seconds * 1000);
  stop = true;
  await Promise.all(workers);
  console.log(`warmed up ${runner.mode}: ${counter} requests at c=${concurrency}${errors ? `, ${errors} errors` : ''}`);
}

/** Run `runner` from `concurrency` workers for a warm-up and then SECONDS. */
async function drive(set: string, runner: Runner, concurrency: number): Promise<Point> {
  let stop = false;
  let counter = 0;
  const latencies: number[] = [];
  let errors = 0;
  let recording = false;
  const worker = async () => {
    while (!stop) {
      const i = counter++;
      const t0 = performance.now();
      try {
        await runner.run(i);
        if (recording) latencies.push(performance.now() - t0);
      } catch (e) {
        if (recording && errors++ === 0) console.error(`${runner.mode}: ${(e as Error).message}`);
      }
    }
  };
  const workers = Array.from({ length: concurrency }, worker);
  await sleep(WARMUP_SECONDS * 1000);
  const before = await runner.stats?.();
  const cpu0 = await runner.cpu();
  const client0 = process.cpuUsage();
  recording = true;
  const t0 = performance.now();
  await sleep(SECONDS * 1000);
  recording = false;
  const seconds = (performance.now() - t0) / 1000;
  const client = process.cpuUsage(client0);
  const cpu1 = await runner.cpu();
  const after = await runner.stats?.();
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  const meanBatchSize =
    before && after && after.batches > before.batches ? round((after.items - before.items) / (after.batches - before.batches)) : null;
  const point: Point = {
    set,
    mode: runner.mode,
    concurrency,
    requests: latencies.length,
    errors,
    seconds: round(seconds),
    throughput: round(latencies.length / seconds),
    p50: round(percentile(latencies, 50)),
    p95: round(percentile(latencies, 95)),
    p99: round(percentile(latencies, 99)),
    meanBatchSize,
    cpuPerImageMs: latencies.length ? round(((cpu1 - cpu0) * 1000) / latencies.length) : null,
    clientCpuPerRequestMs: latencies.length && !runner.selfServed ? round((client.user + client.system) / 1000 / latencies.length) : null,
  };
  console.log(
    `${set.padEnd(6)} ${runner.mode.padEnd(22)} c=${String(concurrency).padStart(2)} ${String(point.throughput).padStart(8)} req/s  p50 ${String(point.p50).padStart(7)} ms  p95 ${String(point.p95).padStart(7)} ms  batch ${point.meanBatchSize ?? '-'}  cpu/img ${point.cpuPerImageMs} ms  client cpu/req ${point.clientCpuPerRequestMs} ms  errors ${errors}`,
  );
  return point;
}

function median(points: Point[]): Point {
  const mid = <K extends keyof Point>(k: K) =>
    [...points].sort((a, b) => (a[k] as number) - (b[k] as number))[Math.floor(points.length / 2)][k];
  return {
    ...points[0],
    throughput: mid('throughput'),
    p50: mid('p50'),
    p95: mid('p95'),
    p99: mid('p99'),
    meanBatchSize: mid('meanBatchSize'),
    clientCpuPerRequestMs: mid('clientCpuPerRequestMs'),
    cpuPerImageMs: mid('cpuPerImageMs'),
    requests: points.reduce((n, p) => n + p.requests, 0),
    errors: points.reduce((n, p) => n + p.errors, 0),
  };
}

/** The spread of a ratio over the rounds: [min, max] of per-round ratios (rounds are paired by index). */
function spread(a: Point[], b: Point[], key: 'throughput' | 'cpuPerImageMs'): [number, number] {
  const r = a.map((p, i) => (p[key] ?? NaN) / (b[i][key] ?? NaN)).filter(Number.isFinite);
  return [round(Math.min(...r), 3), round(Math.max(...r), 3)];
}

/** Large photos made from the fixtures: two at 1920x1080 and two at 4000x3000 (JPEG, as cameras write them). */
async function largePhotos(): Promise<{ name: string; bytes: Buffer }[]> {
  const out: { name: string; bytes: Buffer }[] = [];
  for (const [name, w, h] of [
    ['zebra.jpeg', 1920, 1080],
    ['peacock.jpeg', 1920, 1080],
    ['gorilla.jpeg', 4000, 3000],
    ['pelican.jpeg', 4000, 3000],
  ] as const) {
    const bytes = await sharp(path.join(IMAGES, name)).resize(w, h, { fit: 'fill' }).jpeg({ quality: 90 }).toBuffer();
    out.push({ name: `${w}x${h}-${name}`, bytes });
  }
  return out;
}

/** Mean CPU ms of `fn` over `n` runs in this process (all threads), after two warm-up runs. */
async function cpuMs(n: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  await fn(0);
  await fn(1);
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) await fn(i);
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1000 / n;
}

async function main() {
  const small = await Promise.all(SMALL.map(async (name) => ({ name, bytes: await readFile(path.join(IMAGES, name)) })));
  const large = await largePhotos();
  console.log(
    `machine: ${CORES} cores, ${os.cpus()[0]?.model}; node ${process.version}; ${ROUNDS} rounds of ${SECONDS}s per point (after ${WARMUP_SECONDS}s warm-up; every mode warmed up ${SERVER_WARMUP_SECONDS}s at c16 first), modes interleaved; engine threads ${defaultEngineThreads()} x ${defaultEngineInstances()} instances, decode threads ${defaultDecodeThreads()}; int8 products ${exactInt8Here() ? 'exact (this CPU saturates them; the naive server too)' : 'as the CPU computes them'}`,
  );

  // --- the in-process pipeline: the gateway's own code, fused preprocessing included, without HTTP or GraphQL ---
  const engine = createOnnxRuntimeEngine();
  const session = await engine.load(MODEL, {
    intraOpThreads: defaultEngineThreads(),
    aloneThreads: defaultAloneThreads(),
    instances: defaultEngineInstances(),
  });
  const cfg = parseModelConfig(config(BATCHING));
  const plan = await prepareImageInput({ config: cfg, labels: null, mean: null, signature: signatureOf(cfg, null, null) }, session);
  await session.loaded?.();
  const post1 = postprocessingOf(cfg, 'classification');
  let items = 0;
  let batches = 0;
  const admissions = new Admissions(1_000_000);
  const local = new Batcher(
    async (f, options) => {
      batches++;
      items += Object.values(f)[0].shape[0];
      return session.run(f, options);
    },
    // as a version does: batches handed to the engine per instance
    { ...cfg.batching, maxConcurrentBatches: cfg.batching.maxConcurrentBatches * (session.instances ?? 1), timeoutMs: 0 },
    { othersComing: () => admissions.preparingCount > 0, instances: session.instances ?? 1 },
  );
  const inProcess = (photos: { bytes: Buffer }[]): Runner => ({
    mode: 'in-process',
    selfServed: true,
    stats: async () => ({ items, batches }),
    cpu: async () => {
      const c = process.cpuUsage();
      return (c.user + c.system) / 1e6;
    },
    run: async (i) => {
      const ticket = admissions.admit();
      try {
        const img = await probeImage(photos[i % photos.length].bytes, MAX_PIXELS);
        const { tensor, input } = await decodes(() => preprocess(img, plan, MAX_PIXELS));
        ticket.markQueued();
        classify(await local.infer({ [input]: tensor }), post1, null, 1);
      } finally {
        ticket.release();
      }
    },
  });

  // --- stage costs, each alone: what one image costs the CPU, and so what two cores can do at best ---
  const stages: Record<string, number> = {};
  for (const [set, photos] of [
    ['small', small],
    ['large', large],
  ] as const) {
    stages[`${set}: decode and resize (ms CPU per photo)`] = round(
      await cpuMs(photos.length * 4, async (i) =>
        preprocess(await probeImage(photos[i % photos.length].bytes, MAX_PIXELS), plan, MAX_PIXELS),
      ),
    );
  }
  // what a sharp call costs whatever the image: an 8x8 corner of a small photo (decode of its first rows, the
  // pipeline's set-up, the hand-offs between the libuv thread and the libvips worker), not part of the limit
  stages['small: an 8x8 corner through sharp (ms CPU per call)'] = round(
    await cpuMs(small.length * 4, (i) =>
      sharp(small[i % small.length].bytes)
        .extract({ left: 0, top: 0, width: 8, height: 8 })
        .raw()
        .toBuffer(),
    ),
  );
  // a photo as a phone tags it (Display P3): the colour transform done here on the resized pixels, against Little CMS
  // building a new transform in libvips for every photo
  const p3 = await Promise.all(small.map((p) => sharp(p.bytes).withIccProfile('p3').jpeg({ quality: 90 }).toBuffer()));
  stages['small, Display P3: decode and resize (ms CPU per photo)'] = round(
    await cpuMs(small.length * 4, async (i) => preprocess(await probeImage(p3[i % p3.length], MAX_PIXELS), plan, MAX_PIXELS)),
  );
  stages['small, Display P3 through Little CMS: decode and resize (ms CPU per photo)'] = round(
    await cpuMs(small.length * 4, async (i) =>
      preprocess({ ...(await probeImage(p3[i % p3.length], MAX_PIXELS)), rgbProfile: null }, plan, MAX_PIXELS),
    ),
  );
  const tensors = await Promise.all(
    small.map(async (p) => (await preprocess(await probeImage(p.bytes, MAX_PIXELS), plan, MAX_PIXELS)).tensor),
  );
  for (const b of [1, 8]) {
    const feeds = () => {
      const t = tensors[0];
      const data = new Uint8Array(t.data.length * b);
      for (let k = 0; k < b; k++) data.set(tensors[k % tensors.length].data as Uint8Array, k * t.data.length);
      return { [plan.pixelInput ?? plan.input]: { ...t, shape: [b, ...t.shape.slice(1)], data } };
    };
    stages[`engine at batch ${b} (ms CPU per image)`] = round((await cpuMs(40, () => session.run(feeds()))) / b);
  }
  // the trap a phone photo sets: EXIF-rotated 12 megapixels, against the same photo stored upright
  const upright = large.find((p) => p.name.startsWith('4000x3000'))!.bytes;
  const rotated = await sharp(upright).withMetadata({ orientation: 6 }).jpeg({ quality: 90 }).toBuffer();
  stages['4000x3000 JPEG upright: decode and resize (ms CPU)'] = round(
    await cpuMs(6, async () => preprocess(await probeImage(upright, MAX_PIXELS), plan, MAX_PIXELS)),
  );
  stages['4000x3000 JPEG EXIF-rotated: decode and resize (ms CPU)'] = round(
    await cpuMs(6, async () => preprocess(await probeImage(rotated, MAX_PIXELS), plan, MAX_PIXELS)),
  );
  const perImage = (set: 'small' | 'large') =>
    stages[`${set}: decode and resize (ms CPU per photo)`] + stages['engine at batch 8 (ms CPU per image)'];
  const limits = { small: round((CORES * 1000) / perImage('small'), 1), large: round((CORES * 1000) / perImage('large'), 1) };
  console.log('stage costs:', stages, '-> CPU limit (images/s):', limits);

  // --- the servers ---
  // BENCH_PROFILE=1: a V8 CPU profile of the server (bench/profile); =perf: JIT symbols for `perf record -g -p <pid>`
  const profile =
    process.env.BENCH_PROFILE === 'perf'
      ? ['--perf-basic-prof', '--interpreted-frames-native-stack']
      : process.env.BENCH_PROFILE
        ? ['--cpu-prof', `--cpu-prof-dir=${path.join(ROOT, 'bench', 'profile')}`]
        : [];
  // the baseline server (BENCH_BASELINE) gets the same repository, so that the two differ in their code alone (with one
  // model fewer, an A/A run of the same code found the baseline 0.13 ms of CPU cheaper per protocol-alone request in
  // 6 rounds of 6; with the same repository, 3 of 6)
  const repository = {
    mobilenet: { onnx: MODEL, config: config(BATCHING) },
    'mobilenet-nobatch': { onnx: MODEL, config: config({ ...BATCHING, maxBatchSize: 1 }) },
  };
  const server = await startServer(repository, {}, profile);
  if (profile.length) console.log(`gateway server pid ${server.child.pid} (profile: ${profile.join(' ')})`);
  // the same int8 arithmetic as the gateway's default (exact where this CPU saturates): serving is compared, not kernels
  const naive = await startNaive(MODEL, { exactInt8: exactInt8Here() });
  const baseline = process.env.BENCH_BASELINE
    ? await startServer(
        repository,
        Object.fromEntries(
          (process.env.BENCH_BASELINE_ENV ?? '')
            .split(',')
            .filter(Boolean)
            .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
        ),
        (process.env.BENCH_BASELINE_NODE_ARGS ?? '').split(' ').filter(Boolean),
        path.resolve(process.env.BENCH_BASELINE),
      )
    : null;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  let grpcClient: KserveGrpcClient | null = null;
  const points: Point[] = [];
  const rounds = new Map<string, Point[]>();
  try {
    const stats = (model: string, at: number) => async () => {
      const body = JSON.stringify({ query: `{ model(name: "${model}") { stats { batches batchSizes { size count } } } }` });
      const st = JSON.parse(await post(agent, at, Buffer.from(body), 'application/json')).data.model.stats[0];
      return {
        batches: st.batches,
        items: st.batchSizes.reduce((n: number, b: { size: number; count: number }) => n + b.size * b.count, 0),
      };
    };
    const serverCpu = (pid: number) => () => cpuSeconds(pid);
    const gateway = (
      photos: { name: string; bytes: Buffer }[],
      mode: string,
      model: string,
      at = server.port,
      pid = server.child.pid!,
    ): Runner => {
      const query = `mutation($f: File!) { classify(model: "${model}", image: { file: $f }, topK: 1) { predictions { classId } } }`;
      const bodies = photos.map((p) => multipartBody(query, p.bytes, p.name));
      return {
        mode,
        stats: stats(model, at),
        cpu: serverCpu(pid),
        run: async (i) => {
          const { body, type } = bodies[i % bodies.length];
          const text = await post(agent, at, body, type);
          if (!text.includes('"predictions"')) throw new Error(text.slice(0, 200));
        },
      };
    };
    const naiveMode = (photos: { bytes: Buffer }[]): Runner => ({
      mode: 'naive',
      cpu: serverCpu(naive.child.pid!),
      run: async (i) => {
        const text = await postRaw(agent, naive.port, photos[i % photos.length].bytes);
        if (!text.includes('classId')) throw new Error(text.slice(0, 200));
      },
    });
    const grpc = (grpcClient = createKserveGrpcClient(`127.0.0.1:${server.grpcPort}`));
    const floatTensors = await Promise.all(
      small.map(async (p) => {
        const { tensor } = await preprocess(await probeImage(p.bytes, MAX_PIXELS), { ...plan, pixelInput: null }, MAX_PIXELS);
        const f = tensor.data as Float32Array;
        return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
      }),
    );
    const grpcMode = (mode: string, request: (i: number) => object): Runner => ({
      mode,
      stats: stats('mobilenet', server.port),
      cpu: serverCpu(server.child.pid!),
      run: async (i) => {
        const r = await grpc.ModelInfer(request(i));
        if (r.outputs[0]?.shape[1] !== '1000') throw new Error(JSON.stringify(r).slice(0, 200));
      },
    });
    const selected = process.env.BENCH_MODES?.split(',');
    const sets = [
      {
        set: 'small',
        concurrency: CONCURRENCY,
        runners: [
          inProcess(small),
          gateway(small, 'gateway', 'mobilenet'),
          gateway(small, 'gateway, batching off', 'mobilenet-nobatch'),
          naiveMode(small),
          grpcMode('grpc jpeg', (i) => ({
            model_name: 'mobilenet',
            inputs: [{ name: plan.input, datatype: 'BYTES', shape: [1], contents: { bytes_contents: [small[i % small.length].bytes] } }],
          })),
          grpcMode('grpc raw tensor', (i) => ({
            model_name: 'mobilenet',
            inputs: [{ name: plan.input, datatype: 'FP32', shape: [1, 3, 224, 224] }],
            raw_input_contents: [floatTensors[i % floatTensors.length]],
          })),
          ...(baseline ? [gateway(small, 'baseline gateway', 'mobilenet', baseline.port, baseline.child.pid!)] : []),
        ],
      },
      {
        set: 'large',
        concurrency: LARGE_CONCURRENCY,
        runners: [inProcess(large), gateway(large, 'gateway', 'mobilenet'), naiveMode(large)],
      },
    ];
    for (const { set, concurrency, runners: all } of sets) {
      const runners = all.filter((r) => !selected || selected.includes(r.mode));
      if (!runners.length || !concurrency.length) continue;
      if (SERVER_WARMUP_SECONDS > 0) for (const r of runners) await warmUp(r, 16, SERVER_WARMUP_SECONDS);
      for (const c of concurrency) {
        for (const r of runners) rounds.set(`${set}|${r.mode}|${c}`, []);
        for (let k = 0; k < ROUNDS; k++) {
          for (const r of k % 2 ? [...runners].reverse() : runners) rounds.get(`${set}|${r.mode}|${c}`)!.push(await drive(set, r, c));
        }
        for (const r of runners) {
          const m = median(rounds.get(`${set}|${r.mode}|${c}`)!);
          points.push(m);
          console.log(
            `  median ${set} ${r.mode} c=${c}: ${m.throughput} req/s, p50 ${m.p50} ms, batch ${m.meanBatchSize ?? '-'}, cpu/img ${m.cpuPerImageMs} ms`,
          );
        }
      }
    }
    // what the protocol alone costs: the same multipart photo upload through the same server, answered without
    // inference (the classify field skipped, so that $f is declared and used, as a map that binds a file needs):
    // HTTP, multipart, yoga and our plugins, the GraphQL execution and answer; measured last, on the server warmed up
    // by the rounds (with BENCH_BASELINE, the baseline server's too, interleaved: an A/B of the protocol's own cost)
    if (!selected || selected.includes('gateway')) {
      const { body, type } = multipartBody(PROTOCOL_ALONE_QUERY, small[0].bytes, small[0].name);
      const protocolAlone = (mode: string, port: number, pid: number) => ({
        mode,
        cpu: serverCpu(pid),
        run: async () => {
          const text = await post(agent, port, body, type);
          if (!text.includes('"__typename"')) throw new Error(text.slice(0, 200));
        },
      });
      const subjects = [
        protocolAlone('protocol alone', server.port, server.child.pid!),
        ...(baseline ? [protocolAlone('baseline protocol alone', baseline.port, baseline.child.pid!)] : []),
      ];
      const runs = new Map<string, Awaited<ReturnType<typeof drive>>[]>(subjects.map((r) => [r.mode, []]));
      for (let k = 0; k < (baseline ? ROUNDS : 1); k++)
        for (const r of k % 2 ? [...subjects].reverse() : subjects) runs.get(r.mode)!.push(await drive('small', r, 16));
      const alone = median(runs.get('protocol alone')!);
      if (baseline) {
        const b = median(runs.get('baseline protocol alone')!);
        console.log(`  median protocol alone c=16: ${alone.cpuPerImageMs} ms CPU per request; baseline ${b.cpuPerImageMs} ms`);
      }
      stages['gateway, protocol alone: a multipart photo upload answered without inference, c16 (ms CPU per request)'] =
        alone.cpuPerImageMs ?? NaN;
      stages['load generator: its HTTP client per request, c16 (ms CPU)'] = alone.clientCpuPerRequestMs ?? NaN;
    }
  } finally {
    agent.destroy();
    grpcClient?.close();
    await server.stop();
    await naive.stop();
    await baseline?.stop();
    await session.close();
  }

  if (process.env.BENCH_MODES) return; // a partial run (for profiling) writes no results
  const at = (set: string, mode: string, c: number) => points.find((p) => p.set === set && p.mode === mode && p.concurrency === c);
  const all = (set: string, mode: string, c: number) => rounds.get(`${set}|${mode}|${c}`) ?? [];
  const ratios: Record<string, { median: number; spread: [number, number] } | number> = {};
  for (const [set, cs] of [
    ['small', CONCURRENCY],
    ['large', LARGE_CONCURRENCY],
  ] as const) {
    for (const c of cs) {
      const g = at(set, 'gateway', c);
      const i = at(set, 'in-process', c);
      const n = at(set, 'naive', c);
      if (!g || !i || !n) continue;
      const ratio = (a: string, b: string, key: 'throughput' | 'cpuPerImageMs') => ({
        median: round((at(set, a, c)![key] ?? NaN) / (at(set, b, c)![key] ?? NaN), 3),
        spread: spread(all(set, a, c), all(set, b, c), key),
      });
      ratios[`${set} c${c} gateway / naive req/s`] = ratio('gateway', 'naive', 'throughput');
      ratios[`${set} c${c} gateway / in-process req/s`] = ratio('gateway', 'in-process', 'throughput');
      ratios[`${set} c${c} gateway / in-process CPU per image`] = ratio('gateway', 'in-process', 'cpuPerImageMs');
      ratios[`${set} c${c} gateway p50 - naive p50 (ms)`] = round(g.p50 - n.p50);
      ratios[`${set} c${c} in-process / CPU limit`] = round(i.throughput / limits[set], 3);
      // where the cores are saturated: the best any server speaking this protocol could do on them, one that adds
      // nothing to the in-process pipeline but the protocol alone (its CPU per request, measured above), while the load
      // generator (its CPU per request at this point) takes its share of the same cores. A target above it cannot be met
      // here by serving better, only by a cheaper protocol or a machine where the clients run elsewhere.
      const protocol = stages['gateway, protocol alone: a multipart photo upload answered without inference, c16 (ms CPU per request)'];
      if (c >= 16 && i.cpuPerImageMs && g.clientCpuPerRequestMs !== null && protocol !== undefined) {
        const perImage = i.cpuPerImageMs + protocol + g.clientCpuPerRequestMs;
        const best = (CORES * 1000) / perImage;
        // against the in-process pipeline's own ceiling (its CPU per image alone): both saturated, as at c16
        ratios[`${set} c${c} best possible gateway / in-process req/s`] = round(i.cpuPerImageMs / perImage, 3);
        ratios[`${set} c${c} best possible gateway / naive req/s`] = round(best / n.throughput, 3);
      }
      if (set === 'small') {
        ratios[`small c${c} batching on / off req/s`] = ratio('gateway', 'gateway, batching off', 'throughput');
        if (at(set, 'grpc jpeg', c))
          ratios[`small c${c} grpc jpeg / graphql multipart req/s`] = ratio('grpc jpeg', 'gateway', 'throughput');
        if (at(set, 'grpc raw tensor', c))
          ratios[`small c${c} grpc raw tensor / graphql multipart req/s`] = ratio('grpc raw tensor', 'gateway', 'throughput');
      }
    }
  }
  console.log('\nratios (median over the rounds, and the spread of the per-round ratios):');
  for (const [k, v] of Object.entries(ratios))
    console.log(`  ${k.padEnd(52)} ${typeof v === 'number' ? v : `${v.median} [${v.spread[0]}-${v.spread[1]}]`}`);
  const value = (k: string) => {
    const v = ratios[k];
    return typeof v === 'number' ? v : (v?.median ?? NaN);
  };
  const targets = {
    'c16: gateway >= 1.5 x naive req/s': value('small c16 gateway / naive req/s') >= 1.5,
    'c16: gateway >= 0.95 x in-process req/s': value('small c16 gateway / in-process req/s') >= 0.95,
    'c16: gateway CPU per image <= 1.1 x in-process': value('small c16 gateway / in-process CPU per image') <= 1.1,
    'c1: gateway p50 no worse than naive': value('small c1 gateway p50 - naive p50 (ms)') <= 0,
    'in-process >= 0.8 x the CPU limit (c16)': value('small c16 in-process / CPU limit') >= 0.8,
  };
  console.log('\ntargets:');
  for (const [k, v] of Object.entries(targets)) console.log(`  ${v ? 'met    ' : 'MISSED '} ${k}`);
  console.log(
    `  (the best possible at c16 on these cores, the in-process pipeline plus the protocol alone and the load generator: ${value('small c16 best possible gateway / naive req/s')} x naive, ${value('small c16 best possible gateway / in-process req/s')} x in-process)`,
  );
  const result = {
    date: new Date().toISOString(),
    machine: {
      cores: CORES,
      cpu: os.cpus()[0]?.model,
      node: process.version,
      engineThreads: defaultEngineThreads(),
      engineInstances: defaultEngineInstances(),
      decodeThreads: defaultDecodeThreads(),
      exactInt8: exactInt8Here(),
    },
    model: 'mobilenetv2-12-int8',
    batching: BATCHING,
    rounds: ROUNDS,
    secondsPerRound: SECONDS,
    serverWarmUpSeconds: SERVER_WARMUP_SECONDS,
    note: 'each point is the median of its rounds; modes were interleaved; cpuPerImageMs is the serving process CPU time per image',
    stages,
    cpuLimitImagesPerSecond: limits,
    points,
    ratios,
    targets,
  };
  await writeFile(path.join(ROOT, 'bench', 'results.json'), JSON.stringify(result, null, 2) + '\n');
  await writeFile(
    path.join(ROOT, 'bench', 'chart.svg'),
    renderChart(
      points.filter((p) => p.set === 'small'),
      CONCURRENCY,
    ),
  );
  console.log('\nwrote bench/results.json and bench/chart.svg');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
