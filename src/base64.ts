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
  if (!text.includes('\n') && end % 4 === 1) return null;
  const b = Buffer.from(text, 'base64');
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}
