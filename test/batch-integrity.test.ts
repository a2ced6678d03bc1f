import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ElemType, buildModel, scalarInitializer as scalar } from './onnx-builder.ts';
import { startGateway, type TestGateway } from './helpers.ts';

/**
 * No silently wrong result while batching: an item's answer in a shared engine call must be the one it gets alone.
 * Found by a probe of batch integrity (helper h43).
 */
describe('batch integrity', () => {
  let gw: TestGateway;
  // Non-maximum suppression over a dynamic number of boxes B: selected [S,3] holds (batch, class, box) rows of every
  // item of the call together; S is no batch, and equals it by chance only. The test in engines.test.ts has a fixed
  // B (a trial is run and the model runs one item at a time); with B dynamic no trial is made and the model batches.
  const nms = buildModel({
    nodes: [{ op: 'NonMaxSuppression', inputs: ['boxes', 'scores', 'max', 'iou', 'threshold'], outputs: ['selected'] }],
    inputs: [
      { name: 'boxes', elemType: ElemType.FLOAT, shape: ['N', 'B', 4] },
      { name: 'scores', elemType: ElemType.FLOAT, shape: ['N', 1, 'B'] },
    ],
    outputs: [{ name: 'selected', elemType: ElemType.INT64, shape: ['S', 3] }],
    initializers: [scalar('max', ElemType.INT64, 100000n), scalar('iou', ElemType.FLOAT, 0.5), scalar('threshold', ElemType.FLOAT, 0.5)],
  });

  // Dynamic quantization (onnxruntime's quantize_dynamic puts DynamicQuantizeLinear before each MatMulInteger): one
  // scale and zero point for the whole tensor, so every item's values are quantized with the range of all the items of
  // the engine call. Dimension 0 is named "N" on every tensor, so it batches as it is, without a trial.
  const dynamicQuantized = buildModel({
    nodes: [
      { op: 'DynamicQuantizeLinear', inputs: ['x'], outputs: ['q', 's', 'z'] },
      { op: 'DequantizeLinear', inputs: ['q', 's', 'z'], outputs: ['y'] },
    ],
    inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 4] }],
    outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: ['N', 4] }],
  });

  beforeAll(async () => {
    gw = await startGateway({
      models: {
        dq: { onnx: dynamicQuantized, config: { task: 'raw' } },
        // one engine call at a time, so that requests that come while one runs share the next call
        nms: { onnx: nms, config: { task: 'raw', instances: 1, batching: { maxBatchSize: 8, maxConcurrentBatches: 1 } } },
      },
    });
  });
  afterAll(async () => {
    await gw?.close();
  });

  /** Two boxes far apart, with these scores. */
  const request = (id: string, scores: number[], n = scores.length) => ({
    id,
    inputs: [
      {
        name: 'boxes',
        datatype: 'FP32',
        shape: [1, n, 4],
        data: Array.from({ length: n }, (_, i) => [i * 10, 0, i * 10 + 1, 1]).flat(),
      },
      { name: 'scores', datatype: 'FP32', shape: [1, 1, n], data: scores },
    ],
  });
  const infer = async (body: unknown) => {
    const r = await fetch(`${gw.url}/v2/models/nms/infer`, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'content-type': 'application/json' },
    });
    const j = await r.json();
    return r.status === 200 ? { shape: j.outputs[0].shape, data: j.outputs[0].data } : { status: r.status, error: j.error };
  };

  it("an item's answer does not depend on the other items of its engine call (dynamic quantization)", async () => {
    const infer = async (data: number[][]) => {
      const r = await fetch(`${gw.url}/v2/models/dq/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [data.length, 4], data }] }),
      });
      const j = await r.json();
      return r.status === 200 ? j.outputs[0].data : { status: r.status, error: j.error };
    };
    const a = [0, 1, 2, 3];
    const b = [0, 1000, 0, 0]; // another client's item, or another item of the same request
    const aloneA = await infer([a]);
    const aloneB = await infer([b]);
    expect(aloneA).toEqual([0, 1, 2, 3]);
    // a batch of two is two items for the batcher (one engine call): each must get its answer alone, not [0,0,3.92,3.92]
    expect(await infer([a, b])).toEqual([...aloneA, ...aloneB]);
  });

  it('an output whose dimension 0 is not the batch (NMS over a dynamic box count) is not split between clients', async () => {
    const a = request('A', [0.9, 0.9]); // both boxes selected: [[0,0,0],[0,0,1]]
    const b = request('B', [0.1, 0.1]); // none selected: shape [0,3]
    const aloneA = await infer(a);
    const aloneB = await infer(b);
    expect(aloneA).toEqual({ shape: [2, 3], data: [0, 0, 0, 0, 0, 1] });
    expect(aloneB).toEqual({ shape: [0, 3], data: [] });
    // a long call first (many boxes), then A and B while it runs: they wait for the engine together
    const slow = request(
      'slow',
      Array.from({ length: 3000 }, () => 0.9),
    );
    let batchedTogether = 0;
    for (let attempt = 0; attempt < 5 && batchedTogether === 0; attempt++) {
      const s = infer(slow);
      await new Promise((r) => setTimeout(r, 20));
      const [ra, rb] = await Promise.all([infer(a), infer(b)]);
      await s;
      const stats = await (await fetch(`${gw.url}/v2/models/nms/stats`)).json();
      batchedTogether = stats.model_stats[0].batch_stats.find((x: { batch_size: number }) => x.batch_size === 2)?.compute_infer.count ?? 0;
      // each answer is the one it gets alone, or a typed refusal; never another client's rows
      expect(ra).toEqual(aloneA);
      expect(rb).toEqual(aloneB);
    }
  });
});
