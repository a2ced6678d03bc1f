import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ElemType, buildModel, identityModel } from './onnx-builder.ts';
import { startGateway, type TestGateway } from './helpers.ts';
import { createKserveGrpcClient, type KserveGrpcClient } from '../src/client/kserve-grpc.ts';

/**
 * KServe v2 as Triton's clients use it (tritonclient, perf_analyzer): what the model configuration says a request may
 * carry, the classification extension of a model Triton would not batch, and the repository extension's "file:<path>"
 * parameters as tritonclient's load_model(files=...) sends them.
 */
describe('KServe v2 as Triton clients use it', () => {
  let gw: TestGateway;
  let client: KserveGrpcClient;
  const get = async (path: string) => {
    const r = await fetch(`${gw.url}/v2${path}`);
    return { status: r.status, code: r.headers.get('x-error-code'), body: await r.json() };
  };
  const post = async (path: string, body: unknown) => {
    const r = await fetch(`${gw.url}/v2${path}`, { method: 'POST', body: JSON.stringify(body) });
    return { status: r.status, code: r.headers.get('x-error-code'), body: await r.json() };
  };

  beforeAll(async () => {
    gw = await startGateway({
      models: {
        // a small queue: one client may have half of it (2) admitted at once
        'small-queue': { onnx: identityModel(ElemType.FLOAT, ['N', 2]), config: { task: 'raw', batching: { maxQueueSize: 4 } } },
        // no batch dimension: Triton's max_batch_size 0 (as this server's model configuration says of it)
        'no-batch': {
          onnx: buildModel({
            nodes: [{ op: 'Add', inputs: ['x', 'x'], outputs: ['y'] }],
            inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: [3, 4] }],
            outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: [3, 4] }],
          }),
          config: { task: 'raw' },
        },
      },
      env: { MAX_IMAGES_PER_REQUEST: '8' },
    });
    client = createKserveGrpcClient(`127.0.0.1:${gw.grpcPort}`);
  });
  afterAll(async () => {
    client?.close();
    await gw?.close();
  });

  it('model configuration: max_batch_size is a batch one request may carry (perf_analyzer -b takes it), not one refused', async () => {
    const config = (await get('/models/small-queue/config')).body;
    expect(config.max_batch_size).toBeGreaterThan(0);
    const n = config.max_batch_size;
    const r = await post('/models/small-queue/infer', {
      inputs: [{ name: 'x', datatype: 'FP32', shape: [n, 2], data: Array.from({ length: 2 * n }, (_, i) => i) }],
    });
    // a batch of max_batch_size was 400 LIMIT_EXCEEDED ("one client may have at most 2 requests ... admitted"), while the
    // configuration said 8
    expect([r.status, r.code, r.body.error]).toEqual([200, null, undefined]);
    expect(r.body.outputs[0].shape).toEqual([n, 2]);
  });

  it('classification of a model without a batch dimension ranks the whole output, as Triton does for max_batch_size 0', async () => {
    expect((await get('/models/no-batch/config')).body.max_batch_size).toBe(0);
    const x = Array.from({ length: 12 }, (_, i) => i + 1); // y = 2x: the largest are y[11] = 24, y[10] = 22
    const r = await post('/models/no-batch/infer', {
      inputs: [{ name: 'x', datatype: 'FP32', shape: [3, 4], data: x }],
      outputs: [{ name: 'y', parameters: { classification: 2 } }],
    });
    expect(r.status).toBe(200);
    // Triton (http_server.cc, grpc infer handler): no batch dimension, one ranking of every element, shape [N]; here it
    // was one ranking per row of dimension 0 with each row's own indices: [3,2] "8.000000:3","6.000000:2",...
    expect(r.body.outputs[0]).toEqual({ name: 'y', datatype: 'BYTES', shape: [2], data: ['24.000000:11', '22.000000:10'] });
    const g = (await client.ModelInfer({
      model_name: 'no-batch',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [3, 4], contents: { fp32_contents: x } }],
      outputs: [{ name: 'y', parameters: { classification: { int64_param: 2 } } }],
    })) as { outputs: { shape: string[]; contents: { bytes_contents: Buffer[] } }[] };
    expect(g.outputs[0].shape).toEqual(['2']);
    expect(g.outputs[0].contents.bytes_contents.map(String)).toEqual(['24.000000:11', '22.000000:10']);
  });
});
