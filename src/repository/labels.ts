import { ErrorCode, GatewayError } from '../errors.ts';

/** Class id -> label. Sparse maps (pbtxt ids, JSON objects) keep their ids. */
export type Labels = ReadonlyMap<number, string>;

const invalid = (source: string, msg: string) => new GatewayError(ErrorCode.INVALID_MODEL_CONFIG, `${source}: ${msg}`, { field: 'labels' });

export function labelsFromList(list: readonly string[]): Labels {
  return new Map(list.map((l, i) => [i, l]));
}

export function labelsFromObject(o: Record<string, unknown>, source: string): Labels {
  const m = new Map<number, string>();
  for (const [k, v] of Object.entries(o)) {
    if (!/^\d+$/.test(k) || typeof v !== 'string') throw invalid(source, `expected "id": "name" pairs, got ${JSON.stringify(k)}`);
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

/** TensorFlow object-detection label map: `item { id: 1 name: "/m/01g317" display_name: "person" }`. */
export function parseLabelsPbtxt(text: string, source = 'labels.pbtxt'): Labels {
  const m = new Map<number, string>();
  const itemRe = /item\s*\{([^}]*)\}/g;
  let match: RegExpExecArray | null;
  while ((match = itemRe.exec(text))) {
    const body = match[1];
    const id = /\bid\s*:\s*(\d+)/.exec(body);
    const display = /\bdisplay_name\s*:\s*"((?:[^"\\]|\\.)*)"/.exec(body);
    const name = /\bname\s*:\s*"((?:[^"\\]|\\.)*)"/.exec(body);
    if (!id) throw invalid(source, `an item has no id: ${body.trim().slice(0, 80)}`);
    const label = display?.[1] ?? name?.[1];
    if (label === undefined) throw invalid(source, `item ${id[1]} has neither display_name nor name`);
    m.set(Number(id[1]), label);
  }
  if (m.size === 0 && text.trim() !== '') throw invalid(source, 'no `item { id name }` entries found');
  return m;
}

export function parseLabelsJson(text: string, source = 'labels.json'): Labels {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw invalid(source, `not valid JSON (${(e as Error).message})`);
  }
  if (Array.isArray(v)) {
    if (v.some((x) => typeof x !== 'string')) throw invalid(source, 'expected an array of strings');
    return labelsFromList(v as string[]);
  }
  if (v && typeof v === 'object') return labelsFromObject(v as Record<string, unknown>, source);
  throw invalid(source, 'expected an array or an object');
}

/** Parse a labels file by its extension. */
export function parseLabelsFile(fileName: string, text: string): Labels {
  if (fileName.endsWith('.pbtxt')) return parseLabelsPbtxt(text, fileName);
  if (fileName.endsWith('.json')) return parseLabelsJson(text, fileName);
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
  const shape = shapeText.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const body = bytes.subarray(start + headerLen);
  const data = new Float32Array(n);
  if (descr === '<f4') {
    if (body.length < n * 4) throw bad('truncated data');
    for (let i = 0; i < n; i++) data[i] = view.getFloat32(start + headerLen + i * 4, true);
  } else if (descr === '<f8') {
    if (body.length < n * 8) throw bad('truncated data');
    for (let i = 0; i < n; i++) data[i] = view.getFloat64(start + headerLen + i * 8, true);
  } else throw bad(`dtype ${descr} is not supported (use <f4 or <f8)`);
  return { shape, data };
}
