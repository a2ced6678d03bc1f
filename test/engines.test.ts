import { describe, expect, it } from 'vitest';
import { createEngine } from '../src/engine/index.ts';
import type { PixelInput, Tensor } from '../src/engine/types.ts';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ElemType, buildModel, identityModel, scalarInitializer as scalar } from './onnx-builder.ts';
import sharp from 'sharp';
import { image, modelFile } from './helpers.ts';
import { ConfigError, cpusFromCgroup, loadConfig } from '../src/config.ts';
import { cpuSaturatesInt8 } from '../src/engine/onnx/exact-int8.ts';

const openvinoLoads = await import('openvino-node').then(
  () => true,
  () => false,
);
const SKIP_REASON =
  'openvino-node is not installed: its installer downloads the OpenVINO runtime from a host this machine cannot reach, and it needs Node >= 21';

describe('engines', () => {
  it('onnxruntime reports inputs and outputs with dynamic dimensions as null', async () => {
    const engine = await createEngine('onnxruntime');
    const session = await engine.load(modelFile('mobilenet'));
    expect(session.inputs).toEqual([{ name: 'input', dtype: 'float32', shape: [null, 3, 224, 224], layout: null }]);
    expect(session.outputs).toEqual([{ name: 'output', dtype: 'float32', shape: [null, 1000], layout: null }]);
    await session.close();
  });

  it("onnxruntime: int8 products are exact on every CPU (ONNX Runtime's x64quantprecision where the int8 kernel saturates)", async () => {
    // the bee through the int8 MobileNetV2: 91.4% on a CPU with VNNI (exact int32 sums), 45-66% where ONNX Runtime's
    // AVX2 kernel saturates its 16-bit pair sums
    const px = await sharp(await readFile(image('bee.jpeg')))
      .resize(256, 256, { fit: 'fill', kernel: 'linear' })
      .extract({ left: 16, top: 16, width: 224, height: 224 })
      .raw()
      .toBuffer();
    const [mean, std] = [
      [0.485, 0.456, 0.406],
      [0.229, 0.224, 0.225],
    ];
    const data = new Float32Array(3 * 224 * 224);
    for (let i = 0; i < 224 * 224; i++) for (let c = 0; c < 3; c++) data[c * 224 * 224 + i] = (px[i * 3 + c] / 255 - mean[c]) / std[c];
    const engine = await createEngine('onnxruntime');
    const beeProbability = async (exactInt8: 'on' | 'off' | 'auto') => {
      const session = await engine.load(modelFile('mobilenet'), { intraOpThreads: 1, exactInt8 });
      await session.loaded?.();
      const notes = session.notes.int8;
      const { output } = await session.run({ input: { dtype: 'float32', shape: [1, 3, 224, 224], data: data.slice() } });
      await session.close();
      const logits = [...(output.data as Float32Array)];
      const max = Math.max(...logits);
      const sum = logits.reduce((s, v) => s + Math.exp(v - max), 0);
      return { p: Math.exp(logits[309] - max) / sum, top: logits.indexOf(max), notes };
    };
    const on = await beeProbability('on');
    expect(on.notes).toMatch(/^exact products asked of ONNX Runtime/);
    expect(on.top).toBe(309);
    expect(on.p).toBeCloseTo(0.905, 2); // this float path; the pipeline's fused uint8 input gives 91.4% (README)
    const off = await beeProbability('off');
    expect(off.notes).toBeUndefined();
    const auto = await beeProbability('auto');
    expect(auto.notes !== undefined).toBe(cpuSaturatesInt8());
    expect(auto.p).toBeCloseTo(on.p, 4);
    if (cpuSaturatesInt8())
      expect(off.p).toBeLessThan(0.8); // what the rewrite is for
    else expect(off.p).toBeCloseTo(on.p, 4); // VNNI: the same numbers either way
  });

  it('onnxruntime: a graph fixed at batch 1 is made dynamic only when its items do not mix, whatever the input type', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mixing-'));
    const types = {
      FLOAT: ElemType.FLOAT,
      FLOAT16: ElemType.FLOAT16,
      UINT8: ElemType.UINT8,
      INT8: ElemType.INT8,
      INT32: ElemType.INT32,
      INT64: ElemType.INT64,
    };
    for (const [name, elemType] of Object.entries(types)) {
      // y = x - max(x) over the whole tensor: harmless at batch 1, one item's answer depends on the other's in a batch
      const mixing = buildModel({
        nodes: [
          { op: 'Cast', inputs: ['x'], outputs: ['f'], attrs: { to: ElemType.FLOAT } },
          { op: 'ReduceMax', inputs: ['f'], outputs: ['m'] },
          { op: 'Sub', inputs: ['f', 'm'], outputs: ['y'] },
        ],
        inputs: [{ name: 'x', elemType, shape: [1, 4] }],
        outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: [1, 4] }],
      });
      for (const [model, batchable] of [
        [mixing, false],
        [identityModel(elemType, [1, 4]), true],
      ] as const) {
        await writeFile(path.join(dir, 'model.onnx'), model);
        const session = await (await createEngine('onnxruntime')).load(path.join(dir, 'model.onnx'));
        expect([name, session.batchable, session.notes]).toEqual([
          name,
          batchable,
          { dynamicBatch: expect.stringMatching(batchable ? /^rewritten/ : /^fixed at 1/) },
        ]);
        await session.close();
      }
    }
  });

  it("onnxruntime: a dynamic dimension 0 of an output that is not its inputs' batch (non-maximum suppression) is batched only if a trial shows it", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'dim0-'));
    // selected [S,3]: (batch, class, box) rows of every item together; S equals the batch by chance only
    const nms = buildModel({
      nodes: [{ op: 'NonMaxSuppression', inputs: ['boxes', 'scores', 'max', 'iou', 'threshold'], outputs: ['selected'] }],
      inputs: [
        { name: 'boxes', elemType: ElemType.FLOAT, shape: ['N', 2, 4] },
        { name: 'scores', elemType: ElemType.FLOAT, shape: ['N', 1, 2] },
      ],
      outputs: [{ name: 'selected', elemType: ElemType.INT64, shape: ['S', 3] }],
      initializers: [scalar('max', ElemType.INT64, 10n), scalar('iou', ElemType.FLOAT, 0.5), scalar('threshold', ElemType.FLOAT, 0)],
    });
    for (const [model, batchable, note] of [
      [nms, false, /^items mix in a batch/],
      [identityModel(ElemType.FLOAT, ['N', 4]), true, undefined],
    ] as const) {
      await writeFile(path.join(dir, 'model.onnx'), model);
      const session = await (await createEngine('onnxruntime')).load(path.join(dir, 'model.onnx'), { instances: 1 });
      expect([session.batchable, session.notes?.dynamicBatch]).toEqual([batchable, note ? expect.stringMatching(note) : undefined]);
      await session.close();
    }
  });

  it('onnxruntime: a run whose input was already handed to the engine fails at once instead of waiting for ever', async () => {
    const engine = await createEngine('onnxruntime');
    const session = await engine.load(modelFile('mobilenet'), { intraOpThreads: 1 });
    await session.loaded?.();
    const data = new Float32Array(3 * 224 * 224).fill(0.5);
    const input: Tensor = { dtype: 'float32', shape: [1, 3, 224, 224], data };
    await session.run({ input }); // the engine takes the buffer over (no copy): `data` is empty now
    expect(data.length).toBe(0);
    const second = session.run({ input }).then(
      () => 'ran',
      (e: Error) => e.message,
    );
    const hung = new Promise((resolve) => setTimeout(() => resolve('no answer after 5 s'), 5000));
    expect(await Promise.race([second, hung])).toMatch(/input: 0 values for shape \[1,3,224,224\] \(150528\)/);
    // and the session still serves
    expect((await session.run({ input: { ...input, data: new Float32Array(3 * 224 * 224) } })).output.shape).toEqual([1, 1000]);
    await session.close();
  });

  it('onnxruntime: an empty tensor whose buffer was handed over already fails at once too', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'identity-'));
    await writeFile(path.join(dir, 'model.onnx'), identityModel(ElemType.FLOAT, ['n', 3]));
    const session = await (await createEngine('onnxruntime')).load(path.join(dir, 'model.onnx'), { dynamicBatch: false });
    const data = new Float32Array(3);
    await session.run({ x: { dtype: 'float32', shape: [1, 3], data } }); // hands the buffer over
    const empty = session.run({ x: { dtype: 'float32', shape: [0, 3], data } }).then(
      () => 'ran',
      (e: Error) => e.name,
    );
    const hung = new Promise((resolve) => setTimeout(() => resolve('no answer after 5 s'), 5000));
    expect(await Promise.race([empty, hung])).toBe('DataCloneError');
    expect((await session.run({ x: { dtype: 'float32', shape: [0, 3], data: new Float32Array(0) } })).y.shape).toEqual([0, 3]);
    await session.close();
  });

  it('knows which CPUs saturate int8 products: x86-64 with AVX2 and no VNNI', () => {
    const cpu = (flags: string) => `processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 ${flags}\nbogomips\t: 4890\n`;
    const x64 = process.arch === 'x64';
    expect(cpuSaturatesInt8(cpu('avx avx2 fma'))).toBe(x64);
    expect(cpuSaturatesInt8(cpu('avx2 avx512f avx512_vnni'))).toBe(false);
    expect(cpuSaturatesInt8(cpu('avx2 avx_vnni'))).toBe(false);
    expect(cpuSaturatesInt8(cpu('sse4_2'))).toBe(false); // no AVX2: ONNX Runtime's SSE kernel widens to 16 bits first
  });

  it('onnxruntime: a lone call runs on a second session of the image graph (more threads), with the same answers', async () => {
    const engine = await createEngine('onnxruntime');
    const pixels = new Uint8Array(224 * 224 * 3).map((_, i) => (i * 37) % 256);
    const spec: PixelInput = {
      input: 'input',
      layout: 'NCHW',
      channels: 3,
      bgr: false,
      scale: [0.02, 0.02, 0.02],
      bias: [-2, -2, -2],
      dtype: 'float32',
    };
    const answers: Float32Array[] = [];
    for (const aloneThreads of [2, 0]) {
      const session = await engine.load(modelFile('mobilenet'), { intraOpThreads: 1, aloneThreads });
      const input = await session.fusePixels!(spec);
      await session.loaded!();
      expect(session.notes.aloneThreads).toBe(aloneThreads || undefined);
      const feeds = () => ({ [input!]: { dtype: 'uint8' as const, shape: [1, 224, 224, 3], data: pixels.slice() } });
      const ran = () => (session as unknown as { aloneRuns: number }).aloneRuns;
      for (const alone of [true, false]) answers.push((await session.run(feeds(), { alone })).output.data as Float32Array);
      expect(ran()).toBe(aloneThreads ? 1 : 0); // the lone call, and only it, ran on the second session
      // raw tensors take the original graph, alone or not
      const raw = await session.run(
        { input: { dtype: 'float32', shape: [1, 3, 224, 224], data: new Float32Array(3 * 224 * 224) } },
        { alone: true },
      );
      expect(raw.output.shape).toEqual([1, 1000]);
      expect(ran()).toBe(aloneThreads ? 1 : 0);
      await session.close();
    }
    for (const a of answers.slice(1)) for (let i = 0; i < 1000; i++) expect(a[i]).toBeCloseTo(answers[0][i], 4);
  });

  it.skipIf(openvinoLoads)('ENGINE=openvino where the addon cannot load fails at start with a clear message', async () => {
    await expect(createEngine('openvino')).rejects.toThrow(/openvino-node.*could not be loaded.*ENGINE=onnxruntime/s);
  });

  it.skipIf(!openvinoLoads)(`openvino runs the same model (skipped here: ${SKIP_REASON})`, async () => {
    const engine = await createEngine('openvino');
    const session = await engine.load(modelFile('mobilenet'));
    const data = new Float32Array(3 * 224 * 224);
    const out = await session.run({ input: { dtype: 'float32', shape: [1, 3, 224, 224], data } });
    expect(out.output.shape).toEqual([1, 1000]);
  });
});

describe('configuration', () => {
  it('sizes threads for a container CPU quota (cgroup v2 cpu.max), not for the node it runs on', () => {
    expect(cpusFromCgroup('200000 100000\n')).toBe(2);
    expect(cpusFromCgroup('150000 100000')).toBe(2);
    expect(cpusFromCgroup('50000 100000')).toBe(1);
    expect(cpusFromCgroup('max 100000')).toBe(Infinity);
    expect(cpusFromCgroup('garbage')).toBe(Infinity);
  });

  it('reads env and flags (flags win) and names a bad setting', () => {
    const c = loadConfig({ PORT: '5000', ENGINE: 'onnxruntime', IMAGE_ROOTS: '/a:/b' }, ['--port', '6000', '--log-level=warn']);
    expect(c).toMatchObject({
      port: 6000,
      engine: 'onnxruntime',
      imageRoots: ['/a', '/b'],
      logLevel: 'warn',
      host: '127.0.0.1',
      modelRepository: './models',
    });
    expect(() => loadConfig({ PORT: 'http' }, [])).toThrow(/PORT: expected an integer/);
    expect(() => loadConfig({ ENGINE: 'tensorrt' }, [])).toThrow(/ENGINE: expected one of onnxruntime, openvino/);
    // a port setting that may be off says so; the file extensions people write are the formats' names
    expect(() => loadConfig({ GRPC_PORT: 'of' }, [])).toThrow(/GRPC_PORT: expected an integer 0\.\.65535 or off, got "of"/);
    expect(loadConfig({ IMAGE_FORMATS: 'jpg,PNG,tif' }, []).imageFormats).toEqual(['jpeg', 'png', 'tiff']);
    expect(() => loadConfig({}, ['--prot', '1'])).toThrow(ConfigError);
    // a token that cannot travel in "Authorization: Bearer <token>" is refused at start, without echoing it
    expect(() => loadConfig({ ADMIN_TOKEN: 'my secret' }, [])).toThrow(/ADMIN_TOKEN: .*Bearer.*no spaces/);
    expect(() => loadConfig({ ADMIN_TOKEN: 'my secret' }, [])).not.toThrow(/my secret/);
    expect(() => loadConfig({ API_TOKENS: 'good,bad token' }, [])).toThrow(/API_TOKENS: .*Bearer.*no spaces/);
    expect(loadConfig({ ADMIN_TOKEN: 'a-b.c_d~e+f/g=', API_TOKENS: 'x1, y2' }, [])).toMatchObject({
      adminToken: 'a-b.c_d~e+f/g=',
      apiTokens: ['x1', 'y2'],
    });
  });

  it('refuses values it would not use as given, naming the setting (from a configuration probe)', () => {
    // Node runs a timer past 2^31-1 ms after 1 ms: every model failed to load, SIGTERM exited at once
    for (const name of [
      'ENGINE_LOAD_TIMEOUT_MS',
      'ENGINE_CALL_TIMEOUT_MS',
      'REQUEST_TIMEOUT_MS',
      'HEADERS_TIMEOUT_MS',
      'SHUTDOWN_TIMEOUT_MS',
      'DRAIN_DELAY_MS',
      'WS_KEEPALIVE_MS',
      'MODEL_POLL_INTERVAL_MS',
    ]) {
      expect(() => loadConfig({ [name]: '2147483648' }, []), name).toThrow(
        new RegExp(`^${name}: expected an integer \\d+\\.\\.2147483647`),
      );
      expect(
        () => loadConfig({ [name]: '2147483647', ...(name === 'HEADERS_TIMEOUT_MS' ? { REQUEST_TIMEOUT_MS: '2147483647' } : {}) }, []),
        name,
      ).not.toThrow();
    }
    // sharp takes a time limit of an hour at most: past it every decode failed as INVALID_IMAGE
    expect(() => loadConfig({ DECODE_TIMEOUT_MS: '3600001' }, [])).toThrow(/^DECODE_TIMEOUT_MS: expected an integer 100\.\.3600000/);
    expect(loadConfig({ DECODE_TIMEOUT_MS: '3600000' }, []).decodeTimeoutMs).toBe(3_600_000);
    // a WebSocket message is JSON parsed on the event loop, as a JSON body is: bounded by the same
    expect(() => loadConfig({ MAX_WS_MESSAGE_BYTES: String(9 * 1024 * 1024) }, [])).toThrow(
      /^MAX_WS_MESSAGE_BYTES \(9437184\) is above MAX_JSON_BODY_BYTES \(8388608\)/,
    );
    expect(loadConfig({ MAX_WS_MESSAGE_BYTES: '9437184', MAX_JSON_BODY_BYTES: '9437184' }, []).maxWsMessageBytes).toBe(9437184);
    // a MAX_JSON_BODY_BYTES below 1 MB, valid before MAX_WS_MESSAGE_BYTES came, still starts: the default follows it;
    // given, a message limit above it says what to do with either
    expect(loadConfig({ MAX_JSON_BODY_BYTES: '524288' }, []).maxWsMessageBytes).toBe(524288);
    expect(() => loadConfig({ MAX_JSON_BODY_BYTES: '524288', MAX_WS_MESSAGE_BYTES: '1048576' }, [])).toThrow(
      /lower MAX_WS_MESSAGE_BYTES or raise MAX_JSON_BODY_BYTES$/,
    );
    // an empty flag fell back to the default over the environment's value (--api-tokens= turned authentication off)
    expect(() => loadConfig({ API_TOKENS: 'secret' }, ['--api-tokens='])).toThrow(/^--api-tokens needs a value/);
    expect(() => loadConfig({ PORT: '5000' }, ['--port='])).toThrow(/^--port needs a value/);
    // a flag without its value took the next flag as its value
    expect(() => loadConfig({}, ['--admin-token', '--port=5000'])).toThrow(/^--admin-token needs a value \(write --admin-token=<value>/);
    expect(() => loadConfig({}, ['--port', '--host', '127.0.0.1'])).toThrow(/^--port needs a value/);
    expect(loadConfig({}, ['--admin-token=--odd-but-given']).adminToken).toBe('--odd-but-given');
    // a list that names nothing refused every image
    for (const bad of [',', ' ', ' , '])
      expect(() => loadConfig({ IMAGE_FORMATS: bad }, []), JSON.stringify(bad)).toThrow(/^IMAGE_FORMATS: names no format/);
    // origins as browsers send them, host names as Host headers name them
    for (const bad of ['*', 'https://app.example.com/', 'app.example.com', 'https://app.example.com/path', 'ftp://x.example'])
      expect(() => loadConfig({ CORS_ORIGINS: bad }, []), bad).toThrow(/^CORS_ORIGINS: /);
    expect(loadConfig({ CORS_ORIGINS: 'https://app.example.com, http://localhost:8080' }, []).corsOrigins).toEqual([
      'https://app.example.com',
      'http://localhost:8080',
    ]);
    for (const bad of ['gw.example:19852', 'https://gw.example', 'gw.example/'])
      expect(() => loadConfig({ ALLOWED_HOSTS: bad }, []), bad).toThrow(/^ALLOWED_HOSTS: /);
    expect(loadConfig({ ALLOWED_HOSTS: 'gw.example, *' }, []).allowedHosts).toEqual(['gw.example', '*']);
    // a Redis URL without a host, or with a database that is not a number
    for (const bad of ['redis://', 'redis://localhost/zero', 'redis://localhost:6379/0/x'])
      expect(() => loadConfig({ REDIS_URL: bad }, []), bad).toThrow(/^REDIS_URL: /);
    expect(loadConfig({ REDIS_URL: 'redis://:pw@redis.internal:6380/2' }, []).redisUrl).toBe('redis://:pw@redis.internal:6380/2');
  });
});
