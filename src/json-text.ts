import { parse as parseTolerantly, type ParseError } from 'jsonc-parser';

/** Where a JSON text stops being JSON, and why, as an editor shows it. */
export interface JsonMistake {
  /** Characters before the mistake. */
  position: number;
  /** 1-based, as editors count. */
  line: number;
  column: number;
  /** JSON.parse's own words, without the text it quotes around the mistake (`Unexpected token ']'`). */
  reason: string;
}

/**
 * Where `text`, which JSON.parse refused with `error`, goes wrong. JSON.parse says a position for most mistakes but
 * not, on Node 20, for an unexpected token (a trailing comma in a list, a bare word, NaN, a comment): there the
 * position is the first mistake jsonc-parser finds, in strict mode (no comments, no trailing commas). Only on the
 * error path: the text is read a second time.
 */
export function jsonMistake(text: string, error: unknown): JsonMistake {
  const message = error instanceof Error ? error.message : String(error);
  const at = /at position (\d+)/.exec(message);
  let position: number;
  if (at) position = Number(at[1]);
  else if (/end of JSON input/.test(message)) position = text.length;
  else {
    const errors: ParseError[] = [];
    parseTolerantly(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
    position = errors[0]?.offset ?? text.length;
  }
  const before = text.slice(0, position);
  const lineStart = before.lastIndexOf('\n') + 1;
  const reason = message
    .replace(/, (\.\.\.)?".*"(\.\.\.)? is not valid JSON$/s, '') // Node 20: Unexpected token 'x', ..."text around it"... is not valid JSON
    .replace(/ in JSON at position \d+.*$/s, '');
  return { position, line: before.split('\n').length, column: position - lineStart + 1, reason };
}

/** For a file an editor opens: `not valid JSON at line 3, column 51 (Unexpected token ']')`. */
export function notValidJsonFile(text: string, error: unknown): string {
  const m = jsonMistake(text, error);
  return `not valid JSON at line ${m.line}, column ${m.column} (${m.reason})`;
}

/** For a request body or a parameter: `not valid JSON at position 65 (line 1, column 66): Unexpected token 'N'`. */
export function notValidJsonText(text: string, error: unknown): string {
  const m = jsonMistake(text, error);
  return `not valid JSON at position ${m.position} (line ${m.line}, column ${m.column}): ${m.reason}`;
}
