/**
 * A minimal protobuf wire-format reader and writer: enough to walk and rewrite ONNX ModelProto messages
 * (the batch-dimension rewrite) and to build tiny models for tests. No schema, no dependencies.
 */
export interface Field {
  no: number;
  wire: number;
  start: number;
  end: number;
  valueStart: number;
}

export function readVarint(buf: Uint8Array, pos: number): [number, number] {
  let result = 0;
  let shift = 0;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    result += (b & 0x7f) * 2 ** shift;
    if (b < 0x80) return [result, pos];
    shift += 7;
    if (shift > 63) throw new Error('varint too long');
  }
}

export function fields(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    const [key, p1] = readVarint(buf, pos);
    const no = Math.floor(key / 8);
    const wire = key & 7;
    pos = p1;
    let valueStart = pos;
    if (wire === 0) [, pos] = readVarint(buf, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const [len, p2] = readVarint(buf, pos);
      valueStart = p2;
      pos = p2 + len;
    } else throw new Error(`unsupported wire type ${wire}`);
    if (pos > buf.length) throw new Error('truncated field');
    out.push({ no, wire, start, end: pos, valueStart });
  }
  return out;
}

export function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 128) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

export function lengthDelimited(no: number, body: Uint8Array): Uint8Array {
  const head = [...varint(no * 8 + 2), ...varint(body.length)];
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

export function concat(parts: (Uint8Array | number[])[]): Uint8Array {
  const arrs = parts.map((p) => (p instanceof Uint8Array ? p : Uint8Array.from(p)));
  const out = new Uint8Array(arrs.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of arrs) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A varint field (wire type 0). */
export function varintField(no: number, v: number): Uint8Array {
  return Uint8Array.from([...varint(no * 8), ...varint(v)]);
}

/**
 * Bytes as a list of pieces, for rewriting a large model without copying it: a rewrite keeps the fields it does not
 * change as views of the original (a 300 MB model is almost all initializers, left as they are) and adds small new
 * pieces; nothing is copied until `materialize` writes the whole once, in slices, into shared memory.
 */
export class Rope {
  readonly parts: Uint8Array[] = [];
  length = 0;
  constructor(pieces: readonly (Uint8Array | Rope | number[])[] = []) {
    for (const p of pieces) this.push(p);
  }
  push(p: Uint8Array | Rope | number[]): void {
    if (p instanceof Rope) {
      for (const q of p.parts) this.push(q);
      return;
    }
    const bytes = p instanceof Uint8Array ? p : Uint8Array.from(p);
    if (bytes.length === 0) return;
    this.parts.push(bytes);
    this.length += bytes.length;
  }
}

/** A length-delimited field whose body is a rope: its head, then the body's pieces (not copied). */
export function delimited(no: number, body: Uint8Array | Rope): Rope {
  return new Rope([[...varint(no * 8 + 2), ...varint(body.length)], body]);
}

/**
 * The rope written out once into a SharedArrayBuffer: a worker it is posted to shares it instead of receiving a copy
 * made by structured clone on this thread. Written in slices of `sliceBytes` with a turn of the event loop between
 * them, so that a large model (its first write touches every page: ~0.8 ms per MB here) never holds the loop for
 * more than a few milliseconds.
 */
export async function materialize(rope: Rope, sliceBytes = 8 * 1024 * 1024): Promise<Uint8Array> {
  const out = new Uint8Array(new SharedArrayBuffer(rope.length));
  let at = 0;
  let sinceYield = 0;
  for (const part of rope.parts) {
    for (let o = 0; o < part.length;) {
      const n = Math.min(part.length - o, sliceBytes - sinceYield);
      out.set(part.subarray(o, o + n), at);
      at += n;
      o += n;
      sinceYield += n;
      if (sinceYield >= sliceBytes) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        sinceYield = 0;
      }
    }
  }
  return out;
}
