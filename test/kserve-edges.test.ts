import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ElemType, buildModel, identityModel } from './onnx-builder.ts';
import { startGateway, type TestGateway, watchStalls } from './helpers.ts';
import { createKserveGrpcClient, errorCodeOf, type KserveGrpcClient } from '../src/client/kserve-grpc.ts';
import { PROTO_PATH } from '../src/protocols/kserve/proto/index.ts';
import { ROOT } from './helpers.ts';

/**
 * KServe v2 at its edges (REST and gRPC), found by a conformance and abuse probe: a model without a batch dimension past
 * MAX_IMAGES_PER_REQUEST, INT64 past 2^53 in a classification, many large JSON requests at once.
 */
describe('KServe v2 at its edges', () => {
  let gw: TestGateway;
  let client: KserveGrpcClient;
  const post = (path: string, body: unknown) =>
    fetch(`${gw.url}/v2${path}`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

  beforeAll(async () => {
    gw = await startGateway({
      models: {
        // no batch dimension: its first dimension (10) is not a batch, and more than MAX_IMAGES_PER_REQUEST (8)
        'no-batch-10': {
          onnx: buildModel({
            nodes: [{ op: 'Add', inputs: ['x', 'x'], outputs: ['y'] }],
            inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: [10, 2] }],
            outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: [10, 2] }],
          }),
          config: { task: 'raw' },
        },
        'id-i64': { onnx: identityModel(ElemType.INT64, ['N', 3]), config: { task: 'raw' } },
        // any size: a JSON tensor of MAX_JSON_VALUES values costs only its decoding and encoding
        'id-any': { onnx: identityModel(ElemType.FLOAT, ['N', 'K']), config: { task: 'raw' } },
      },
      env: { MAX_IMAGES_PER_REQUEST: '8' },
    });
    client = createKserveGrpcClient(`127.0.0.1:${gw.grpcPort}`);
  });
  afterAll(async () => {
    client?.close();
    await gw?.close();
  });

  it('a model without a batch dimension whose first dimension is past MAX_IMAGES_PER_REQUEST is served over REST and gRPC, as over GraphQL', async () => {
    const x = Array.from({ length: 20 }, (_, i) => i);
    const f32 = (a: number[]) => Buffer.from(Float32Array.from(a).buffer);
    // GraphQL's infer takes it: one request, one engine call
    const gql = await gw.gql(
      `mutation($x: String!) { infer(model: "no-batch-10", inputs: [{ name: "x", dtype: FLOAT32, shape: [10, 2], data: $x }]) { outputs { name shape data } } }`,
      { x: f32(x).toString('base64') },
    );
    expect(gql.errors).toBeUndefined();
    expect(gql.data.infer.outputs[0]).toEqual({ name: 'y', shape: [10, 2], data: f32(x.map((v) => 2 * v)).toString('base64') });
    // REST: refused as "more than 8 images or inferences in one request" (dimension 0 taken for a batch)
    const rest = await post('/models/no-batch-10/infer', { inputs: [{ name: 'x', datatype: 'FP32', shape: [10, 2], data: x }] });
    const body = await rest.json();
    expect([rest.status, rest.headers.get('x-error-code'), body.error]).toEqual([200, null, undefined]);
    expect(body.outputs[0]).toMatchObject({ name: 'y', shape: [10, 2], data: x.map((v) => 2 * v) });
    // gRPC: the same
    const r = await client
      .ModelInfer({ model_name: 'no-batch-10', inputs: [{ name: 'x', datatype: 'FP32', shape: [10, 2] }], raw_input_contents: [f32(x)] })
      .then(
        (m) => m.outputs[0].shape,
        (e) => `${errorCodeOf(e)}: ${e.details}`,
      );
    expect(r).toEqual(['10', '2']);
  });

  it('classification of an INT64 output orders and writes its values exactly (as its JSON answer does), past 2^53', async () => {
    const big = ['4611686018427387904', '4611686018427387905', '-3'];
    const res = await post('/models/id-i64/infer', {
      inputs: [{ name: 'x', datatype: 'INT64', shape: [1, 3], data: big }],
      outputs: [{ name: 'y', parameters: { classification: 3 } }],
    });
    const body = await res.json();
    expect(res.status).toBe(200);
    // the largest value (index 1) first, each with its own digits
    expect(body.outputs[0].data).toEqual(['4611686018427387905:1', '4611686018427387904:0', '-3:2']);
  });

  it('concurrent JSON requests, each within MAX_JSON_VALUES, hold the event loop no longer than one of them does', async () => {
    // 500k values: under MAX_JSON_VALUES (524288), a request the README says holds the loop about 0.1-0.3 s. Sent from a
    // worker thread (its own event loop), as another process would: bodies sent from this loop arrive one by one.
    const run = (count: number) =>
      new Promise<number[]>((resolve, reject) => {
        const worker = new Worker(
          `const { parentPort, workerData } = require('node:worker_threads');
          const n = 500000;
          const body = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, n], data: Array.from({ length: n }, (_, i) => (i % 10) / 10) }] }));
          Promise.all(Array.from({ length: workerData.count }, () =>
            fetch(workerData.url, { method: 'POST', body, headers: { 'content-type': 'application/json' } }).then((r) => r.arrayBuffer().then(() => r.status)),
          )).then((s) => parentPort.postMessage(s));`,
          { eval: true, workerData: { url: `${gw.url}/v2/models/id-any/infer`, count } },
        );
        worker.once('message', (s) => void worker.terminate().then(() => resolve(s)));
        worker.once('error', reject);
      });
    expect(await run(1)).toEqual([200]); // warm
    let watch = watchStalls();
    expect(await run(1)).toEqual([200]);
    const single = watch.stop();
    watch = watchStalls();
    const statuses = await run(12);
    const concurrent = watch.stop();
    expect(statuses).toEqual(Array(12).fill(200));
    // one client's twelve requests: every other client waited for all of them at once
    expect(concurrent, `one request held the loop ${Math.round(single)} ms; twelve at once ${Math.round(concurrent)} ms`).toBeLessThan(
      3 * single + 300,
    );
  });

  it('concurrent gRPC calls of typed contents, each within MAX_JSON_VALUES, hold the event loop no longer than one of them does', async () => {
    // as above, from a worker thread: 300k FP32 values as fp32_contents (protobufjs decodes and encodes them one by one)
    const run = (count: number) =>
      new Promise<string[]>((resolve, reject) => {
        const worker = new Worker(
          `const { parentPort, workerData: w } = require('node:worker_threads');
          const grpc = require(w.root + '/node_modules/@grpc/grpc-js');
          const loader = require(w.root + '/node_modules/@grpc/proto-loader');
          const pkg = grpc.loadPackageDefinition(loader.loadSync(w.proto, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true })).inference;
          const client = new pkg.GRPCInferenceService(w.address, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
          const n = 300000;
          const request = { model_name: 'id-any', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, n], contents: { fp32_contents: Array.from({ length: n }, (_, i) => (i % 10) / 10) } }] };
          Promise.all(Array.from({ length: w.count }, () => new Promise((ok) =>
            client.ModelInfer(request, (e, r) => ok(e ? String(e.code) : r.outputs[0].shape.join('x'))),
          ))).then((s) => { client.close(); parentPort.postMessage(s); });`,
          {
            eval: true,
            workerData: {
              root: ROOT,
              proto: PROTO_PATH,

              address: `127.0.0.1:${gw.grpcPort}`,
              count,
            },
          },
        );
        worker.once('message', (s) => void worker.terminate().then(() => resolve(s)));
        worker.once('error', reject);
      });
    expect(await run(1)).toEqual(['1x300000']); // warm
    let watch = watchStalls();
    expect(await run(1)).toEqual(['1x300000']);
    const single = watch.stop();
    watch = watchStalls();
    const answers = await run(12);
    const concurrent = watch.stop();
    expect(answers).toEqual(Array(12).fill('1x300000'));
    expect(concurrent, `one call held the loop ${Math.round(single)} ms; twelve at once ${Math.round(concurrent)} ms`).toBeLessThan(
      3 * single + 300,
    );
  });
});
