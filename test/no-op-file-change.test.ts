import { chmod, link, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import type { Engine } from '../src/engine/types.ts';
import { ElemType, identityModel } from './onnx-builder.ts';
import { startGateway } from './helpers.ts';

const scanOf = (gw: { repository: unknown }) => () => (gw.repository as { watcher: { tick(): Promise<void> } }).watcher.tick();

/** An ONNX Runtime engine that counts the sessions it was asked to open. */
function countingEngine(): { engine: Engine; loads: () => number } {
  const inner = createOnnxRuntimeEngine();
  let loads = 0;
  const engine: Engine = Object.create(inner);
  engine.load = async (p, options) => {
    loads++;
    return inner.load(p, options);
  };
  return { engine, loads: () => loads };
}

describe('a serving version whose model file is left as it was', () => {
  it('is not reloaded by a chmod that changes nothing or by a hard link made to its file (a backup)', async () => {
    const { engine, loads } = countingEngine();
    const gw = await startGateway({
      models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } },
      engine,
    });
    const scan = scanOf(gw);
    const file = path.join(gw.root, 'ident', '1', 'model.onnx');
    try {
      await scan();
      const before = loads();
      // a deploy step's "chmod -R a+r" (already readable), and a hard-link snapshot (rsnapshot, cp -al) of the repository
      await chmod(file, 0o644);
      await scan();
      await mkdir(path.join(gw.root, '.snapshot'));
      await link(file, path.join(gw.root, '.snapshot', 'model.onnx'));
      await scan();
      // each of them loaded the whole model again beside the serving one (every version of every model, at once)
      expect(loads() - before).toBe(0);
    } finally {
      await gw.close();
    }
  });
});
