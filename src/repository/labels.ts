import { ErrorCode, GatewayError } from '../errors.ts';
import { notValidJsonFile, withoutBom } from '../json-text.ts';

/** Class id -> label. Sparse maps (pbtxt ids, JSON objects) keep their ids. */
export type Labels = ReadonlyMap<number, string>;

/** The largest class id a labels map names (-1 for none); not Math.max(...ids): a million arguments overflow the stack. */
export function largestId(labels: Labels): number {
  let max = -1;
  for (const id of labels.keys()) if (id > max) max = id;
  return max;
}

const invalid = (source: string, msg: string) => new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${source}: ${msg}`, { field: 'labels' });

export function labelsFromList(list: readonly string[], source = 'labels'): Labels {
  checkId(list.length - 1, source);
  return new Map(list.map((l, i) => [i, l]));
}

/** The largest class id a labels map may name: clients read labels as a list up to the largest id. */
export const MAX_CLASS_ID = 999_999;

const checkId = (id: number, source: string) => {
  if (id > MAX_CLASS_ID) throw invalid(source, `class id ${id} is too large: ids go from 0 to at most ${MAX_CLASS_ID}`);
};

export function labelsFromObject(o: Record<string, unknown>, source: string): Labels {
  const m = new Map<number, string>();
  for (const [k, v] of Object.entries(o)) {
    if (!/^\d+$/.test(k) || typeof v !== 'string') throw invalid(source, `expected "id": "name" pairs, got ${JSON.stringify(k)}`);
    checkId(Number(k), source);
    m.set(Number(k), v);
  }
  return m;
}

/** One label per line; blank trailing lines ignored. A line "id name" is NOT split: names may contain spaces. */
export function parseLabelsTxt(text: string): Labels {
  const lines = text.replace(/\r/g, '').split('\n');
  while (lines.length && lines[lines.length - 1].trim() === '') lines.pop();
  return labelsFromList(lines.map((l) => l.trim()));
}

type PbValue = string | number | PbMessage;
interface PbMessage {
  fields: [string, PbValue][];
}

/**
 * A reader for the protobuf text format, enough for label maps: fields `name: value` or `name { ... }` / `name < ... >`,
 * strings in single or double quotes with escapes, numbers and enum words, `#` comments, optional `,` / `;`.
 */
function parseTextProto(text: string, source: string): PbMessage {
  let i = 0;
  const fail = (msg: string): never => {
    throw invalid(source, `${msg} (at offset ${i})`);
  };
  const skip = () => {
    for (;;) {
      while (i < text.length && /[\s,;]/.test(text[i])) i++;
      if (text[i] !== '#') return;
      while (i < text.length && text[i] !== '\n') i++;
    }
  };
  const ident = (): string => {
    const m = /^[A-Za-z_][\w.]*/.exec(text.slice(i, i + 256));
    if (!m) fail(`expected a field name, found ${JSON.stringify(text.slice(i, i + 10))}`);
    i += m![0].length;
    return m![0];
  };
  const string = (): string => {
    const quote = text[i++];
    let out = '';
    while (i < text.length && text[i] !== quote) {
      if (text[i] === '\\') {
        const c = text[++i];
        out += c === 'n' ? '\n' : c === 't' ? '\t' : c;
        i++;
      } else out += text[i++];
    }
    if (i >= text.length) fail('unterminated string');
    i++;
    return out;
  };
  const message = (close: string | null): PbMessage => {
    const fields: [string, PbValue][] = [];
    for (;;) {
      skip();
      if (i >= text.length) {
        if (close) fail(`missing ${close}`);
        return { fields };
      }
      if (text[i] === close) {
        i++;
        return { fields };
      }
      const name = ident();
      skip();
      if (text[i] === ':') {
        i++;
        skip();
      }
      const c = text[i];
      if (c === '{' || c === '<') {
        i++;
        fields.push([name, message(c === '{' ? '}' : '>')]);
      } else if (c === '"' || c === "'") {
        let s = string();
        skip();
        while (text[i] === '"' || text[i] === "'") s += string(); // adjacent strings concatenate
        fields.push([name, s]);
      } else {
        const m = /^[-+\w.]+/.exec(text.slice(i, i + 64));
        if (!m) fail(`expected a value for ${name}`);
        i += m![0].length;
        fields.push([name, /^[-+]?\d+(\.\d*)?([eE][-+]?\d+)?$/.test(m![0]) ? Number(m![0]) : m![0]]);
      }
    }
  };
  return message(null);
}

/**
 * TensorFlow object-detection label map: `item { id: 1 name: "/m/01g317" display_name: "person" }`. The label is
 * display_name, else name; other fields (keypoints, frequency, ...) are ignored.
 */
export function parseLabelsPbtxt(text: string, source = 'labels.pbtxt'): Labels {
  const m = new Map<number, string>();
  for (const [field, item] of parseTextProto(text, source).fields) {
    if (field !== 'item' || typeof item !== 'object') continue;
    const get = (name: string) => item.fields.find(([f]) => f === name)?.[1];
    const id = get('id');
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0)
      throw invalid(source, `an item has no id (or a bad one): ${JSON.stringify(item.fields.slice(0, 3))}`);
    checkId(id, source);
    const label = get('display_name') ?? get('name');
    if (typeof label !== 'string') throw invalid(source, `item ${id} has neither display_name nor name`);
    m.set(id, label);
  }
  if (m.size === 0 && text.replace(/#.*$/gm, '').trim() !== '') throw invalid(source, 'no `item { id name }` entries found');
  return m;
}

export function parseLabelsJson(text: string, source = 'labels.json'): Labels {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw invalid(source, notValidJsonFile(text, e));
  }
  if (Array.isArray(v)) {
    if (v.some((x) => typeof x !== 'string')) throw invalid(source, 'expected an array of strings');
    return labelsFromList(v as string[]);
  }
  if (v && typeof v === 'object') return labelsFromObject(v as Record<string, unknown>, source);
  throw invalid(source, 'expected an array or an object');
}

/** Parse a labels file by its extension. */
export function parseLabelsFile(fileName: string, file: string): Labels {
  const text = withoutBom(file);
  // by the extension whatever its case: Labels.JSON read one label per line gave every class a wrong label, no error
  const ext = fileName.toLowerCase();
  if (ext.endsWith('.pbtxt')) return parseLabelsPbtxt(text, fileName);
  if (ext.endsWith('.json')) return parseLabelsJson(text, fileName);
  return parseLabelsTxt(text);
}

/** Parse a little-endian float32/float64 .npy array (the mean image format of Caffe-era servers). */
export function parseNpy(bytes: Uint8Array, source = 'mean.npy'): { shape: number[]; data: Float32Array } {
  const bad = (m: string) => new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${source}: ${m}`, { field: 'preprocessing.meanFile' });
  if (bytes.length < 10 || bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== 'NUMPY') throw bad('not a .npy file');
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  if (start + headerLen > bytes.length) throw bad('truncated header');
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*True/.test(header);
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || shapeText === undefined) throw bad('unreadable header');
  if (fortran) throw bad('fortran order is not supported');
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw bad(`bad shape (${shapeText})`);
  const size = descr === '<f4' ? 4 : descr === '<f8' ? 8 : 0;
  if (!size) throw bad(`dtype ${descr} is not supported (use <f4 or <f8)`);
  const n = shape.reduce((a, b) => a * b, 1);
  const body = bytes.length - (start + headerLen);
  // check the length the header claims against the bytes there are before allocating anything
  if (body < n * size) throw bad(`truncated data: the header claims ${n} values, the file holds ${Math.floor(body / size)}`);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++)
    data[i] = size === 4 ? view.getFloat32(start + headerLen + i * 4, true) : view.getFloat64(start + headerLen + i * 8, true);
  return { shape, data };
}
