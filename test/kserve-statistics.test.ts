import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture, fixtureConfigs, image, startGateway, type TestGateway } from './helpers.ts';
import { createKserveGrpcClient, errorCodeOf, type KserveGrpcClient } from '../src/client/kserve-grpc.ts';

/**
 * Triton's statistics extension counted as Triton counts it (docs/protocol/extension_statistics.md and
 * model_statistics in its proto): inference_count counts inferences (each image), execution_count engine calls, and
 * inference_stats.success / fail / queue / compute_infer count REQUESTS, with their durations, which perf_analyzer
 * divides by those counts for its per-request server queue and compute times. A request is one call, however many
 * images it carries.
 */

interface Duration {
  count: number;
  ns: number;
}
interface ModelStat {
  inference_count: number;
  execution_count: number;
  inference_stats: Record<'success' | 'fail' | 'queue' | 'compute_infer', Duration>;
  batch_stats: { batch_size: number; compute_infer: Duration }[];
}

/** The figures of one version, as plain numbers (gRPC gives uint64 as strings). */
function figures(s: ModelStat) {
  const n = Number;
  const d = (x: Duration) => ({ count: n(x.count), ns: n(x.ns) });
  const i = s.inference_stats;
  return {
    inference: n(s.inference_count),
    executions: n(s.execution_count),
    success: d(i.success),
    fail: d(i.fail),
    queue: d(i.queue),
    compute: d(i.compute_infer),
    // engine calls and the items and time they carried, over every batch size
    calls: s.batch_stats.reduce((k, b) => k + n(b.compute_infer.count), 0),
    callItems: s.batch_stats.reduce((k, b) => k + n(b.batch_size) * n(b.compute_infer.count), 0),
    callNs: s.batch_stats.reduce((k, b) => k + n(b.compute_infer.ns), 0),
  };
}
type Figures = ReturnType<typeof figures>;
const minus = (a: Figures, b: Figures) => ({
  inference: a.inference - b.inference,
  executions: a.executions - b.executions,
  success: { count: a.success.count - b.success.count, ns: a.success.ns - b.success.ns },
  fail: { count: a.fail.count - b.fail.count, ns: a.fail.ns - b.fail.ns },
  queue: { count: a.queue.count - b.queue.count, ns: a.queue.ns - b.queue.ns },
  compute: { count: a.compute.count - b.compute.count, ns: a.compute.ns - b.compute.ns },
  calls: a.calls - b.calls,
  callItems: a.callItems - b.callItems,
  callNs: a.callNs - b.callNs,
});

describe('KServe v2 statistics, counted by request as Triton counts them', () => {
  let gw: TestGateway;
  let client: KserveGrpcClient;
  const photos: Buffer[] = [];

  /** One version's figures over REST and over gRPC, which must say the same. */
  const stats = async (model: string): Promise<Figures> => {
    const rest = (await (await fetch(`${gw.url}/v2/models/${model}/versions/1/stats`)).json()) as { model_stats: ModelStat[] };
    const grpc = (await client.ModelStatistics({ name: model, version: '1' })) as { model_stats: ModelStat[] };
    expect(figures(grpc.model_stats[0])).toEqual(figures(rest.model_stats[0]));
    return figures(rest.model_stats[0]);
  };
  /** What GraphQL's Model.stats and /metrics say: items, not requests (their meaning is unchanged). */
  const itemCounters = async (model: string) => {
    const g = await gw.gql(`{ model(name: "${model}") { stats { requests batches errorsByCode { code count } } } }`);
    const s = g.data.model.stats[0] as { requests: number; batches: number; errorsByCode: { code: string; count: number }[] };
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    const m = new RegExp(`gateway_inference_request_success_total\\{model="${model}",version="1"\\} (\\d+)`).exec(text);
    return { requests: s.requests, batches: s.batches, metricSuccess: Number(m?.[1] ?? 0), errorsByCode: s.errorsByCode };
  };

  /** A request of several images over REST (binary tensor data extension); its HTTP status. */
  const restImages = async (model: string, images: Buffer[]): Promise<number> => {
    const sizes = images.map((b) => 4 + b.length);
    const header = Buffer.from(
      JSON.stringify({
        inputs: [
          { name: 'input', datatype: 'BYTES', shape: [images.length], parameters: { binary_data_size: sizes.reduce((a, b) => a + b) } },
        ],
        outputs: [{ name: 'output', parameters: { classification: 1 } }],
      }),
    );
    const parts = images.flatMap((b) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(b.length);
      return [len, b];
    });
    const res = await fetch(`${gw.url}/v2/models/${model}/infer`, {
      method: 'POST',
      body: new Uint8Array(Buffer.concat([header, ...parts])),
      headers: { 'inference-header-content-length': String(header.length), 'content-type': 'application/octet-stream' },
    });
    await res.arrayBuffer();
    return res.status;
  };
  /** A request of several images over gRPC; 'OK' or the gateway's error code. */
  const grpcImages = (model: string, images: Buffer[]): Promise<string> =>
    client
      .ModelInfer({
        model_name: model,
        inputs: [{ name: 'input', datatype: 'BYTES', shape: [images.length], contents: { bytes_contents: images } }],
        outputs: [{ name: 'output', parameters: { classification: { int64_param: 1 } } }],
      })
      .then(
        () => 'OK',
        (e) => errorCodeOf(e) ?? String(e),
      );

  beforeAll(async () => {
    gw = await startGateway({
      models: {
        // two engine instances: on an idle engine the images of one request are cut into two calls side by side
        mobilenet: fixture('mobilenet', { instances: 2 }),
        // two images per engine call, one call at a time: a request of four images makes two calls, one after the
        // other; a client may have at most four images admitted (half of maxQueueSize 8)
        pairs: fixture('mobilenet', {
          instances: 1,
          batching: { ...fixtureConfigs.mobilenet.batching, maxBatchSize: 2, maxConcurrentBatches: 1, maxQueueSize: 8 },
        }),
      },
    });
    client = createKserveGrpcClient(`127.0.0.1:${gw.grpcPort}`);
    for (const f of ['zebra.jpeg', 'snail.jpeg', 'bee.jpeg', 'pelican.jpeg', 'peacock.jpeg']) photos.push(await readFile(image(f)));
  });
  afterAll(async () => {
    client?.close();
    await gw?.close();
  });

  it('REST: a request of four images and three of one count four requests and seven inferences; each request is charged the time of its own engine calls', async () => {
    const before = await stats('mobilenet');
    const itemsBefore = await itemCounters('mobilenet');
    // one at a time, on an idle engine: each engine call serves one request alone
    expect(await restImages('mobilenet', photos.slice(0, 4))).toBe(200);
    for (const p of photos.slice(0, 3)) expect(await restImages('mobilenet', [p])).toBe(200);
    const d = minus(await stats('mobilenet'), before);
    // inferences per image, executions per engine call (the four images made one call or two)
    expect(d.inference).toBe(7);
    expect(d.callItems).toBe(7);
    expect(d.executions).toBe(d.calls);
    expect(d.executions).toBeGreaterThanOrEqual(4);
    // requests: four, not seven
    expect(d.success.count).toBe(4);
    expect(d.queue.count).toBe(4);
    expect(d.compute.count).toBe(4);
    expect(d.fail).toEqual({ count: 0, ns: 0 });
    // each request charged its own engine calls' time once (the four-image request the sum of its calls): with every
    // call serving one request, the requests' compute time is the calls' time, not each image charged its call's
    expect(Math.abs(d.compute.ns - d.callNs)).toBeLessThanOrEqual(10);
    expect(d.success.ns).toBeGreaterThan(d.queue.ns);
    expect(d.queue.ns).toBeGreaterThan(0);
    // GraphQL's Model.stats and /metrics still count items (an image, or one item of a batch), as documented
    const items = await itemCounters('mobilenet');
    expect(items.requests - itemsBefore.requests).toBe(7);
    expect(items.metricSuccess - itemsBefore.metricSuccess).toBe(7);
    expect(items.batches - itemsBefore.batches).toBe(d.executions);
  });

  it('gRPC: a request whose four images make two engine calls, one after the other, counts one request: its queue is the wait before its first call, its compute both calls', async () => {
    const before = await stats('pairs');
    expect(await grpcImages('pairs', photos.slice(0, 4))).toBe('OK');
    const one = minus(await stats('pairs'), before);
    expect([one.inference, one.executions, one.calls, one.callItems]).toEqual([4, 2, 2, 4]);
    expect([one.success.count, one.queue.count, one.compute.count]).toEqual([1, 1, 1]);
    // compute: the sum of its two calls
    expect(Math.abs(one.compute.ns - one.callNs)).toBeLessThanOrEqual(10);
    // queue: it waited for its first call only (the second call's images waited for the first call too, but the
    // request was computing then); per image, the second pair's wait (a whole engine call) was counted twice
    expect(one.queue.ns).toBeLessThan(one.compute.ns / 2);
    // and its time covers its wait and its two calls, one after the other
    expect(one.success.ns).toBeGreaterThanOrEqual(one.queue.ns + one.compute.ns);

    for (const p of photos.slice(0, 2)) expect(await grpcImages('pairs', [p])).toBe('OK');
    const d = minus(await stats('pairs'), before);
    expect([d.inference, d.executions, d.callItems]).toEqual([6, 4, 6]);
    expect([d.success.count, d.queue.count, d.compute.count]).toEqual([3, 3, 3]);
    expect(Math.abs(d.compute.ns - d.callNs)).toBeLessThanOrEqual(10);
  });

  it('a request that fails counts one failure, however many images it carries (REST and gRPC)', async () => {
    const before = await stats('pairs');
    const itemsBefore = await itemCounters('pairs');
    // five images: more than one client may have admitted (four), refused as a whole before any runs
    expect(await restImages('pairs', photos.slice(0, 5))).toBe(400);
    // three images, one of them not an image: the request fails, its other images are not run
    expect(await grpcImages('pairs', [photos[0], Buffer.from('not an image'), photos[1]])).toBe('INVALID_IMAGE');
    const d = minus(await stats('pairs'), before);
    expect(d.fail.count).toBe(2);
    expect(d.fail.ns).toBeGreaterThan(0);
    expect([d.success.count, d.queue.count, d.compute.count, d.inference, d.executions]).toEqual([0, 0, 0, 0, 0]);
    // GraphQL's errorsByCode still counts the items refused (five) and the image that failed (one)
    const items = await itemCounters('pairs');
    const code = (s: typeof items, c: string) => s.errorsByCode.find((e) => e.code === c)?.count ?? 0;
    expect(code(items, 'LIMIT_EXCEEDED') - code(itemsBefore, 'LIMIT_EXCEEDED')).toBe(5);
    expect(code(items, 'INVALID_IMAGE') - code(itemsBefore, 'INVALID_IMAGE')).toBe(1);
  });

  it("GraphQL's classifyBatch is one request too: answered in full, a success; with an image that failed, a failure", async () => {
    const batch = async (files: (string | Buffer)[]) =>
      gw.gql(
        `mutation($images: [ImageInput!]!) { classifyBatch(model: "mobilenet", images: $images, topK: 1) { predictions { classId } } }`,
        { images: files.map(() => ({ file: null })) },
        { files: Object.fromEntries(files.map((f, i) => [`images.${i}.file`, f])) },
      );
    const before = await stats('mobilenet');
    const all = await batch([image('bee.jpeg'), image('zebra.jpeg'), image('snail.jpeg')]);
    expect(all.errors).toBeUndefined();
    const one = minus(await stats('mobilenet'), before);
    expect([one.inference, one.success.count, one.queue.count, one.compute.count, one.fail.count]).toEqual([3, 1, 1, 1, 0]);
    expect(Math.abs(one.compute.ns - one.callNs)).toBeLessThanOrEqual(10);
    // two answered, one not an image: its answer holds an error, so the request failed (its two inferences count)
    const partial = await batch([image('bee.jpeg'), Buffer.from('not an image'), image('zebra.jpeg')]);
    expect(partial.errors?.map((e) => e.extensions?.code)).toEqual(['INVALID_IMAGE']);
    const two = minus(await stats('mobilenet'), before);
    expect([two.inference, two.success.count, two.queue.count, two.fail.count]).toEqual([5, 1, 1, 1]);
  });
});
