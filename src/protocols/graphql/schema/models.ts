import { ErrorCode, GatewayError } from '../../../errors.ts';
import type { TensorInfo } from '../../../engine/types.ts';
import { badModelName, type Model } from '../../../repository/model.ts';
import { largestId, type Labels } from '../../../repository/labels.ts';
import { VERSION_STATES, type ModelStatusEvent, type ModelVersion } from '../../../repository/version.ts';
import type { VersionStats } from '../../../batching/stats.ts';
import { guessLayout } from '../../../vision/preprocess.ts';
import { uploadedBytes } from '../../../inference/images.ts';
import { builder } from './builder.ts';

export const VersionStateEnum = builder.enumType('ModelVersionState', {
  description: 'The lifecycle of a model version (as in OpenVINO Model Server).',
  values: VERSION_STATES,
});

const TensorInfoRef = builder.objectRef<TensorInfo>('TensorInfo').implement({
  description: 'An input or output of a model.',
  fields: (t) => ({
    name: t.exposeString('name'),
    dtype: t.string({ description: 'FLOAT32, FLOAT16, INT64, INT32, INT8, UINT8 or BOOL.', resolve: (i) => i.dtype.toUpperCase() }),
    shape: t.field({
      type: ['Int'],
      nullable: { list: false, items: true },
      description: 'Dynamic dimensions are null.',
      resolve: (i) => i.shape,
    }),
    layout: t.string({ nullable: true, resolve: (i) => i.layout }),
  }),
});

const BatchSizeCount = builder.objectRef<[number, number]>('BatchSizeCount').implement({
  fields: (t) => ({
    size: t.int({ resolve: (p) => p[0] }),
    count: t.int({ resolve: (p) => p[1] }),
  }),
});

const ErrorCount = builder.objectRef<[string, number]>('ErrorCount').implement({
  fields: (t) => ({
    code: t.string({ resolve: (p) => p[0] }),
    count: t.int({ resolve: (p) => p[1] }),
  }),
});

const StatsRef = builder.objectRef<{ version: number; stats: VersionStats }>('ModelVersionStats').implement({
  description: 'Counters since the version was loaded. Times in milliseconds.',
  fields: (t) => ({
    version: t.int({ resolve: (s) => s.version }),
    requests: t.int({
      description:
        'Items answered successfully: an image, or one item of a raw batch (a request of six images counts six), as /metrics counts them. The KServe statistics extension counts requests.',
      resolve: (s) => s.stats.items,
    }),
    errors: t.int({ resolve: (s) => s.stats.errorCount }),
    errorsByCode: t.field({ type: [ErrorCount], resolve: (s) => [...s.stats.errors.entries()] }),
    batches: t.int({ description: 'Engine calls.', resolve: (s) => s.stats.batches }),
    meanBatchSize: t.float({ resolve: (s) => s.stats.meanBatchSize }),
    batchSizes: t.field({ type: [BatchSizeCount], resolve: (s) => [...s.stats.batchSizes.entries()].sort((a, b) => a[0] - b[0]) }),
    meanQueueTimeMs: t.float({ resolve: (s) => s.stats.queueTime.mean / 1000 }),
    meanInferenceTimeMs: t.float({ resolve: (s) => s.stats.inferenceTime.mean / 1000 }),
    meanRequestTimeMs: t.float({ resolve: (s) => s.stats.requestTime.mean / 1000 }),
  }),
});

const VersionRef = builder.objectRef<ModelVersion>('ModelVersion').implement({
  fields: (t) => ({
    version: t.exposeInt('version'),
    state: t.field({ type: VersionStateEnum, resolve: (v) => v.state }),
    errorCode: t.string({ nullable: true, resolve: (v) => v.errorCode }),
    errorMessage: t.string({ nullable: true, resolve: (v) => v.errorMessage }),
    updatedAt: t.field({ type: 'DateTime', resolve: (v) => v.updatedAt }),
    notes: t.field({
      type: 'JSON',
      description: 'What loading found, e.g. whether the batch dimension was made dynamic.',
      resolve: (v) => v.notes,
    }),
    stats: t.field({ type: StatsRef, resolve: (v) => ({ version: v.version, stats: v.stats }) }),
  }),
});

function describe(model: Model, infos: (v: ModelVersion) => TensorInfo[], isInput: boolean): TensorInfo[] {
  const v = model.describedVersion();
  if (!v) return [];
  const pre = model.config.preprocessing;
  const list = infos(v);
  return list.map((i, idx) => {
    const image = isInput && (pre.input ? i.name === pre.input : idx === 0) && model.config.task !== 'raw';
    return { ...i, layout: i.layout ?? (image ? pre.dimensionOrder : null) ?? (isInput ? guessLayout(i.shape) : null) };
  });
}

/** A labels map as the list clients read (by class id, gaps empty), built once per map, and its size in a response. */
const labelLists = new WeakMap<Labels, { list: string[]; bytes: number }>();
function labelList(labels: Labels): { list: string[]; bytes: number } {
  let known = labelLists.get(labels);
  if (!known) {
    const max = largestId(labels);
    const list = Array.from({ length: max + 1 }, (_, i) => labels.get(i) ?? '');
    known = { list, bytes: list.reduce((n, l) => n + l.length + 3, 0) };
    labelLists.set(labels, known);
  }
  return known;
}

export const ModelRef = builder.objectRef<Model>('Model').implement({
  description: 'A model of the repository and its versions.',
  fields: (t) => ({
    name: t.exposeString('name'),
    task: t.string({ description: 'classification, detection, segmentation or raw (as in model.json).', resolve: (m) => m.task }),
    description: t.string({ resolve: (m) => m.config.description }),
    metadata: t.field({
      type: 'JSON',
      description:
        'From model.json (editable with updateModel), plus `dynamicBatch` when the gateway had to decide how to batch a graph whose batch dimension is fixed (read-only, not persisted).',
      resolve: (m) => {
        const note = m.describedVersion()?.notes.dynamicBatch;
        return note ? { ...m.config.metadata, dynamicBatch: note } : m.config.metadata;
      },
    }),
    updatedAt: t.field({ type: 'DateTime', resolve: (m) => m.updatedAt }),
    ready: t.boolean({
      description:
        'Nothing of this model keeps the server from being ready (what /ready sums up): every version the policy asks for is AVAILABLE, or the model was unloaded on purpose (then true, though it serves nothing: a version AVAILABLE in versions says it serves). False while a version it asks for loads or has failed, or while it has none; once it has been AVAILABLE in full since it was loaded, it stays true while a version serves beside one that loads or has failed.',
      resolve: (m) => m.ready,
    }),
    versions: t.field({ type: [VersionRef], resolve: (m) => [...m.versions.values()].sort((a, b) => a.version - b.version) }),
    inputs: t.field({
      type: [TensorInfoRef],
      description: 'Of the serving version (else the newest).',
      resolve: (m) => describe(m, (v) => v.inputs, true),
    }),
    outputs: t.field({ type: [TensorInfoRef], resolve: (m) => describe(m, (v) => v.outputs, false) }),
    labels: t.field({
      type: ['String'],
      nullable: true,
      description: 'Class labels by class id (gaps are empty strings).',
      resolve: (m, _, ctx) => {
        if (!m.labels) return null;
        const { list, bytes } = labelList(m.labels);
        // up to a million labels, asked for by any number of aliases: bounded in number (each is a list item to
        // complete on the event loop) and in bytes
        ctx.budget.takeLabels(list.length);
        ctx.budget.takeResponseBytes(bytes);
        return list;
      },
    }),
    configuration: t.field({ type: 'JSON', description: 'The parsed model.json, defaults filled in.', resolve: (m) => m.config }),
    configurationError: t.string({
      nullable: true,
      description:
        'Why the model.json on disk is not in force (invalid, or its versions failed to load with it); the versions keep serving with what they loaded.',
      resolve: (m) => m.configError?.message ?? null,
    }),
    stats: t.field({ type: [StatsRef], resolve: (m) => [...m.versions.values()].map((v) => ({ version: v.version, stats: v.stats })) }),
  }),
});

const StatusEventRef = builder.objectRef<ModelStatusEvent>('ModelStatusEvent').implement({
  fields: (t) => ({
    model: t.exposeString('model'),
    version: t.exposeInt('version'),
    state: t.field({ type: VersionStateEnum, resolve: (e) => e.state }),
    previousState: t.field({ type: VersionStateEnum, nullable: true, resolve: (e) => e.previousState }),
    errorCode: t.string({ nullable: true, resolve: (e) => e.errorCode }),
    errorMessage: t.string({ nullable: true, resolve: (e) => e.errorMessage }),
    at: t.field({ type: 'DateTime', resolve: (e) => e.at }),
    replica: t.exposeString('replica', {
      description: 'The replica (process, pod: REPLICA_NAME) whose version changed; with REDIS_URL set, events of every replica arrive.',
    }),
    removed: t.boolean({
      description:
        'The version left the list (its folder was removed, the model deleted, or it failed and is no longer wanted): its last event, state END.',
      resolve: (e) => e.removed ?? false,
    }),
  }),
});

builder.queryFields((t) => ({
  models: t.field({ type: [ModelRef], resolve: (_, __, ctx) => ctx.models.models() }),
  model: t.field({
    type: ModelRef,
    nullable: true,
    args: { name: t.arg.string({ required: true }) },
    resolve: (_, { name }, ctx) => ctx.models.get(name) ?? null,
  }),
  inputShape: t.field({
    type: ['Int'],
    nullable: { list: false, items: true },
    description: 'The shape of an input (default: the first) of a version (default: the serving one); dynamic dimensions are null.',
    args: { model: t.arg.string({ required: true }), version: t.arg.int(), input: t.arg.string() },
    resolve: (_, args, ctx) => {
      const model = ctx.models.require(args.model);
      const v = args.version ? model.versions.get(args.version) : model.describedVersion();
      if (!v)
        throw args.version
          ? model.noSuchVersion(args.version)
          : new GatewayError(ErrorCode.MODEL_NOT_FOUND, `model ${args.model} has no version`);
      if (v.inputs.length === 0)
        throw new GatewayError(ErrorCode.MODEL_NOT_READY, `model ${args.model} version ${v.version} has not loaded`);
      const input = args.input ? v.inputs.find((i) => i.name === args.input) : v.inputs[0];
      if (!input) throw new GatewayError(ErrorCode.INVALID_INPUT, `model ${args.model} has no input ${JSON.stringify(args.input)}`);
      return input.shape;
    },
  }),
}));

builder.mutationFields((t) => ({
  loadModel: t.field({
    type: ModelRef,
    description:
      'Load a model from the repository (by name), from a server path under the allowed roots, or from uploaded files (model, labels, model.json), which are written into the repository as a new version. Returns when the version is AVAILABLE or has failed (see versions.errorCode). Harmless for a model already loaded.',
    args: {
      name: t.arg.string({ required: true }),
      path: t.arg.string(),
      files: t.arg({ type: ['File'] }),
      config: t.arg({ type: 'JSON', description: 'model.json content; persisted for repository models.' }),
    },
    resolve: async (_, args, ctx) => {
      ctx.requireAdmin();
      const files = args.files ? await Promise.all(args.files.map(async (f) => ({ name: f.name, bytes: await uploadedBytes(f) }))) : null;
      return ctx.models.load(args.name, { path: args.path, files, config: args.config ?? undefined });
    },
  }),
  unloadModel: t.field({
    type: ModelRef,
    description: 'Unload one version or the whole model; waits for the requests in flight. The model stays unloaded until loadModel.',
    args: { name: t.arg.string({ required: true }), version: t.arg.int() },
    resolve: (_, args, ctx) => {
      ctx.requireAdmin();
      return ctx.models.unload(args.name, args.version);
    },
  }),
  updateModel: t.field({
    type: ModelRef,
    description:
      'Change the editable fields, persisted in model.json (edited in place: the rest of the file is kept). Everything else of model.json is changed by editing the file (versions reload).',
    args: {
      name: t.arg.string({ required: true }),
      description: t.arg.string(),
      metadata: t.arg({
        type: 'JSON',
        description: 'A JSON Merge Patch (RFC 7396) of the metadata: named keys are set, null deletes a key, the others are kept.',
      }),
    },
    resolve: (_, args, ctx) => {
      ctx.requireAdmin();
      return ctx.models.update(args.name, {
        description: args.description,
        metadata: args.metadata as Record<string, unknown> | null | undefined,
      });
    },
  }),
  deleteModel: t.boolean({
    description:
      'Unload every version of a model and remove it: a model of the repository loses its folder and files; a model loaded by path keeps its files.',
    args: { name: t.arg.string({ required: true }) },
    resolve: (_, args, ctx) => {
      ctx.requireAdmin();
      return ctx.models.delete(args.name);
    },
  }),
}));

builder.subscriptionFields((t) => ({
  modelStatus: t.field({
    type: StatusEventRef,
    description: 'State changes of model versions (all models, or the one named).',
    args: { name: t.arg.string() },
    subscribe: (_, { name }, ctx) => {
      // a name no model can have would stream nothing for good: said now (one that may come later is followed)
      const bad = name === null || name === undefined ? null : badModelName(name);
      if (bad) throw new GatewayError(ErrorCode.INVALID_INPUT, `modelStatus(name:): ${bad}; leave name out to follow every model`);
      return ctx.statusEvents((e) => !name || e.model === name);
    },
    resolve: (e) => e,
  }),
}));
