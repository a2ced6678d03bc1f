import type { Engine } from './types.ts';
import { createOnnxRuntimeEngine } from './onnx/onnxruntime.ts';
import { createOpenVinoEngine } from './openvino.ts';

export type EngineName = 'onnxruntime' | 'openvino';
export const ENGINE_NAMES: readonly EngineName[] = ['onnxruntime', 'openvino'];

/** Create the configured engine; rejects with a clear message when it cannot run on this machine. */
export async function createEngine(name: EngineName): Promise<Engine> {
  return name === 'openvino' ? createOpenVinoEngine() : createOnnxRuntimeEngine();
}
export * from './types.ts';
