import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { fields } from './protobuf.ts';
import { isInside } from '../../paths.ts';

/**
 * ONNX external data: a tensor of the graph may keep its bytes in another file, named by a `location` relative to
 * the model file. Every location is found here (initializers, sparse initializers, tensors and subgraphs of node
 * attributes, functions), so that the engine only ever reads files inside the model's own version folder.
 */
const utf8 = new TextDecoder();

type Walk = (buf: Uint8Array, out: string[]) => void;

/** TensorProto: external_data (13) is a list of key/value entries; the one with key "location" names the file. */
const tensor: Walk = (buf, out) => {
  for (const f of fields(buf)) {
    if (f.no !== 13 || f.wire !== 2) continue;
    let key = '';
    let value = '';
    const entry = buf.subarray(f.valueStart, f.end);
    for (const e of fields(entry)) {
      if (e.wire !== 2) continue;
      const s = utf8.decode(entry.subarray(e.valueStart, e.end));
      if (e.no === 1) key = s;
      else if (e.no === 2) value = s;
    }
    if (key === 'location') out.push(value);
  }
};
/** SparseTensorProto: values (1) and indices (2) are tensors. */
const sparse: Walk = (buf, out) => {
  for (const f of fields(buf)) if ((f.no === 1 || f.no === 2) && f.wire === 2) tensor(buf.subarray(f.valueStart, f.end), out);
};
/** AttributeProto: t (5), g (6), tensors (10), graphs (11), sparse_tensor (22), sparse_tensors (23). */
const attribute: Walk = (buf, out) => {
  for (const f of fields(buf)) {
    if (f.wire !== 2) continue;
    const body = buf.subarray(f.valueStart, f.end);
    if (f.no === 5 || f.no === 10) tensor(body, out);
    else if (f.no === 6 || f.no === 11) graph(body, out);
    else if (f.no === 22 || f.no === 23) sparse(body, out);
  }
};
/** NodeProto: attribute (5). */
const node: Walk = (buf, out) => {
  for (const f of fields(buf)) if (f.no === 5 && f.wire === 2) attribute(buf.subarray(f.valueStart, f.end), out);
};
/** GraphProto: node (1), initializer (5), sparse_initializer (15). */
const graph: Walk = (buf, out) => {
  for (const f of fields(buf)) {
    if (f.wire !== 2) continue;
    const body = buf.subarray(f.valueStart, f.end);
    if (f.no === 1) node(body, out);
    else if (f.no === 5) tensor(body, out);
    else if (f.no === 15) sparse(body, out);
  }
};
/** FunctionProto: node (7). */
const fn: Walk = (buf, out) => {
  for (const f of fields(buf)) if (f.no === 7 && f.wire === 2) node(buf.subarray(f.valueStart, f.end), out);
};

/** The external-data locations a model refers to (empty for a self-contained model). Throws on a malformed file. */
export function externalDataLocations(model: Uint8Array): string[] {
  const out: string[] = [];
  for (const f of fields(model)) {
    if (f.wire !== 2) continue;
    if (f.no === 7) graph(model.subarray(f.valueStart, f.end), out);
    else if (f.no === 25) fn(model.subarray(f.valueStart, f.end), out);
  }
  return [...new Set(out)];
}

/**
 * Check that every location is a regular file inside `dir` (the version folder): no absolute paths, no `..`, no
 * symbolic link out of the folder, no device or other special file. The message names the location, never what the
 * server holds.
 */
export async function checkExternalData(locations: readonly string[], dir: string): Promise<void> {
  const root = await realpath(dir);
  for (const location of locations) {
    const refuse = (why: string) =>
      new Error(
        `external data ${JSON.stringify(location)} is refused: ${why}; external data files must sit beside the model file, in its version folder`,
      );
    if (location === '' || location.includes('\0') || path.isAbsolute(location) || /^[A-Za-z]:/.test(location))
      throw refuse('not a relative path');
    if (path.normalize(location).split(/[\\/]/).includes('..')) throw refuse('it leaves the version folder');
    let real: string;
    try {
      real = await realpath(path.join(root, location));
    } catch {
      throw refuse('no such file');
    }
    if (!isInside(real, root)) throw refuse('it leaves the version folder');
    if (!(await stat(real)).isFile()) throw refuse('not a regular file');
  }
}
