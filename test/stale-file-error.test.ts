import { mkdir, rename, rm, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ElemType, identityModel } from './onnx-builder.ts';
import { startGateway } from './helpers.ts';

const scanOf = (gw: { repository: unknown }) => () => (gw.repository as { watcher: { tick(): Promise<void> } }).watcher.tick();

describe('a model file that changed and did not load', () => {
  it('is no configurationError once its version is gone (a newer version serves)', async () => {
    const gw = await startGateway({ models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } } });
    const scan = scanOf(gw);
    const dir = path.join(gw.root, 'ident');
    const error = async () => (await gw.gql(`{ model(name: "ident") { configurationError versions { version state } } }`)).data.model;
    try {
      await writeFile(path.join(dir, '1', 'model.onnx.new'), 'not an onnx model');
      await rename(path.join(dir, '1', 'model.onnx.new'), path.join(dir, '1', 'model.onnx'));
      await scan();
      expect((await error()).configurationError).toMatch(/model file of version 1 changed and does not load/);
      // the operator's answer: a version 2 that loads, and version 1 removed
      await mkdir(path.join(dir, '.2'));
      await writeFile(path.join(dir, '.2', 'model.onnx'), identityModel(ElemType.FLOAT, ['N', 4]));
      await rename(path.join(dir, '.2'), path.join(dir, '2'));
      await scan();
      await rm(path.join(dir, '1'), { recursive: true });
      await scan();
      await scan();
      const m = await error();
      expect(m.versions).toEqual([{ version: 2, state: 'AVAILABLE' }]);
      // it said, for good, that version 1's file does not load, and that version 1 keeps serving it
      expect(m.configurationError).toBeNull();
    } finally {
      await gw.close();
    }
  });

  it('is still said after model.json is read again (touched by a deploy step) while the version serves the old file', async () => {
    const gw = await startGateway({ models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } } });
    const scan = scanOf(gw);
    const dir = path.join(gw.root, 'ident');
    const error = async () => (await gw.gql(`{ model(name: "ident") { configurationError } }`)).data.model.configurationError;
    try {
      await writeFile(path.join(dir, '1', 'model.onnx.new'), 'not an onnx model');
      await rename(path.join(dir, '1', 'model.onnx.new'), path.join(dir, '1', 'model.onnx'));
      await scan();
      expect(await error()).toMatch(/model file of version 1 changed and does not load/);
      const now = new Date(Date.now() + 2000);
      await utimes(path.join(dir, 'model.json'), now, now);
      await scan();
      await scan();
      // the re-read cleared configurationError, and nothing said it again: version 1 serving a file that is no longer there
      expect(await error()).toMatch(/model file of version 1 changed and does not load/);
    } finally {
      await gw.close();
    }
  });
});
