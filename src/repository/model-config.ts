// Over 250 lines on purpose: the whole model.json schema in one place (model.schema.json is generated from it).
import { z } from 'zod';
import { closest } from '../did-you-mean.ts';
import { notValidJsonFile, withoutBom } from '../json-text.ts';
import { ErrorCode, GatewayError } from '../errors.ts';
import { MAX_CLASS_ID } from './labels.ts';

/**
 * model.json: everything the gateway needs to serve a model without code, as one zod schema. Objects are strict
 * (an unknown key is an error with its path and a did-you-mean), `postprocessing` depends on `task` (a discriminated
 * union), the types below are inferred from the schema, and `npm run schema` publishes it as model.schema.json for
 * editors. Every error names the field: `INVALID_MODEL_CONFIG: mobilenet/model.json: batching.maxBatchsize: unknown
 * field; did you mean "maxBatchSize"?`.
 */

/**
 * The largest side of targetSize. Every request's image is resized to it (SQUASH, CROP, FILL), so its memory is the
 * model's input and more: a typo of one digit too many (9600x9600, 99999x99999) exhausted the machine at load or failed
 * it as "out of memory". A fixed bound, not MAX_IMAGE_PIXELS: a model.json means the same on every server that reads
 * it, and model.schema.json can say it. 8192 is past the sides models are made for (8K video is 7680 wide).
 */
export const MAX_TARGET_SIDE = 8192;
const size = z
  .string()
  .regex(/^\d{1,5}x\d{1,5}$/, 'expected "WxH" such as "224x224"')
  .transform((s) => {
    const [width, height] = s.split('x').map(Number);
    return { width, height };
  })
  .refine((s) => s.width >= 1 && s.height >= 1, 'width and height must be at least 1')
  .superRefine((s, ctx) => {
    if (s.width > MAX_TARGET_SIDE || s.height > MAX_TARGET_SIDE)
      ctx.addIssue({ code: 'custom', message: `width and height must be at most ${MAX_TARGET_SIDE}; got "${s.width}x${s.height}"` });
  });
const fileName = (what: string, ext = '') =>
  z.string().regex(new RegExp(`^(?!\\.)[\\w.-]+${ext.replace('.', '\\.')}$`), `expected ${what}: a plain file name beside model.json`);
/**
 * A number the model's input is computed with (mean, std, pixelScaling): in float32, where past ±3.4e38 it is Infinity
 * (mean 1e300 loaded, and the model saw Infinity for every pixel).
 */
const PAST_FLOAT32 = "past float32's range (±3.4e38): the model would see Infinity";
const inFloat32 = (v: number) => Number.isFinite(Math.fround(v));
const float32 = (n: z.ZodNumber) => n.refine(inFloat32, { error: (iss) => `${String(iss.input)} is ${PAST_FLOAT32}` });
const activation = z.enum(['softmax', 'sigmoid', 'none']);
const layout = z.enum(['NCHW', 'NHWC']);
/** The highest version a folder name can give (the folders read are 1 to 9 digits, without a leading zero). */
export const MAX_VERSION = 999_999_999;
const versionNumber = z.int().min(1).max(MAX_VERSION);

const versionPolicy = z
  .union(
    [
      z.strictObject({ latest: z.int().min(1) }),
      z.strictObject({ all: z.literal(true) }),
      z.strictObject({ specific: z.array(versionNumber).min(1) }),
    ],
    { error: 'expected exactly one of {"latest": N}, {"all": true}, {"specific": [versions]}' },
  )
  .default({ latest: 1 })
  .describe('Which versions to serve: {"latest": N} (default 1), {"all": true} or {"specific": [1, 3]}.');

const batching = z
  .strictObject({
    maxBatchSize: z.int().min(1).max(1024).default(16).describe('Items per engine call; 1 turns batching off.'),
    maxDelayMs: z
      .number()
      .min(0)
      .max(10_000)
      .default(0)
      .describe(
        'How long the first item of a batch waits for company; 0: none beyond the tick in which it came (the engine takes it when free).',
      ),
    maxQueueSize: z
      .int()
      .min(1)
      .max(1_000_000)
      .default(256)
      .describe('Requests admitted at once (one client address: half of them); past it, QUEUE_FULL.'),
    // 2: the next batch waits inside the engine while one runs, so the engine never idles between them, and batches
    // stay smaller (cheaper per image here): +11% req/s and -8% CPU per image at c16 on 2 cores (bench/, A/B run)
    maxConcurrentBatches: z
      .int()
      .min(1)
      .max(64)
      .default(2)
      .describe('Engine calls handed at once to each engine instance of a version (the next one waits there while one runs).'),
    timeoutMs: z.number().min(0).max(3_600_000).default(30_000).describe('How long a request may wait for the engine; 0 = no limit.'),
  })
  .prefault({});

const preprocessing = z
  .strictObject({
    input: z.string().optional().describe('The image input tensor; default the first input.'),
    dimensionOrder: layout.optional().describe('NCHW or NHWC; default guessed from the input shape.'),
    targetSize: size
      .optional()
      .describe(`"WxH", each side at most ${MAX_TARGET_SIDE}; default from the input shape (for NETWORK: the largest size).`),
    resizeType: z.enum(['SQUASH', 'CROP', 'FILL', 'NETWORK']).default('SQUASH'),
    interpolation: z
      .enum(['LINEAR', 'CUBIC', 'LANCZOS3', 'NEAREST'])
      .default('LANCZOS3')
      .describe(
        "The resize filter: LANCZOS3 (sharp's default), LINEAR (bilinear, cheaper; what many models were trained with), CUBIC, NEAREST.",
      ),
    fillColor: z.tuple([z.int().min(0).max(255), z.int().min(0).max(255), z.int().min(0).max(255)]).default([0, 0, 0]),
    fillAlign: z.enum(['center', 'topLeft']).default('center'),
    cropFraction: z.number().min(0.05).max(1).default(1).describe('CROP: share of the shorter side kept (0.875 = resize 256, crop 224).'),
    sizeMultiple: z.int().min(1).max(1024).default(1).describe('NETWORK: each side a multiple of this, plus sizeOffset.'),
    sizeOffset: z.int().min(0).max(1024).default(0),
    colorChannels: z.enum(['RGB', 'BGR', 'L']).default('RGB'),
    pixelScaling: float32(z.number().positive()).default(255).describe('Pixels are scaled to 0..pixelScaling, then (x - mean) / std.'),
    mean: z.array(float32(z.number())).optional().describe('Per channel, in colorChannels order and in pixelScaling units.'),
    meanFile: fileName('a .npy file', '.npy').optional(),
    std: z
      .array(
        z.number().superRefine((v, ctx) => {
          if (v === 0) ctx.addIssue({ code: 'custom', message: 'must not be 0 (values are divided by std)' });
          else if (!inFloat32(v)) ctx.addIssue({ code: 'custom', message: `${v} is ${PAST_FLOAT32}` });
          else if (!inFloat32(1 / v))
            ctx.addIssue({ code: 'custom', message: `1/std is ${PAST_FLOAT32} (std ${v}: at least 3e-39 in size)` });
        }),
      )
      .optional(),
    dataType: z.enum(['FLOAT32', 'FLOAT16', 'UINT8']).optional().describe("Default: the model input's type."),
  })
  .superRefine((p, ctx) => {
    const channels = p.colorChannels === 'L' ? 1 : 3;
    for (const key of ['mean', 'std'] as const) {
      const v = p[key];
      if (v && v.length !== channels)
        ctx.addIssue({ code: 'custom', path: [key], message: `expected ${channels} numbers (${p.colorChannels}), got ${v.length}` });
    }
    if (p.mean && p.meanFile) ctx.addIssue({ code: 'custom', path: ['meanFile'], message: 'give mean or meanFile, not both' });
    // what the model sees, (x - mean) / std for pixels x of 0..pixelScaling, each within float32 too
    for (let c = 0; c < channels; c++) {
      const mean = p.mean?.[c] ?? 0;
      const std = p.std?.[c] ?? 1;
      const worst = [(0 - mean) / std, (p.pixelScaling - mean) / std].find((v) => !inFloat32(v));
      if (worst === undefined || !inFloat32(mean) || !inFloat32(std) || !inFloat32(1 / std) || !inFloat32(p.pixelScaling)) continue;
      const path = p.std ? ['std', c] : p.mean ? ['mean', c] : ['pixelScaling'];
      ctx.addIssue({ code: 'custom', path, message: `(x - mean) / std reaches ${worst}, ${PAST_FLOAT32}` });
      break;
    }
  })
  .prefault({});

const labels = z
  .union(
    [
      fileName('a labels file (.txt, .json or .pbtxt)'),
      z.array(z.string()).max(MAX_CLASS_ID + 1),
      z.record(
        z
          .string()
          .regex(/^\d+$/, 'expected a class id')
          .refine((k) => Number(k) <= MAX_CLASS_ID, `class ids go from 0 to at most ${MAX_CLASS_ID}`),
        z.string(),
      ),
    ],
    { error: 'expected a labels file name beside model.json, a list of labels ["cat", "dog"] or {"id": "name"}' },
  )
  .optional()
  .describe('A labels file beside model.json, a list by class id, or {"id": "name"}; default labels.txt/.json/.pbtxt if present.');

/** Bounds on metadata (free-form JSON that every `models { metadata }` answer carries): model.json and updateModel alike. */
export const MAX_METADATA_BYTES = 64 * 1024;
export const MAX_METADATA_DEPTH = 16;

/** Depth of a JSON value, iteratively (a hostile value 20,000 deep must not overflow the stack); stops past `limit`. */
export function depthOf(value: unknown, limit: number): number {
  let max = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (d > max) max = d;
    if (max > limit) return max;
    if (v !== null && typeof v === 'object') for (const child of Object.values(v)) stack.push([child, d + 1]);
  }
  return max;
}

const metadata = z
  .record(z.string(), z.unknown())
  .superRefine((m, ctx) => {
    // a model.json (or loadModel's config) 20,000 levels deep loaded, and then every `models { metadata }` answer failed
    if (depthOf(m, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH)
      ctx.addIssue({ code: 'custom', message: `nested deeper than ${MAX_METADATA_DEPTH} levels` });
    else if (Buffer.byteLength(JSON.stringify(m)) > MAX_METADATA_BYTES)
      ctx.addIssue({ code: 'custom', message: `more than ${MAX_METADATA_BYTES} bytes of JSON` });
  })
  .default({})
  .describe('Free-form; editable at run time with updateModel (JSON Merge Patch).');

const common = {
  $schema: z.string().optional().describe('The JSON Schema of this file (model.schema.json), for editors.'),
  description: z.string().default(''),
  metadata,
  labels,
  versionPolicy,
  batching,
  instances: z
    .int()
    .min(1)
    .max(64)
    .optional()
    .describe(
      'Engine instances of each version: copies of the model that compute batches side by side (Triton instance_group count); default ENGINE_INSTANCES. Each holds the model in memory.',
    ),
  preprocessing,
};

const classificationPost = z
  .strictObject({ output: z.string().optional(), activation: activation.default('softmax') })
  .prefault({})
  .describe('Outputs [N,C] or [N,C,1,1].');

const segmentationPost = z
  .strictObject({
    output: z.string().optional(),
    activation: activation.default('none'),
    threshold: z.number().min(0).max(1).default(0.5).describe('One channel: foreground at or above this (after activation).'),
    layout: layout.optional().describe("The output's layout; default the input's."),
    unclipRatio: z
      .number()
      .min(0)
      .max(10)
      .default(0)
      .describe(
        "Each region's box grown on every side by its area x unclipRatio / its perimeter, as DB text detectors unclip their shrunk kernels (PaddleOCR: 1.5); 0: the region's own box.",
      ),
    alignCorners: z
      .boolean()
      .default(false)
      .describe(
        "The output's cells are centred on the input's pixels 0, s, 2s, ... and the last (TensorFlow's align_corners: BodyPix, DeepLab fed k x s + 1 pixels); false: each cell covers s x s pixels from the corner.",
      ),
  })
  .prefault({});

const detectionCommon = {
  minConfidence: z.number().min(0).max(1).default(0.5),
  iouThreshold: z.number().min(0).max(1).default(0.45),
  maxDetections: z.int().min(1).max(10_000).default(100),
};
// only the formats whose decoders apply it (yolox and anchors number their classes from 0 themselves: there it was
// accepted and did nothing)
const labelOffset = z.int().default(0).describe('Class id = model value - labelOffset (1 for 1-based label maps).');
const anchorLayer = z.strictObject({
  scores: z.string(),
  boxes: z.string(),
  grid: z.int().min(1),
  anchorsPerCell: z.int().min(1).default(1),
});
const detectionPost = z.discriminatedUnion(
  'format',
  [
    z
      .strictObject({
        format: z.literal('boxes_scores').describe('boxes [N,K,4] x1y1x2y2 normalized, scores [N,K,C]'),
        ...detectionCommon,
        labelOffset,
        boxes: z.string().optional(),
        scores: z.string().optional(),
        backgroundClass: z.int().min(0).optional(),
      })
      .refine((d) => !d.boxes === !d.scores, { path: ['boxes'], message: 'give both boxes and scores output names, or neither' }),
    z.strictObject({
      format: z.literal('ssd').describe('DetectionOutput [1,1,K,7]'),
      ...detectionCommon,
      labelOffset,
      output: z.string().optional(),
    }),
    z.strictObject({
      format: z.literal('tf').describe('TensorFlow object detection API outputs'),
      ...detectionCommon,
      labelOffset,
      boxes: z.string().optional(),
      scores: z.string().optional(),
      classes: z.string().optional(),
      numDetections: z.string().optional(),
    }),
    z.strictObject({
      format: z.literal('yolox').describe('raw YOLOX grid predictions [N,A,5+C]'),
      ...detectionCommon,
      output: z.string().optional(),
      strides: z.array(z.int().min(1)).min(1).default([8, 16, 32]),
      activation: activation.default('none'),
    }),
    z.strictObject({
      format: z.literal('anchors').describe('scores and center-size regressors against unit anchors on grids (MediaPipe SSD)'),
      ...detectionCommon,
      layers: z.array(anchorLayer).min(1),
      boxScale: z.number().positive().optional(),
      activation: activation.default('sigmoid'),
    }),
  ],
  {
    error: (iss) =>
      iss.input === undefined
        ? 'a detection model needs postprocessing with its format: boxes_scores, ssd, tf, yolox or anchors'
        : undefined,
  },
);

export const modelConfigSchema = z.discriminatedUnion('task', [
  z.strictObject({ task: z.literal('classification'), ...common, postprocessing: classificationPost }),
  z.strictObject({ task: z.literal('detection'), ...common, postprocessing: detectionPost }),
  z.strictObject({ task: z.literal('segmentation'), ...common, postprocessing: segmentationPost }),
  z.strictObject({ task: z.literal('raw'), ...common, postprocessing: z.strictObject({}).optional() }),
]);

export type ModelConfig = z.output<typeof modelConfigSchema>;
export type Task = ModelConfig['task'];
export type VersionPolicy = ModelConfig['versionPolicy'];
export type BatchingConfig = ModelConfig['batching'];
export type PreprocessingConfig = ModelConfig['preprocessing'];
export type ResizeType = PreprocessingConfig['resizeType'];
export type Activation = z.output<typeof activation>;
export type ClassificationConfig = z.output<typeof classificationPost>;
export type SegmentationConfig = z.output<typeof segmentationPost>;
export type DetectionConfig = z.output<typeof detectionPost>;
export type DetectionFormat = DetectionConfig['format'];
export type AnchorLayer = z.output<typeof anchorLayer>;
/** The postprocessing of a task. */
export type PostprocessingOf<T extends Task> = Extract<ModelConfig, { task: T }>['postprocessing'];

export const TASKS = ['classification', 'detection', 'segmentation', 'raw'] as const satisfies readonly Task[];

/** model.json's JSON Schema (draft 2020-12), as published in model.schema.json. */
export function modelJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(modelConfigSchema, { io: 'input', target: 'draft-2020-12', unrepresentable: 'any' });
  // "task" defaults to raw (parseModelConfig): a file without it is the raw branch's, as the server reads it, not an
  // error in editors
  for (const branch of (schema.oneOf ?? []) as { properties?: { task?: { const?: unknown } }; required?: string[] }[])
    if (branch.properties?.task?.const === 'raw' && branch.required) {
      branch.required = branch.required.filter((k) => k !== 'task');
      if (branch.required.length === 0) delete branch.required;
    }
  return {
    ...schema,
    $id: 'https://github.com/graphql-inference-gateway/model.schema.json',
    title: 'model.json of the GraphQL inference gateway',
  };
}

/** The postprocessing of a model of that task (a config of another task is a bug of the caller). */
export function postprocessingOf<T extends Task>(config: ModelConfig, task: T): PostprocessingOf<T> {
  if (config.task !== task) throw new Error(`bug: a ${config.task} configuration asked for ${task} postprocessing`);
  return config.postprocessing as PostprocessingOf<T>;
}

// ---- errors that name the field ----

/** A branch of a union and the value that chose it: the `const` property `name` of the object at `at`. */
interface Choice {
  at: readonly PropertyKey[];
  name: string;
  value: unknown;
}

/**
 * The JSON-Schema objects found at `path` (one per branch of the unions on the way), each with the choices that led to
 * it: the `const` properties of the branches taken (`task: "detection"` at the root, `format: "yolox"` below it).
 */
function objectsAt(schema: unknown, path: readonly PropertyKey[]): { props: Record<string, unknown>; chosenBy: Choice[] }[] {
  const found: { props: Record<string, unknown>; chosenBy: Choice[] }[] = [];
  const walk = (node: unknown, rest: readonly PropertyKey[], chosenBy: Choice[]) => {
    if (!node || typeof node !== 'object') return;
    const n = node as Record<string, unknown>;
    const props = n.properties as Record<string, unknown> | undefined;
    const at = path.slice(0, path.length - rest.length);
    const by = [
      ...chosenBy,
      ...Object.entries(props ?? {})
        .filter(([, v]) => v && typeof v === 'object' && 'const' in v)
        .map(([name, v]) => ({ at, name, value: (v as { const: unknown }).const })),
    ];
    for (const k of ['anyOf', 'oneOf', 'allOf'] as const) if (Array.isArray(n[k])) for (const b of n[k] as unknown[]) walk(b, rest, by);
    if (rest.length === 0) {
      if (props) found.push({ props, chosenBy: by });
      return;
    }
    const [head, ...tail] = rest;
    if (typeof head === 'number') walk(n.items ?? n.prefixItems, tail, by);
    else if (props && typeof head === 'string' && head in props) walk(props[head], tail, by);
    else if (n.additionalProperties && typeof n.additionalProperties === 'object') walk(n.additionalProperties, tail, by);
  };
  walk(schema, path, []);
  return found;
}

/** The keys a JSON-Schema object at `path` may have (across the branches of unions). */
const keysAt = (schema: unknown, path: readonly PropertyKey[]) => [
  ...new Set(objectsAt(schema, path).flatMap((o) => Object.keys(o.props))),
];

let jsonSchema: Record<string, unknown> | null = null;

/** What to say of an unknown key: the field it is likely a misspelling of, or, for a field of another branch, whose. */
function unknownField(key: string, path: readonly PropertyKey[], input: unknown): string {
  jsonSchema ??= modelJsonSchema();
  const owners = objectsAt(jsonSchema, path).filter((o) => Object.hasOwn(o.props, key));
  // the key's own value chooses nothing here (versionPolicy's "all": true is a const of its branch)
  const own = (c: Choice) => c.name === key && c.at.length === path.length && c.at.every((p, i) => p === path[i]);
  const differing = (o: (typeof owners)[number]) =>
    o.chosenBy.filter((c) => {
      if (own(c)) return false;
      const here = valueAt(input, [...c.at, c.name]);
      return here !== undefined && here !== c.value;
    });
  if (owners.length && !owners.some((o) => differing(o).length === 0)) {
    // a field of another task or format (a yolox config switched to ssd): the choice this file makes otherwise, in the
    // branch that differs least from the file
    const nearest = owners.reduce((a, b) => (differing(b).length < differing(a).length ? b : a));
    const differs = differing(nearest)[0];
    const here = valueAt(input, [...differs.at, differs.name]);
    const field = fieldPath([...differs.at, differs.name]);
    const same = (c: Choice) => c.name === differs.name && c.at.join('.') === differs.at.join('.');
    const theirs = [...new Set(owners.flatMap((o) => o.chosenBy.filter(same).map((c) => c.value)))].map((v) => JSON.stringify(v));
    return `not a field of ${field} ${JSON.stringify(here)}: it belongs to ${field} ${theirs.join(' or ')}; remove it, or set ${field} to ${theirs[0]}`;
  }
  if (owners.length) {
    // a field of this very object, refused beside another it excludes (versionPolicy: one of latest, all, specific)
    const beside = Object.keys((valueAt(input, path) as object | undefined) ?? {}).filter((k) => k !== key);
    return `not expected beside ${beside.map((k) => JSON.stringify(k)).join(', ')}; give one of them`;
  }
  const candidates = keysAt(jsonSchema, path);
  const best = closest(key, candidates);
  if (best) return `unknown field; did you mean ${JSON.stringify(best)}?`;
  return `unknown field${candidates.length ? `; expected one of ${candidates.join(', ')}` : ''}`;
}

const fieldPath = (path: readonly PropertyKey[]) =>
  path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('') || '(root)';

/** "; got <the value>" for a message, shortened. */
function got(value: unknown): string {
  if (value === undefined) return '';
  const text = typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value));
  return `; got ${text.length > 60 ? `${text.slice(0, 57)}...` : text}`;
}

function describeIssue(issue: z.core.$ZodIssue, input: unknown): { field: string; message: string } {
  const path = issue.path;
  switch (issue.code) {
    case 'unrecognized_keys': {
      const key = issue.keys[0];
      return { field: fieldPath([...path, key]), message: unknownField(key, path, input) };
    }
    case 'invalid_union':
      if ('discriminator' in issue && typeof issue.discriminator === 'string') {
        const at = path.at(-1) === issue.discriminator ? path : [...path, issue.discriminator];
        const value = valueAt(input, at);
        const options = 'options' in issue && Array.isArray(issue.options) ? `; expected one of ${issue.options.join(', ')}` : '';
        return {
          field: fieldPath(at),
          message: `${value === undefined ? 'required' : `unknown value ${JSON.stringify(value)}`}${options}`,
        };
      }
      {
        // the one branch of the value's own type (labels: a list, a map) says what is wrong in it; with none, what the
        // union takes and what it got
        const fitting = issue.errors.filter((errs) => !errs.every((e) => e.code === 'invalid_type' && e.path.length === 0));
        if (fitting.length === 1) {
          const inner = fitting[0][0];
          return describeIssue({ ...inner, path: [...path, ...inner.path] } as z.core.$ZodIssue, input);
        }
        return { field: fieldPath(path), message: `${issue.message}${fitting.length === 0 ? got(valueAt(input, path)) : ''}` };
      }
    case 'invalid_key':
      // a key of a map (labels: {"id": "name"}) that the map does not take: why, and that it is the key
      return {
        field: fieldPath(path),
        message: `${issue.issues[0]?.message ?? issue.message} (the key ${JSON.stringify(String(path.at(-1)))})`,
      };
    case 'invalid_value':
      return {
        field: fieldPath(path),
        message: `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}${got(valueAt(input, path))}`,
      };
    case 'invalid_type': {
      if (issue.message && !issue.message.startsWith('Invalid input')) return { field: fieldPath(path), message: issue.message };
      const value = valueAt(input, path);
      // JSON.parse reads a number past a double (1e400) as Infinity, which JSON.stringify writes null
      if (typeof value === 'number' && !Number.isFinite(value))
        return { field: fieldPath(path), message: `the number is out of range (JSON text read as ${value}): write one within ±1.7e308` };
      return {
        field: fieldPath(path),
        message: value === undefined ? `required (${issue.expected})` : `expected ${issue.expected}${got(value)}`,
      };
    }
    case 'too_small':
    case 'too_big': {
      const bound = issue.code === 'too_small' ? issue.minimum : issue.maximum;
      const op = issue.code === 'too_small' ? (issue.inclusive === false ? '>' : '>=') : issue.inclusive === false ? '<' : '<=';
      if (issue.origin === 'array' || issue.origin === 'string')
        return {
          field: fieldPath(path),
          message: `${issue.code === 'too_small' ? 'at least' : 'at most'} ${bound} ${issue.origin === 'array' ? 'items' : 'characters'}`,
        };
      return { field: fieldPath(path), message: `must be ${op} ${bound}, got ${JSON.stringify(valueAt(input, path))}` };
    }
    default:
      return { field: fieldPath(path), message: issue.message };
  }
}

/** The value of the (raw) input at a path, or undefined. */
function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const k of path) v = v && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k] : undefined;
  return v;
}

/** Validate model.json content (`task` defaults to raw). Throws INVALID_MODEL_CONFIG naming the field(s). */
export function parseModelConfig(raw: unknown, source = 'model.json'): ModelConfig {
  const input = raw && typeof raw === 'object' && !Array.isArray(raw) && !('task' in raw) ? { task: 'raw', ...raw } : raw;
  const r = modelConfigSchema.safeParse(input ?? {});
  if (r.success) return r.data;
  const described = r.error.issues.slice(0, 5).map((issue) => describeIssue(issue, input));
  const message = described.map((d) => `${d.field}: ${d.message}`).join('; ');
  throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${source}: ${message}`, { field: described[0].field });
}

/** JSON text of a model.json; bad JSON is an INVALID_MODEL_CONFIG error that says where (line and column). */
export function modelJsonOf(file: string, source = 'model.json'): unknown {
  const text = withoutBom(file);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${source}: ${notValidJsonFile(text, e)}`);
  }
}

/** Parse model.json text; bad JSON is an INVALID_MODEL_CONFIG error too. */
export function parseModelConfigText(text: string, source = 'model.json'): ModelConfig {
  return parseModelConfig(modelJsonOf(text, source), source);
}
