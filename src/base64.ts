/**
 * Strict base64 for what clients send (images, BYTES elements, model files): the standard alphabet, padding optional,
 * line breaks allowed (after the padding too: `base64`, Python's encodebytes and openssl end their text with one). The bytes, without a copy, or null when the text is not base64: Node's
 * `Buffer.from(s, 'base64')` skips what it cannot read instead of failing, which would turn a typo into other bytes.
 */
// one way to match each character (a line break after the text is matched only after padding or by the class): linear
const BASE64 = /^[A-Za-z0-9+/\r\n]*(?:==?[\r\n]*)?$/;

export function decodeBase64(text: string): Uint8Array | null {
  if (!BASE64.test(text)) return null;
  // one character past a multiple of four carries no whole byte (counted without copying what may be megabytes)
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 61 /* = */) end--;
  if (!text.includes('\n') && !text.includes('\r') && end % 4 === 1) return null;
  const b = Buffer.from(text, 'base64');
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

const isAlphabet = (c: number) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 43 || c === 47;

/**
 * Why text that decodeBase64 refused is not base64, for the message that refuses it: a data: URL, the first character
 * it cannot read (base64url's - and _, a space, padding before the end), or a length that leaves a character over.
 * One pass; it repeats one character of the text at most.
 */
export function whyNotBase64(text: string): string {
  if (/^data:[^,]{0,200},/i.test(text.slice(0, 256))) return 'it begins as a data: URL; send only the base64 after its comma';
  let padding = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || c === 13) continue;
    if (c === 61 /* = */) {
      if (padding < 0) padding = i;
      if (i - padding >= 2) return `"=" at character ${padding} pads only its end, with one or two`;
      continue;
    }
    if (padding >= 0) return `"=" at character ${padding} pads only its end`;
    if (isAlphabet(c)) continue;
    if (c === 45 || c === 95) return `"${text[i]}" at character ${i} is of base64url's alphabet; send standard base64 (+ and /)`;
    if (c === 32 || c === 9) return `a ${c === 32 ? 'space' : 'tab'} at character ${i}; only line breaks may come between its characters`;
    const ch = String.fromCodePoint(text.codePointAt(i)!);
    const code = ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0');
    return `${JSON.stringify(ch)} (U+${code}) at character ${i} is no base64 character`;
  }
  const end = padding >= 0 ? padding : text.length; // (refused for its length only without line breaks)
  return `its ${end} characters leave one over (base64 comes in groups of four): it was cut short, or has one too many`;
}
