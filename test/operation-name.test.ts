import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, modelAsset, modelFile, startGateway, type TestGateway } from './helpers.ts';

/**
 * README, Examples: "Models at run time" is one document of three named operations (Unload, Load, Describe). Sent as
 * it is, without operationName (or with a name it does not hold), yoga answered only "Could not determine what
 * operation to execute.": nothing said that operationName picks one, where every other slip of a request says what
 * to send.
 */
describe('a document whose operation cannot be chosen says to send operationName', () => {
  let gw: TestGateway;
  let admin: string;
  beforeAll(async () => {
    const config = JSON.parse(await readFile(modelAsset('face-detection', 'model.json'), 'utf8'));
    gw = await startGateway({ models: { 'face-detection': { onnx: modelFile('face-detection'), config } } });
    const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
    admin = /```graphql\n(mutation Unload [\s\S]*?)```/.exec(readme)![1];
  });
  afterAll(() => gw?.close());

  for (const operationName of [undefined, 'Unlod']) {
    it(`operationName ${operationName ?? 'left out'}`, async () => {
      const r = await gw.gql(admin, {}, { operationName });
      expect(r.status).toBe(400);
      expect(r.errors?.[0].extensions?.code).toBe('OPERATION_RESOLUTION_FAILURE');
      expect(r.errors?.[0].message).toMatch(/operationName/);
    });
  }

  it('the one named runs', async () => {
    const r = await gw.gql(admin, {}, { operationName: 'Load' });
    expect(r.errors).toBeUndefined();
    expect(r.data.loadModel.versions[0].state).toBe('AVAILABLE');
  });
});
