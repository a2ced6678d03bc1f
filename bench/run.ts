/**
 * npm run bench: throughput and latency of the gateway against the in-process limit, with batching on and off, and
 * of its protocols (GraphQL multipart, KServe v2 gRPC with the JPEG as BYTES or with the preprocessed tensor), at
 * concurrency 1, 4, 16 and 64, all measured side by side in one run. Writes bench/results.json and
 * bench/chart.svg. Uses the project's own model (models/mobilenet) and photos (test/fixtures/images). Only talks to
 * 127.0.0.1; the server it starts is stopped however the run ends.
 */
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import { Admissions } from '../src/batching/admission.ts';
import { Batcher } from '../src/batching/batcher.ts';
import { parseModelConfig, postprocessingOf } from '../src/repository/model-config.ts';
import { planInput, preprocess, probeImage } from '../src/vision/preprocess.ts';
import { classify } from '../src/vision/classification.ts';
import { createKserveGrpcClient, type KserveGrpcClient } from '../src/client/kserve-grpc.ts';
import { renderChart } from './chart.ts';
import { IMAGES, ROOT, modelFile, multipartBody, post, startServer } from './lib.ts';

const MODEL = modelFile('mobilenet');
const PHOTOS = [
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
const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? '1,4,16,64').split(',').map(Number);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 1);
/** Modes run interleaved, round after round, so drift on a shared machine hits them alike; medians are reported. */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MAX_PIXELS = 40_000_000;

const BATCHING = { maxBatchSize: 16, maxDelayMs: Number(process.env.BENCH_DELAY_MS ?? 2), maxQueueSize: 1024 };
const config = (batching: object) => ({
  task: 'classification',
  preprocessing: {
    resizeType: 'CROP',
    cropFraction: 0.875,
    colorChannels: 'RGB',
    pixelScaling: 1,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
  },
  postprocessing: { activation: 'softmax' },
  batching,
});

interface Point {
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
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/** Run `task` from `concurrency` workers for a warm-up and then SECONDS; latency in ms. */
async function drive(
  mode: string,
  concurrency: number,
  task: (i: number) => Promise<void>,
  batchStats?: () => Promise<{ items: number; batches: number }>,
): Promise<Point> {
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
        await task(i);
        if (recording) latencies.push(performance.now() - t0);
      } catch (e) {
        if (recording) errors++;
        if (errors === 1 && recording) console.error(`${mode}: ${(e as Error).message}`);
      }
    }
  };
  const workers = Array.from({ length: concurrency }, worker);
  await new Promise((r) => setTimeout(r, WARMUP_SECONDS * 1000));
  const before = await batchStats?.();
  recording = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  recording = false;
  const seconds = (performance.now() - t0) / 1000;
  const after = await batchStats?.();
  stop = true;
  await Promise.all(workers);
  latencies.sort((a, b) => a - b);
  const round = (x: number) => Math.round(x * 100) / 100;
  const meanBatchSize =
    before && after && after.batches > before.batches ? round((after.items - before.items) / (after.batches - before.batches)) : null;
  const point = {
    mode,
    concurrency,
    requests: latencies.length,
    errors,
    seconds: round(seconds),
    throughput: round(latencies.length / seconds),
    p50: round(percentile(latencies, 50)),
    p95: round(percentile(latencies, 95)),
    p99: round(percentile(latencies, 99)),
    meanBatchSize,
  };
  console.log(
    `${mode.padEnd(22)} c=${String(concurrency).padStart(2)}  ${String(point.throughput).padStart(7)} req/s  p50 ${String(point.p50).padStart(7)} ms  p95 ${String(point.p95).padStart(7)} ms  p99 ${String(point.p99).padStart(7)} ms  batch ${point.meanBatchSize ?? '-'}  errors ${errors}`,
  );
  return point;
}

type Runner = { mode: string; run: (i: number) => Promise<void>; stats: () => Promise<{ items: number; batches: number }> };

function median(points: Point[]): Point {
  const by = (k: keyof Point) => [...points].sort((a, b) => (a[k] as number) - (b[k] as number))[Math.floor(points.length / 2)];
  const m = by('throughput');
  const med = (k: 'p50' | 'p95' | 'p99') => by(k)[k];
  return {
    ...m,
    p50: med('p50'),
    p95: med('p95'),
    p99: med('p99'),
    requests: points.reduce((n, p) => n + p.requests, 0),
    errors: points.reduce((n, p) => n + p.errors, 0),
  };
}

async function main() {
  const photos = await Promise.all(PHOTOS.map((p) => readFile(path.join(IMAGES, p))));
  console.log(
    `machine: ${os.cpus().length} cores, ${os.cpus()[0]?.model}; node ${process.version}; ${ROUNDS} rounds of ${SECONDS}s per point (after ${WARMUP_SECONDS}s warm-up), modes interleaved`,
  );

  // --- in-process limit: the same decode, preprocess, batcher and engine; no HTTP, no GraphQL ---
  const engine = createOnnxRuntimeEngine();
  const session = await engine.load(MODEL);
  const cfg = parseModelConfig(config(BATCHING));
  const plan = planInput(cfg, session.inputs);
  let items = 0;
  let batches = 0;
  const admissions = new Admissions(1_000_000);
  const local = new Batcher(
    async (f) => {
      batches++;
      items += f[plan.input].shape[0];
      return session.run(f);
    },
    { ...cfg.batching, timeoutMs: 0 },
    { othersComing: () => admissions.preparingCount > 0 },
  );
  const inProcess: Runner = {
    mode: 'in-process',
    stats: async () => ({ items, batches }),
    run: async (i) => {
      const ticket = admissions.admit();
      try {
        const img = await probeImage(photos[i % photos.length], MAX_PIXELS);
        const { tensor } = await preprocess(img, plan, MAX_PIXELS);
        ticket.markQueued();
        const out = await local.infer({ [plan.input]: tensor });
        classify(out, postprocessingOf(cfg, 'classification'), null, 1);
      } finally {
        ticket.release();
      }
    },
  };

  // --- the gateway, a separate process as `npm start` runs it, over 127.0.0.1 ---
  // BENCH_PROFILE=1: a V8 CPU profile of the server process in bench/profile/ (summarized by bench/profile.ts)
  const profile = process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${path.join(ROOT, 'bench', 'profile')}`] : [];
  const server = await startServer(
    {
      mobilenet: { onnx: MODEL, config: config(BATCHING) },
      'mobilenet-nobatch': { onnx: MODEL, config: config({ ...BATCHING, maxBatchSize: 1 }) },
    },
    {},
    profile,
  );
  const port = server.port;
  // BENCH_BASELINE=<another checkout>: the same gateway from that checkout (e.g. the previous commit's worktree), as
  // one more mode in the same interleaved run, for A/B comparisons of a change
  const baseline = process.env.BENCH_BASELINE
    ? await startServer({ mobilenet: { onnx: MODEL, config: config(BATCHING) } }, {}, [], path.resolve(process.env.BENCH_BASELINE))
    : null;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  let grpcClient: KserveGrpcClient | null = null;
  const points: Point[] = [];
  try {
    const stats =
      (model: string, at = port) =>
      async () => {
        const body = JSON.stringify({ query: `{ model(name: "${model}") { stats { batches batchSizes { size count } } } }` });
        const r = JSON.parse(await post(agent, at, Buffer.from(body), 'application/json'));
        const st = r.data.model.stats[0];
        return {
          batches: st.batches,
          items: st.batchSizes.reduce((n: number, b: { size: number; count: number }) => n + b.size * b.count, 0),
        };
      };
    const gateway = (mode: string, model: string, at = port): Runner => {
      const query = `mutation($f: File!) { classify(model: "${model}", image: { file: $f }, topK: 1) { predictions { classId } } }`;
      const bodies = photos.map((p, i) => multipartBody(query, p, PHOTOS[i]));
      return {
        mode,
        stats: stats(model, at),
        run: async (i) => {
          const { body, type } = bodies[i % bodies.length];
          const text = await post(agent, at, body, type);
          if (!text.includes('"predictions"')) throw new Error(text.slice(0, 200));
        },
      };
    };
    // KServe v2 gRPC on the same server and model: the preprocessed tensor of each photo (decode and resize done here,
    // once, so the server does no image work), and the JPEG as BYTES (the same server work as the multipart mode)
    const grpc = (grpcClient = createKserveGrpcClient(`127.0.0.1:${server.grpcPort}`));
    const tensors = await Promise.all(
      photos.map(async (p) => {
        const { tensor } = await preprocess(await probeImage(p, MAX_PIXELS), plan, MAX_PIXELS);
        const f = tensor.data as Float32Array;
        return Buffer.from(f.buffer, f.byteOffset, f.byteLength);
      }),
    );
    const grpcMode = (mode: string, request: (i: number) => object): Runner => ({
      mode,
      stats: stats('mobilenet'),
      run: async (i) => {
        const r = await grpc.ModelInfer(request(i));
        if (r.outputs[0]?.shape[1] !== '1000') throw new Error(JSON.stringify(r).slice(0, 200));
      },
    });
    const grpcRaw = grpcMode('grpc raw tensor', (i) => ({
      model_name: 'mobilenet',
      inputs: [{ name: plan.input, datatype: 'FP32', shape: [1, 3, 224, 224] }],
      raw_input_contents: [tensors[i % tensors.length]],
    }));
    const grpcJpeg = grpcMode('grpc jpeg', (i) => ({
      model_name: 'mobilenet',
      inputs: [{ name: plan.input, datatype: 'BYTES', shape: [1], contents: { bytes_contents: [photos[i % photos.length]] } }],
    }));
    const modes = process.env.BENCH_MODES?.split(',');
    const all = [inProcess, gateway('gateway', 'mobilenet'), gateway('gateway, batching off', 'mobilenet-nobatch'), grpcJpeg, grpcRaw];
    if (baseline) all.push(gateway('baseline gateway', 'mobilenet', baseline.port));
    const runners = all.filter((r) => !modes || modes.includes(r.mode));
    for (const c of CONCURRENCY) {
      const rounds = new Map<string, Point[]>(runners.map((r) => [r.mode, []]));
      for (let round = 0; round < ROUNDS; round++) {
        for (const r of round % 2 ? [...runners].reverse() : runners) rounds.get(r.mode)!.push(await drive(r.mode, c, r.run, r.stats));
      }
      for (const r of runners) {
        const m = median(rounds.get(r.mode)!);
        points.push(m);
        console.log(
          `  median ${r.mode.padEnd(22)} c=${String(c).padStart(2)}  ${m.throughput} req/s  p50 ${m.p50} ms  p95 ${m.p95} ms  batch ${m.meanBatchSize ?? '-'}`,
        );
      }
    }
  } finally {
    agent.destroy();
    grpcClient?.close();
    await server.stop();
    await baseline?.stop();
    await session.close();
  }

  if (process.env.BENCH_MODES) return; // a partial run (for profiling) writes no results
  const at = (mode: string, c: number) => points.find((p) => p.mode === mode && p.concurrency === c);
  const ratios: Record<string, number | null> = {};
  const r2 = (x: number) => Math.round(x * 1000) / 1000;
  for (const c of CONCURRENCY) {
    const g = at('gateway', c)!;
    const i = at('in-process', c)!;
    const off = at('gateway, batching off', c)!;
    ratios[`c${c} gateway / in-process throughput`] = r2(g.throughput / i.throughput);
    ratios[`c${c} batching on / off throughput`] = r2(g.throughput / off.throughput);
    ratios[`c${c} gateway p50 - in-process p50 (ms)`] = r2(g.p50 - i.p50);
    // the protocols side by side on the same server: the gateway mode is GraphQL multipart with the JPEG
    const jpeg = at('grpc jpeg', c);
    const raw = at('grpc raw tensor', c);
    if (jpeg) ratios[`c${c} grpc jpeg / graphql multipart throughput`] = r2(jpeg.throughput / g.throughput);
    if (raw) ratios[`c${c} grpc raw tensor / graphql multipart throughput`] = r2(raw.throughput / g.throughput);
  }
  console.log('\nratios (measured side by side in this run):');
  for (const [k, v] of Object.entries(ratios)) console.log(`  ${k.padEnd(40)} ${v}`);
  const targets = {
    'c16 gateway / in-process >= 0.85': (ratios['c16 gateway / in-process throughput'] ?? 0) >= 0.85,
    'c16 batching on / off >= 1.10': (ratios['c16 batching on / off throughput'] ?? 0) >= 1.1,
    'c1 p50 within 3 ms of in-process': (ratios['c1 gateway p50 - in-process p50 (ms)'] ?? Infinity) <= 3,
  };
  console.log('\ntargets:');
  for (const [k, v] of Object.entries(targets)) console.log(`  ${v ? 'met    ' : 'MISSED '} ${k}`);
  const result = {
    date: new Date().toISOString(),
    machine: { cores: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
    model: 'mobilenetv2-12-int8',
    batching: BATCHING,
    rounds: ROUNDS,
    secondsPerRound: SECONDS,
    note: 'each point is the median of the rounds; modes were interleaved',
    points,
    ratios,
    targets,
  };
  await writeFile(path.join(ROOT, 'bench', 'results.json'), JSON.stringify(result, null, 2) + '\n');
  await writeFile(path.join(ROOT, 'bench', 'chart.svg'), renderChart(points, CONCURRENCY));
  console.log('\nwrote bench/results.json and bench/chart.svg');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
