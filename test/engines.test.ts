import { describe, expect, it } from 'vitest';
import { createEngine } from '../src/engine/index.ts';
import { modelFile } from './helpers.ts';
import { ConfigError, loadConfig } from '../src/config.ts';

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
