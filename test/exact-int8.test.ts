import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createEngine } from '../src/engine/index.ts';
import type { Tensor } from '../src/engine/types.ts';
import { cpuSaturatesInt8, int8Initializers } from '../src/engine/onnx/exact-int8.ts';
import { ElemType, buildModel, type Initializer } from './onnx-builder.ts';

/**
 * Quantized graphs whose int8 products saturate in ONNX Runtime's AVX2 kernel (uint8 255 x int8 127, eight channels:
 * each pair of products, 64770, is more than 16 bits hold), served by the engine with ENGINE_EXACT_INT8 on and off.
 */
const K = 8;
const f32 = (v: number) => new Uint8Array(Float32Array.of(v).buffer);
const exactSum = 255 * 127 * K; // 259080

function qlinearConv(opts: { weightsAreInputs?: boolean; weightIsOutput?: boolean } = {}): Uint8Array {
  const initializers: Initializer[] = [
    { name: 'xs', elemType: ElemType.FLOAT, dims: [], raw: f32(1) },
    { name: 'xzp', elemType: ElemType.UINT8, dims: [], raw: Uint8Array.of(0) },
    { name: 'w', elemType: ElemType.INT8, dims: [1, K, 1, 1], raw: new Uint8Array(K).fill(127) },
    { name: 'ws', elemType: ElemType.FLOAT, dims: [], raw: f32(1) },
    { name: 'wzp', elemType: ElemType.INT8, dims: [], raw: Uint8Array.of(0) },
    { name: 'ys', elemType: ElemType.FLOAT, dims: [], raw: f32(exactSum / 100) }, // exact: y = 100
    { name: 'yzp', elemType: ElemType.UINT8, dims: [], raw: Uint8Array.of(0) },
  ];
  return buildModel({
    nodes: [{ op: 'QLinearConv', inputs: ['x', 'xs', 'xzp', 'w', 'ws', 'wzp', 'ys', 'yzp'], outputs: ['y'] }],
    initializers,
    inputs: [
      { name: 'x', elemType: ElemType.UINT8, shape: ['batch', K, 1, 1] },
      ...(opts.weightsAreInputs ? initializers.map((t) => ({ name: t.name, elemType: t.elemType, shape: t.dims })) : []),
    ],
    outputs: [
      { name: 'y', elemType: ElemType.UINT8, shape: ['batch', 1, 1, 1] },
      ...(opts.weightIsOutput ? [{ name: 'w', elemType: ElemType.INT8, shape: [1, K, 1, 1] }] : []),
    ],
    ...(opts.weightsAreInputs ? { ir: 3, opset: 10 } : {}),
  });
}

/** Dynamic quantization as onnxruntime's quantize_dynamic writes it: DynamicQuantizeLinear, then MatMulInteger. */
function dynamicMatMul(): Uint8Array {
  return buildModel({
    nodes: [
      { op: 'DynamicQuantizeLinear', inputs: ['x'], outputs: ['q', 'qs', 'qzp'] },
      { op: 'MatMulInteger', inputs: ['q', 'w', 'qzp', 'wzp'], outputs: ['y'] },
    ],
    initializers: [
      { name: 'w', elemType: ElemType.INT8, dims: [K, 1], raw: new Uint8Array(K).fill(127) },
      { name: 'wzp', elemType: ElemType.INT8, dims: [], raw: Uint8Array.of(0) },
    ],
    inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: [1, K] }],
    outputs: [{ name: 'y', elemType: ElemType.INT32, shape: [1, 1] }],
  });
}

async function serve(model: Uint8Array, exactInt8: 'on' | 'off', feed: Tensor): Promise<{ y: number; notes: unknown }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'int8-'));
  await writeFile(path.join(dir, 'model.onnx'), model);
  const engine = await createEngine('onnxruntime');
  const session = await engine.load(path.join(dir, 'model.onnx'), { intraOpThreads: 1, exactInt8, dynamicBatch: false });
  await session.loaded?.();
  const out = await session.run({ [session.inputs[0].name]: feed });
  const notes = session.notes.int8;
  await session.close();
  return { y: Number(out.y.data[0]), notes };
}

const pixels = (): Tensor => ({ dtype: 'uint8', shape: [1, K, 1, 1], data: new Uint8Array(K).fill(255) });

describe('exact int8 (ENGINE_EXACT_INT8)', () => {
  it('QLinearConv: exact with the weights as uint8, on any CPU', async () => {
    const on = await serve(qlinearConv(), 'on', pixels());
    expect(on.y).toBe(100);
    expect(on.notes).toMatch(/^exact products asked of ONNX Runtime/);
    const off = await serve(qlinearConv(), 'off', pixels());
    // AVX2 without VNNI: four saturated pair sums, 4 x 32767 instead of 259080
    expect(off.y).toBe(cpuSaturatesInt8() ? Math.round((4 * 32767 * 100) / exactSum) : 100);
  });

  it('MatMulInteger after DynamicQuantizeLinear (dynamic quantization): exact', async () => {
    const x = (): Tensor => ({ dtype: 'float32', shape: [1, K], data: new Float32Array(K).fill(1) }); // quantized to 255
    expect((await serve(dynamicMatMul(), 'on', x())).y).toBe(exactSum);
    expect(int8Initializers(dynamicMatMul())).toBe(2);
  });

  it('a weight the graph also lists as an input (old exports) or as an output: exact too', async () => {
    for (const model of [qlinearConv({ weightsAreInputs: true }), qlinearConv({ weightIsOutput: true })]) {
      const on = await serve(model, 'on', pixels());
      expect(on.y).toBe(100);
      expect(on.notes).toMatch(/^exact products asked of ONNX Runtime/);
      // without it, such a CPU saturates these too: the option is what made them exact
      expect((await serve(model, 'off', pixels())).y).toBe(cpuSaturatesInt8() ? Math.round((4 * 32767 * 100) / exactSum) : 100);
    }
  });
});
