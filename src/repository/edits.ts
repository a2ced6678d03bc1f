import { readFile } from 'node:fs/promises';
import { withoutBom } from '../json-text.ts';
import path from 'node:path';
import { applyEdits, modify, type Edit } from 'jsonc-parser';
import { ErrorCode, GatewayError } from '../errors.ts';
import { MAX_METADATA_BYTES, MAX_METADATA_DEPTH, depthOf, parseModelConfigText } from './model-config.ts';
import type { Model } from './model.ts';
import { atomicWrite } from './store.ts';

/** Bounds on client-supplied JSON (metadata): checked before anything changes (model.json is held to them too). */
export { MAX_METADATA_BYTES, MAX_METADATA_DEPTH };

/** A JSON Merge Patch (RFC 7396): keys set, null deletes, objects merged key by key, anything else replaced. */
export type JsonMergePatch = Record<string, unknown>;

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** RFC 7396, section 2 (hand-written: the algorithm is ten lines and the spec's whole point). */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** Check a metadata patch: an object, at most MAX_METADATA_DEPTH deep and MAX_METADATA_BYTES as JSON. */
export function checkMetadataPatch(patch: unknown): asserts patch is JsonMergePatch {
  if (!isObject(patch))
    throw new GatewayError(ErrorCode.INVALID_INPUT, 'metadata must be a JSON object (a JSON Merge Patch: null deletes a key)');
  if (depthOf(patch, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH)
    throw new GatewayError(ErrorCode.INVALID_INPUT, `metadata is nested deeper than ${MAX_METADATA_DEPTH} levels`);
  const proto = protoKey(patch, 'metadata');
  if (proto)
    throw new GatewayError(
      ErrorCode.INVALID_INPUT,
      `${proto}: the key "__proto__" is not taken (JavaScript reads it as an object's prototype): name it otherwise`,
    );
  // what the gateway adds to the metadata it answers (Model.metadata): a value of the client's would be hidden behind it
  if (patch.dynamicBatch !== undefined && patch.dynamicBatch !== null)
    throw new GatewayError(
      ErrorCode.INVALID_INPUT,
      "metadata.dynamicBatch is the gateway's own (read-only: how it batches the model): name it otherwise",
    );
  const size = Buffer.byteLength(JSON.stringify(patch));
  if (size > MAX_METADATA_BYTES)
    throw new GatewayError(ErrorCode.INVALID_INPUT, `metadata is ${size} bytes of JSON; the limit is ${MAX_METADATA_BYTES}`);
}

/**
 * The path of the first "__proto__" key of a JSON value (an own key, as JSON.parse makes it), or null: merged, it set
 * the prototype of the metadata in memory, and model.json kept a key that no answer showed (every read drops it).
 * Walked without recursion (the value is bounded in depth and size before this).
 */
function protoKey(value: unknown, at: string): string | null {
  const stack: [unknown, string][] = [[value, at]];
  while (stack.length > 0) {
    const [v, where] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (!Array.isArray(v) && Object.hasOwn(v, '__proto__')) return `${where}.__proto__`;
    // (a key a line long at most: the path is said in the message)
    for (const [k, child] of Object.entries(v))
      stack.push([child, Array.isArray(v) ? `${where}[${k}]` : `${where}.${k.length > 60 ? `${k.slice(0, 60)}...` : k}`]);
  }
  return null;
}

const FORMAT = { insertSpaces: true, tabSize: 2, eol: '\n' };
/** A new top-level key goes after "task" (and "description"), where people look for it; the rest of the file stays. */
const topLevelInsertion = (properties: string[]) => Math.max(0, properties.indexOf('task') + 1, properties.indexOf('description') + 1);

/**
 * Past this many values changed, the value at `at` is written whole (formatted anew) instead of edited value by value:
 * each edit parses and rewrites the whole document (a patch of 5000 small keys, within MAX_METADATA_BYTES, took 27 s).
 */
const MAX_EDITS = 32;

/** The text edits that apply a merge patch at `at` of a JSON document whose current value there is `current`. */
function patchEdits(text: string, at: (string | number)[], current: unknown, patch: JsonMergePatch): Edit[] {
  const changes: [(string | number)[], unknown][] = [];
  const walk = (base: (string | number)[], cur: unknown, p: JsonMergePatch) => {
    for (const [k, v] of Object.entries(p)) {
      if (changes.length > MAX_EDITS) return;
      const here = isObject(cur) ? cur[k] : undefined;
      if (v === null) {
        if (here !== undefined) changes.push([[...base, k], undefined]);
      } else if (isObject(v) && isObject(here)) walk([...base, k], here, v);
      else changes.push([[...base, k], mergePatch(undefined, v)]);
    }
  };
  if (isObject(current)) walk(at, current, patch);
  if (!isObject(current) || changes.length > MAX_EDITS) changes.splice(0, changes.length, [at, mergePatch(current, patch)]);
  const options = { formattingOptions: FORMAT, getInsertionIndex: topLevelInsertion };
  let doc = text;
  for (const [p, value] of changes) doc = applyEdits(doc, modify(doc, p, value, options));
  return [{ offset: 0, length: text.length, content: doc }];
}

/**
 * Apply updateModel's changes: the new description and metadata, and, for a model with a model.json of the repository,
 * that file edited in place (only the changed values; the rest of the file and its formatting stay) and written
 * atomically, so memory changes only after the file is written.
 */
export async function editModelJson(
  model: Model,
  changes: { description?: string | null; metadata?: unknown },
): Promise<{ description: string; metadata: Record<string, unknown> }> {
  if (changes.metadata !== undefined && changes.metadata !== null) checkMetadataPatch(changes.metadata);
  const description = changes.description ?? model.config.description;
  const metadata = changes.metadata
    ? (mergePatch(model.config.metadata, changes.metadata) as Record<string, unknown>)
    : model.config.metadata;
  if (model.source !== 'repository' || model.file) return { description, metadata };
  const file = path.join(model.dir, 'model.json');
  let text = withoutBom(await readFile(file, 'utf8').catch(() => '{}\n'));
  const source = `${model.name}/model.json`;
  // the file as it is must load: its error says what is wrong as at load (line and column, a root that is no object)
  parseModelConfigText(text, source);
  const parsed = JSON.parse(text) as Record<string, unknown>;
  if (changes.description !== undefined && changes.description !== null) {
    text = applyEdits(
      text,
      modify(text, ['description'], description, { formattingOptions: FORMAT, getInsertionIndex: topLevelInsertion }),
    );
  }
  if (changes.metadata) text = applyEdits(text, patchEdits(text, ['metadata'], parsed.metadata, changes.metadata as JsonMergePatch));
  const written = parseModelConfigText(text, source); // never write a file that would not load
  await atomicWrite(file, text);
  // what the file now says: the edit applied to the file as it is, which may hold changes not read yet (an operator's)
  return { description: written.description, metadata: written.metadata };
}
