/**
 * How many elements a request (by default a ModelInferRequest; REQUESTS has every method's) holds, read off the wire before @grpc/proto-loader (protobufjs) decodes it:
 * protobufjs builds a JavaScript value for each one on the event loop (a typed value, an input, a shape dimension, a
 * parameter, a name: 8 MB of fp32_contents took 0.2 s here, 1M empty inputs in 2 MB took 1.1 s), while raw contents
 * are one buffer each. One pass over the message and everything in it, nothing allocated, stopped once past `max`.
 *
 * Returns the count (up to `max` + 1), or null when the message is not one protobufjs would read as this server
 * counts it: a known field with another wire type (protobufjs reads a message field's bytes whatever its wire type
 * says, so `inputs` sent as a number hid a million shape values), a group, a truncated value. Such a message is refused.
 */
export function messageElements(buf: Uint8Array, max: number, schema: Schema = REQUEST): number | null {
  const scan = new Scan(buf, max);
  try {
    scan.message(0, buf.length, schema);
    return scan.count;
  } catch (e) {
    if (e === PAST) return scan.count;
    return null;
  }
}

/**
 * What a field holds, for the fields of open_inference_grpc.proto: a message (read into), bytes or a string, one
 * varint, one fixed 64-bit value, or repeated scalars (packed, or one by one).
 */
export type Kind = Schema | 'bytes' | 'varint' | 'fixed64' | 'varints' | 'fixed32s' | 'fixed64s';
export interface Schema {
  [field: number]: Kind;
}
// InferParameter: bool, int64, string, double, uint64
const PARAMETER: Schema = { 1: 'varint', 2: 'varint', 3: 'bytes', 4: 'fixed64', 5: 'varint' };
// a map<string, InferParameter> entry
const PARAMETERS: Schema = { 1: 'bytes', 2: PARAMETER };
const CONTENTS: Schema = { 1: 'varints', 2: 'varints', 3: 'varints', 4: 'varints', 5: 'varints', 6: 'fixed32s', 7: 'fixed64s', 8: 'bytes' };
const INPUT: Schema = { 1: 'bytes', 2: 'bytes', 3: 'varints', 4: PARAMETERS, 5: CONTENTS };
const OUTPUT: Schema = { 1: 'bytes', 2: PARAMETERS };
const REQUEST: Schema = { 1: 'bytes', 2: 'bytes', 3: 'bytes', 4: PARAMETERS, 5: INPUT, 6: OUTPUT, 7: 'bytes' };
// ModelRepositoryParameter: bool, int64, string, bytes; in a map<string, ModelRepositoryParameter>
const REPOSITORY_PARAMETERS: Schema = { 1: 'bytes', 2: { 1: 'varint', 2: 'varint', 3: 'bytes', 4: 'bytes' } };
const NAME_VERSION: Schema = { 1: 'bytes', 2: 'bytes' };

/** The request message of each method of GRPCInferenceService, as the scan reads it. */
export const REQUESTS: Record<string, Schema> = {
  ServerLive: {},
  ServerReady: {},
  ServerMetadata: {},
  ModelReady: NAME_VERSION,
  ModelMetadata: NAME_VERSION,
  ModelInfer: REQUEST,
  RepositoryIndex: { 1: 'bytes', 2: 'varint' },
  RepositoryModelLoad: { 1: 'bytes', 2: 'bytes', 3: REPOSITORY_PARAMETERS },
  RepositoryModelUnload: { 1: 'bytes', 2: 'bytes', 3: REPOSITORY_PARAMETERS },
};

/** The wire types a kind may come with (repeated scalars: one by one, or packed). */
function wireFits(kind: Kind, wire: number): boolean {
  if (typeof kind === 'object' || kind === 'bytes') return wire === 2;
  if (kind === 'varint') return wire === 0;
  if (kind === 'fixed64') return wire === 1;
  if (kind === 'varints') return wire === 0 || wire === 2;
  if (kind === 'fixed32s') return wire === 5 || wire === 2;
  return wire === 1 || wire === 2; // fixed64s
}

/** Thrown once the count is past the limit: the rest is not read. */
const PAST = Symbol('past the limit');

class Scan {
  count = 0;
  private pos = 0;
  constructor(
    private readonly buf: Uint8Array,
    private readonly max: number,
  ) {}

  private add(n: number): void {
    this.count += n;
    if (this.count > this.max) throw PAST;
  }

  private varint(end: number): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= end) throw new Error('truncated');
      const b = this.buf[this.pos++];
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
      scale *= 128;
    }
    throw new Error('varint too long');
  }

  /** Every field between start and end counts (each is a value protobufjs reads); packed values each count. */
  message(start: number, end: number, schema: Schema): void {
    this.pos = start;
    while (this.pos < end) {
      const key = this.varint(end);
      const field = Math.floor(key / 8);
      const wire = key % 8;
      const kind: Kind | undefined = schema[field];
      if (field === 0 || (kind !== undefined && !wireFits(kind, wire))) throw new Error(`field ${field}: wire type ${wire}`);
      this.add(1);
      if (wire === 0) this.varint(end);
      else if (wire === 1 || wire === 5) {
        this.pos += wire === 1 ? 8 : 4;
        if (this.pos > end) throw new Error('truncated');
      } else if (wire === 2) {
        const len = this.varint(end);
        const from = this.pos;
        const to = from + len;
        if (to > end) throw new Error('truncated');
        if (typeof kind === 'object') this.message(from, to, kind);
        else if (kind === 'varints') this.add(this.varintsIn(from, to));
        else if (kind === 'fixed32s' || kind === 'fixed64s') {
          const size = kind === 'fixed32s' ? 4 : 8;
          if ((to - from) % size !== 0) throw new Error('packed fixed values of a broken length');
          this.add((to - from) / size);
        }
        this.pos = to;
      } else throw new Error(`wire type ${wire}`); // groups (3, 4) and anything else
    }
  }

  /** Packed varints: one value per byte below 0x80 (the last byte of each). */
  private varintsIn(from: number, to: number): number {
    let n = 0;
    for (let i = from; i < to; i++) if (this.buf[i] < 0x80) n++;
    return n;
  }
}

/**
 * The messages of a gRPC stream, each behind a 5-byte prefix (a compressed flag, a 32-bit length), followed across
 * the stream's chunks without copying them: how many compressed messages end in each chunk (grpc-js inflates a
 * message once it has all come).
 */
export class MessageFrames {
  /** Bytes of the current message still to come. */
  private body = 0;
  /** Is the current message compressed? */
  private compressed = false;
  private readonly prefix = new Uint8Array(5);
  private have = 0;
  /** Were the messages that have ended compressed, in order (the first 16: a unary call reads one)? */
  private readonly ended: boolean[] = [];

  /** Was the next message to be read compressed (false when unknown)? */
  nextWasCompressed(): boolean {
    return this.ended.shift() ?? false;
  }

  private end(): number {
    if (this.ended.length < 16) this.ended.push(this.compressed);
    return this.compressed ? 1 : 0;
  }

  compressedIn(chunk: Uint8Array): number {
    let ended = 0;
    let i = 0;
    while (i < chunk.length) {
      if (this.body > 0) {
        const k = Math.min(this.body, chunk.length - i);
        this.body -= k;
        i += k;
        if (this.body === 0) ended += this.end();
        continue;
      }
      this.prefix[this.have++] = chunk[i++];
      if (this.have === 5) {
        this.compressed = this.prefix[0] === 1;
        this.body = ((this.prefix[1] << 24) >>> 0) + (this.prefix[2] << 16) + (this.prefix[3] << 8) + this.prefix[4];
        this.have = 0;
        if (this.body === 0) ended += this.end();
      }
    }
    return ended;
  }
}
