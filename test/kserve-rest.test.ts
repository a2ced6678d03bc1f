import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import net from 'node:net';
import { deflateSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ElemType, buildModel, identityModel, transposedModel } from './onnx-builder.ts';
import sharp from 'sharp';
import { encodeMultipart } from '../src/client/multipart.ts';
import { createKserveGrpcClient } from '../src/client/kserve-grpc.ts';
import { fixture, image, startGateway, until, type TestGateway, watchStalls } from './helpers.ts';
import { floatToHalf, halfToFloat } from '../src/engine/types.ts';

/**
 * The Open Inference Protocol (KServe v2) over REST on the gateway's HTTP port, driven with plain fetch: every
 * endpoint, JSON and binary tensor data, encoded images as BYTES, the classification and model repository extensions,
 * the error statuses, and tokens. Cross-protocol checks (GraphQL, REST, gRPC) are in kserve-grpc.test.ts.
 */

const GRAPHQL_TO_V2: Record<string, string> = {
  FLOAT32: 'FP32',
  FLOAT16: 'FP16',
  INT64: 'INT64',
  INT32: 'INT32',
  INT8: 'INT8',
  UINT8: 'UINT8',
  BOOL: 'BOOL',
};

const identities = {
  'id-f32': ElemType.FLOAT,
  'id-f16': ElemType.FLOAT16,
  'id-i64': ElemType.INT64,
  'id-i32': ElemType.INT32,
  'id-i8': ElemType.INT8,
  'id-u8': ElemType.UINT8,
  'id-bool': ElemType.BOOL,
} as const;

/** A request body in the binary tensor data extension: the JSON header, then the tensors' bytes. */
function binaryBody(header: unknown, parts: Uint8Array[]): { body: Buffer; headers: Record<string, string> } {
  const json = Buffer.from(JSON.stringify(header));
  return {
    body: Buffer.concat([json, ...parts]),
    headers: { 'inference-header-content-length': String(json.length), 'content-type': 'application/octet-stream' },
  };
}

/** A binary response split into its JSON header and the bytes of each binary output. */
async function readBinary(res: Response): Promise<{ json: any; parts: Record<string, Buffer> }> {
  const body = Buffer.from(await res.arrayBuffer());
  const n = Number(res.headers.get('inference-header-content-length'));
  const json = JSON.parse(body.subarray(0, n).toString());
  const parts: Record<string, Buffer> = {};
  let at = n;
  for (const o of json.outputs) {
    const size = o.parameters?.binary_data_size;
    if (size === undefined) continue;
    parts[o.name] = body.subarray(at, at + size);
    at += size;
  }
  expect(at).toBe(body.length);
  return { json, parts };
}

/** BYTES elements in their binary layout (4-byte little-endian length, then the bytes). */
const lengthPrefixed = (elements: Uint8Array[]) =>
  Buffer.concat(
    elements.flatMap((e) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(e.length);
      return [len, Buffer.from(e)];
    }),
  );

describe('KServe v2 over REST', () => {
  let gw: TestGateway;
  let v2: string;
  const get = (path: string, headers: Record<string, string> = {}) => fetch(`${v2}${path}`, { headers });
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${v2}${path}`, {
      method: 'POST',
      body: Buffer.isBuffer(body) ? new Uint8Array(body) : JSON.stringify(body),
      headers: { 'content-type': 'application/json', ...headers },
    });
  const json = async (r: Response | Promise<Response>) => {
    const res = await r;
    return { status: res.status, body: await res.json(), code: res.headers.get('x-error-code') };
  };

  beforeAll(async () => {
    gw = await startGateway({
      models: {
        mobilenet: fixture('mobilenet'),
        yolox: fixture('yolox'),
        ...Object.fromEntries(
          Object.entries(identities).map(([name, t]) => [name, { onnx: identityModel(t, ['N', 2, 3]), config: { task: 'raw' } }]),
        ),
        tiny: { onnx: identityModel(ElemType.FLOAT, ['N', 2]), config: { task: 'raw', batching: { maxQueueSize: 2 } } },
        // no batch dimension at all: x [3,4] + v [4] (broadcast) -> y [3,4]
        'no-batch': {
          onnx: buildModel({
            nodes: [{ op: 'Add', inputs: ['x', 'v'], outputs: ['y'] }],
            inputs: [
              { name: 'x', elemType: ElemType.FLOAT, shape: [3, 4] },
              { name: 'v', elemType: ElemType.FLOAT, shape: [4] },
            ],
            outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: [3, 4] }],
          }),
          config: { task: 'raw' },
        },
        // x [N,H,W] -> x + its transpose: only square sizes compute
        'square-only': {
          onnx: buildModel({
            nodes: [
              { op: 'Transpose', inputs: ['x'], outputs: ['xt'], attrs: { perm: [0, 2, 1] } },
              { op: 'Add', inputs: ['x', 'xt'], outputs: ['y'] },
            ],
            inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 'H', 'W'] }],
            outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: ['N', 'H', 'W'] }],
          }),
          config: { task: 'raw' },
        },
        // x [N,4] -> t [4,N]: its output has no batch on dimension 0, so it runs one item at a time
        transposed: {
          onnx: transposedModel(),
          config: { task: 'raw' },
        },
      },
      env: { MAX_IMAGES_PER_REQUEST: '8' },
    });
    v2 = `${gw.url}/v2`;
  });
  afterAll(() => gw?.close());

  it('a model without a batch dimension takes its tensors as its metadata gives them, over REST and GraphQL', async () => {
    const x = Array.from({ length: 12 }, (_, i) => i);
    const v = [100, 200, 300, 400];
    const want = x.map((e, i) => e + v[i % 4]);
    const rest = await json(
      post('/models/no-batch/infer', {
        inputs: [
          { name: 'x', datatype: 'FP32', shape: [3, 4], data: x },
          { name: 'v', datatype: 'FP32', shape: [4], data: v },
        ],
      }),
    );
    expect(rest.status).toBe(200);
    expect(rest.body.outputs[0]).toMatchObject({ name: 'y', shape: [3, 4], data: want });
    const f32 = (a: number[]) => Buffer.from(Float32Array.from(a).buffer).toString('base64');
    const gql = await gw.gql(
      `mutation($x: String!, $v: String!) { infer(model: "no-batch", inputs: [{ name: "x", dtype: FLOAT32, shape: [3, 4], data: $x }, { name: "v", dtype: FLOAT32, shape: [4], data: $v }]) { outputs { name shape data } } }`,
      { x: f32(x), v: f32(v) },
    );
    expect(gql.errors).toBeUndefined();
    expect(gql.data.infer.outputs[0]).toEqual({ name: 'y', shape: [3, 4], data: f32(want) });
    // a shape other than the model's is refused, naming both
    const wrong = await json(
      post('/models/no-batch/infer', {
        inputs: [
          { name: 'x', datatype: 'FP32', shape: [1, 4], data: x.slice(0, 4) },
          { name: 'v', datatype: 'FP32', shape: [4], data: v },
        ],
      }),
    );
    expect([wrong.status, wrong.body.error]).toEqual([400, 'input x has shape [3,4], got [1,4]']);
    // of a batch, the shape sent is named, not one item's
    const batch = await json(
      post('/models/id-f32/infer', { inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 2, 4], data: Array(16).fill(0) }] }),
    );
    expect([batch.status, batch.body.error]).toEqual([400, 'input x has shape [-1,2,3] (-1: any size), got [2,2,4]']);
  });

  it('a size the client chose that the model cannot compute is INVALID_INPUT (400), not a server failure', async () => {
    const infer = (h: number, w: number) =>
      json(
        post('/models/square-only/infer', {
          inputs: [{ name: 'x', datatype: 'FP32', shape: [1, h, w], data: Array.from({ length: h * w }, (_, i) => i) }],
        }),
      );
    expect((await infer(2, 2)).body.outputs[0]).toMatchObject({ shape: [1, 2, 2], data: [0, 3, 3, 6] });
    const odd = await infer(3, 4);
    expect([odd.status, odd.code]).toEqual([400, 'INVALID_INPUT']);
    expect(odd.body.error).toMatch(/^model square-only cannot compute input x of shape \[1,3,4\] \(the model's is \[-1,-1,-1\]\): /);
    const gql = await gw.gql(
      `mutation($d: String!) { infer(model: "square-only", inputs: [{ name: "x", dtype: FLOAT32, shape: [1, 3, 4], data: $d }]) { outputs { name } } }`,
      {
        d: Buffer.alloc(48).toString('base64'),
      },
    );
    expect(gql.errors![0].extensions?.code).toBe('INVALID_INPUT');
  });

  it('a batch for a model whose output has no batch on dimension 0 is refused, naming the output; one item is answered', async () => {
    const infer = (rows: number) =>
      json(
        post('/models/transposed/infer', {
          inputs: [{ name: 'x', datatype: 'FP32', shape: [rows, 4], data: Array.from({ length: rows * 4 }, (_, i) => i + 1) }],
        }),
      );
    const one = await infer(1);
    expect(one.status).toBe(200);
    expect(one.body.outputs[0]).toMatchObject({ name: 't', shape: [4, 1], data: [1, 2, 3, 4] });
    const two = await infer(2);
    expect([two.status, two.code]).toEqual([400, 'INVALID_INPUT']);
    expect(two.body.error).toMatch(/output t .*dimension 0.*one item per request/);
  });

  it('server metadata, liveness and readiness', async () => {
    expect(await json(get(''))).toMatchObject({
      status: 200,
      body: {
        name: 'graphql-inference-gateway',
        version: expect.any(String),
        extensions: ['binary_tensor_data', 'classification', 'model_repository', 'statistics', 'model_configuration'],
      },
    });
    expect(await json(get('/health/live'))).toMatchObject({ status: 200, body: { live: true } });
    expect(await json(get('/health/ready'))).toMatchObject({ status: 200, body: { ready: true } });
  });

  it('model metadata equals what GraphQL says of Model.inputs/outputs (with and without /versions/1)', async () => {
    const r = await gw.gql(`{ models { name inputs { name dtype shape } outputs { name dtype shape } } }`);
    expect(r.data.models.length).toBeGreaterThan(5);
    const asV2 = (t: { name: string; dtype: string; shape: (number | null)[] }) => ({
      name: t.name,
      datatype: GRAPHQL_TO_V2[t.dtype],
      shape: t.shape.map((d) => d ?? -1),
    });
    for (const m of r.data.models) {
      const expected = {
        name: m.name,
        versions: ['1'],
        platform: 'onnxruntime_onnx',
        inputs: m.inputs.map(asV2),
        outputs: m.outputs.map(asV2),
      };
      expect((await json(get(`/models/${m.name}`))).body, m.name).toEqual(expected);
      expect((await json(get(`/models/${m.name}/versions/1`))).body, m.name).toEqual(expected);
    }
    expect((await json(get('/models/mobilenet'))).body.inputs).toEqual([{ name: 'input', datatype: 'FP32', shape: [-1, 3, 224, 224] }]);
  });

  it('model readiness, and 404 for unknown models and versions', async () => {
    expect(await json(get('/models/mobilenet/ready'))).toMatchObject({ status: 200, body: { name: 'mobilenet', ready: true } });
    expect(await json(get('/models/mobilenet/versions/1/ready'))).toMatchObject({ status: 200, body: { ready: true } });
    for (const path of ['/models/nope/ready', '/models/mobilenet/versions/2/ready', '/models/mobilenet/versions/v1', '/models/nope']) {
      const r = await json(get(path));
      expect(r.status, path).toBe(404);
      expect(r.body.error, path).toMatch(/no model|no version/);
      expect(r.code, path).toBe('MODEL_NOT_FOUND');
    }
  });

  it('infer with JSON tensors: every data type round-trips exactly; nested data; only the outputs asked for; the id comes back', async () => {
    const cases: [string, string, unknown[]][] = [
      ['id-f32', 'FP32', [1.5, -2.25, 3.4028234663852886e38, Math.fround(1e-45), 0, Math.fround(0.1)]],
      ['id-f16', 'FP16', [1, -2, 0.5, 65504, halfToFloat(1), halfToFloat(floatToHalf(0.3))]],
      ['id-i64', 'INT64', [-(2 ** 53) + 1, -1, 0, 1, 2 ** 40, 2 ** 53 - 1]],
      ['id-i32', 'INT32', [-2147483648, -1, 0, 1, 7, 2147483647]],
      ['id-i8', 'INT8', [-128, -1, 0, 1, 64, 127]],
      ['id-u8', 'UINT8', [0, 1, 127, 128, 254, 255]],
      ['id-bool', 'BOOL', [true, false, false, true, true, false]],
    ];
    for (const [model, datatype, data] of cases) {
      const r = await json(
        post(`/models/${model}/infer`, {
          id: `req-${model}`,
          inputs: [{ name: 'x', datatype, shape: [1, 2, 3], data: [data.slice(0, 3), data.slice(3)] }],
          outputs: [{ name: 'y' }],
        }),
      );
      expect(r.status, model).toBe(200);
      expect(r.body, model).toEqual({
        model_name: model,
        model_version: '1',
        id: `req-${model}`,
        outputs: [{ name: 'y', datatype, shape: [1, 2, 3], data }],
      });
    }
  });

  it('shared memory (the extension this server does not implement) is refused on an input and an output, not ignored', async () => {
    const x = { name: 'x', datatype: 'FP32', shape: [1, 2, 3] };
    const shm = { shared_memory_region: 'r0', shared_memory_byte_size: 24 };
    const input = await json(post('/models/id-f32/infer', { inputs: [{ ...x, parameters: shm }] }));
    expect([input.status, input.code, input.body.error]).toEqual([
      400,
      'INVALID_INPUT',
      'input x: shared memory (shared_memory_region) is not supported here: send "data", or binary data (binary_data_size)',
    ]);
    const output = await json(
      post('/models/id-f32/infer', { inputs: [{ ...x, data: [1, 2, 3, 4, 5, 6] }], outputs: [{ name: 'y', parameters: shm }] }),
    );
    expect([output.status, output.body.error]).toEqual([
      400,
      'output y: shared memory (shared_memory_region) is not supported here: ask for JSON or binary data ("binary_data": true)',
    ]);
  });

  it('a parameter of the wrong type is refused, naming it and what it takes, not ignored (as Triton refuses it)', async () => {
    const x = { name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: [1, 2, 3, 4, 5, 6] };
    const refused = async (r: Promise<Response>, error: string) =>
      expect(await json(r), error).toEqual({ status: 400, code: 'INVALID_INPUT', body: { error } });
    // each was answered in JSON, as if it had not been sent
    await refused(
      post('/models/id-f32/infer', { inputs: [x], parameters: { binary_data_output: 'true' } }),
      'request: binary_data_output must be true or false, got "true"',
    );
    await refused(
      post('/models/id-f32/infer', { inputs: [x], outputs: [{ name: 'y', parameters: { binary_data: 'yes' } }] }),
      'output y: binary_data must be true or false, got "yes"',
    );
    await refused(
      post('/models/id-f32/infer', { inputs: [x], outputs: [{ name: 'y', parameters: { binary_data: 1 } }] }),
      'output y: binary_data must be true or false, got 1',
    );
    // a byte count as text was said to go past the end of the body
    const text = binaryBody({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: '24' } }] }, [
      new Uint8Array(24),
    ]);
    await refused(
      post('/models/id-f32/infer', text.body, text.headers),
      'input x: binary_data_size must be the byte count of its data in the body (a non-negative integer), got "24"',
    );
    // the repository index listed every model, ready or not
    await refused(post('/repository/index', { ready: 'true' }), 'the index request: "ready" must be true or false, got "true"');
    // false is taken as false
    const asJson = await json(
      post('/models/id-f32/infer', {
        inputs: [x],
        parameters: { binary_data_output: true },
        outputs: [{ name: 'y', parameters: { binary_data: false } }],
      }),
    );
    expect(asJson.body.outputs).toEqual([{ ...x, name: 'y' }]);
    expect((await json(post('/models/id-f32/infer', { inputs: [x], parameters: { binary_data_output: false } }))).body.outputs).toEqual([
      { ...x, name: 'y' },
    ]);
    expect((await json(post('/repository/index', { ready: false }))).status).toBe(200);
  });

  it('a shape dimension too large is said to be too large, with the bound (not to be a negative one)', async () => {
    const x = { name: 'x', datatype: 'FP32', data: [1, 2, 3, 4, 5, 6] };
    const shaped = async (shape: string) =>
      json(post('/models/id-f32/infer', Buffer.from(JSON.stringify({ inputs: [{ ...x, shape: '@SHAPE@' }] }).replace('"@SHAPE@"', shape))));
    expect(await shaped('[1,1e20,3]')).toEqual({
      status: 400,
      code: 'INVALID_INPUT',
      body: { error: 'input x: a shape dimension is too large (100000000000000000000): at most 9007199254740991 (2^53 - 1)' },
    });
    // past what a double holds: JSON.parse reads it as Infinity, which is not what was sent
    expect((await shaped('[1,2,1e400]')).body.error).toBe('input x: a shape dimension is too large: at most 9007199254740991 (2^53 - 1)');
    expect((await shaped('[1,-2,3]')).body.error).toBe('input x: shape must hold non-negative integers, got [1,-2,3]');
  });

  it('BOOL bytes other than 0 and 1 are true, whatever the transport: binary answers 1, as JSON says true', async () => {
    const bytes = new Uint8Array([2, 255, 0, 1, 0, 128]);
    const header = {
      inputs: [{ name: 'x', datatype: 'BOOL', shape: [1, 2, 3], parameters: { binary_data_size: 6 } }],
      outputs: [{ name: 'y', parameters: { binary_data: true } }],
    };
    const { body, headers } = binaryBody(header, [bytes]);
    const { parts } = await readBinary(await post('/models/id-bool/infer', body, headers));
    expect([...parts.y]).toEqual([1, 1, 0, 1, 0, 1]);
    const asJson = binaryBody({ ...header, outputs: [{ name: 'y' }] }, [bytes]);
    expect((await json(post('/models/id-bool/infer', asJson.body, asJson.headers))).body.outputs[0].data).toEqual([
      true,
      true,
      false,
      true,
      false,
      true,
    ]);
  });

  it('FP16 from JSON numbers is rounded once, to the nearest half (not to a float first, then to a half)', async () => {
    // each just above a point halfway between two halves, and rounded onto it by a float32 first
    const r = await json(
      post('/models/id-f16/infer', {
        inputs: [
          { name: 'x', datatype: 'FP16', shape: [1, 2, 3], data: [1.0004882812500009, 2049.0000000000005, -1.0004882812500009, 1, 0.5, 2] },
        ],
      }),
    );
    expect(r.body.outputs[0].data).toEqual([1.0009765625, 2050, -1.0009765625, 1, 0.5, 2]);
  });

  it('INT64 past 2^53 comes back exact in JSON (as digits, not rounded); NaN and infinities as strings, both ways', async () => {
    const big = ['9223372036854775807', '-9223372036854775808', '9007199254740993', '-1', '0', '42'];
    const res = await post('/models/id-i64/infer', { inputs: [{ name: 'x', datatype: 'INT64', shape: [1, 2, 3], data: big }] });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain(`"data":[${big.join(',')}]`);
    // non-finite floats: JSON has no numbers for them; binary in, JSON out
    const odd = new Float32Array([NaN, Infinity, -Infinity, 1.5, -0, 2]);
    const b = binaryBody({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }] }, [
      new Uint8Array(odd.buffer),
    ]);
    const res2 = await post('/models/id-f32/infer', b.body, b.headers);
    const text2 = await res2.text();
    // -0 keeps its sign, as binary, gRPC and GraphQL do ("-0.0": a float to every JSON reader, Python's too)
    expect(text2).toContain('"data":["NaN","Infinity","-Infinity",1.5,-0.0,2]');
    expect(Object.is(JSON.parse(text2).outputs[0].data[4], -0)).toBe(true);
    // and the same strings are taken in
    const back = await readBinary(
      await post('/models/id-f32/infer', {
        inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: ['NaN', 'Infinity', '-Infinity', 1.5, 0, 2] }],
        outputs: [{ name: 'y', parameters: { binary_data: true } }],
      }),
    );
    expect(Array.from(new Float32Array(new Uint8Array(back.parts.y).buffer))).toEqual([NaN, Infinity, -Infinity, 1.5, 0, 2]);
  });

  it('a client that hangs up while sending its body is no server error (no "unexpected error" in the log)', async () => {
    const port = Number(new URL(gw.url).port);
    await new Promise<void>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.write(
          'POST /v2/models/id-f32/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs"',
        );
        setTimeout(() => {
          s.destroy();
          resolve();
        }, 200);
      });
      s.on('error', () => undefined);
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(gw.logs.filter((l) => l.includes('unexpected error'))).toEqual([]);
    expect((await json(get('/health/ready'))).status).toBe(200);
  });

  it('BYTES binary data is split into no more elements than the shape says (8 MB of zeros were 2M empty elements)', async () => {
    const zeros = new Uint8Array(8 * 1024 * 1024);
    const b = binaryBody({ inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], parameters: { binary_data_size: zeros.length } }] }, [
      zeros,
    ]);
    // and a shape past MAX_IMAGES_PER_REQUEST (8 here) is refused before the data is split
    const many = binaryBody(
      { inputs: [{ name: 'input', datatype: 'BYTES', shape: [2_000_000], parameters: { binary_data_size: zeros.length } }] },
      [zeros],
    );
    // the event loop's longest stall over the two (the split was a 0.9 s stall): the least of three tries, since the
    // other test files' processes share the cores and can hold this one off the CPU for a while (a 520 ms "stall" once)
    const stalled: number[] = [];
    for (let i = 0; i < 3; i++) {
      const stalls = watchStalls();
      const r = await json(post('/models/mobilenet/infer', b.body, b.headers));
      expect([r.status, r.code]).toEqual([400, 'INVALID_IMAGE']);
      const m = await json(post('/models/mobilenet/infer', many.body, many.headers));
      expect([m.status, m.code]).toEqual([400, 'LIMIT_EXCEEDED']);
      stalled.push(stalls.stop());
    }
    expect(Math.min(...stalled), `stalls ${stalled.map(Math.round)} ms`).toBeLessThan(500);
  });

  it('"outputs": [] asks for every output, as no "outputs" does (and as gRPC does)', async () => {
    const r = await json(
      post('/models/id-f32/infer', { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: [1, 2, 3, 4, 5, 6] }], outputs: [] }),
    );
    expect(r.body.outputs).toEqual([{ name: 'y', datatype: 'FP32', shape: [1, 2, 3], data: [1, 2, 3, 4, 5, 6] }]);
  });

  it('a batch (dimension 0 > 1) is split into items, batched, and joined back in order', async () => {
    const data = Array.from({ length: 4 * 6 }, (_, i) => i - 7.5);
    const before = gw.repository.get('id-f32')!.versions.get(1)!.stats.items;
    const r = await json(post('/models/id-f32/infer', { inputs: [{ name: 'x', datatype: 'FP32', shape: [4, 2, 3], data }] }));
    expect(r.status).toBe(200);
    expect(r.body.outputs).toEqual([{ name: 'y', datatype: 'FP32', shape: [4, 2, 3], data }]);
    expect(gw.repository.get('id-f32')!.versions.get(1)!.stats.items - before).toBe(4);
  });

  it('binary tensor data extension: binary inputs, binary outputs (per output and for all), mixed with JSON', async () => {
    const values = Float32Array.from({ length: 6 }, (_, i) => Math.sin(i) * 1000);
    const bytes = new Uint8Array(values.buffer);
    const header = {
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: bytes.length } }],
      outputs: [{ name: 'y', parameters: { binary_data: true } }],
    };
    const { body, headers } = binaryBody(header, [bytes]);
    const res = await post('/models/id-f32/infer', body, headers);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/octet-stream');
    const { json: head, parts } = await readBinary(res);
    expect(head.outputs).toEqual([{ name: 'y', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }]);
    expect(parts.y.equals(Buffer.from(bytes))).toBe(true);

    // all outputs binary by the request parameter, no outputs named
    const all = binaryBody({ ...header, outputs: undefined, parameters: { binary_data_output: true } }, [bytes]);
    const { parts: p2 } = await readBinary(await post('/models/id-f32/infer', all.body, all.headers));
    expect(p2.y.equals(Buffer.from(bytes))).toBe(true);

    // binary in, JSON out
    const mixed = binaryBody({ ...header, outputs: [{ name: 'y' }] }, [bytes]);
    const r = await json(post('/models/id-f32/infer', mixed.body, mixed.headers));
    expect(r.body.outputs[0].data).toEqual(Array.from(values));

    // FP16 has no JSON type of its own: binary carries the half bits as they are
    const half = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x3555]);
    const h = binaryBody(
      {
        inputs: [{ name: 'x', datatype: 'FP16', shape: [1, 2, 3], parameters: { binary_data_size: 12 } }],
        outputs: [{ name: 'y', parameters: { binary_data: true } }],
      },
      [new Uint8Array(half.buffer)],
    );
    const { parts: p3 } = await readBinary(await post('/models/id-f16/infer', h.body, h.headers));
    expect(p3.y.equals(Buffer.from(half.buffer))).toBe(true);
  });

  it('a BYTES input of no images (shape [0]) is refused naming the input and its shape, over REST and gRPC', async () => {
    const error = (shape: string) =>
      `BYTES input input: shape ${shape} holds no images: send at least one encoded image (shape [N] or [N,1], N >= 1)`;
    // it said only "no images"
    expect(await json(post('/models/mobilenet/infer', { inputs: [{ name: 'input', datatype: 'BYTES', shape: [0], data: [] }] }))).toEqual({
      status: 400,
      code: 'INVALID_INPUT',
      body: { error: error('[0]') },
    });
    const empty = binaryBody({ inputs: [{ name: 'input', datatype: 'BYTES', shape: [0, 1], parameters: { binary_data_size: 0 } }] }, []);
    expect((await json(post('/models/mobilenet/infer', empty.body, empty.headers))).body).toEqual({ error: error('[0,1]') });
    const client = createKserveGrpcClient(`127.0.0.1:${gw.grpcPort}`);
    try {
      await expect(
        client.ModelInfer({
          model_name: 'mobilenet',
          inputs: [{ name: 'input', datatype: 'BYTES', shape: [0], contents: { bytes_contents: [] } }],
        }),
      ).rejects.toMatchObject({ code: 3, details: error('[0]') }); // INVALID_ARGUMENT
    } finally {
      client.close();
    }
  });

  it('a JPEG as BYTES is decoded and preprocessed by the model.json: the same top-1 as GraphQL classify', async () => {
    const photos = ['zebra.jpeg', 'bee.jpeg', 'pelican.jpeg'];
    const jpegs = await Promise.all(photos.map((p) => readFile(image(p))));
    const graphqlTop = [];
    for (const p of photos) {
      const r = await gw.gql(
        `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { classId label } } }`,
        { f: null },
        { files: { f: image(p) } },
      );
      graphqlTop.push(r.data.classify.predictions[0]);
    }
    expect(graphqlTop.map((p) => p.classId)).toEqual([340, 309, 144]);

    // JSON: {"b64": ...} elements, classification extension
    const r = await json(
      post('/models/mobilenet/infer', {
        inputs: [{ name: 'input', datatype: 'BYTES', shape: [3], data: jpegs.map((j) => ({ b64: j.toString('base64') })) }],
        outputs: [{ name: 'output', parameters: { classification: 1 } }],
      }),
    );
    expect(r.status).toBe(200);
    expect(r.body.outputs[0]).toMatchObject({ name: 'output', datatype: 'BYTES', shape: [3, 1] });
    const top = r.body.outputs[0].data.map((s: string) => s.split(':'));
    expect(top.map((t: string[]) => Number(t[1]))).toEqual(graphqlTop.map((p) => p.classId));
    expect(top.map((t: string[]) => t.slice(2).join(':'))).toEqual(graphqlTop.map((p) => p.label));

    // binary: one photo as its bare bytes (as OpenVINO Model Server takes it), raw output tensor
    const one = binaryBody(
      {
        inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], parameters: { binary_data_size: jpegs[0].length } }],
        outputs: [{ name: 'output', parameters: { binary_data: true } }],
      },
      [jpegs[0]],
    );
    const { json: head, parts } = await readBinary(await post('/models/mobilenet/infer', one.body, one.headers));
    expect(head.outputs[0]).toMatchObject({ datatype: 'FP32', shape: [1, 1000] });
    const logits = new Float32Array(new Uint8Array(parts.output).buffer);
    expect(logits.indexOf(Math.max(...logits))).toBe(340);

    // binary: three photos, length-prefixed
    const three = lengthPrefixed(jpegs);
    const b = binaryBody(
      {
        inputs: [{ name: 'input', datatype: 'BYTES', shape: [3], parameters: { binary_data_size: three.length } }],
        outputs: [{ name: 'output', parameters: { classification: 2 } }],
      },
      [three],
    );
    const r3 = await json(post('/models/mobilenet/infer', b.body, b.headers));
    expect(r3.body.outputs[0].shape).toEqual([3, 2]);
    expect(r3.body.outputs[0].data.filter((_: string, i: number) => i % 2 === 0).map((s: string) => Number(s.split(':')[1]))).toEqual([
      340, 309, 144,
    ]);
  });

  it('classification extension: "<value>:<index>[:<label>]", highest first, no label where the model has none (labels: the JPEG test)', async () => {
    const r = await json(
      post('/models/id-f32/infer', {
        inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 2, 3], data: [0.5, 3, -1, 2, 2, 0, 9, 8, 7, 6, 5, 4] }],
        outputs: [{ name: 'y', parameters: { classification: 3 } }],
      }),
    );
    expect(r.body.outputs).toEqual([
      {
        name: 'y',
        datatype: 'BYTES',
        shape: [2, 3],
        data: ['3.000000:1', '2.000000:3', '2.000000:4', '9.000000:0', '8.000000:1', '7.000000:2'],
      },
    ]);
    // ties by index, NaN after everything, infinities in their place
    const odd = await json(
      post('/models/id-f32/infer', {
        inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: [3, 'NaN', 5, 5, '-Infinity', 'Infinity'] }],
        outputs: [{ name: 'y', parameters: { classification: 6 } }],
      }),
    );
    expect(odd.body.outputs[0].data).toEqual(['Infinity:5', '5.000000:2', '5.000000:3', '3.000000:0', '-Infinity:4', 'NaN:1']);
  });

  it('errors: {"error": ...} with the status of the table, and the server keeps serving', async () => {
    const infer = (model: string, body: unknown) => json(post(`/models/${model}/infer`, body));
    /** A body whose JSON text has `mark` replaced by raw text (what JSON.stringify cannot write). */
    const rawInfer = (model: string, body: unknown, mark: string, raw: string) =>
      json(post(`/models/${model}/infer`, Buffer.from(JSON.stringify(body).replace(mark.startsWith('"') ? mark : `"${mark}"`, raw))));
    const x = (over: object = {}) => ({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: [1, 2, 3, 4, 5, 6], ...over }] });
    const cases: [string, Promise<{ status: number; body: any; code: string | null }>, number, string][] = [
      ['unknown model', infer('nope', x()), 404, 'MODEL_NOT_FOUND'],
      ['unknown version', json(post('/models/id-f32/versions/7/infer', x())), 404, 'MODEL_NOT_FOUND'],
      ['wrong datatype', infer('id-f32', x({ datatype: 'INT32' })), 400, 'INVALID_INPUT'],
      ['unknown datatype', infer('id-f32', x({ datatype: 'FLOAT' })), 400, 'INVALID_INPUT'],
      ['unsupported datatype', infer('id-f32', x({ datatype: 'FP64' })), 400, 'INVALID_INPUT'],
      ['wrong shape', infer('id-f32', x({ shape: [1, 3, 2] })), 400, 'INVALID_INPUT'],
      ['too little data', infer('id-f32', x({ data: [1, 2] })), 400, 'INVALID_INPUT'],
      ['not a number', infer('id-f32', x({ data: [1, 2, 3, 4, 5, 'six'] })), 400, 'INVALID_INPUT'],
      ['out of range', infer('id-u8', x({ datatype: 'UINT8', data: [1, 2, 3, 4, 5, 256] })), 400, 'INVALID_INPUT'],
      ['unknown input', infer('id-f32', x({ name: 'z' })), 400, 'INVALID_INPUT'],
      ['unknown output', infer('id-f32', { ...x(), outputs: [{ name: 'nope' }] }), 400, 'INVALID_INPUT'],
      // each copy of an output was encoded again: 600,000 copies in an 11 MB request ran the heap out (a crash)
      ['an output asked twice', infer('id-f32', { ...x(), outputs: [{ name: 'y' }, { name: 'y' }] }), 400, 'INVALID_INPUT'],
      // flattening 20,000 levels overflowed the stack (a 500)
      [
        'data nested deeper than the shape',
        rawInfer('id-f32', x({ data: '@DEEP@' }), '@DEEP@', '['.repeat(20000) + '1' + ']'.repeat(20000)),
        400,
        'INVALID_INPUT',
      ],
      ['FP32 past its range', infer('id-f32', x({ data: [1, 2, 3, 4, 5, 1e39] })), 400, 'INVALID_INPUT'],
      ['FP16 past its range', infer('id-f16', x({ datatype: 'FP16', data: [1, 2, 3, 4, 5, 70000] })), 400, 'INVALID_INPUT'],
      // JSON.parse has already rounded it: refused, saying how to send it
      [
        'INT64 past 2^53 as a JSON number',
        rawInfer('id-i64', x({ datatype: 'INT64', data: [1, 2, 3, 4, 5, '@BIG@'] }), '"@BIG@"', '9007199254740993'),
        400,
        'INVALID_INPUT',
      ],
      [
        'bad classification',
        infer('id-f32', { ...x(), outputs: [{ name: 'y', parameters: { classification: 0 } }] }),
        400,
        'INVALID_INPUT',
      ],
      ['not JSON', json(post('/models/id-f32/infer', Buffer.from('{"inputs": ['))), 400, 'INVALID_INPUT'],
      ['a broken escape in the model name', json(get('/models/%E0/ready')), 400, 'INVALID_INPUT'],
      ['a broken escape in an infer path', infer('%E0%A4%A', x()), 400, 'INVALID_INPUT'],
      ['no inputs', infer('id-f32', {}), 400, 'INVALID_INPUT'],
      [
        'not an image',
        infer('mobilenet', { inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: ['hello'] }] }),
        400,
        'INVALID_IMAGE',
      ],
      [
        'image to a model without image preprocessing',
        infer('id-f32', { inputs: [{ name: 'x', datatype: 'BYTES', shape: [1], data: ['hi'] }] }),
        400,
        'INVALID_INPUT',
      ],
      ['batch past MAX_IMAGES_PER_REQUEST', infer('id-f32', x({ shape: [9, 2, 3], data: new Array(54).fill(0) })), 400, 'LIMIT_EXCEEDED'],
      [
        'batch past maxQueueSize (it could never be admitted: not a full queue to retry)',
        infer('tiny', { inputs: [{ name: 'x', datatype: 'FP32', shape: [3, 2], data: [1, 2, 3, 4, 5, 6] }] }),
        400,
        'LIMIT_EXCEEDED',
      ],
    ];
    for (const [what, p, status, code] of cases) {
      const r = await p;
      expect([r.status, r.code], what).toEqual([status, code]);
      expect(r.body, what).toEqual({ error: expect.any(String) });
    }
    const bad = binaryBody({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 48 } }] }, [
      new Uint8Array(24),
    ]);
    expect((await json(post('/models/id-f32/infer', bad.body, bad.headers))).status).toBe(400);
    const extra = binaryBody({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }] }, [
      new Uint8Array(30),
    ]);
    expect((await json(post('/models/id-f32/infer', extra.body, extra.headers))).body.error).toMatch(/6 bytes of binary data after/);
    // messages say what was sent and what the model has
    expect((await infer('id-f32', x({ shape: [6] }))).body.error).toMatch(/has shape \[-1,2,3\] \(-1: any size\), got \[6\]/);
    const notImage = await infer('id-f32', { inputs: [{ name: 'x', datatype: 'BYTES', shape: [1], data: ['hi'] }] });
    expect(notImage.body.error).toMatch(/shape \[\?,2,3\]/);
    const both = binaryBody(
      { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: [9, 9, 9, 9, 9, 9], parameters: { binary_data_size: 24 } }] },
      [new Uint8Array(24)],
    );
    expect((await json(post('/models/id-f32/infer', both.body, both.headers))).body.error).toMatch(/both "data" and binary_data_size/);
    const big = await json(
      post(
        '/models/id-i64/infer',
        Buffer.from('{"inputs":[{"name":"x","datatype":"INT64","shape":[1,2,3],"data":[1,2,3,4,5,9007199254740993]}]}'),
      ),
    );
    expect(big.body.error).toMatch(/past 2\^53.*as a string/);
    expect((await json(get('/nothing/here'))).status).toBe(404);
    const wrongMethod = await get('/models/id-f32/infer');
    expect([wrongMethod.status, wrongMethod.headers.get('allow')]).toEqual([405, 'POST']);
    // healthy afterwards
    expect((await infer('id-f32', x())).status).toBe(200);
    expect((await json(get('/health/ready'))).status).toBe(200);
  });

  it('a BYTES element of base64 text (a JPEG not wrapped in {"b64": ...}): INVALID_IMAGE says how to send it, and echoes none of it', async () => {
    const b64 = (await readFile(image('zebra.jpeg'))).toString('base64');
    const bytes = (data: unknown[]) =>
      json(post('/models/mobilenet/infer', { inputs: [{ name: 'input', datatype: 'BYTES', shape: [data.length], data }] }));
    const jpeg = await bytes([b64]);
    expect([jpeg.status, jpeg.code]).toEqual([400, 'INVALID_IMAGE']);
    expect(jpeg.body.error).toMatch(
      /^not an image this server reads \(.*\): the element is base64 text of a JPEG image; send it as \{"b64": "\.\.\."\}/,
    );
    expect(jpeg.body.error).toMatch(/binary data extension/);
    expect(jpeg.body.error).not.toContain(b64.slice(0, 12));
    expect(jpeg.body.error.length).toBeLessThan(300);
    // which element, when there are several; base64 of something else still looks like base64; a data: URL is named
    const second = await bytes([{ b64 }, Buffer.from('some bytes that are no image at all').toString('base64')]);
    expect([second.code, second.body.error]).toEqual([
      'INVALID_IMAGE',
      expect.stringMatching(/element 1 looks like base64 text; send it as/),
    ]);
    // an image that is no image among good ones: which one, counted from 0 as the elements are
    const cut = (await readFile(image('zebra.jpeg'))).subarray(0, 3000).toString('base64');
    const middle = await bytes([{ b64 }, { b64: cut }, { b64 }]);
    // (libvips' reason, or ours when its one error buffer was emptied by the good photos' decodes beside it)
    expect([middle.code, middle.body.error]).toEqual([
      'INVALID_IMAGE',
      expect.stringMatching(/^the image at index 1 of 3: cannot decode the image: (premature end of JPEG image|it is damaged, truncated)/),
    ]);
    const url = await bytes([`data:image/jpeg;base64,${b64}`]);
    expect([url.code, url.body.error]).toEqual(['INVALID_IMAGE', expect.stringMatching(/the element is a data: URL/)]);
    // text that is not base64 is only not an image
    const text = await bytes(['hello, world']);
    expect([text.code, text.body.error]).toEqual(['INVALID_IMAGE', expect.not.stringMatching(/base64/)]);
    expect((await bytes([{ b64 }])).status).toBe(200);
  });

  it('a request of images that fails as a whole for one of them runs none of the others (they were inferred, counted as answered, and thrown away)', async () => {
    const b64 = (await readFile(image('zebra.jpeg'))).toString('base64');
    const counted = async () => {
      const text = await (await fetch(`${gw.url}/metrics`)).text();
      const value = (name: string) => Number(new RegExp(`^${name}\\{model="mobilenet"[^}]*\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
      return { answered: value('gateway_inference_request_success_total'), calls: value('gateway_inference_exec_count_total') };
    };
    const before = await counted();
    const data = [{ b64 }, { b64 }, { b64: Buffer.from('no image at all').toString('base64') }, { b64 }];
    const r = await json(post('/models/mobilenet/infer', { inputs: [{ name: 'input', datatype: 'BYTES', shape: [4], data }] }));
    expect([r.status, r.code]).toEqual([400, 'INVALID_IMAGE']);
    expect(r.body.error).toMatch(/^the image at index 2 of 4: /);
    expect(await counted()).toEqual(before);
    // the same request without the bad image runs, and counts, all three
    const ok = await json(
      post('/models/mobilenet/infer', { inputs: [{ name: 'input', datatype: 'BYTES', shape: [3], data: [{ b64 }, { b64 }, { b64 }] }] }),
    );
    expect(ok.status).toBe(200);
    expect((await counted()).answered).toBe(before.answered + 3);
  });

  it('a multipart form or a raw image body: the error says what /infer takes and where uploads go, and echoes none of the body', async () => {
    const jpeg = await readFile(image('zebra.jpeg'));
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(jpeg)], { type: 'image/jpeg' }), 'zebra.jpeg');
    const send = (body: BodyInit, headers: Record<string, string> = {}) =>
      json(fetch(`${v2}/models/mobilenet/infer`, { method: 'POST', body, headers }));
    const takes = /takes a v2 inference request as JSON.*Inference-Header-Content-Length/;
    for (const [what, r] of [
      ['multipart', await send(form)],
      ['image/jpeg', await send(new Uint8Array(jpeg), { 'content-type': 'image/jpeg' })],
      // curl --data-binary without a content-type: the bytes say it is an image
      ['a raw JPEG as a form', await send(new Uint8Array(jpeg), { 'content-type': 'application/x-www-form-urlencoded' })],
    ] as const) {
      expect([r.status, r.code], what).toEqual([400, 'INVALID_INPUT']);
      expect(r.body.error, what).toMatch(
        /^this endpoint does not take (a multipart\/form-data form|an image\/jpeg body|a raw image \(JPEG\)): it takes/,
      );
      expect(r.body.error, what).toMatch(takes);
      expect(r.body.error, what).toMatch(/upload.*\/graphql/);
      expect(r.body.error, what).not.toMatch(/JFIF|zebra|minus sign|token/);
    }
    const text = await send('secret words, not JSON', { 'content-type': 'application/json' });
    expect([text.status, text.code]).toEqual([400, 'INVALID_INPUT']);
    expect(text.body.error).toMatch(/^the inference request is not valid JSON/);
    expect(text.body.error).toMatch(takes);
    expect(text.body.error).not.toMatch(/secret|graphql/);
    // where, also for the mistakes for which Node 20's JSON.parse names no position (NaN, a trailing comma)
    for (const [body, where] of [
      ['{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":[NaN]}]}', 'at position 65 (line 1, column 66)'],
      [
        '{\n  "inputs": [\n    {"name": "input", "shape": [1], "datatype": "FP32", "data": [1,]}\n  ]\n}',
        'at position 82 (line 3, column 67)',
      ],
    ]) {
      const r = await send(body, { 'content-type': 'application/json' });
      expect([r.status, r.code], body).toEqual([400, 'INVALID_INPUT']);
      expect(r.body.error, body).toMatch(
        new RegExp(`^the inference request is not valid JSON ${where.replace(/[()]/g, '\\$&')}: (Unexpected token|a trailing comma)`),
      );
    }
  });

  it('datatype errors use the v2 names the client used: input "input" takes FP32, got INT64', async () => {
    const int64 = await json(
      post('/models/mobilenet/infer', {
        inputs: [{ name: 'input', datatype: 'INT64', shape: [1, 3, 224, 224], data: new Array(150528).fill(0) }],
      }),
    );
    expect([int64.status, int64.code, int64.body.error]).toEqual([400, 'INVALID_INPUT', 'input "input" takes FP32, got INT64']);
    const i32 = await json(
      post('/models/id-f32/infer', { inputs: [{ name: 'x', datatype: 'INT32', shape: [1, 2, 3], data: [1, 2, 3, 4, 5, 6] }] }),
    );
    expect(i32.body.error).toBe('input "x" takes FP32, got INT32');
    // a datatype no server has, a megabyte long: named, a line long
    const unknown = await json(
      post('/models/id-f32/infer', { inputs: [{ name: 'x', datatype: 'Q'.repeat(1_000_000), shape: [1], data: [1] }] }),
    );
    expect([unknown.status, unknown.code]).toEqual([400, 'INVALID_INPUT']);
    expect(unknown.body.error).toMatch(/unknown datatype "Q{60}\.\.\. \(1000000 characters\)"/);
    // binary data of the wrong length: said in v2 names too
    const short = binaryBody({ inputs: [{ name: 'x', datatype: 'FP16', shape: [1, 2, 3], parameters: { binary_data_size: 10 } }] }, [
      new Uint8Array(10),
    ]);
    const r = await json(post('/models/id-f16/infer', short.body, short.headers));
    expect([r.status, r.body.error]).toEqual([400, 'input "x": 10 bytes of data for shape [1,2,3] FP16 (expected 12)']);
  });

  it('an unknown model is 404 whatever the body; an unknown input is said before its data, naming the inputs', async () => {
    for (const [what, body] of [
      ['no inputs', { inputs: [] }],
      ['no body', Buffer.alloc(0)],
      ['not JSON', Buffer.from('not json')],
      ['a wrong count', { inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 3, 224, 224], data: [0] }] }],
    ] as const) {
      const r = await json(post('/models/mobilenett/infer', body));
      expect([r.status, r.code], what).toEqual([404, 'MODEL_NOT_FOUND']);
      expect(r.body.error, what).toMatch(/mobilenett/);
      expect((await json(post('/models/mobilenet/versions/7/infer', body))).status, what).toBe(404);
    }
    const empty = await json(post('/models/mobilenet/infer', { inputs: [] }));
    expect([empty.status, empty.body.error]).toEqual([400, expect.stringMatching(/no inputs.*"input" FP32 \[-1,3,224,224\]/)]);
    const wrong = await json(
      post('/models/mobilenet/infer', { inputs: [{ name: 'inputt', datatype: 'FP32', shape: [1, 3, 224, 224], data: [0] }] }),
    );
    expect([wrong.status, wrong.body.error]).toEqual([400, 'model mobilenet has no input "inputt" (inputs: input)']);
    // also before a wrong datatype, and in binary data
    const bin = binaryBody({ inputs: [{ name: 'z', datatype: 'INT8', shape: [1], parameters: { binary_data_size: 3 } }] }, [
      new Uint8Array(3),
    ]);
    expect((await json(post('/models/id-f32/infer', bin.body, bin.headers))).body.error).toBe('model id-f32 has no input "z" (inputs: x)');
  });

  it('property: random requests (mutated JSON, binary headers and bodies) get a typed 4xx or an answer, never a 500', async () => {
    const datatype = fc.constantFrom('FP32', 'FP16', 'INT64', 'UINT8', 'BOOL', 'BYTES', 'FP64', 'junk', '');
    const value = fc.oneof(
      fc.double(),
      fc.integer(),
      fc.boolean(),
      fc.string({ maxLength: 4 }),
      fc.constant(null),
      fc.record({ b64: fc.base64String() }),
    );
    const input = fc.record(
      {
        name: fc.constantFrom('x', 'y', ''),
        datatype,
        shape: fc.array(fc.oneof(fc.integer({ min: -1, max: 4 }), fc.constant('2')), { maxLength: 4 }),
        data: fc.oneof(fc.array(value, { maxLength: 8 }), fc.array(fc.array(value, { maxLength: 3 }), { maxLength: 3 }), value),
        parameters: fc.oneof(
          fc.constant(undefined),
          fc.record({ binary_data_size: fc.oneof(fc.integer({ min: -2, max: 64 }), fc.string()) }),
        ),
      },
      { requiredKeys: ['name'] },
    );
    const request = fc.record(
      {
        id: fc.oneof(fc.string(), fc.integer()),
        inputs: fc.oneof(fc.array(input, { maxLength: 2 }), fc.constant('nope')),
        outputs: fc.oneof(
          fc.constant(undefined),
          fc.array(fc.record({ name: fc.constantFrom('y', 'z'), parameters: fc.anything() }), { maxLength: 2 }),
        ),
        parameters: fc.anything(),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(
        request,
        fc.option(fc.uint8Array({ maxLength: 64 })),
        fc.option(fc.integer({ min: -1, max: 400 })),
        fc.constantFrom('id-f32', 'id-f16', 'mobilenet', 'nope'),
        async (doc, binary, headerLength, model) => {
          const text = Buffer.from(JSON.stringify(doc) ?? '');
          const headers: Record<string, string> = {};
          let body: Buffer = text;
          if (binary) {
            body = Buffer.concat([text, binary]);
            headers['inference-header-content-length'] = String(headerLength ?? text.length);
          }
          const res = await post(`/models/${model}/infer`, body, headers);
          const answer = await res.json();
          expect([200, 400, 404, 413, 503], JSON.stringify(answer)).toContain(res.status);
          if (res.status !== 200) expect(answer).toEqual({ error: expect.any(String) });
        },
      ),
      { numRuns: 300 },
    );
    expect((await json(get('/health/ready'))).status).toBe(200);
  });

  it('model repository extension: index, unload (503 while unloaded), load; upload a new model as files', async () => {
    const index = (await json(post('/repository/index', {}))).body;
    expect(index).toContainEqual({ name: 'mobilenet', version: '1', state: 'READY', reason: '' });
    expect(await json(post('/repository/models/id-i8/unload', {}))).toMatchObject({ status: 200, body: {} });
    expect((await json(post('/repository/index', {}))).body).toContainEqual({
      name: 'id-i8',
      version: '1',
      state: 'UNAVAILABLE',
      reason: 'unloaded',
    });
    expect((await json(post('/repository/index', { ready: true }))).body.map((e: any) => e.name)).not.toContain('id-i8');
    expect(await json(get('/models/id-i8/ready'))).toMatchObject({ status: 503, body: { name: 'id-i8', ready: false } });
    expect((await json(get('/health/ready'))).status).toBe(200); // unloaded on purpose: the server is still ready
    const r = await json(
      post('/models/id-i8/infer', { inputs: [{ name: 'x', datatype: 'INT8', shape: [1, 2, 3], data: [1, 2, 3, 4, 5, 6] }] }),
    );
    expect([r.status, r.code]).toEqual([503, 'MODEL_NOT_READY']);
    expect(await json(post('/repository/models/id-i8/load', {}))).toMatchObject({ status: 200, body: {} });
    expect((await json(get('/models/id-i8/ready'))).body.ready).toBe(true);

    // a new model from files (Triton's "file:<path>" parameters, base64) and a config (model.json)
    const onnx = Buffer.from(identityModel(ElemType.FLOAT, ['N', 4])).toString('base64');
    const load = await json(
      post('/repository/models/uploaded/load', { parameters: { config: JSON.stringify({ task: 'raw' }), 'file:1/model.onnx': onnx } }),
    );
    expect(load.status).toBe(200);
    expect((await json(get('/models/uploaded'))).body.inputs).toEqual([{ name: 'x', datatype: 'FP32', shape: [-1, 4] }]);
    const broken = await json(
      post('/repository/models/broken/load', { parameters: { 'file:1/model.onnx': Buffer.from('not onnx').toString('base64') } }),
    );
    expect([broken.status, broken.code]).toEqual([400, 'MODEL_LOAD_FAILED']);
    expect(broken.body.error).toMatch(/(was not|did not) load/);
    expect([(await json(post('/repository/models/nope/load', {}))).status]).toEqual([404]);
    // a "file:" parameter that names no file says that each file needs its name
    expect(await json(post('/repository/models/unnamed/load', { parameters: { 'file:': onnx } }))).toEqual({
      status: 400,
      code: 'INVALID_INPUT',
      body: { error: 'unacceptable file name "": each file needs its name (model.onnx, labels.txt, model.json)' },
    });
  });

  it('a load parameter config of empty text is refused as not JSON (as over gRPC), not read as {} replacing model.json', async () => {
    const task = async () => (await gw.gql<{ model: { task: string } }>('{ model(name: "mobilenet") { task } }')).data?.model.task;
    expect(await task()).toBe('classification');
    expect(await json(post('/repository/models/mobilenet/load', { parameters: { config: '' } }))).toEqual({
      status: 400,
      code: 'INVALID_INPUT',
      body: { error: 'parameter config is not valid JSON at position 0 (line 1, column 1): Unexpected end of JSON input' },
    });
    // the model.json on disk and the model served are as they were (the empty text was read as {}: a raw model)
    expect(await task()).toBe('classification');
  });
});

describe('KServe v2 over REST with tokens and small limits', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: { 'id-f32': { onnx: identityModel(ElemType.FLOAT, ['N', 'K']), config: { task: 'raw' } } },
      env: {
        API_TOKENS: 'user-token',
        ADMIN_TOKEN: 'admin-token',
        MAX_UPLOAD_BYTES: String(64 * 1024),
        MAX_RESPONSE_BYTES: '8192',
        MAX_JSON_VALUES: '1000',
      },
    });
  });
  afterAll(() => gw?.close());
  const call = async (method: string, path: string, token?: string, body?: BodyInit, headers: Record<string, string> = {}) => {
    const res = await fetch(`${gw.url}/v2${path}`, {
      method,
      body,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    });
    return { status: res.status, code: res.headers.get('x-error-code'), body: await res.json() };
  };

  it('probes are open; everything else needs an API token (401 without, 403 wrong); the repository needs the admin token', async () => {
    expect((await call('GET', '/health/live')).status).toBe(200);
    expect((await call('GET', '/health/ready')).status).toBe(200);
    for (const path of ['', '/models/id-f32', '/models/id-f32/ready']) {
      expect(await call('GET', path), path).toMatchObject({ status: 401, code: 'UNAUTHENTICATED', body: { error: expect.any(String) } });
      expect(await call('GET', path, 'wrong'), path).toMatchObject({ status: 403, code: 'FORBIDDEN' });
      expect((await call('GET', path, 'user-token')).status, path).toBe(200);
      expect((await call('GET', path, 'admin-token')).status, path).toBe(200);
    }
    const body = JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2], data: [1, 2] }] });
    expect((await call('POST', '/models/id-f32/infer', undefined, body)).status).toBe(401);
    // refused before the body is parsed: a body that is not even JSON gets 401, not 400
    expect(await call('POST', '/models/id-f32/infer', undefined, '{not json')).toMatchObject({ status: 401, code: 'UNAUTHENTICATED' });
    expect(await call('POST', '/repository/models/id-f32/load', 'wrong', '{not json')).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    // and the repository's bodies before the admin token is checked: an API token alone got its body parsed first (a
    // 50 MB one held the event loop 1.3 s, then 403)
    for (const path of ['/repository/index', '/repository/models/id-f32/load', '/repository/models/id-f32/unload'])
      expect(await call('POST', path, 'user-token', '{not json'), path).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    expect((await call('POST', '/models/id-f32/infer', 'user-token', body)).body.outputs[0].data).toEqual([1, 2]);
    expect((await call('POST', '/repository/index')).status).toBe(401);
    expect(await call('POST', '/repository/index', 'user-token')).toMatchObject({ status: 403, code: 'FORBIDDEN' });
    expect(await call('POST', '/repository/models/id-f32/unload', 'user-token')).toMatchObject({ status: 403 });
    expect((await call('POST', '/repository/index', 'admin-token')).body).toEqual([
      { name: 'id-f32', version: '1', state: 'READY', reason: '' },
    ]);
  });

  const asBinary = (values: number[], outputs: object = {}) => {
    const bytes = new Uint8Array(Float32Array.from(values).buffer);
    const b = binaryBody(
      { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, values.length], parameters: { binary_data_size: bytes.length } }], ...outputs },
      [bytes],
    );
    return fetch(`${gw.url}/v2/models/id-f32/infer`, {
      method: 'POST',
      body: new Uint8Array(b.body),
      headers: { ...b.headers, authorization: 'Bearer user-token' },
    });
  };

  it('a gzip or deflate body (tritonclient request_compression_algorithm) is read; decompressed past MAX_UPLOAD_BYTES it is 413', async () => {
    const body = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2], data: [1.5, -2] }] }));
    for (const [encoding, packed] of [
      ['gzip', gzipSync(body)],
      ['deflate', deflateSync(body)],
    ] as const) {
      const r = await call('POST', '/models/id-f32/infer', 'user-token', new Uint8Array(packed), { 'content-encoding': encoding });
      expect(r.body.outputs?.[0].data, encoding).toEqual([1.5, -2]);
    }
    const bomb = gzipSync(Buffer.alloc(1024 * 1024, 32)); // 1 MB of spaces in 1 kB, past this server's 64 kB
    expect(bomb.length).toBeLessThan(4096);
    expect(await call('POST', '/models/id-f32/infer', 'user-token', new Uint8Array(bomb), { 'content-encoding': 'gzip' })).toMatchObject({
      status: 413,
      code: 'PAYLOAD_TOO_LARGE',
    });
    expect(
      await call('POST', '/models/id-f32/infer', 'user-token', new Uint8Array(body), { 'content-encoding': 'compress' }),
    ).toMatchObject({
      status: 415,
      code: 'INVALID_INPUT', // every error of the API carries its code, this one too
    });
    expect(await call('POST', '/models/id-f32/infer', 'user-token', new Uint8Array(body), { 'content-encoding': 'gzip' })).toMatchObject({
      status: 400,
      code: 'INVALID_INPUT',
    });
  });

  it('a response past MAX_RESPONSE_BYTES is refused (LIMIT_EXCEEDED), as in GraphQL', async () => {
    const big = await asBinary(new Array(3000).fill(1), { parameters: { binary_data_output: true } }); // 12 kB out, past 8 kB
    expect([big.status, big.headers.get('x-error-code')]).toEqual([400, 'LIMIT_EXCEEDED']);
    expect((await big.json()).error).toMatch(/MAX_RESPONSE_BYTES/);
    const small = JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 500], data: new Array(500).fill(1) }] });
    expect((await call('POST', '/models/id-f32/infer', 'user-token', small)).status).toBe(200);
  });

  it('tensors as JSON past MAX_JSON_VALUES (parsed and written value by value on the event loop) are refused both ways; binary data is not', async () => {
    const values = Array.from({ length: 2000 }, (_, i) => i + 0.5);
    const inJson = JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2000], data: values }] });
    expect(await call('POST', '/models/id-f32/infer', 'user-token', inJson)).toMatchObject({
      status: 400,
      code: 'LIMIT_EXCEEDED',
      body: { error: expect.stringMatching(/MAX_JSON_VALUES.*binary data/) },
    });
    // brackets are values too (each one a list JSON.parse builds): counted before parsing, not after
    const deep = `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":${'['.repeat(5000)}1${']'.repeat(5000)}}]}`;
    expect(await call('POST', '/models/id-f32/infer', 'user-token', deep)).toMatchObject({ status: 400, code: 'LIMIT_EXCEEDED' });
    const binary = await readBinary(await asBinary(values, { parameters: { binary_data_output: true } }));
    expect(Array.from(new Float32Array(new Uint8Array(binary.parts.y).buffer))).toEqual(values);
    // classification strings are made one by one too: at most MAX_JSON_VALUES of them
    const top = await asBinary(values, { outputs: [{ name: 'y', parameters: { classification: 2000 } }] });
    expect([top.status, top.headers.get('x-error-code')]).toEqual([400, 'LIMIT_EXCEEDED']);
    expect(
      (await (await asBinary(values, { outputs: [{ name: 'y', parameters: { classification: 5 } }] })).json()).outputs[0].data,
    ).toHaveLength(5);
    // an answer that would hold more values as JSON: asked again as binary data
    const jsonOut = await asBinary(values.slice(0, 1500));
    expect([jsonOut.status, jsonOut.headers.get('x-error-code')]).toEqual([400, 'LIMIT_EXCEEDED']);
    expect((await jsonOut.json()).error).toMatch(/MAX_JSON_VALUES.*binary_data/);
  });

  it('a body past MAX_UPLOAD_BYTES is 413, with or without Content-Length', async () => {
    const big = Buffer.alloc(100 * 1024, 32);
    expect(await call('POST', '/models/id-f32/infer', 'user-token', big)).toMatchObject({
      status: 413,
      body: { error: expect.any(String) },
    });
    const chunked = new ReadableStream({
      start(c) {
        c.enqueue(new Uint8Array(big));
        c.close();
      },
    });
    const res = await fetch(`${gw.url}/v2/models/id-f32/infer`, {
      method: 'POST',
      body: chunked,
      headers: { authorization: 'Bearer user-token' },
      duplex: 'half',
    } as RequestInit);
    expect([res.status, res.headers.get('x-error-code')]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
    expect((await call('GET', '/health/live')).status).toBe(200);
  });
});

describe('KServe v2: the work of a client that left is dropped (REST and gRPC), as for GraphQL', () => {
  let gw: TestGateway;
  let big: Buffer;
  const N = 24;
  beforeAll(async () => {
    // one decoding thread: the images of a request wait their turn, so there is queued work to drop (a JSON body of
    // 24 large photos in base64, past the default MAX_JSON_BODY_BYTES)
    gw = await startGateway({
      models: { mobilenet: fixture('mobilenet') },
      env: { DECODE_THREADS: '1', MAX_JSON_BODY_BYTES: String(50 * 1024 * 1024) },
    });
    big = await sharp(image('bee.jpeg')).resize(4000, 3000).jpeg().toBuffer();
  });
  afterAll(() => gw?.close());
  const stats = async () =>
    (await gw.gql(`{ model(name: "mobilenet") { stats { requests errorsByCode { code count } } } }`)).data.model.stats[0] as {
      requests: number;
      errorsByCode: { code: string; count: number }[];
    };
  const cancelled = (s: Awaited<ReturnType<typeof stats>>) => s.errorsByCode.find((e) => e.code === 'CANCELLED')?.count ?? 0;
  /** Resolves once images of the request wait for the decoding thread: work that a client leaving can spare. */
  const decodesQueued = () =>
    until(
      async () => /^gateway_image_decodes_waiting [1-9]/m.test(await (await fetch(`${gw.url}/metrics`)).text()),
      30_000,
      'images waiting to be decoded',
    );
  /** Waits until every image of the request is accounted for (answered or dropped), and returns how. */
  const settled = async (before: Awaited<ReturnType<typeof stats>>, n = N) =>
    until(
      async () => {
        const s = await stats();
        const answered = s.requests - before.requests;
        const dropped = cancelled(s) - cancelled(before);
        return answered + dropped === n ? { answered, dropped } : null;
      },
      30_000,
      'every image answered or dropped',
    );

  it('REST: a client that hangs up mid-request', async () => {
    const before = await stats();
    const body = JSON.stringify({
      inputs: [{ name: 'input', datatype: 'BYTES', shape: [N], data: Array.from({ length: N }, () => ({ b64: big.toString('base64') })) }],
    });
    const leaving = new AbortController();
    const answer = fetch(`${gw.url}/v2/models/mobilenet/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'hung-up-1' },
      body,
      signal: leaving.signal,
    }).catch((e: Error) => e.name);
    await decodesQueued();
    leaving.abort();
    expect(await answer).toBe('AbortError');
    const { answered, dropped } = await settled(before);
    expect(dropped).toBeGreaterThan(0);
    expect(answered).toBeLessThan(N);
    // in the log, as every request is (it was logged only when an answer was sent): 499, as nginx says of it
    const line = await until(
      () => gw.logs.map((l) => JSON.parse(l)).find((l) => l.requestId === 'hung-up-1' && l.msg === 'request'),
      5000,
      'the request in the log',
    );
    expect(line).toMatchObject({ method: 'POST', path: '/v2/models/mobilenet/infer', status: 499, errors: ['CANCELLED'] });
    // and the server answers the next client
    expect((await fetch(`${gw.url}/v2/health/ready`)).status).toBe(200);
  });

  it('GraphQL: a client that hangs up during classifyBatch (the same service, for comparison)', async () => {
    const before = await stats();
    const files = Array.from({ length: 12 }, () => big);
    const upload = encodeMultipart(
      {
        query: 'mutation($images: [ImageInput!]!) { classifyBatch(model: "mobilenet", images: $images) { predictions { classId } } }',
        variables: { images: files.map(() => ({ file: null })) },
      },
      Object.fromEntries(files.map((bytes, i) => [`images.${i}.file`, { name: `${i}.jpg`, bytes }])),
    );
    const leaving = new AbortController();
    const answer = fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': upload.contentType, 'x-graphql-yoga-csrf': '1' },
      body: upload.body,
      signal: leaving.signal,
    }).catch((e: Error) => e.name);
    await decodesQueued();
    leaving.abort();
    expect(await answer).toBe('AbortError');
    const { answered, dropped } = await settled(before, files.length);
    expect(dropped).toBeGreaterThan(0);
    expect(answered).toBeLessThan(files.length);
  });

  it('gRPC: a call the client cancels', async () => {
    const before = await stats();
    const client = createKserveGrpcClient(`127.0.0.1:${gw.grpcPort}`);
    try {
      const leaving = new AbortController();
      const call = client.ModelInfer(
        {
          model_name: 'mobilenet',
          inputs: [{ name: 'input', datatype: 'BYTES', shape: [N], contents: { bytes_contents: Array.from({ length: N }, () => big) } }],
        },
        {},
        { signal: leaving.signal },
      );
      await decodesQueued();
      leaving.abort();
      await expect(call).rejects.toMatchObject({ code: 1 }); // CANCELLED
      const { answered, dropped } = await settled(before);
      expect(dropped).toBeGreaterThan(0);
      expect(answered).toBeLessThan(N);
    } finally {
      client.close();
    }
  });
});

describe('KServe v2 over REST, a request of many images (default limits)', () => {
  it('twelve JPEGs in one request: answered, and no listener-leak warning from Node (a non-JSON line on stderr)', async () => {
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      const jpegs = await Promise.all(Array.from({ length: 12 }, (_, i) => readFile(image(i % 2 ? 'bee.jpeg' : 'zebra.jpeg'))));
      const res = await fetch(`${gw.url}/v2/models/mobilenet/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          inputs: [{ name: 'input', datatype: 'BYTES', shape: [12], data: jpegs.map((j) => ({ b64: j.toString('base64') })) }],
          outputs: [{ name: 'output', parameters: { classification: 1 } }],
        }),
      });
      expect(res.status).toBe(200);
      expect((await res.json()).outputs[0].shape).toEqual([12, 1]);
      await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
    } finally {
      process.off('warning', onWarning);
      await gw.close();
    }
    expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);
  });
});

describe('KServe classification names classes with the labels of the version that ran', () => {
  it('a request for an older version still serving its own labels gets those, not the newest version’s', async () => {
    const labels = (prefix: string) => ({ text: Array.from({ length: 1000 }, (_, i) => `${prefix}${i}`).join('\n') });
    const spec = fixture('mobilenet', { versionPolicy: { all: true } });
    const gw = await startGateway({ models: { lab: { ...spec, versions: [1, 2], files: { 'labels.txt': labels('old-') } } } });
    try {
      // version 1's file goes bad, then the labels change: version 2 reloads with the new labels; version 1's reload
      // fails, so its old instance serves on with the labels it was loaded with (availability first)
      await writeFile(path.join(gw.root, 'lab', '1', 'model.onnx'), 'not a model');
      await writeFile(path.join(gw.root, 'lab', 'labels.txt'), labels('new-').text);
      await gw.gql(`mutation { loadModel(name: "lab") { name } }`);
      const v = await gw.gql(`{ model(name: "lab") { versions { version state } } }`);
      expect(v.data.model.versions).toEqual([
        { version: 1, state: 'AVAILABLE' },
        { version: 2, state: 'AVAILABLE' },
      ]);
      const zebra = (await readFile(image('zebra.jpeg'))).toString('base64');
      const ask = async (version: number) => {
        const r = await fetch(`${gw.url}/v2/models/lab/versions/${version}/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [{ b64: zebra }] }],
            outputs: [{ name: 'output', parameters: { classification: 1 } }],
          }),
        });
        return ((await r.json()) as { outputs: { data: string[] }[] }).outputs[0].data[0];
      };
      const graphql = async (version: number) =>
        (
          await gw.gql(
            `mutation($f: File!) { classify(model: "lab", version: ${version}, image: { file: $f }, topK: 1) { predictions { label } } }`,
            { f: null },
            { files: { f: image('zebra.jpeg') } },
          )
        ).data.classify.predictions[0].label;
      expect([await graphql(1), await graphql(2)]).toEqual(['old-340', 'new-340']);
      expect([await ask(1), await ask(2)]).toEqual([expect.stringMatching(/:340:old-340$/), expect.stringMatching(/:340:new-340$/)]);
    } finally {
      await gw.close();
    }
  }, 60_000);
});

describe('KServe: a batch larger than the model’s queue', () => {
  it('is refused as a mistake (400 LIMIT_EXCEEDED, naming a client’s share of maxQueueSize), not as a full queue to retry', async () => {
    const gw = await startGateway({
      // one client may hold half of the eight places
      models: {
        small: { onnx: identityModel(ElemType.FLOAT, ['N', 3]), config: { task: 'raw', batching: { maxQueueSize: 8 } } },
        photos: fixture('mobilenet', { batching: { maxQueueSize: 4 } }),
      },
    });
    try {
      const infer = (n: number) =>
        fetch(`${gw.url}/v2/models/small/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [n, 3], data: new Array(n * 3).fill(1) }] }),
        });
      expect((await infer(4)).status).toBe(200);
      const r = await infer(5);
      expect([r.status, r.headers.get('retry-after')]).toEqual([400, null]);
      expect(((await r.json()) as { error: string }).error).toMatch(
        /a batch of 5 items cannot be admitted: one client may have at most 4 requests of model small admitted at once \(half of its maxQueueSize 8.*send at most 4 items per request, or raise maxQueueSize/,
      );
      // so are encoded images (BYTES): each is a request of the queue (was: 503 QUEUE_FULL on an idle server, for ever)
      const photos = async (n: number) => {
        const jpeg = (await readFile(image('zebra.jpeg'))).toString('base64');
        return fetch(`${gw.url}/v2/models/photos/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ inputs: [{ name: 'input', datatype: 'BYTES', shape: [n], data: new Array(n).fill({ b64: jpeg }) }] }),
        });
      };
      expect((await photos(2)).status).toBe(200);
      const p = await photos(3);
      expect([p.status, p.headers.get('x-error-code')]).toEqual([400, 'LIMIT_EXCEEDED']);
      expect(((await p.json()) as { error: string }).error).toMatch(/a batch of 3 items cannot be admitted: one client may have at most 2/);
    } finally {
      await gw.close();
    }
  });
});

describe('KServe: a request that names no version', () => {
  it('goes to the highest AVAILABLE version (not the highest one: an unloaded version 3 is passed over)', async () => {
    const gw = await startGateway({
      models: {
        versions: {
          onnx: identityModel(ElemType.FLOAT, ['N', 3]),
          versions: [1, 2, 3],
          config: { task: 'raw', versionPolicy: { all: true } },
        },
      },
    });
    try {
      const infer = async () => {
        const r = await fetch(`${gw.url}/v2/models/versions/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3], data: [1, 2, 3] }] }),
        });
        expect(r.status).toBe(200);
        return ((await r.json()) as { model_version: string }).model_version;
      };
      expect(await infer()).toBe('3');
      expect((await gw.gql('mutation { unloadModel(name: "versions", version: 3) { name } }')).errors).toBeUndefined();
      expect(await infer()).toBe('2');
    } finally {
      await gw.close();
    }
  });
});
