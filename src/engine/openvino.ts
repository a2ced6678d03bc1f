import type * as OpenVino from 'openvino-node';
import type { DType, Engine, Session, Tensor, TensorData, TensorInfo } from './types.ts';

const DTYPES_CARRIED: readonly DType[] = ['float32', 'float16', 'int64', 'int32', 'int8', 'uint8'];

/**
 * The OpenVINO engine (OpenVINO IR `model.xml` + `model.bin`, or ONNX). openvino-node is optional: install it
 * yourself (`npm install openvino-node`, Node >= 21, and its installer must reach the OpenVINO download host).
 * createOpenVinoEngine() rejects with a clear message when the addon cannot be loaded.
 */
const toOv: Record<DType, string> = {
  float32: 'f32',
  float16: 'f16',
  int64: 'i64',
  int32: 'i32',
  int8: 'i8',
  uint8: 'u8',
  bool: 'u8',
};
const fromOv: Record<string, DType> = {
  f32: 'float32',
  f16: 'float16',
  i64: 'int64',
  i32: 'int32',
  i8: 'int8',
  u8: 'uint8',
  boolean: 'bool',
};

function parseShape(text: string): (number | null)[] {
  // PartialShape prints like "[?,3,224,224]" or "[1..8,3,224,224]"
  return text
    .replace(/[[\]\s]/g, '')
    .split(',')
    .filter(Boolean)
    .map((d) => (/^\d+$/.test(d) ? Number(d) : null));
}

export async function createOpenVinoEngine(device = 'CPU'): Promise<Engine> {
  let ov: typeof OpenVino;
  try {
    ov = await import('openvino-node');
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new Error(
      `ENGINE=openvino needs the optional package openvino-node, which could not be loaded (${reason}). ` +
        `Install it with "npm install openvino-node" on Node >= 21 with access to the OpenVINO runtime download, or use ENGINE=onnxruntime.`,
    );
  }
  const core = new ov.addon.Core();
  return {
    name: 'openvino',
    modelFiles: ['model.xml', 'model.onnx'],
    dtypes: DTYPES_CARRIED,
    async load(modelPath) {
      const model = await core.readModel(modelPath);
      const compiled = await core.compileModel(model, device);
      const request = compiled.createInferRequest();
      const info = (o: OpenVino.Output): TensorInfo => ({
        name: o.getAnyName(),
        dtype: 'float32',
        shape: parseShape(o.getPartialShape().toString()),
        layout: null,
      });
      const inputs = compiled.inputs.map(info);
      const outputs = compiled.outputs.map(info);
      // OpenVINO runs any batch its partial shape allows: a dynamic first dimension on every input and output batches
      const batchable = inputs.length > 0 && [...inputs, ...outputs].every((t) => t.shape[0] === null);
      const session: Session = {
        inputs,
        outputs,
        batchable,
        notes: { batchDimension: batchable ? 'dynamic' : 'fixed: items run one after another' },
        async run(feeds) {
          const ovFeeds: Record<string, OpenVino.Tensor> = {};
          for (const [name, t] of Object.entries(feeds)) ovFeeds[name] = new ov.addon.Tensor(toOv[t.dtype] as never, t.shape, t.data);
          const result = await request.inferAsync(ovFeeds);
          const out: Record<string, Tensor> = {};
          for (const [name, t] of Object.entries(result)) {
            const data = t.getData();
            const dtype: DType = data instanceof Float32Array ? 'float32' : (fromOv[String(t.getElementType())] ?? 'float32');
            out[name] = { dtype, shape: t.getShape(), data: data as TensorData };
          }
          return out;
        },
        async close() {},
      };
      return session;
    },
  };
}
