import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
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
        // its only version fails to load: nothing is known of its tensors
        broken: { onnx: new TextEncoder().encode('not an onnx model'), config: { task: 'raw' } },
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

  it('gRPC ModelReady of an unknown model or version is ready: false, as Triton answers it (a client polls until it appears)', async () => {
    // tritonclient.grpc's is_model_ready() raised on the NOT_FOUND this answered
    expect(await client.ModelReady({ name: 'nope' })).toEqual({ ready: false });
    expect(await client.ModelReady({ name: 'no-batch', version: '7' })).toEqual({ ready: false });
    expect(await client.ModelReady({ name: 'broken' })).toEqual({ ready: false });
    expect(await client.ModelReady({ name: 'no-batch' })).toEqual({ ready: true });
    // nor is a version that is no number (Triton: no such version)
    expect(await client.ModelReady({ name: 'no-batch', version: 'one' })).toEqual({ ready: false });
    // a token is still required where one is set (tested in security.test.ts): only "not found" became "not ready"
  });

  it('metadata and configuration of a model with no version whose tensors are known are an error saying why, not empty', async () => {
    // they were 200 with "inputs": [] and "input": [], max_batch_size 0: a client that builds its request from them
    // sent no inputs and met another error later
    for (const p of ['/models/broken', '/models/broken/config', '/models/broken/versions/1']) {
      const r = await get(p);
      expect([r.status, r.code], p).toEqual([503, 'MODEL_NOT_READY']);
      expect(r.body.error, p).toMatch(/broken.*version 1.*not an ONNX model/);
    }
    const g = await client.ModelMetadata({ name: 'broken' }).then(
      () => null,
      (e: { code: number; details: string }) => [e.code, e.details],
    );
    expect(g?.[0]).toBe(14); // UNAVAILABLE
    expect(g?.[1]).toMatch(/version 1.*not an ONNX model/);
  });

  describe('a load whose "file:" parameters name a version folder, as tritonclient\'s load_model(files=...) sends them', () => {
    const identity = Buffer.from(identityModel(ElemType.FLOAT, ['N', 4])).toString('base64');
    const doubling = Buffer.from(
      buildModel({
        nodes: [{ op: 'Add', inputs: ['x', 'x'], outputs: ['y'] }],
        inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 4] }],
        outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: ['N', 4] }],
      }),
    ).toString('base64');
    const config = JSON.stringify({ task: 'raw' });
    const load = (name: string, files: Record<string, string>) =>
      post(`/repository/models/${name}/load`, {
        parameters: { config, ...Object.fromEntries(Object.entries(files).map(([k, v]) => [`file:${k}`, v])) },
      });
    const infer = async (name: string, version: string) =>
      (
        await post(`/models/${name}/versions/${version}/infer`, {
          inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, 4] }],
        })
      ).body.outputs?.[0]?.data;

    it('a new model is served as the version its folder names', async () => {
      // it was served as version 1: a client asking for version 5 was told there is none
      expect((await load('named-five', { '5/model.onnx': identity })).status).toBe(200);
      expect((await get('/models/named-five')).body.versions).toEqual(['5']);
      expect(await infer('named-five', '5')).toEqual([1, 2, 3, 4]);
    });

    it('a version there is, named again ("file:1/model.onnx"), is replaced: the same version number answers with the new model', async () => {
      expect((await load('replaced', { '1/model.onnx': identity })).status).toBe(200);
      expect(await infer('replaced', '1')).toEqual([1, 2, 3, 4]);
      // it was installed as version 2, and version 1 unloaded (latest 1): a client of version 1 was told it is not ready
      expect((await load('replaced', { '1/model.onnx': doubling })).status).toBe(200);
      expect((await get('/models/replaced')).body.versions).toEqual(['1']);
      expect(await infer('replaced', '1')).toEqual([2, 4, 6, 8]);
      const index = await post('/repository/index', {});
      expect(index.body.filter((e: { name: string }) => e.name === 'replaced').map((e: { version: string }) => e.version)).toEqual(['1']);
    });

    it('a version the version policy would not serve, or a folder that is no version, is refused naming the file', async () => {
      expect((await load('policy', { '3/model.onnx': identity })).status).toBe(200);
      const below = await load('policy', { '2/model.onnx': doubling }); // latest 1: version 3 serves
      expect([below.status, below.code]).toEqual([400, 'INVALID_INPUT']);
      expect(below.body.error).toMatch(/version 2 .*"2\/model.onnx".*versionPolicy.*without a version folder \(the next version, 4\)/);
      expect(await infer('policy', '3')).toEqual([1, 2, 3, 4]);
      // a version folder an operator is filling (no model file yet) is not replaced
      await mkdir(path.join(gw.root, 'policy', '5'));
      await writeFile(path.join(gw.root, 'policy', '5', 'notes.txt'), 'wip');
      const filling = await load('policy', { '5/model.onnx': identity });
      expect([filling.status, filling.code]).toEqual([400, 'INVALID_INPUT']);
      expect(filling.body.error).toMatch(/policy\/5 is there without a model file/);
      expect(await readFile(path.join(gw.root, 'policy', '5', 'notes.txt'), 'utf8')).toBe('wip');
      const odd = await load('odd', { 'models/model.onnx': identity });
      expect([odd.status, odd.code]).toEqual([400, 'INVALID_INPUT']);
      expect(odd.body.error).toMatch(/"models\/model.onnx".*version folder/);
    });
  });
});
