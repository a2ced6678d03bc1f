import { utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ElemType, identityModel } from './onnx-builder.ts';
import { startGateway } from './helpers.ts';

const scanOf = (gw: { repository: unknown }) => () => (gw.repository as { watcher: { tick(): Promise<void> } }).watcher.tick();

describe('a model.json that never loaded, edited into another mistake', () => {
  it("has its version say the file's mistake now, not the one it had before", async () => {
    const gw = await startGateway({
      models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw', batching: { maxBatchsize: 4 } } } },
    });
    const scan = scanOf(gw);
    const file = path.join(gw.root, 'ident', 'model.json');
    const edit = async (text: string, secondsAhead: number) => {
      await writeFile(file, text);
      const at = new Date(Date.now() + secondsAhead * 1000);
      await utimes(file, at, at);
      await scan();
      await scan();
    };
    const model = async () =>
      (
        await gw.gql<{ model: { configurationError: string; versions: { state: string; errorCode: string; errorMessage: string }[] } }>(
          `{ model(name: "ident") { configurationError versions { state errorCode errorMessage } } }`,
        )
      ).data!.model;
    try {
      expect((await model()).versions[0].errorMessage).toMatch(/maxBatchsize: unknown field/);
      // the operator fixes the misspelt key and leaves a trailing comma behind
      await edit('{\n  "task": "raw",\n  "batching": { "maxBatchSize": 4 },\n}\n', 2);
      const m = await model();
      expect(m.configurationError).toMatch(/trailing comma/);
      // the version (what the page, the CLI's load and requests show) says the same, not the misspelt key fixed already
      expect(m.versions).toEqual([{ state: 'END', errorCode: 'INVALID_MODEL_CONFIG', errorMessage: m.configurationError }]);
      const run = await gw.gql(
        `mutation { infer(model: "ident", inputs: [{ name: "x", dtype: FLOAT32, shape: [1, 4], data: "AAAAAAAAAAAAAAAAAAAAAA==" }]) { model } }`,
      );
      expect(run.errors?.[0]?.message).not.toMatch(/maxBatchsize/);
      // said once: further scans of the same file change nothing
      const lines = gw.logs.filter((l) => l.includes('"to":"END"')).length;
      await scan();
      await scan();
      expect(gw.logs.filter((l) => l.includes('"to":"END"')).length).toBe(lines);
      // and fixed, it loads
      await edit('{\n  "task": "raw",\n  "batching": { "maxBatchSize": 4 }\n}\n', 4);
      expect((await model()).versions).toEqual([{ state: 'AVAILABLE', errorCode: null, errorMessage: null }]);
    } finally {
      await gw.close();
    }
  });
});
