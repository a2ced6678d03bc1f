// The subset of openvino-node's published types (types/addon.d.ts, 2026.x) that the adapter uses. The package is not
// installed by default (its installer downloads the runtime from outside the npm registry, and it needs Node >= 21), so
// the adapter is type-checked against this declaration and imported at run time only when ENGINE=openvino.
declare module 'openvino-node' {
  type SupportedTypedArray =
    | Int8Array
    | Uint8Array
    | Int16Array
    | Uint16Array
    | Int32Array
    | Uint32Array
    | Float32Array
    | Float64Array
    | BigInt64Array
    | BigUint64Array;
  type elementTypeString = 'u8' | 'u32' | 'u16' | 'u64' | 'i8' | 'i64' | 'i32' | 'i16' | 'f64' | 'f32' | 'f16' | 'string';
  interface PartialShape {
    isDynamic(): boolean;
    toString(): string;
  }
  interface Output {
    getAnyName(): string;
    getPartialShape(): PartialShape;
  }
  interface Tensor {
    getElementType(): number | string;
    getData(): SupportedTypedArray;
    getShape(): number[];
  }
  interface InferRequest {
    inferAsync(inputs: Record<string, Tensor>): Promise<Record<string, Tensor>>;
  }
  interface Model {
    inputs: Output[];
    outputs: Output[];
  }
  interface CompiledModel {
    inputs: Output[];
    outputs: Output[];
    createInferRequest(): InferRequest;
  }
  interface Core {
    readModel(modelPath: string, weightsPath?: string): Promise<Model>;
    compileModel(model: Model, deviceName: string, config?: Record<string, string | number | boolean>): Promise<CompiledModel>;
  }
  export const addon: {
    Core: new () => Core;
    Tensor: new (type: elementTypeString, shape: number[], data: SupportedTypedArray) => Tensor;
  };
}
