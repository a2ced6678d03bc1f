import { visit } from 'jsonc-parser';

/** Where a JSON text stops being JSON, and why, as an editor shows it. */
export interface JsonMistake {
  /** Characters before the mistake; null when it could not be told (below). */
  position: number | null;
  /** 1-based, as editors count. */
  line: number;
  column: number;
  /** JSON.parse's own words, without the text it quotes around the mistake (`Unexpected token ']'`). */
  reason: string;
}

/**
 * Texts past this size are not scanned a second time for a position JSON.parse did not give: the scan runs on the
 * event loop at about 40 ns a character (a mistake at the end of 64 KiB costs ~2.5 ms; of 10 MB, ~370 ms).
 */
const MAX_SCANNED = 64 * 1024;

/**
 * Where `text`, which JSON.parse refused with `error` (an Error, or what yoga keeps of one: `{ message }`), goes wrong.
 * JSON.parse says a position for most mistakes but not, on Node 20, for an unexpected token (a trailing comma in a
 * list, a bare word, NaN, a comment): there it is the first mistake jsonc-parser finds in strict mode (no comments,
 * no trailing commas), for texts up to MAX_SCANNED. Only on the error path.
 */
export function jsonMistake(text: string, error: unknown): JsonMistake {
  const message = String((error as { message?: unknown } | null)?.message ?? error);
  // JSON.parse's words end where it starts quoting the text (Node 20: Unexpected token 'x', ..."around it"... is not
  // valid JSON; whatwg-node adds the whole text so): nothing past that is read, a position in the text is not its
  const quoted = [', "', ', ..."'].map((q) => message.indexOf(q)).filter((i) => i >= 0);
  const words = quoted.length ? message.slice(0, Math.min(...quoted)) : message;
  const at = /at position (\d+)/.exec(words);
  let position: number | null = null;
  if (at) position = Number(at[1]);
  else if (/end of JSON input/.test(words)) position = text.length;
  else if (text.length <= MAX_SCANNED) position = firstMistake(text);
  // a comma before } or ] (editors and JavaScript allow it), which JSON.parse reports at the bracket: said at the comma
  let trailing = false;
  if (position !== null && (text[position] === '}' || text[position] === ']')) {
    let j = position - 1;
    while (j >= 0 && /\s/.test(text[j])) j--;
    // (only before the bracket that closes what is open there: `[1, 2,}` lacks a bracket, which removing the comma
    // would not mend; past MAX_SCANNED the text is not walked again)
    if (text[j] === ',' && (position > MAX_SCANNED || innermost(text, j) === (text[position] === '}' ? '{' : '[')))
      [position, trailing] = [j, true];
  }
  const before = position === null ? '' : text.slice(0, position);
  const lineStart = before.lastIndexOf('\n') + 1;
  const reason = trailing
    ? 'a trailing comma: JSON has none before } or ], remove it'
    : position === 0 && text.charCodeAt(0) === 0xfeff
      ? 'a byte order mark (U+FEFF) comes before the JSON' // JSON.parse names it as an invisible "Unexpected token"
      : position !== null && /^\/[/*]/.test(text.slice(position, position + 2))
        ? 'a comment: JSON has none, remove it' // JSONC, as editors allow and annotated examples have
        : at
          ? words.slice(0, at.index).replace(/ (in JSON )?$/, '')
          : words;
  return { position, line: before.split('\n').length, column: (position ?? 0) - lineStart + 1, reason };
}

/** The bracket ('{' or '[') open at `end` in `text` (strings skipped), or null. */
function innermost(text: string, end: number): string | null {
  const open: string[] = [];
  for (let i = 0, inString = false; i < end; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') open.push(c);
    else if (c === '}' || c === ']') open.pop();
  }
  return open.at(-1) ?? null;
}

/** The offset of the first mistake, the scan stopped there (a visitor's error ends it). */
function firstMistake(text: string): number | null {
  let found: number | null = null;
  try {
    visit(
      text,
      {
        onError: (_error, offset) => {
          found = offset;
          throw found;
        },
      },
      { disallowComments: true, allowTrailingComma: false },
    );
  } catch (e) {
    if (e !== found) throw e;
  }
  return found;
}

/** For a file an editor opens: `not valid JSON at line 3, column 51 (Unexpected token ']')`. */
export function notValidJsonFile(text: string, error: unknown): string {
  const m = jsonMistake(text, error);
  return `not valid JSON${m.position === null ? '' : ` at line ${m.line}, column ${m.column}`} (${m.reason})`;
}

/** For a request body or a parameter: `not valid JSON at position 65 (line 1, column 66): Unexpected token 'N'`. */
export function notValidJsonText(text: string, error: unknown): string {
  const m = jsonMistake(text, error);
  return `not valid JSON${m.position === null ? '' : ` at position ${m.position} (line ${m.line}, column ${m.column})`}: ${m.reason}`;
}

/**
 * A text file without the byte order mark some editors put first (Windows Notepad saves UTF-8 so): JSON.parse refuses
 * it as an invisible "Unexpected token", and a labels file would keep it in its first label. RFC 8259 lets a parser
 * ignore it.
 */
export function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * How many values a JSON text holds at most, counted before it is parsed (up to `max` + 1): its commas, plus one, and
 * its opening brackets (each a list or an object JSON.parse builds). A base64 string holds none of them. A native
 * search for each of three characters.
 */
export function jsonValueCount(json: Uint8Array | string, max: number): number {
  let n = 1;
  if (typeof json === 'string') {
    for (const c of [',', '[', '{']) for (let at = json.indexOf(c); at !== -1 && n <= max; at = json.indexOf(c, at + 1)) n++;
    return n;
  }
  const bytes = Buffer.from(json.buffer, json.byteOffset, json.byteLength); // a view, for Buffer's indexOf
  for (const c of [0x2c, 0x5b, 0x7b]) for (let at = bytes.indexOf(c); at !== -1 && n <= max; at = bytes.indexOf(c, at + 1)) n++;
  return n;
}

/**
 * A body its route parses whole as text on the event loop, by its content type: JSON (GraphQL's application/json and
 * application/graphql+json, KServe REST's) and a form (GraphQL's variables in it are JSON). Multipart is not: its JSON
 * fields are bounded where they are read.
 */
export function parsedAsJson(contentType: string | undefined): boolean {
  const type = (contentType ?? '').split(';')[0].trim().toLowerCase();
  return (
    type === 'application/json' ||
    type === 'application/x-www-form-urlencoded' ||
    (type.startsWith('application/') && type.endsWith('+json'))
  );
}

/** PAYLOAD_TOO_LARGE's words for a JSON body past MAX_JSON_BODY_BYTES (its size, where known), with what to send instead. */
export function jsonTooLarge(size: number | null, max: number): string {
  return `a JSON body${size === null ? '' : ` of ${size} bytes`} is past MAX_JSON_BODY_BYTES (${max}): JSON is parsed on the server's event loop; send images as multipart uploads (GraphQL) or binary data (KServe v2's binary extension)`;
}
