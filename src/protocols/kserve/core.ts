// Over 250 lines on purpose: the protocol-neutral part of KServe v2 that REST and gRPC share.
import { readFileSync } from 'node:fs';
import { ErrorCode, GatewayError, quoted } from '../../errors.ts';
import { bytesPerElement, elementCount, type Tensor, type TensorInfo } from '../../engine/types.ts';
import { accessFor, type Caller, type Tokens } from '../../inference/access.ts';

/** Who calls: the token it sent and where the call comes from (admin operations without ADMIN_TOKEN: loopback only). */
export interface Who {
  authorization: string | null | undefined;
  caller: Caller;
}
import { RequestBudget } from '../../inference/budget.ts';
import { hasBatchDimension } from '../../inference/tensors.ts';
import type { InferenceService, RunOptions } from '../../inference/service.ts';
import type { Model } from '../../repository/model.ts';
import type { ModelVersion } from '../../repository/version.ts';
import { V2_DATATYPE, checkCount, classifyOutput, engineDtype, imageAsText, tooManyValues } from './codec.ts';
import { invalid } from './errors.ts';

/**
 * The Open Inference Protocol's operations, whatever the transport: REST (rest.ts) and gRPC (grpc.ts) decode their
 * requests into these shapes, call these functions, and encode what they return. Every call goes through the
 * InferenceService (admission, limits, batcher, metrics) with the caller's tokens and a RequestBudget.
 */

/** A decoded input tensor: raw little-endian bytes, or the elements of a BYTES tensor (encoded images). */
export interface V2Input {
  name: string;
  datatype: string;
  shape: number[];
  data: Uint8Array | Uint8Array[];
}
export interface V2RequestedOutput {
  name: string;
  /** The classification extension: the top N as strings instead of the tensor. */
  classification: number | null;
}
export interface V2InferRequest {
  id: string | null;
  inputs: V2Input[];
  /** null: every output of the model. */
  outputs: V2RequestedOutput[] | null;
}
/** An output: a tensor, or BYTES elements (classification). */
export interface V2Output {
  name: string;
  datatype: string;
  shape: number[];
  tensor: Tensor | null;
  elements: Uint8Array[] | null;
}
export interface V2InferResponse {
  model_name: string;
  model_version: string;
  id: string | null;
  outputs: V2Output[];
}
export interface V2TensorMetadata {
  name: string;
  datatype: string;
  shape: number[];
}
export interface V2ModelMetadata {
  name: string;
  versions: string[];
  platform: string;
  inputs: V2TensorMetadata[];
  outputs: V2TensorMetadata[];
}
export interface V2IndexEntry {
  name: string;
  version: string;
  state: 'READY' | 'LOADING' | 'UNLOADING' | 'UNAVAILABLE';
  reason: string;
}

/**
 * The model version an inference goes to, looked up (inferTarget) before its request is read or decoded: a missing
 * model is NOT_FOUND whatever the body says, and the inputs are checked against the model's as they are decoded.
 */
export interface InferTarget {
  model: string;
  /** null: the serving version. */
  version: number | null;
  inputs: readonly TensorInfo[];
}

/** The options of an inference: how this protocol carries an image's own bytes, said when a BYTES element is base64 text. */
export interface InferOptions extends RunOptions {
  sendBytes: string;
}

const describeInput = (i: TensorInfo) => `${JSON.stringify(i.name)} ${V2_DATATYPE[i.dtype]} [${i.shape.map((d) => d ?? -1).join(',')}]`;

/**
 * Every input named is one of the model's: said first, before anything else of the inputs is read, naming the model's
 * inputs. Names that are not strings are left to the decoder, which says where they are.
 */
export function checkInputNames(target: InferTarget, names: readonly unknown[]): void {
  for (const name of names) {
    if (typeof name !== 'string' || target.inputs.some((i) => i.name === name)) continue;
    const known = target.inputs.map((i) => i.name).join(', ');
    throw invalid(`model ${target.model} has no input ${quoted(name)} (inputs: ${known})`);
  }
}

/**
 * The datatype of an input, checked before its data is read: a v2 name this server carries, and the one the model's
 * input takes, said in v2 names. BYTES (encoded images) is checked against the model's preprocessing when it runs.
 */
export function checkInputType(target: InferTarget, name: string, datatype: string): void {
  if (datatype === 'BYTES') return;
  const dtype = engineDtype(datatype, name);
  const info = target.inputs.find((i) => i.name === name);
  if (info && info.dtype !== dtype) throw invalid(`input ${JSON.stringify(name)} takes ${V2_DATATYPE[info.dtype]}, got ${datatype}`);
}

/**
 * An INVALID_IMAGE of a request whose BYTES element is an image as text (base64, a data: URL), with what that element
 * is and how to send it instead (`sendBytes`, the protocol's way); nothing of the element is repeated.
 */
function withImageAsText(e: unknown, elements: readonly Uint8Array[], sendBytes: string): unknown {
  if (!(e instanceof GatewayError) || e.code !== ErrorCode.INVALID_IMAGE) return e;
  for (let k = 0; k < elements.length; k++) {
    const what = imageAsText(elements[k]);
    if (!what) continue;
    const which = elements.length === 1 ? 'the element' : `element ${k}`;
    return new GatewayError(e.code, `${e.message}: ${which} ${what}; ${sendBytes}`, e.details, { cause: e });
  }
  return e;
}

/** What this server reports in its metadata: the extensions it implements (Triton's names). */
export const EXTENSIONS = ['binary_tensor_data', 'classification', 'model_repository', 'statistics', 'model_configuration'];
const PACKAGE = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { name: string; version: string };
/** A count and a cumulative duration (Triton's statistics extension). */
export interface V2Duration {
  count: number;
  ns: number;
}

/** One version's statistics, as Triton's statistics extension reports them (`$model_stat`). */
export interface V2ModelStat {
  name: string;
  version: string;
  last_inference: number;
  inference_count: number;
  execution_count: number;
  inference_stats: Record<
    'success' | 'fail' | 'queue' | 'compute_input' | 'compute_infer' | 'compute_output' | 'cache_hit' | 'cache_miss',
    V2Duration
  >;
  batch_stats: { batch_size: number; compute_input: V2Duration; compute_infer: V2Duration; compute_output: V2Duration }[];
  memory_usage: never[];
  response_stats: Record<string, never>;
}

/** A model's configuration as Triton's model configuration extension reports it (model_config.proto's fields). */
export interface V2ModelConfig {
  name: string;
  platform: string;
  backend: string;
  max_batch_size: number;
  input: { name: string; data_type: string; format: 'FORMAT_NONE'; dims: number[] }[];
  output: { name: string; data_type: string; dims: number[]; label_filename: string }[];
  instance_group: { name: string; kind: 'KIND_CPU'; count: number }[];
  dynamic_batching?: { preferred_batch_size: number[]; max_queue_delay_microseconds: number };
}

const NONE: V2Duration = { count: 0, ns: 0 };
const duration = (count: number, us: number): V2Duration => ({ count, ns: Math.round(us * 1000) });

/**
 * A version's counters as Triton reports them: inference_count counts inferences (items: each image, each item of a
 * batch) and execution_count engine calls, while success, fail, queue and compute_infer count requests (one call of
 * the inference service, however many items it carries), as Triton's do (its queue and compute counts are its
 * successful requests): a request of six images that waited 3 ms counts 1 and 3 ms in queue. A request is charged
 * the whole time of each engine call that computed its items (shared with other requests or not, as Triton charges
 * every request of a batch), the sum of them when its items took several calls; its queue is the wait before its
 * first call. What the gateway does not time apart is reported as not measured (count 0): preparing inputs (decoding,
 * preprocessing) and reading outputs, and a response cache it does not have.
 */
function versionStat(model: string, v: ModelVersion): V2ModelStat {
  const s = v.stats;
  const r = s.byRequest;
  return {
    name: model,
    version: String(v.version),
    last_inference: s.lastSuccessAt,
    inference_count: s.items,
    execution_count: s.batches,
    inference_stats: {
      success: duration(r.succeeded, r.succeededUs),
      fail: duration(r.failed, r.failedUs),
      queue: duration(r.succeeded, r.queueUs),
      compute_input: NONE,
      compute_infer: duration(r.succeeded, r.computeUs),
      compute_output: NONE,
      cache_hit: NONE,
      cache_miss: NONE,
    },
    batch_stats: [...s.batchSizes.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([size, calls]) => ({
        batch_size: size,
        compute_input: NONE,
        compute_infer: duration(calls, s.batchSizeTime.get(size) ?? 0),
        compute_output: NONE,
      })),
    memory_usage: [],
    response_stats: {},
  };
}

/** Triton's data type names (model_config.proto's DataType): BYTES is TYPE_STRING there. */
const configType = (dtype: TensorInfo['dtype']): string => `TYPE_${V2_DATATYPE[dtype]}`;

/** Platform names as Triton reports them. */
const PLATFORMS: Record<string, string> = { onnxruntime: 'onnxruntime_onnx', openvino: 'openvino' };

export interface KserveCoreOptions {
  service: InferenceService;
  tokens: Tokens;
  /** Items (batch entries, images) in one request, as MAX_IMAGES_PER_REQUEST. */
  maxImagesPerRequest?: number;
  /** Bytes of tensors one response may carry (MAX_RESPONSE_BYTES), counted before anything is encoded. */
  maxResponseBytes?: number;
  /** Classification strings one answer may carry (MAX_JSON_VALUES): each is made one by one on the event loop. */
  maxJsonValues?: number;
  /** Whether the server is ready besides its models (a SIGTERM drain, the cluster bus joined): as /ready says. */
  serverReady?: () => boolean;
}

export type KserveCore = ReturnType<typeof createKserveCore>;

/** A version as clients write it ("" or absent: the server's choice); anything but a positive integer is unknown. */
export function parseVersion(model: string, version: string | null | undefined): number | null {
  if (version === undefined || version === null || version === '') return null;
  if (!/^[1-9]\d{0,9}$/.test(version)) throw new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${model} has no version ${version}`);
  return Number(version);
}

const tensorMetadata = (i: TensorInfo): V2TensorMetadata => ({
  name: i.name,
  datatype: V2_DATATYPE[i.dtype],
  shape: i.shape.map((d) => d ?? -1),
});

function indexEntries(model: Model): V2IndexEntry[] {
  const versions = [...model.versions.values()].sort((a, b) => a.version - b.version);
  if (versions.length === 0) return [{ name: model.name, version: '', state: 'UNAVAILABLE', reason: 'no version loaded' }];
  return versions.map((v) => ({ name: model.name, version: String(v.version), ...indexState(v) }));
}

function indexState(v: ModelVersion): Pick<V2IndexEntry, 'state' | 'reason'> {
  switch (v.state) {
    case 'AVAILABLE':
      return { state: 'READY', reason: '' };
    case 'START':
    case 'LOADING':
      return { state: 'LOADING', reason: '' };
    case 'UNLOADING':
      return { state: 'UNLOADING', reason: '' };
    case 'END':
      return { state: 'UNAVAILABLE', reason: v.errorMessage ?? 'unloaded' };
  }
}

export function createKserveCore({
  service,
  tokens,
  maxImagesPerRequest = 64,
  maxResponseBytes = 64 * 1024 * 1024,
  maxJsonValues = 524_288,
  serverReady = () => true,
}: KserveCoreOptions) {
  const models = service.models;
  const access = (who: Who) => accessFor(who.authorization, tokens, who.caller);

  /** The model, and the version a client named (null: it named none); MODEL_NOT_FOUND for unknown ones. */
  function resolveNamed(name: string, version: string | null | undefined): { model: Model; version: ModelVersion | null } {
    const model = models.require(name);
    const v = parseVersion(name, version);
    if (v === null) return { model, version: null };
    const mv = model.versions.get(v);
    if (!mv) throw model.noSuchVersion(v);
    return { model, version: mv };
  }

  /**
   * The version a client named, else the one the metadata describes (the serving one, else the newest loaded once);
   * MODEL_NOT_READY, saying why, when it never loaded: its metadata would say no inputs and no outputs.
   */
  function resolveDescribed(name: string, version: string | null | undefined): { model: Model; version: ModelVersion } {
    const { model, version: named } = resolveNamed(name, version);
    const v = named ?? model.describedVersion();
    if (!v?.described) throw models.undescribed(model, named);
    return { model, version: v };
  }

  return {
    /** Liveness: the process answers (open to probes, like /health). */
    live: () => true,
    /** Readiness: every model the repository asks for is AVAILABLE (open to probes, like /ready). */
    ready: () => models.ready && serverReady(),

    /** The token check alone: made before a request's body is read or decoded, so that nobody without one costs that. */
    checkApi(who: Who): void {
      access(who).checkApi();
    },

    /** The repository extension's rights (the admin token), checked before its request's body is read. */
    checkAdmin(who: Who): void {
      const a = access(who);
      a.checkApi();
      a.requireAdmin();
    },

    serverMetadata(who: Who) {
      access(who).checkApi();
      return { name: PACKAGE.name, version: PACKAGE.version, extensions: EXTENSIONS };
    },

    /** Metadata of a version (default: the serving one, else the newest), as GraphQL's Model.inputs/outputs say. */
    modelMetadata(who: Who, name: string, version?: string | null): V2ModelMetadata {
      access(who).checkApi();
      const { model, version: v } = resolveDescribed(name, version);
      return {
        name: model.name,
        versions: [...model.versions.values()]
          .filter((x) => x.state === 'AVAILABLE')
          .map((x) => x.version)
          .sort((a, b) => a - b)
          .map(String),
        platform: PLATFORMS[models.engine.name] ?? models.engine.name,
        inputs: (v?.inputs ?? []).map(tensorMetadata),
        outputs: (v?.outputs ?? []).map(tensorMetadata),
      };
    },

    /**
     * Statistics extension (Triton): every version of every model, of one model, or one version of it. Each version
     * counts from when it was loaded.
     */
    modelStatistics(who: Who, name?: string | null, version?: string | null): V2ModelStat[] {
      access(who).checkApi();
      if (!name) {
        if (version)
          throw invalid(
            `version ${JSON.stringify(version)} given without a model name: name the model, or leave the version out for every model`,
          );
        return models.models().flatMap((m) => [...m.versions.values()].map((v) => versionStat(m.name, v)));
      }
      const { model, version: named } = resolveNamed(name, version);
      if (named) return [versionStat(name, named)];
      return [...model.versions.values()].sort((a, b) => a.version - b.version).map((x) => versionStat(name, x));
    },

    /**
     * Model configuration extension (Triton): what a client generated from model_config.proto reads (perf_analyzer
     * reads max_batch_size and the inputs), derived from the version the metadata describes. A model whose inputs all
     * have a batch dimension (dynamic, or 1) takes up to MAX_IMAGES_PER_REQUEST items in one request (no more than a
     * client's share of its maxQueueSize), which is its max_batch_size, and its dims leave that dimension out, as Triton's do; any other says 0 and its whole shapes.
     * Dynamic dimensions are -1. A model whose inputs have a batch dimension and an output none (a transposed or reduced
     * output, which cannot be split between items) takes one item per request: 0, and 1 on its inputs' dimension 0.
     * Requests are batched together (dynamic_batching) unless the engine takes one item per call.
     */
    modelConfig(who: Who, name: string, version?: string | null): V2ModelConfig {
      access(who).checkApi();
      const { model, version: v } = resolveDescribed(name, version);
      const inputs = v?.inputs ?? [];
      const outputs = v?.outputs ?? [];
      const itemized = inputs.length > 0 && hasBatchDimension(inputs);
      const batched = itemized && hasBatchDimension(outputs);
      const dims = (shape: readonly (number | null)[]) => (batched ? shape.slice(1) : shape).map((d) => d ?? -1);
      const inputDims = (i: TensorInfo) => (itemized && !batched ? [1, ...dims(i.shape.slice(1))] : dims(i.shape));
      const batching = v?.batchingOptions ?? null;
      const perCall = batching?.maxBatchSize ?? model.config?.batching.maxBatchSize ?? 1;
      // the items one request may carry: a client's share of maxQueueSize bounds it too (a larger batch is refused as a
      // mistake, LIMIT_EXCEEDED), and every KServe request is a client's ('' stands for any one)
      const perRequest = Math.min(maxImagesPerRequest, v?.admissible('') ?? Infinity);
      return {
        name: model.name,
        platform: PLATFORMS[models.engine.name] ?? models.engine.name,
        backend: models.engine.name,
        max_batch_size: batched ? perRequest : 0,
        input: inputs.map((i) => ({ name: i.name, data_type: configType(i.dtype), format: 'FORMAT_NONE', dims: inputDims(i) })),
        output: outputs.map((o) => ({ name: o.name, data_type: configType(o.dtype), dims: dims(o.shape), label_filename: '' })),
        instance_group: [{ name: model.name, kind: 'KIND_CPU', count: v?.session?.instances ?? 1 }],
        ...(batched && perCall > 1
          ? { dynamic_batching: { preferred_batch_size: [], max_queue_delay_microseconds: Math.round((batching?.maxDelayMs ?? 0) * 1000) } }
          : {}),
      };
    },

    /**
     * Is that version (default: the serving one) AVAILABLE? MODEL_NOT_FOUND for unknown models and versions, or, with
     * `unknown: false`, not ready, as Triton's gRPC ModelReady answers them (a client polls it until a model appears).
     */
    modelReady(who: Who, name: string, version?: string | null, { unknown = 'throw' }: { unknown?: 'throw' | false } = {}): boolean {
      access(who).checkApi();
      let found: ReturnType<typeof resolveNamed>;
      try {
        found = resolveNamed(name, version);
      } catch (e) {
        if (unknown === false && e instanceof GatewayError && e.code === ErrorCode.MODEL_NOT_FOUND) return false;
        throw e;
      }
      return found.version ? found.version.state === 'AVAILABLE' : found.model.servingVersion() !== undefined;
    },

    /**
     * The version an inference goes to (MODEL_NOT_FOUND, MODEL_NOT_READY): looked up before the request's body is read
     * or decoded, whose inputs are then checked against it (checkInputNames, checkInputType).
     */
    inferTarget(who: Who, name: string, version: string | null | undefined): InferTarget {
      access(who).checkApi();
      const versionNo = parseVersion(name, version);
      const { version: v } = models.resolve(name, versionNo);
      return { model: name, version: versionNo, inputs: v.inputs };
    },

    /**
     * One inference. Raw tensors: dimension 0 is the batch (each item is batched with other requests, of any protocol).
     * A BYTES input holds encoded images, one per element, decoded and preprocessed by the model's model.json.
     */
    async infer(who: Who, target: InferTarget, req: V2InferRequest, { signal, client, sendBytes }: InferOptions): Promise<V2InferResponse> {
      access(who).checkApi();
      const { model: name, version: versionNo } = target;
      if (req.inputs.length === 0)
        throw invalid(`the request has no inputs: model ${name} takes ${target.inputs.map(describeInput).join(', ')}`);
      checkInputNames(
        target,
        req.inputs.map((i) => i.name),
      );
      const budget = new RequestBudget({ maxImages: maxImagesPerRequest, maxResponseBytes });
      for (const o of req.outputs ?? [])
        if (o.classification !== null && !(Number.isInteger(o.classification) && o.classification >= 1))
          throw invalid(`output ${o.name}: classification must be a positive integer`);
      const outputNames = req.outputs?.map((o) => o.name) ?? null;
      const images = req.inputs.find((i) => i.datatype === 'BYTES');
      let result;
      if (images) {
        if (req.inputs.length !== 1) throw invalid(`BYTES input ${images.name} holds encoded images: it must be the only input`);
        const elements = images.data as Uint8Array[];
        if (images.shape.length < 1 || images.shape.length > 2 || (images.shape.length === 2 && images.shape[1] !== 1))
          throw invalid(`BYTES input ${images.name}: shape [N] (or [N,1]) for N encoded images, got [${images.shape.join(',')}]`);
        if (images.shape[0] === 0)
          throw invalid(
            `BYTES input ${images.name}: shape [${images.shape.join(',')}] holds no images: send at least one encoded image (shape [N] or [N,1], N >= 1)`,
          );
        checkCount(images.name, images.shape, elements.length);
        budget.takeImages(elements.length);
        try {
          result = await service.inferImages(
            name,
            versionNo,
            elements.map((e) => () => Promise.resolve(e)),
            { inputName: images.name, outputNames, signal, client },
          );
        } catch (e) {
          throw withImageAsText(e, elements, sendBytes);
        }
      } else {
        const inputs = req.inputs.map((i) => {
          checkInputType(target, i.name, i.datatype);
          const dtype = engineDtype(i.datatype, i.name);
          const data = i.data as Uint8Array;
          // said here in v2 names (a shape of another rank: the service says so first)
          const info = target.inputs.find((x) => x.name === i.name);
          const expected = elementCount(i.shape) * bytesPerElement[dtype];
          if (info?.shape.length === i.shape.length && data.length !== expected)
            throw invalid(
              `input ${JSON.stringify(i.name)}: ${data.length} bytes of data for shape [${i.shape.join(',')}] ${i.datatype} (expected ${expected})`,
            );
          return { name: i.name, dtype, shape: i.shape, data };
        });
        // dimension 0 is a batch only where the model has one (a model without takes the request whole, as one item)
        budget.takeImages(hasBatchDimension(target.inputs) && inputs[0].shape.length ? Math.max(1, inputs[0].shape[0]) : 1);
        result = await service.inferBatch(name, versionNo, inputs, outputNames, { signal, client });
      }
      const wanted = req.outputs ?? Object.keys(result.outputs).map((n) => ({ name: n, classification: null }));
      const outputs = wanted.map(({ name: n, classification }): V2Output => {
        const t = result.outputs[n];
        if (classification === null) {
          // as bytes (binary data, gRPC raw); JSON text takes a few times more
          budget.takeResponseBytes(t.data.byteLength);
          return { name: n, datatype: V2_DATATYPE[t.dtype], shape: t.shape, tensor: t, elements: null };
        }
        // a model Triton would not batch (max_batch_size 0 in modelConfig: an input or an output without a batch
        // dimension) has one ranking of its whole output, as Triton gives it
        const batched =
          result.version.inputs.length > 0 && hasBatchDimension(result.version.inputs) && hasBatchDimension(result.version.outputs);
        // each element is at least "0.000000:0" (10 bytes), and a string made on the event loop: counted before the top
        // k are picked
        const rows = batched && t.shape.length ? t.shape[0] : 1;
        const strings = rows * Math.min(classification, rows ? t.data.length / rows : 0);
        if (strings > maxJsonValues) throw tooManyValues(`classification of output ${n}`, maxJsonValues, 'ask for fewer classes');
        budget.takeResponseBytes(strings * 10);
        const c = classifyOutput(t, classification, result.version.files?.labels ?? null, batched); // the labels of the version that ran
        return { name: n, datatype: 'BYTES', shape: c.shape, tensor: null, elements: c.elements };
      });
      return { model_name: result.model.name, model_version: String(result.version.version), id: req.id, outputs };
    },

    /** Model repository extension: every model and version the repository knows, with its state. */
    repositoryIndex(who: Who, readyOnly = false): V2IndexEntry[] {
      const a = access(who);
      a.checkApi();
      a.requireAdmin();
      const entries = models.models().flatMap(indexEntries);
      return readyOnly ? entries.filter((e) => e.state === 'READY') : entries;
    },

    /**
     * Load (or reload) a model: by name from the repository, or with a new model.json (`config`) and files to install
     * as its next version (`files`). Resolves once a version is AVAILABLE; a failed load is an error.
     */
    async load(who: Who, name: string, opts: { config?: unknown; files?: { name: string; bytes: Uint8Array }[] } = {}): Promise<void> {
      const a = access(who);
      a.checkApi();
      a.requireAdmin();
      const model = await models.load(name, { config: opts.config, files: opts.files?.length ? opts.files : null });
      if (model.servingVersion()) return;
      const failed = [...model.versions.values()].sort((x, y) => y.version - x.version)[0];
      const code = failed?.errorCode === ErrorCode.INVALID_MODEL_CONFIG ? ErrorCode.INVALID_MODEL_CONFIG : ErrorCode.MODEL_LOAD_FAILED;
      throw new GatewayError(code, `model ${name} did not load: ${failed?.errorMessage ?? 'no version to load'}`);
    },

    /** Unload every version of a model; waits for its requests in flight. It stays unloaded until a load. */
    async unload(who: Who, name: string): Promise<void> {
      const a = access(who);
      a.checkApi();
      a.requireAdmin();
      await models.unload(name);
    },
  };
}
