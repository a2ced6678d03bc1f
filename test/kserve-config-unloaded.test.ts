import { describe, expect, it } from 'vitest';
import { ElemType, identityModel } from './onnx-builder.ts';
import { startGateway } from './helpers.ts';

describe('KServe model configuration of a model unloaded on purpose', () => {
  it('says the max_batch_size it will take once loaded again (a client share of maxQueueSize), not MAX_IMAGES_PER_REQUEST', async () => {
    const gw = await startGateway({
      models: { 'small-queue': { onnx: identityModel(ElemType.FLOAT, ['N', 2]), config: { task: 'raw', batching: { maxQueueSize: 4 } } } },
      env: { MAX_IMAGES_PER_REQUEST: '8' },
    });
    const config = async () =>
      ((await (await fetch(`${gw.url}/v2/models/small-queue/config`)).json()) as { max_batch_size: number }).max_batch_size;
    try {
      expect(await config()).toBe(2);
      expect((await fetch(`${gw.url}/v2/repository/models/small-queue/unload`, { method: 'POST' })).status).toBe(200);
      // it said 8 while unloaded (its admissions gone): a client that sized its batches by it was refused once loaded
      expect(await config()).toBe(2);
    } finally {
      await gw.close();
    }
  });
});
