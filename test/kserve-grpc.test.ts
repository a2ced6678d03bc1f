import { readFile } from 'node:fs/promises';
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { CONNECTION_WINDOW, STREAM_WINDOW, loadServiceDefinition } from '../src/protocols/kserve/grpc.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ElemType, buildModel, identityModel } from './onnx-builder.ts';
import { fixture, image, startGateway, type TestGateway } from './helpers.ts';
import { floatToHalf, halfToFloat } from '../src/engine/types.ts';
import { createKserveGrpcClient, errorCodeOf, type KserveGrpcClient } from '../src/client/kserve-grpc.ts';

/**
 * The Open Inference Protocol over gRPC, with a client built from the proto file (@grpc/grpc-js + proto-loader):
 * every RPC, raw and typed contents, encoded images, classification, the repository RPCs, status codes, tokens and
 * message sizes. And the protocols side by side: the same tensor gives the same bytes through GraphQL `infer`, REST
 * JSON, REST binary and gRPC, and requests of two protocols share one engine call.
 */

/** A deterministic pseudo-random generator (tests must not depend on luck). */
function random(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** The gRPC status of a failed call, with the gateway's code. */
async function failure(p: Promise<unknown>): Promise<[string, string | undefined]> {
  try {
    await p;
  } catch (e) {
    return [status[(e as { code: number }).code], errorCodeOf(e)];
  }
  throw new Error('expected the call to fail');
}

const rawBytes = (b: Buffer | Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

describe('KServe v2 over gRPC', () => {
  let gw: TestGateway;
  let client: KserveGrpcClient;
  beforeAll(async () => {
    gw = await startGateway({
      models: {
        mobilenet: fixture('mobilenet'),
        'id-f32': { onnx: identityModel(ElemType.FLOAT, ['N', 2, 3]), config: { task: 'raw' } },
        'id-f16': { onnx: identityModel(ElemType.FLOAT16, ['N', 2, 3]), config: { task: 'raw' } },
        'id-i64': { onnx: identityModel(ElemType.INT64, ['N', 3]), config: { task: 'raw' } },
        'id-bool': { onnx: identityModel(ElemType.BOOL, ['N', 3]), config: { task: 'raw' } },
        big: { onnx: identityModel(ElemType.FLOAT, ['N', 'K']), config: { task: 'raw' } },
        // one client may have one of its two places
        pair: { onnx: identityModel(ElemType.FLOAT, ['N', 3]), config: { task: 'raw', batching: { maxQueueSize: 2 } } },
        // holds a batch open until two requests are in it (see 'a batch holds requests of two protocols')
        joint: {
          onnx: identityModel(ElemType.FLOAT, ['N', 2, 3]),
          config: { task: 'raw', batching: { maxBatchSize: 2, maxDelayMs: 10_000, timeoutMs: 0 } },
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

  it('ServerLive, ServerReady, ServerMetadata', async () => {
    expect(await client.ServerLive()).toEqual({ live: true });
    expect(await client.ServerReady()).toEqual({ ready: true });
    expect(await client.ServerMetadata()).toEqual({
      name: 'graphql-inference-gateway',
      version: expect.any(String),
      extensions: ['binary_tensor_data', 'classification', 'model_repository', 'statistics', 'model_configuration'],
    });
  });

  it('ModelMetadata equals REST and GraphQL; ModelReady (false for unknown models); NOT_FOUND for unknown versions', async () => {
    const r = await gw.gql(`{ models { name inputs { name dtype shape } outputs { name dtype shape } } }`);
    const v2 = { FLOAT32: 'FP32', FLOAT16: 'FP16', INT64: 'INT64', BOOL: 'BOOL' } as Record<string, string>;
    for (const m of r.data.models) {
      const meta = await client.ModelMetadata({ name: m.name });
      const asV2 = (t: any) => ({ name: t.name, datatype: v2[t.dtype], shape: t.shape.map((d: number | null) => String(d ?? -1)) });
      expect(meta, m.name).toEqual({
        name: m.name,
        versions: ['1'],
        platform: 'onnxruntime_onnx',
        inputs: m.inputs.map(asV2),
        outputs: m.outputs.map(asV2),
      });
      const rest = await (await fetch(`${gw.url}/v2/models/${m.name}/versions/1`)).json();
      const grpcForm = (t: any) => ({ ...t, shape: t.shape.map(String) });
      expect(meta, m.name).toEqual({ ...rest, inputs: rest.inputs.map(grpcForm), outputs: rest.outputs.map(grpcForm) });
    }
    expect(await client.ModelReady({ name: 'mobilenet' })).toEqual({ ready: true });
    expect(await client.ModelReady({ name: 'mobilenet', version: '1' })).toEqual({ ready: true });
    expect(await client.ModelReady({ name: 'nope' })).toEqual({ ready: false }); // as Triton answers it
    expect(await failure(client.ModelMetadata({ name: 'mobilenet', version: '3' }))).toEqual(['NOT_FOUND', 'MODEL_NOT_FOUND']);
  });

  it('ModelInfer with raw_input_contents answers raw; with typed contents answers in contents (INT64 past 2^53 exact)', async () => {
    // NaN and the infinities are plain floats in protobuf
    const x = new Float32Array([1.5, NaN, 3.25, Infinity, -Infinity, -1e-30]);
    const raw = await client.ModelInfer({
      model_name: 'id-f32',
      id: 'r1',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3] }],
      raw_input_contents: [Buffer.from(x.buffer)],
    });
    expect(raw).toMatchObject({
      model_name: 'id-f32',
      model_version: '1',
      id: 'r1',
      outputs: [{ name: 'y', datatype: 'FP32', shape: ['1', '2', '3'] }],
    });
    expect(raw.outputs[0].contents).toBeNull();
    expect(raw.raw_output_contents[0].equals(Buffer.from(x.buffer))).toBe(true);

    const typed = await client.ModelInfer({
      model_name: 'id-f32',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], contents: { fp32_contents: Array.from(x) } }],
    });
    expect(typed.raw_output_contents).toEqual([]);
    expect(typed.outputs[0].contents.fp32_contents).toEqual(Array.from(x));

    const big = ['-9223372036854775808', '9007199254740993', '9223372036854775807'];
    const i64 = await client.ModelInfer({
      model_name: 'id-i64',
      inputs: [{ name: 'x', datatype: 'INT64', shape: [1, 3], contents: { int64_contents: big } }],
    });
    expect(i64.outputs[0].contents.int64_contents).toEqual(big);
    const bools = await client.ModelInfer({
      model_name: 'id-bool',
      inputs: [{ name: 'x', datatype: 'BOOL', shape: [1, 3], contents: { bool_contents: [true, false, true] } }],
    });
    expect(bools.outputs[0].contents.bool_contents).toEqual([true, false, true]);
  });

  it('an input with no data at all (no contents, no raw_input_contents) is told where its data goes, not "0 elements"', async () => {
    const message = async (input: object) => {
      try {
        await client.ModelInfer({ model_name: 'id-f32', inputs: [input] });
      } catch (e) {
        return (e as { details: string }).details;
      }
      throw new Error('expected the call to fail');
    };
    expect(await message({ name: 'x', datatype: 'FP32', shape: [1, 2, 3] })).toBe(
      'input x carries no data: send its 6 values in contents.fp32_contents, or its bytes in raw_input_contents',
    );
    // the model's -1 copied into a request: its int64 dimensions shown as numbers, and what -1 means
    expect(await message({ name: 'x', datatype: 'FP32', shape: [-1, 2, 3], contents: { fp32_contents: [1, 2, 3, 4, 5, 6] } })).toBe(
      "input x: shape must hold non-negative integers, got [-1,2,3]: -1 in a model's shape marks a dimension of any size; send the size your data has there",
    );
  });

  it('shared memory (not implemented) is refused on an input and an output, not ignored', async () => {
    const shm = { shared_memory_region: { string_param: 'r0' }, shared_memory_byte_size: { int64_param: 24 } };
    const x = { name: 'x', datatype: 'FP32', shape: [1, 2, 3] };
    expect(await failure(client.ModelInfer({ model_name: 'id-f32', inputs: [{ ...x, parameters: shm }] }))).toEqual([
      'INVALID_ARGUMENT',
      'INVALID_INPUT',
    ]);
    const withData = { ...x, contents: { fp32_contents: [1, 2, 3, 4, 5, 6] } };
    expect(
      await failure(client.ModelInfer({ model_name: 'id-f32', inputs: [withData], outputs: [{ name: 'y', parameters: shm }] })),
    ).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
  });

  it('FP16 travels raw only: typed contents are refused, and a typed request for an FP16 output is answered raw', async () => {
    expect(
      await failure(
        client.ModelInfer({
          model_name: 'id-f16',
          inputs: [{ name: 'x', datatype: 'FP16', shape: [1, 2, 3], contents: { fp32_contents: [1, 2, 3, 4, 5, 6] } }],
        }),
      ),
    ).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    const half = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x3555]);
    const r = await client.ModelInfer({
      model_name: 'id-f16',
      inputs: [{ name: 'x', datatype: 'FP16', shape: [1, 2, 3] }],
      raw_input_contents: [Buffer.from(half.buffer)],
    });
    expect(r.raw_output_contents[0].equals(Buffer.from(half.buffer))).toBe(true);
  });

  it('a JPEG as BYTES (bytes_contents, or raw length-prefixed) gives the same top-1 as GraphQL classify; classification parameter', async () => {
    const photos = ['zebra.jpeg', 'snail.jpeg'];
    const jpegs = await Promise.all(photos.map((p) => readFile(image(p))));
    const expected = [];
    for (const p of photos) {
      const g = await gw.gql(
        `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { classId label } } }`,
        { f: null },
        { files: { f: image(p) } },
      );
      const top = g.data.classify.predictions[0];
      expected.push(`${top.classId}:${top.label}`);
    }
    expect(expected).toEqual(['340:zebra', '113:snail']);
    const strip = (s: Buffer) => s.toString().split(':').slice(1).join(':'); // drop the value

    const typed = await client.ModelInfer({
      model_name: 'mobilenet',
      inputs: [{ name: 'input', datatype: 'BYTES', shape: [2], contents: { bytes_contents: jpegs } }],
      outputs: [{ name: 'output', parameters: { classification: { int64_param: 1 } } }],
    });
    expect(typed.outputs[0]).toMatchObject({ datatype: 'BYTES', shape: ['2', '1'] });
    expect(typed.outputs[0].contents.bytes_contents.map(strip)).toEqual(expected);

    const prefixed = Buffer.concat(
      jpegs.flatMap((j) => {
        const len = Buffer.alloc(4);
        len.writeUInt32LE(j.length);
        return [len, j];
      }),
    );
    const raw = await client.ModelInfer({
      model_name: 'mobilenet',
      inputs: [{ name: 'input', datatype: 'BYTES', shape: [2] }],
      outputs: [{ name: 'output' }],
      raw_input_contents: [prefixed],
    });
    expect(raw.outputs[0]).toMatchObject({ datatype: 'FP32', shape: ['2', '1000'] });
    const logits = new Float32Array(new Uint8Array(raw.raw_output_contents[0]).buffer);
    const argmax = (a: Float32Array) => a.indexOf(Math.max(...a));
    expect([argmax(logits.subarray(0, 1000)), argmax(logits.subarray(1000))]).toEqual([340, 113]);
  });

  it('a batch past a client’s share of the model’s queue (half of maxQueueSize) is refused as a mistake', async () => {
    const x = (n: number) => ({
      model_name: 'pair',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [n, 3] }],
      raw_input_contents: [Buffer.alloc(n * 12)],
    });
    expect((await client.ModelInfer(x(1))).outputs[0]).toMatchObject({ shape: ['1', '3'] });
    expect(await failure(client.ModelInfer(x(2)))).toEqual(['RESOURCE_EXHAUSTED', 'LIMIT_EXCEEDED']);
  });

  it('status codes from the error table, the error-code trailer, and the server keeps serving', async () => {
    const infer = (req: object) => failure(client.ModelInfer(req));
    const x = { name: 'x', datatype: 'FP32', shape: [1, 2, 3] };
    const six = [Buffer.alloc(24)];
    expect(await infer({ model_name: 'nope', inputs: [x], raw_input_contents: six })).toEqual(['NOT_FOUND', 'MODEL_NOT_FOUND']);
    expect(await infer({ model_name: 'id-f32', inputs: [{ ...x, shape: [1, 3, 2] }], raw_input_contents: six })).toEqual([
      'INVALID_ARGUMENT',
      'INVALID_INPUT',
    ]);
    expect(await infer({ model_name: 'id-f32', inputs: [x], raw_input_contents: [Buffer.alloc(20)] })).toEqual([
      'INVALID_ARGUMENT',
      'INVALID_INPUT',
    ]);
    expect(await infer({ model_name: 'id-f32', inputs: [x, x], raw_input_contents: six })).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    expect(await infer({ model_name: 'id-f32', inputs: [{ ...x, datatype: 'BF16' }], raw_input_contents: six })).toEqual([
      'INVALID_ARGUMENT',
      'INVALID_INPUT',
    ]);
    // typed contents beside raw_input_contents were ignored without a word (Triton refuses them); so were typed values in
    // another type's field; an output asked twice was encoded twice (a crash with many copies)
    const nine = { fp32_contents: [9, 9, 9, 9, 9, 9] };
    for (const [what, req] of [
      ['typed and raw', { model_name: 'id-f32', inputs: [{ ...x, contents: nine }], raw_input_contents: six }],
      ["another type's field", { model_name: 'id-f32', inputs: [{ ...x, contents: { int_contents: [1, 2, 3, 4, 5, 6] } }] }],
      [
        'values beside BYTES elements',
        {
          model_name: 'mobilenet',
          inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [Buffer.from('x')], fp32_contents: [1] } }],
        },
      ],
      ['an output asked twice', { model_name: 'id-f32', inputs: [x], raw_input_contents: six, outputs: [{ name: 'y' }, { name: 'y' }] }],
      [
        'classification as a boolean',
        {
          model_name: 'id-f32',
          inputs: [x],
          raw_input_contents: six,
          outputs: [{ name: 'y', parameters: { classification: { bool_param: true } } }],
        },
      ],
    ] as const)
      expect(await infer(req), what).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    expect(
      await infer({
        model_name: 'mobilenet',
        inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [Buffer.from('junk')] } }],
      }),
    ).toEqual(['INVALID_ARGUMENT', 'INVALID_IMAGE']);
    expect(await infer({ model_name: 'id-f32', inputs: [{ ...x, shape: [9, 2, 3] }], raw_input_contents: [Buffer.alloc(9 * 24)] })).toEqual(
      ['RESOURCE_EXHAUSTED', 'LIMIT_EXCEEDED'],
    );
    await client.RepositoryModelUnload({ model_name: 'id-f16' });
    expect(await infer({ model_name: 'id-f16', inputs: [{ ...x, datatype: 'FP16' }], raw_input_contents: [Buffer.alloc(12)] })).toEqual([
      'UNAVAILABLE',
      'MODEL_NOT_READY',
    ]);
    expect(await client.ModelReady({ name: 'id-f16' })).toEqual({ ready: false });
    await client.RepositoryModelLoad({ model_name: 'id-f16' });
    expect(await client.ModelReady({ name: 'id-f16' })).toEqual({ ready: true });
    expect((await client.ModelInfer({ model_name: 'id-f32', inputs: [x], raw_input_contents: six })).model_name).toBe('id-f32');
  });

  /** The gRPC status, the gateway's code and the message of a failed call. */
  const failed = async (p: Promise<unknown>): Promise<[string, string | undefined, string]> => {
    try {
      await p;
    } catch (e) {
      return [status[(e as { code: number }).code], errorCodeOf(e), (e as { details: string }).details];
    }
    throw new Error('expected the call to fail');
  };

  it('bytes_contents holding base64 text of a JPEG: INVALID_IMAGE says to send the bytes themselves, and echoes none of it', async () => {
    const b64 = (await readFile(image('zebra.jpeg'))).toString('base64');
    const [code, gateway, message] = await failed(
      client.ModelInfer({
        model_name: 'mobilenet',
        inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [Buffer.from(b64)] } }],
      }),
    );
    expect([code, gateway]).toEqual(['INVALID_ARGUMENT', 'INVALID_IMAGE']);
    expect(message).toMatch(/the element is base64 text of a JPEG image; send the image's bytes themselves in bytes_contents/);
    expect(message).not.toContain(b64.slice(0, 12));
  });

  it('an error that would repeat a long client value (an output name of 200k characters, a shape of 100k dimensions) arrives typed and a line long, and the channel keeps serving', async () => {
    // the message went whole into the grpc-message trailer: the client got no status at all, only its own deadline, and
    // the next call on the same channel timed out too
    const x = { name: 'x', datatype: 'FP32', shape: [1, 2, 3] };
    const long = 'o'.repeat(200_000);
    const soon = { signal: AbortSignal.timeout(10_000) };
    const named = await failed(
      client.ModelInfer({ model_name: 'id-f32', inputs: [x], outputs: [{ name: long }], raw_input_contents: [Buffer.alloc(24)] }, {}, soon),
    );
    expect(named[0]).toBe('INVALID_ARGUMENT');
    expect(named[2].length).toBeLessThan(1200);
    const dims = Array.from({ length: 100_000 }, () => 1);
    const shaped = await failed(
      client.ModelInfer({ model_name: 'id-f32', inputs: [{ ...x, shape: dims }], raw_input_contents: [Buffer.alloc(4)] }, {}, soon),
    );
    expect(shaped[0]).toBe('INVALID_ARGUMENT');
    expect(shaped[2].length).toBeLessThan(1200);
    expect((await client.ModelReady({ name: 'id-f32' })).ready).toBe(true);
    // half of a character pair in a message (JSON.parse's words for a config of one emoji name half of it): grpc-js
    // could not encode the status (URIError) and the call was never answered
    const halved = await failed(
      client.RepositoryModelLoad({ model_name: 'id-f32', parameters: { config: { string_param: '[😀]' } } }, {}, soon),
    );
    expect(halved[0]).toBe('INVALID_ARGUMENT');
    expect(halved[2]).toMatch(/^parameter config is not valid JSON at position 1/);
  });

  it('datatype errors use the v2 names the client used: input "x" takes FP32, got INT64', async () => {
    expect(
      await failed(
        client.ModelInfer({
          model_name: 'id-f32',
          inputs: [{ name: 'x', datatype: 'INT64', shape: [1, 2, 3] }],
          raw_input_contents: [Buffer.alloc(48)],
        }),
      ),
    ).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT', 'input "x" takes FP32, got INT64']);
    expect(
      await failed(
        client.ModelInfer({
          model_name: 'id-f32',
          inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3] }],
          raw_input_contents: [Buffer.alloc(20)],
        }),
      ),
    ).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT', 'input "x": 20 bytes of data for shape [1,2,3] FP32 (expected 24)']);
  });

  it('classification is an integer count over REST and gRPC alike (a JSON number, int64_param): a string or a double is refused on both', async () => {
    const x = { name: 'x', datatype: 'FP32', shape: [1, 2, 3] };
    const values = [1, 5, 3, 2, 6, 4];
    const rest = async (classification: unknown) => {
      const res = await fetch(`${gw.url}/v2/models/id-f32/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: [{ ...x, data: values }], outputs: [{ name: 'y', parameters: { classification } }] }),
      });
      return [res.status, res.headers.get('x-error-code'), await res.json()];
    };
    const grpcCall = (classification: object) =>
      client.ModelInfer({
        model_name: 'id-f32',
        inputs: [x],
        raw_input_contents: [Buffer.from(new Float32Array(values).buffer)],
        outputs: [{ name: 'y', parameters: { classification } }],
      });
    const top2 = ['6.000000:4', '5.000000:1'];
    expect(await rest(2)).toEqual([200, null, expect.objectContaining({ outputs: [expect.objectContaining({ data: top2 })] })]);
    expect((await grpcCall({ int64_param: 2 })).raw_output_contents.length).toBe(1);
    // gRPC took the text "2" and the double 2.0 as a count, where REST refuses the text
    for (const [field, value] of [
      ['string_param', '2'],
      ['double_param', 2],
      ['bool_param', true],
    ] as const)
      expect(await failed(grpcCall({ [field]: value })), field).toEqual([
        'INVALID_ARGUMENT',
        'INVALID_INPUT',
        `output y: classification must be a positive integer in int64_param, got ${field}`,
      ]);
    expect(await rest('2')).toEqual([
      400,
      'INVALID_INPUT',
      { error: 'output y: classification must be a positive integer (a JSON number: "classification": 3), got "2"' },
    ]);
  });

  it('a shape dimension too large is said to be too large, with the bound (not to be a negative one)', async () => {
    const shaped = (shape: string[]) =>
      failed(
        client.ModelInfer({
          model_name: 'id-f32',
          inputs: [{ name: 'x', datatype: 'FP32', shape }],
          raw_input_contents: [Buffer.alloc(24)],
        }),
      );
    expect(await shaped(['1', '9223372036854775807', '3'])).toEqual([
      'INVALID_ARGUMENT',
      'INVALID_INPUT',
      'input x: a shape dimension is too large (9223372036854775807): at most 9007199254740991 (2^53 - 1)',
    ]);
    expect(await shaped(['1', '-2', '3'])).toEqual([
      'INVALID_ARGUMENT',
      'INVALID_INPUT',
      // (its int64 dimensions, which arrive as text, shown as the numbers they are)
      'input x: shape must hold non-negative integers, got [1,-2,3]',
    ]);
  });

  it('an unknown model is NOT_FOUND whatever the message; an unknown input is said before its data, naming the inputs', async () => {
    for (const req of [
      { model_name: 'mobilenett', inputs: [] },
      {
        model_name: 'mobilenett',
        inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 3, 224, 224], contents: { fp32_contents: [0] } }],
      },
      { model_name: 'mobilenet', model_version: '7', inputs: [] },
    ])
      expect((await failed(client.ModelInfer(req))).slice(0, 2), req.model_name).toEqual(['NOT_FOUND', 'MODEL_NOT_FOUND']);
    expect(
      await failed(
        client.ModelInfer({
          model_name: 'mobilenet',
          inputs: [{ name: 'inputt', datatype: 'FP32', shape: [1, 3, 224, 224], contents: { fp32_contents: [0] } }],
        }),
      ),
    ).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT', 'model mobilenet has no input "inputt" (inputs: input)']);
    // the call's log line says the gateway's code, as an HTTP request's does
    const lines = gw.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === 'grpc' && l.rpc === 'ModelInfer');
    expect(lines.at(-1)).toMatchObject({ code: 'INVALID_ARGUMENT', errors: ['INVALID_INPUT'] });
  });

  it('property: random ModelInfer requests get a typed status or an answer, never INTERNAL', async () => {
    const input = fc.record({
      name: fc.constantFrom('x', 'input', 'z'),
      datatype: fc.constantFrom('FP32', 'FP16', 'INT64', 'BOOL', 'BYTES', 'UINT32', 'junk'),
      shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 4 }),
      contents: fc.option(
        fc.record(
          {
            fp32_contents: fc.array(fc.float(), { maxLength: 8 }),
            int64_contents: fc.array(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String), { maxLength: 8 }),
            bool_contents: fc.array(fc.boolean(), { maxLength: 8 }),
            bytes_contents: fc.array(
              fc.uint8Array({ maxLength: 16 }).map((b) => Buffer.from(b)),
              { maxLength: 3 },
            ),
          },
          { requiredKeys: [] },
        ),
      ),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('id-f32', 'id-f16', 'id-i64', 'mobilenet', 'nope'),
        fc.array(input, { maxLength: 2 }),
        fc.option(
          fc.array(
            fc.uint8Array({ maxLength: 32 }).map((b) => Buffer.from(b)),
            { maxLength: 2 },
          ),
        ),
        fc.option(
          fc.array(
            fc.record({ name: fc.constantFrom('y', 'output', 'q'), parameters: fc.constant({ classification: { int64_param: '2' } }) }),
            { maxLength: 1 },
          ),
        ),
        async (model, inputs, raw, outputs) => {
          try {
            await client.ModelInfer({ model_name: model, inputs, raw_input_contents: raw ?? [], outputs: outputs ?? [] });
          } catch (e) {
            const [code, gatewayCode] = [status[(e as { code: number }).code], errorCodeOf(e)];
            expect(['NOT_FOUND', 'INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED', 'UNAVAILABLE'], `${code} ${(e as Error).message}`).toContain(
              code,
            );
            expect(gatewayCode).toBeDefined();
          }
        },
      ),
      { numRuns: 300 },
    );
    expect(await client.ServerReady()).toEqual({ ready: true });
  });

  it('repository RPCs: index (all, ready only), unload, load, load from files with a config', async () => {
    const index = await client.RepositoryIndex({});
    expect(index.models).toContainEqual({ name: 'mobilenet', version: '1', state: 'READY', reason: '' });
    await client.RepositoryModelUnload({ model_name: 'id-bool' });
    expect((await client.RepositoryIndex({})).models).toContainEqual({
      name: 'id-bool',
      version: '1',
      state: 'UNAVAILABLE',
      reason: 'unloaded',
    });
    expect((await client.RepositoryIndex({ ready: true })).models.map((m: any) => m.name)).not.toContain('id-bool');
    await client.RepositoryModelLoad({ model_name: 'id-bool' });
    expect((await client.RepositoryIndex({ ready: true })).models.map((m: any) => m.name)).toContain('id-bool');
    await client.RepositoryModelLoad({
      model_name: 'from-grpc',
      parameters: {
        config: { string_param: JSON.stringify({ task: 'raw' }) },
        'file:1/model.onnx': { bytes_param: Buffer.from(identityModel(ElemType.INT64, ['N', 2])) },
      },
    });
    expect((await client.ModelMetadata({ name: 'from-grpc' })).inputs).toEqual([{ name: 'x', datatype: 'INT64', shape: ['-1', '2'] }]);
    expect(await failure(client.RepositoryModelLoad({ model_name: 'nope' }))).toEqual(['NOT_FOUND', 'MODEL_NOT_FOUND']);
    expect(
      await failure(
        client.RepositoryModelLoad({ model_name: 'bad', parameters: { 'file:1/model.onnx': { bytes_param: Buffer.from('no') } } }),
      ),
    ).toEqual(['FAILED_PRECONDITION', 'MODEL_LOAD_FAILED']);
  });

  it('a load parameter config not in string_param is refused, naming it and what it takes (model.json as JSON text)', async () => {
    const onnx = { bytes_param: Buffer.from(identityModel(ElemType.INT64, ['N', 2])) };
    // as bytes it was read as an object of numbered fields ("config: 0: unknown field"), and empty bytes as no config at all
    for (const config of [
      { bytes_param: Buffer.from(JSON.stringify({ task: 'raw' })) },
      { bytes_param: Buffer.alloc(0) },
      { bool_param: true },
    ])
      expect(
        await failed(client.RepositoryModelLoad({ model_name: 'config-typed', parameters: { config, 'file:1/model.onnx': onnx } })),
        Object.keys(config)[0],
      ).toEqual([
        'INVALID_ARGUMENT',
        'INVALID_INPUT',
        `parameter config must be string_param (model.json as JSON text), got ${Object.keys(config)[0]}`,
      ]);
    expect(await failure(client.ModelMetadata({ name: 'config-typed' }))).toEqual(['NOT_FOUND', 'MODEL_NOT_FOUND']); // no model was made
  });

  it('messages past gRPC’s 4 MiB default are accepted (the limit is MAX_UPLOAD_BYTES)', async () => {
    const k = 1_500_000; // 6 MB of FP32
    const data = new Float32Array(k).map((_, i) => i % 977);
    const r = await client.ModelInfer({
      model_name: 'big',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, k] }],
      raw_input_contents: [Buffer.from(data.buffer)],
    });
    expect(r.raw_output_contents[0].equals(Buffer.from(data.buffer))).toBe(true);
  });

  it('a message of MiBs arrives in a few turns of the event loop, not 64 KiB a turn (HTTP/2 windows of MiBs)', async () => {
    // HTTP/2 moves a stream's data only as far as its receiver's flow-control window, which the receiver widens as its
    // event loop reads. Left at HTTP/2's 64 KiB, a gRPC message took a turn of the server's event loop per 64 KiB: in a
    // probe where HTTP clients kept the loop busy, messages of 1-3 MB took 9-54 s to arrive (their handlers 1-8 s),
    // while HTTP bodies of the same size, which the kernel's buffers carry, came at once.
    const session = http2.connect(`http://127.0.0.1:${gw.grpcPort}`);
    try {
      await new Promise((resolve, reject) => session.once('remoteSettings', resolve).once('error', reject));
      expect(session.remoteSettings.initialWindowSize).toBe(STREAM_WINDOW);
      await new Promise((resolve) => session.ping(resolve)); // the connection's window comes with the settings
      expect(session.state.remoteWindowSize).toBe(CONNECTION_WINDOW);
      expect([STREAM_WINDOW, CONNECTION_WINDOW]).toEqual([1 << 20, 4 << 20]);
    } finally {
      session.destroy();
    }
    // 8 MiB for a model there is not: answered NOT_FOUND as soon as the message has come whole, so the call lasts as
    // long as its message takes to arrive. Counted in turns of the event loop (the client's and the server's, one here)
    const data = Buffer.alloc(8 << 20, 7);
    let turns = 0;
    let counting = true;
    const count = () => {
      turns++;
      if (counting) setImmediate(count);
    };
    setImmediate(count);
    const [code] = await failure(
      client.ModelInfer({
        model_name: 'nope',
        inputs: [{ name: 'x', datatype: 'UINT8', shape: [1, data.length] }],
        raw_input_contents: [data],
      }),
    );
    counting = false;
    expect(code).toBe('NOT_FOUND');
    expect(turns).toBeLessThan(48); // 20 here; 259 with windows of 64 KiB (two turns a window)
  });

  it('the same tensor gives the same bytes through GraphQL infer, REST JSON, REST binary and gRPC (raw and typed): FP32 and FP16', async () => {
    const rnd = random(42);
    const cases = [
      // mobilenet: a real graph, float32
      { model: 'mobilenet', input: 'input', output: 'output', v2: 'FP32', gql: 'FLOAT32', shape: [1, 3, 224, 224] },
      // float16: random finite half values
      { model: 'id-f16', input: 'x', output: 'y', v2: 'FP16', gql: 'FLOAT16', shape: [1, 2, 3] },
    ];
    for (const c of cases) {
      const n = c.shape.reduce((a, b) => a * b, 1);
      let bytes: Buffer;
      let values: number[];
      if (c.v2 === 'FP32') {
        const f = Float32Array.from({ length: n }, () => (rnd() - 0.5) * 6);
        bytes = Buffer.from(f.buffer);
        values = Array.from(f);
      } else {
        const h = Uint16Array.from({ length: n }, () => {
          const bits = Math.floor(rnd() * 0x10000);
          return (bits & 0x7c00) === 0x7c00 ? bits & 0xbfff : bits; // no Inf/NaN
        });
        bytes = Buffer.from(h.buffer);
        values = Array.from(h, halfToFloat);
      }
      const results: Record<string, Buffer> = {};

      const g = await gw.gql(
        `mutation($d: String!) { infer(model: "${c.model}", inputs: [{ name: "${c.input}", dtype: ${c.gql}, shape: ${JSON.stringify(c.shape)}, data: $d }]) { outputs { name data } } }`,
        { d: bytes.toString('base64') },
      );
      results['graphql'] = Buffer.from(g.data.infer.outputs[0].data, 'base64');

      const restJson = await (
        await fetch(`${gw.url}/v2/models/${c.model}/infer`, {
          method: 'POST',
          body: JSON.stringify({ inputs: [{ name: c.input, datatype: c.v2, shape: c.shape, data: values }] }),
        })
      ).json();
      const out = restJson.outputs[0].data as number[];
      results['rest json'] =
        c.v2 === 'FP32'
          ? Buffer.from(Float32Array.from(out).buffer)
          : rawBytes(new Uint8Array(new Uint16Array(out.map(floatToHalf)).buffer));

      const header = Buffer.from(
        JSON.stringify({
          inputs: [{ name: c.input, datatype: c.v2, shape: c.shape, parameters: { binary_data_size: bytes.length } }],
          outputs: [{ name: c.output, parameters: { binary_data: true } }],
        }),
      );
      const res = await fetch(`${gw.url}/v2/models/${c.model}/infer`, {
        method: 'POST',
        body: new Uint8Array(Buffer.concat([header, bytes])),
        headers: { 'inference-header-content-length': String(header.length) },
      });
      const body = Buffer.from(await res.arrayBuffer());
      results['rest binary'] = body.subarray(Number(res.headers.get('inference-header-content-length')));

      const raw = await client.ModelInfer({
        model_name: c.model,
        inputs: [{ name: c.input, datatype: c.v2, shape: c.shape }],
        raw_input_contents: [bytes],
      });
      results['grpc raw'] = raw.raw_output_contents[0];
      if (c.v2 === 'FP32') {
        const typed = await client.ModelInfer({
          model_name: c.model,
          inputs: [{ name: c.input, datatype: c.v2, shape: c.shape, contents: { fp32_contents: values } }],
        });
        results['grpc contents'] = Buffer.from(Float32Array.from(typed.outputs[0].contents.fp32_contents as number[]).buffer);
      }

      const reference = results['graphql'];
      expect(reference.length, c.model).toBe(c.model === 'mobilenet' ? 4000 : 12);
      if (c.model === 'id-f16') expect(reference.equals(bytes)).toBe(true); // identity: what went in
      for (const [protocol, b] of Object.entries(results)) expect(b.equals(reference), `${c.model} ${protocol}`).toBe(true);
    }
  });

  it('a batch holds requests of two protocols: REST and gRPC share one engine call (Model.stats and /metrics say so)', async () => {
    const version = gw.repository.get('joint')!.versions.get(1)!;
    const stats = async () =>
      (await gw.gql(`{ model(name: "joint") { stats { requests batches batchSizes { size count } } } }`)).data.model.stats[0];
    const before = await stats();
    // A third client has been admitted and is still preparing its input: the open batch waits for company (it goes
    // when full, at maxBatchSize 2), so the REST and the gRPC request below must share it, however they are timed.
    const preparing = version.admit();
    try {
      const a = [1, 2, 3, 4, 5, 6];
      const b = [-1, -2, -3, -4, -5, -6];
      const [rest, grpc] = await Promise.all([
        fetch(`${gw.url}/v2/models/joint/infer`, {
          method: 'POST',
          body: JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: a }] }),
        }).then((r) => r.json()),
        client.ModelInfer({
          model_name: 'joint',
          inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3] }],
          raw_input_contents: [Buffer.from(Float32Array.from(b).buffer)],
        }),
      ]);
      // each got its own item back from the shared call
      expect(rest.outputs[0].data).toEqual(a);
      expect(Array.from(new Float32Array(new Uint8Array(grpc.raw_output_contents[0]).buffer))).toEqual(b);
    } finally {
      preparing.release();
    }
    const after = await stats();
    expect(after.requests - before.requests).toBe(2);
    expect(after.batches - before.batches).toBe(1);
    expect(after.batchSizes).toContainEqual({ size: 2, count: 1 });
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/gateway_inference_batch_size_total\{model="joint",version="1",batch_size="2"\} 1/);
    expect(metrics).toMatch(/gateway_inference_request_success_total\{model="joint",version="1"\} 2/);
  });
});

describe('KServe v2 over gRPC with tokens and a small message limit', () => {
  let gw: TestGateway;
  let client: KserveGrpcClient;
  beforeAll(async () => {
    gw = await startGateway({
      models: {
        big: { onnx: identityModel(ElemType.FLOAT, ['N', 'K']), config: { task: 'raw' } },
        // two outputs of the input: twice its values out
        twice: {
          onnx: buildModel({
            nodes: [
              { op: 'Identity', inputs: ['x'], outputs: ['y'] },
              { op: 'Identity', inputs: ['x'], outputs: ['z'] },
            ],
            inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 'K'] }],
            outputs: [
              { name: 'y', elemType: ElemType.FLOAT, shape: ['N', 'K'] },
              { name: 'z', elemType: ElemType.FLOAT, shape: ['N', 'K'] },
            ],
          }),
          config: { task: 'raw' },
        },
      },
      env: { API_TOKENS: 'user-token', ADMIN_TOKEN: 'admin-token', MAX_UPLOAD_BYTES: String(1024 * 1024), MAX_JSON_VALUES: '1000' },
    });
    client = createKserveGrpcClient(`127.0.0.1:${gw.grpcPort}`);
  });
  afterAll(async () => {
    client?.close();
    await gw?.close();
  });
  const user = { authorization: 'Bearer user-token' };
  const admin = { authorization: 'Bearer admin-token' };
  /** A call with the message's bytes as they are (what a client library would never send): its status and error code. */
  const modelInferBytes = (bytes: Buffer, metadata: Record<string, string>, method = 'ModelInfer') =>
    new Promise<[string, string | undefined]>((resolve) => {
      const infer = loadServiceDefinition()[method];
      const c = new grpc.Client(`127.0.0.1:${gw.grpcPort}`, grpc.credentials.createInsecure());
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(metadata)) md.set(k, v);
      c.makeUnaryRequest(
        infer.path,
        (b: Buffer) => b,
        infer.responseDeserialize,
        bytes,
        md,
        (e) => {
          c.close();
          resolve([grpc.status[e?.code ?? 0], e?.metadata.get('error-code')[0]?.toString()]);
        },
      );
    });

  it('authorization metadata: probes open, API token for the rest (UNAUTHENTICATED / PERMISSION_DENIED), admin token for the repository', async () => {
    expect(await client.ServerLive()).toEqual({ live: true });
    expect(await client.ServerReady()).toEqual({ ready: true });
    expect(await failure(client.ServerMetadata())).toEqual(['UNAUTHENTICATED', 'UNAUTHENTICATED']);
    expect(await failure(client.ModelMetadata({ name: 'big' }, { authorization: 'Bearer nope' }))).toEqual([
      'PERMISSION_DENIED',
      'FORBIDDEN',
    ]);
    expect((await client.ModelMetadata({ name: 'big' }, user)).name).toBe('big');
    const req = { model_name: 'big', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2] }], raw_input_contents: [Buffer.alloc(8)] };
    expect(await failure(client.ModelInfer(req))).toEqual(['UNAUTHENTICATED', 'UNAUTHENTICATED']);
    // refused at the call's metadata, before its message is decoded: a message that does not parse gets UNAUTHENTICATED
    expect((await modelInferBytes(Buffer.from([0x7b, 0x7c]), {}))[0]).toBe('UNAUTHENTICATED');
    expect((await client.ModelInfer(req, user)).model_name).toBe('big');
    expect(await failure(client.RepositoryIndex({}, user))).toEqual(['PERMISSION_DENIED', 'FORBIDDEN']);
    expect(await failure(client.RepositoryModelUnload({ model_name: 'big' }, user))).toEqual(['PERMISSION_DENIED', 'FORBIDDEN']);
    expect((await client.RepositoryIndex({}, admin)).models).toEqual([
      { name: 'big', version: '1', state: 'READY', reason: '' },
      { name: 'twice', version: '1', state: 'READY', reason: '' },
    ]);
  });

  it('every method reads its message off the wire before decoding it: too many elements, or bytes that are not its message, are refused typed', async () => {
    // a RepositoryModelLoad of 50k parameters, sent with an API token only: protobufjs decoded all of them (4M held the
    // event loop 10-16 s) before the call was refused for want of the admin token
    const entry = (i: number) => {
      const key = Buffer.from(`k${i}`);
      const inner = Buffer.concat([Buffer.from([0x0a, key.length]), key, Buffer.from([0x12, 0x03, 0x1a, 0x01, 0x76])]);
      return Buffer.concat([Buffer.from([0x1a, inner.length]), inner]);
    };
    const load = Buffer.concat([Buffer.from([0x12, 0x03]), Buffer.from('big'), ...Array.from({ length: 50_000 }, (_, i) => entry(i))]);
    expect(await modelInferBytes(load, user, 'RepositoryModelLoad')).toEqual(['RESOURCE_EXHAUSTED', 'LIMIT_EXCEEDED']);
    // bytes that are no message, and a string cut short, were INTERNAL without a code (or, cut short, read anyway)
    expect(await modelInferBytes(Buffer.from([0x7b, 0x7c]), user, 'ModelMetadata')).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    expect(await modelInferBytes(Buffer.from([0x0a, 0x10, 0x62]), user, 'ModelMetadata')).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    expect(await modelInferBytes(Buffer.from([0x7b, 0x7c]), admin, 'RepositoryIndex')).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    // a well-formed message is served as before
    expect((await client.ModelMetadata({ name: 'big' }, user)).name).toBe('big');
    expect((await client.RepositoryIndex({}, admin)).models).toHaveLength(2);
  });

  it('a message past MAX_UPLOAD_BYTES is RESOURCE_EXHAUSTED; smaller ones are served', async () => {
    const k = 300_000; // 1.2 MB
    const req = (n: number) => ({
      model_name: 'big',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, n] }],
      raw_input_contents: [Buffer.alloc(4 * n)],
    });
    expect((await failure(client.ModelInfer(req(k), user)))[0]).toBe('RESOURCE_EXHAUSTED');
    expect((await client.ModelInfer(req(100_000), user)).raw_output_contents[0].length).toBe(400_000);
  });

  it('typed contents past MAX_JSON_VALUES are refused (decoded value by value); an answer that would hold more comes raw', async () => {
    const typed = (model: string, n: number) => ({
      model_name: model,
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, n], contents: { fp32_contents: Array.from({ length: n }, (_, i) => i) } }],
    });
    expect(await failure(client.ModelInfer(typed('big', 5000), user))).toEqual(['RESOURCE_EXHAUSTED', 'LIMIT_EXCEEDED']);
    const raw = await client.ModelInfer(
      { model_name: 'big', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 5000] }], raw_input_contents: [Buffer.alloc(20_000)] },
      user,
    );
    expect(raw.raw_output_contents[0].length).toBe(20_000);
    // 600 values in, 1200 out: the answer comes raw
    const twice = await client.ModelInfer(typed('twice', 600), user);
    expect(twice.raw_output_contents.length).toBe(2);
    expect(Array.from(new Float32Array(new Uint8Array(twice.raw_output_contents[1]).buffer)).slice(0, 3)).toEqual([0, 1, 2]);
    // every element of the message counts, whatever its field, and a message that does not parse is refused before
    // protobufjs reads it (it skips what it does not know, such as groups)
    const infer = loadServiceDefinition().ModelInfer;
    const encoded = Buffer.from(infer.requestSerialize(typed('big', 5000)));
    const call = (bytes: Buffer) => modelInferBytes(bytes, user);
    expect(await call(Buffer.concat([Buffer.from([0x7b, 0x7c]), encoded]))).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    // a known field with another wire type: protobufjs reads a message field's bytes whatever the wire type says
    expect(await call(Buffer.from([0x28, 0x7f]))).toEqual(['INVALID_ARGUMENT', 'INVALID_INPUT']);
    // what is inside a requested output counts too (2000 empty names in one output)
    const names = Buffer.from(Array.from({ length: 2000 }, () => [0x0a, 0x00]).flat());
    const output = Buffer.concat([Buffer.from([0x32, 0xa0, 0x1f]), names]); // field 6, length 4000
    expect(await call(output)).toEqual(['RESOURCE_EXHAUSTED', 'LIMIT_EXCEEDED']);
    const many = (field: 'inputs' | 'bytes' | 'bools', n: number) =>
      Buffer.from(
        infer.requestSerialize({
          model_name: 'big',
          inputs:
            field === 'inputs'
              ? Array.from({ length: n }, () => ({}))
              : [
                  {
                    name: 'x',
                    datatype: field === 'bytes' ? 'BYTES' : 'BOOL',
                    shape: [1, n],
                    contents:
                      field === 'bytes'
                        ? { bytes_contents: Array.from({ length: n }, () => Buffer.alloc(0)) }
                        : { bool_contents: new Array(n).fill(true) },
                  },
                ],
        }),
      );
    for (const field of ['inputs', 'bytes', 'bools'] as const)
      expect(await call(many(field, 2000)), field).toEqual(['RESOURCE_EXHAUSTED', 'LIMIT_EXCEEDED']);
    const small = await client.ModelInfer(typed('twice', 100), user);
    expect(small.raw_output_contents).toEqual([]);
    expect(small.outputs[1].contents.fp32_contents.slice(0, 3)).toEqual([0, 1, 2]);
  });
});

describe('KServe v2 over gRPC on IPv6 loopback', () => {
  it('admin RPCs without ADMIN_TOKEN are allowed from ::1 (loopback), as over HTTP', async () => {
    const gw = await startGateway({
      models: { 'id-f32': { onnx: identityModel(ElemType.FLOAT, ['N', 2]), config: { task: 'raw' } } },
      env: { HOST: '::1' },
    });
    const client = createKserveGrpcClient(`[::1]:${gw.grpcPort}`);
    try {
      expect(await client.RepositoryModelUnload({ model_name: 'id-f32' })).toEqual({});
      expect(await client.ModelReady({ name: 'id-f32' })).toEqual({ ready: false });
    } finally {
      client.close();
      await gw.close();
    }
  });
});

describe("the project's gRPC client (CLI, bench)", () => {
  it('offers a window of 1 MiB per call, so that answers of MBs do not cross 64 KiB per turn of its event loop', async () => {
    // a bare HTTP/2 server reads the settings the client's connection starts with
    const server = http2.createServer();
    const settings = new Promise<http2.Settings>((resolve) =>
      server.on('session', (s) => s.once('remoteSettings', (r: http2.Settings) => resolve(r))),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = createKserveGrpcClient(`127.0.0.1:${(server.address() as { port: number }).port}`);
    try {
      void client.ServerLive().catch(() => undefined); // a call makes it connect
      expect((await settings).initialWindowSize).toBe(1 << 20);
    } finally {
      client.close();
      server.close();
    }
  });
});
