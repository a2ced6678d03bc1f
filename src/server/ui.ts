import type { ServerResponse } from 'node:http';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sirv from 'sirv';
import type { Route } from './http.ts';

/** Where `npm install` (ui/build.mjs) writes the page. */
export const UI_DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui', 'dist');

/**
 * The page may load and connect to nothing but this origin (the WebSocket of the subscription included): the bundle
 * is self-contained, and this says so to the browser too.
 */
const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "img-src 'self' blob: data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const text = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) => {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
};

/**
 * The page at `/` (index.html) and its bundles under `/assets/`, served by sirv (content types, ETag and 304,
 * precompressed brotli/gzip by Accept-Encoding, HEAD, no path escapes; Range ignored). It reads the folder on each
 * request, so a rebuild (`npm run build:ui`) shows without a restart. Bundle names carry a content hash, so browsers keep them for
 * good; index.html is revalidated every time.
 */
export function uiRoute(dir: string = UI_DIST): Route {
  const serve = sirv(dir, {
    dev: true,
    etag: true,
    brotli: true,
    gzip: true,
    extensions: ['html'],
    dotfiles: false,
    setHeaders: (res, pathname) =>
      res.setHeader('cache-control', pathname.startsWith('/assets/') ? 'public, max-age=31536000, immutable' : 'no-cache'),
  });
  return {
    match: (p) => p === '/' || p === '/index.html' || p.startsWith('/assets/'),
    handle(req, res) {
      if (req.method !== 'GET' && req.method !== 'HEAD') return text(res, 405, 'GET or HEAD\n', { allow: 'GET, HEAD' });
      res.setHeader('content-security-policy', CONTENT_SECURITY_POLICY);
      res.setHeader('x-frame-options', 'DENY'); // frame-ancestors, for browsers that do not read it
      res.setHeader('x-content-type-options', 'nosniff');
      res.setHeader('referrer-policy', 'no-referrer');
      // Range is not served: the files are small, and sirv's reading of it is not safe (a reversed range threw out of
      // the handler: the process ended; "the last 10 bytes" gave the first 11; several ranges, one wrong one). A server
      // may ignore Range (RFC 9110, 14.2): the whole file, 200.
      delete req.headers.range;
      delete req.headers['if-range'];
      // the precompressed copies (.gz, .br) are sirv's to send for the file they compress, by Accept-Encoding; asked for
      // by name it sent them as that file's type without a Content-Encoding
      const asked = (req.url ?? '/').split('?')[0];
      let decoded = asked;
      try {
        decoded = decodeURIComponent(asked);
      } catch {
        // not a path sirv can serve either
      }
      if (/\.(gz|br)\/*$/i.test(decoded)) return text(res, 404, `nothing at ${asked}\n`); // sirv drops trailing slashes
      serve(req, res, () => {
        const pathname = (req.url ?? '/').split('?')[0];
        if (pathname.startsWith('/assets/')) return text(res, 404, `nothing at ${pathname}\n`);
        // the page was never built (npm install --ignore-scripts, or ui/dist removed)
        const built = existsSync(path.join(dir, 'index.html'));
        text(
          res,
          built ? 404 : 503,
          built ? `nothing at ${pathname}\n` : 'The page is not built: run `npm run build:ui`. The API is at /graphql.\n',
        );
      });
    },
  };
}
