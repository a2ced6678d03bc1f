/**
 * The GraphQL multipart request spec (https://github.com/jaydenseric/graphql-multipart-request-spec): one body with
 * `operations` (the query, with null where files go), `map` (which part fills which variable) and the files. The
 * reference client, the tests and the benchmark all encode uploads with this.
 */
export interface UploadFile {
  /** The file name the server sees. */
  name: string;
  bytes: Uint8Array;
  type?: string;
}

export interface GraphqlOperation {
  query: string;
  variables?: Record<string, unknown>;
  operationName?: string;
}

/** Set `obj[a][b]...` for a dotted path ("images.0.file"), creating objects and arrays on the way. */
function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split('.');
  let o = obj as Record<string, unknown>;
  for (let i = 0; i < keys.length - 1; i++) {
    const k = keys[i];
    if (o[k] === undefined || o[k] === null) o[k] = /^\d+$/.test(keys[i + 1]) ? [] : {};
    o = o[k] as Record<string, unknown>;
  }
  o[keys.at(-1)!] = value;
}

/**
 * Encode an operation and its files (variable path, e.g. "image.file" or "images.0.file" -> file) as one multipart
 * body. The file variables are set to null in `operations`, as the spec asks.
 */
export function encodeMultipart(
  operation: GraphqlOperation,
  files: Record<string, UploadFile>,
): { body: Uint8Array<ArrayBuffer>; contentType: string } {
  const boundary = `----graphql-gateway-${Math.random().toString(16).slice(2)}${Date.now().toString(16)}`;
  const variables = structuredClone(operation.variables ?? {});
  const map: Record<string, string[]> = {};
  const entries = Object.entries(files);
  entries.forEach(([varPath], i) => {
    setPath(variables, varPath, null);
    map[String(i)] = [`variables.${varPath}`];
  });
  const quote = (s: string) => s.replace(/["\r\n\\]/g, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  const parts: Buffer[] = [];
  const part = (headers: string, content: Uint8Array | string) =>
    parts.push(Buffer.from(`--${boundary}\r\n${headers}\r\n\r\n`), Buffer.from(content), Buffer.from('\r\n'));
  part('Content-Disposition: form-data; name="operations"\r\nContent-Type: application/json', JSON.stringify({ ...operation, variables }));
  part('Content-Disposition: form-data; name="map"\r\nContent-Type: application/json', JSON.stringify(map));
  entries.forEach(([, f], i) =>
    part(
      `Content-Disposition: form-data; name="${i}"; filename="${quote(f.name)}"\r\nContent-Type: ${f.type ?? 'application/octet-stream'}`,
      f.bytes,
    ),
  );
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  // a plain Uint8Array over a fresh ArrayBuffer: what fetch() and http.request() both take
  return { body: new Uint8Array(Buffer.concat(parts)), contentType: `multipart/form-data; boundary=${boundary}` };
}
