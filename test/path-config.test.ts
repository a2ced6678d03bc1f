import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addModel, fixture, modelAsset, startGateway, type TestGateway } from './helpers.ts';

/**
 * A model loaded by path with a configuration given beside it (loadModel(name, path, config)): that configuration is
 * the one served, and the one the cluster record (<prefix>:paths) says every replica serves. One that names another
 * labels file than the folder's model.json was neither read with its labels nor kept: the next repository scan put
 * the folder's model.json back (its description, its labels), silently.
 */
describe('a configuration given with loadModel(path:)', () => {
  let gw: TestGateway;
  let extraRoot: string;
  beforeAll(async () => {
    extraRoot = await mkdtemp(path.join(os.tmpdir(), 'gw-path-config-'));
    await addModel(extraRoot, 'mob', {
      ...fixture('mobilenet'),
      files: { 'labels.txt': modelAsset('mobilenet', 'labels.txt'), 'other.txt': { text: 'first\nsecond\n' } },
    });
    gw = await startGateway({ env: { MODEL_ROOTS: extraRoot }, pollIntervalMs: 100 });
  });
  afterAll(async () => {
    await gw?.close();
    await rm(extraRoot, { recursive: true, force: true });
  });

  it('is served with the labels file it names, and still is after the repository is scanned again', async () => {
    const r = await gw.gql<{ loadModel: { description: string; labels: string[] } }>(
      `mutation($p: String!, $c: JSON) { loadModel(name: "given", path: $p, config: $c) { description labels } }`,
      { p: path.join(extraRoot, 'mob'), c: { task: 'classification', description: 'given here', labels: 'other.txt' } },
    );
    expect(r.errors).toBeUndefined();
    expect(r.data!.loadModel.description).toBe('given here');
    expect(r.data!.loadModel.labels.slice(0, 2)).toEqual(['first', 'second']);
    await new Promise((done) => setTimeout(done, 1000)); // ten scans
    const after = await gw.gql<{ model: { description: string; labels: string[] } }>(`{ model(name: "given") { description labels } }`);
    expect(after.data!.model.description).toBe('given here');
    expect(after.data!.model.labels.slice(0, 2)).toEqual(['first', 'second']);
  });
});
