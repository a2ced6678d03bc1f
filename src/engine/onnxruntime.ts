import ort from 'onnxruntime-node';
import type { DType, Engine, LoadOptions, Session, Tensor, TensorData, TensorInfo } from './types.ts';

const fromOrtType: Record<string, DType> = {
  float32: 'float32', float16: 'float16', int64: 'int64', int32: 'int32', int8: 'int8', uint8: 'uint8', bool: 'bool',
};

function toInfo(meta: ort.InferenceSession.ValueMetadata): TensorInfo {
  if (!meta.isTensor) return { name: meta.name, dtype: 'float32', shape: [], layout: null };
  const dtype = fromOrtType[meta.type];
  return {
    name: meta.name,
    // Types the gateway cannot carry (string, float64, ...) are reported as they are named by ONNX Runtime.
    dtype: (dtype ?? meta.type) as DType,
    shape: meta.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : null)),
    layout: null,
  };
}

class OrtSession implements Session {
  readonly inputs: TensorInfo[];
  readonly outputs: TensorInfo[];
  constructor(private readonly session: ort.InferenceSession) {
    this.inputs = session.inputMetadata.map(toInfo);
    this.outputs = session.outputMetadata.map(toInfo);
  }

  async run(feeds: Record<string, Tensor>, outputNames?: string[]): Promise<Record<string, Tensor>> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      const data = t.dtype === 'bool' ? new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.length) : t.data;
      ortFeeds[name] = new ort.Tensor(t.dtype, data as ort.Tensor.DataType, t.shape);
    }
    const runOptions: ort.InferenceSession.RunOptions = { logSeverityLevel: 3 };
    const result = outputNames
      ? await this.session.run(ortFeeds, outputNames, runOptions)
      : await this.session.run(ortFeeds, runOptions);
    const out: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(result)) {
      const dtype = fromOrtType[t.type];
      if (!dtype) throw new Error(`output ${name} has type ${t.type}, which the gateway does not carry`);
      let data = t.data as TensorData;
      if (t.type === 'bool' && !(data instanceof Uint8Array)) data = Uint8Array.from(data as unknown as ArrayLike<number>);
      out[name] = { dtype, shape: [...t.dims], data };
    }
    return out;
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}

/** The default engine: ONNX Runtime on CPU, whose binaries ship inside the npm package. */
export function createOnnxRuntimeEngine(): Engine {
  const sessionOptions = (o: LoadOptions = {}): ort.InferenceSession.SessionOptions => ({
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3, // old exports print harmless "initializer appears in graph inputs" warnings
    ...(o.intraOpThreads ? { intraOpNumThreads: o.intraOpThreads } : {}),
  });
  return {
    name: 'onnxruntime',
    modelFiles: ['model.onnx'],
    async load(modelPath, options) {
      return new OrtSession(await ort.InferenceSession.create(modelPath, sessionOptions(options)));
    },
    async loadBytes(bytes, options) {
      return new OrtSession(await ort.InferenceSession.create(bytes, sessionOptions(options)));
    },
  };
}
