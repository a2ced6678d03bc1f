import type { ServerResponse } from 'node:http';

/** A JSON answer with its length (the HTTP server's own answers, /health and /ready, KServe REST). */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
