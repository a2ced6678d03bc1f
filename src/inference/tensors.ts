import { ErrorCode, GatewayError } from '../errors.ts';
import { DTYPES, bytesPerElement, elementCount, fromBytes, type DType, type Tensor, type TensorInfo } from '../engine/types.ts';

/** A raw tensor as a protocol decoded it: little-endian bytes. */
export interface TensorInput {
  name: string;
  /** A data type name, any case (FLOAT32, float32, ...). */
  dtype: string;
  shape: readonly number[];
  data: Uint8Array;
}

/** The largest raw input accepted (bytes), whatever the request limits say. */
export const MAX_TENSOR_BYTES = 256 * 1024 * 1024;

const bad = (msg: string) => new GatewayError(ErrorCode.INVALID_INPUT, msg);

/**
 * Does dimension 0 of every input hold a batch (dynamic, or 1)? A model with an input of another kind (`[3,4]`, a
 * vector `[4]`, a scalar) has none: it takes its tensors as its metadata gives them, one request per engine call, as
 * Triton serves a model with `max_batch_size: 0`.
 */
export const hasBatchDimension = (infos: readonly TensorInfo[]): boolean =>
  infos.every((i) => i.shape.length > 0 && (i.shape[0] === null || i.shape[0] === 1));

/**
 * Check raw tensors against a model's inputs (names, dtypes, shapes with batch dimension 1 where the model has one,
 * byte lengths) and turn them into engine feeds. Every input must be given once.
 */
/** What -1 in a model's shape means, for a request that sent it as a size (GraphQL's infer and KServe say it alike). */
export const ANY_SIZE = 'marks a dimension of any size; send the size your data has there';

/** A shape sent that does not fit the model's, the model's written as metadata writes it (-1: any size, said so). */
export function shapeMismatch(name: string, model: readonly (number | null)[], sent: readonly number[]): GatewayError {
  const any = model.includes(null) ? ' (-1: any size)' : '';
  return bad(`input ${name} has shape [${model.map((d) => d ?? -1).join(',')}]${any}, got [${sent.join(',')}]`);
}

export function tensorFeeds(model: string, infos: readonly TensorInfo[], inputs: readonly TensorInput[]): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  const batched = hasBatchDimension(infos);
  for (const input of inputs) {
    const info = infos.find((i) => i.name === input.name);
    if (!info) throw bad(`model ${model} has no input ${JSON.stringify(input.name)} (inputs: ${infos.map((i) => i.name).join(', ')})`);
    if (feeds[input.name]) throw bad(`input ${input.name} given twice`);
    const dtype = input.dtype.toLowerCase() as DType;
    if (!DTYPES.includes(dtype)) throw bad(`dtype ${input.dtype} is not one of ${DTYPES.map((d) => d.toUpperCase()).join(', ')}`);
    if (dtype !== info.dtype) throw bad(`input ${input.name} is ${info.dtype.toUpperCase()}, got ${input.dtype}`);
    const shape = [...input.shape];
    if (shape.some((d) => !Number.isInteger(d) || d < 0)) {
      // -1 is how a model's shape is written where it takes any size (metadata, KServe), not a size to send
      const any = shape.findIndex((d, i) => d === -1 && info.shape[i] === null);
      const batch = any === 0 && batched ? ' (1 for the batch)' : '';
      throw bad(
        `input ${input.name}: shape [${shape.join(',')}] must hold sizes (integers of 0 or more)${any < 0 ? '' : `: the -1 of the model's shape [${info.shape.map((d) => d ?? -1).join(',')}] ${ANY_SIZE}${batch}`}`,
      );
    }
    if (
      shape.length !== info.shape.length ||
      shape.some((d, i) => !Number.isInteger(d) || d < 0 || (info.shape[i] !== null && info.shape[i] !== d))
    ) {
      throw shapeMismatch(input.name, info.shape, shape);
    }
    if (shape[0] !== 1 && shape.length > 0 && batched)
      throw bad(`input ${input.name}: send one item (batch dimension 1) per tensor; the gateway batches requests itself`);
    const expected = elementCount(shape) * bytesPerElement[dtype];
    if (expected > MAX_TENSOR_BYTES) throw bad(`input ${input.name} would be ${expected} bytes`);
    if (input.data.length !== expected)
      throw bad(
        `input ${input.name}: ${input.data.length} bytes of data for shape [${shape.join(',')}] ${dtype.toUpperCase()} (expected ${expected})`,
      );
    // a byte of a BOOL is true when it is not 0 (one protocol writes true, another 2): the model is given 0 or 1
    const data = dtype === 'bool' && input.data.some((b) => b > 1) ? input.data.map((b) => (b ? 1 : 0)) : input.data;
    feeds[input.name] = { dtype, shape, data: fromBytes(dtype, data) };
  }
  for (const info of infos) if (!feeds[info.name]) throw bad(`input ${info.name} is missing`);
  return feeds;
}

/** The outputs asked for (all when none are named), or INVALID_INPUT naming an unknown one or one asked twice. */
export function selectOutputs(model: string, infos: readonly TensorInfo[], names: readonly string[] | null | undefined): string[] {
  const known = infos.map((o) => o.name);
  const seen = new Set<string>();
  for (const o of names ?? []) {
    if (!known.includes(o)) throw bad(`model ${model} has no output ${JSON.stringify(o)} (outputs: ${known.join(', ')})`);
    // each copy would be encoded again (Triton refuses it too)
    if (seen.has(o)) throw bad(`output ${JSON.stringify(o)} is asked for twice`);
    seen.add(o);
  }
  return names?.length ? [...names] : known;
}
