import { readFileSync } from 'node:fs';
import { fields, readVarint } from './protobuf.ts';
import { ElemType } from './onnx-proto.ts';

/**
 * Exact int8 arithmetic on x86-64 CPUs without VNNI. There, ONNX Runtime multiplies uint8 activations by int8 weights
 * with VPMADDUBSW, which adds pairs of products into 16 bits and saturates: a quantized model answers differently,
 * often much worse, than on a CPU with VNNI (onnxruntime issues #6004, #16105 and PR #24220; the reason its quantizer
 * has `reduce_range`). The int8 MobileNetV2 of the default repository gives a bee 45-66% on an AVX2-only AMD EPYC
 * against 91% with VNNI.
 *
 * ONNX Runtime has the cure built in: the session option `session.x64quantprecision` (its Avx2WeightS8ToU8Transformer)
 * stores the int8 weights of its quantized operators as uint8 at load, and their products then go through a kernel
 * that widens before adding. The engine sets it where this module says the CPU needs it (ENGINE_EXACT_INT8).
 */

/** Does this CPU saturate int8 products (x86-64 without AVX-VNNI or AVX512-VNNI)? Linux only; elsewhere no. */
export function cpuSaturatesInt8(cpuinfo = readCpuinfo()): boolean {
  if (process.arch !== 'x64' || cpuinfo === null) return false;
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  return flags.includes('avx2') && !flags.includes('avx512_vnni') && !flags.includes('avx_vnni') && !flags.includes('amx_int8');
}

function readCpuinfo(): string | null {
  try {
    return readFileSync('/proc/cpuinfo', 'latin1');
  } catch {
    return null;
  }
}

/** How many int8 initializers the model's main graph holds (a quantized model's weights), for its notes. */
export function int8Initializers(model: Uint8Array): number {
  const graph = fields(model).find((f) => f.no === 7 && f.wire === 2);
  if (!graph) return 0;
  const body = model.subarray(graph.valueStart, graph.end);
  let n = 0;
  for (const f of fields(body)) {
    if (f.no !== 5 || f.wire !== 2) continue;
    const tensor = body.subarray(f.valueStart, f.end);
    const dataType = fields(tensor).find((t) => t.no === 2 && t.wire === 0);
    if (dataType && readVarint(tensor, dataType.valueStart)[0] === ElemType.INT8) n++;
  }
  return n;
}

/** ENGINE_EXACT_INT8 for this CPU: `on` always, `auto` where int8 products saturate, `off` never. */
export function exactInt8Here(setting: 'auto' | 'on' | 'off' = 'auto'): boolean {
  return setting === 'on' || (setting === 'auto' && cpuSaturatesInt8());
}
