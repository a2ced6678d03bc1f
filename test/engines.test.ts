import { describe, expect, it } from 'vitest';
import { createEngine } from '../src/engine/index.ts';
import type { PixelInput } from '../src/engine/types.ts';
import { modelFile } from './helpers.ts';
import { ConfigError, cpusFromCgroup, loadConfig } from '../src/config.ts';

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
    expect(() => loadConfig({}, ['--prot', '1'])).toThrow(ConfigError);
  });
});
