import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import type { GraphiQLOptions, Plugin } from 'graphql-yoga';

const gzipAsync = promisify(gzip);

/**
 * GraphiQL runs what its editor holds, as this origin (and from this machine: admin without ADMIN_TOKEN), and it fills
 * the editor from `?query=`: framed by a page of another origin with a mutation there, one click on its run button
 * (under a decoy) ran it. It may be shown in no frame, as the page at / may not. Its inline scripts rule out a
 * script-src here; the rest says what the page at / says.
 */
const GRAPHIQL_HEADERS = {
  'content-security-policy': "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/**
 * GraphiQL, for a GET of the GraphQL endpoint that accepts HTML (yoga's own rule), served here rather than by yoga:
 * from the package itself (yoga's default page loads its scripts from a CDN, which a gateway on a closed network
 * cannot reach); rendered once, on the first request for it (its bundle is ~30 MB of strings on the heap, which a
 * server that never shows it should not carry); ~9 MB of HTML, sent gzipped (~2 MB) to a browser that takes it (every
 * browser does), compressed once, off the main thread.
 */
export function useGraphiQLPage(endpoint: string, options: GraphiQLOptions): Plugin {
  let page: Promise<{ html: Uint8Array<ArrayBuffer>; gzipped: Uint8Array<ArrayBuffer> }> | null = null;
  const render = async () => {
    const text = (await import('@graphql-yoga/render-graphiql')).renderGraphiQL(options);
    // both encoded once: a body is not a 9 MB string encoded again for each request
    const html = new TextEncoder().encode(text) as Uint8Array<ArrayBuffer>;
    return { html, gzipped: new Uint8Array(await gzipAsync(html)) }; // the one copy: a body of its own buffer
  };
  return {
    onRequest({ request, url, endResponse, fetchAPI }) {
      // a POST returns at the first check
      if (request.method !== 'GET' || !request.headers.get('accept')?.includes('text/html')) return;
      if (url.pathname !== endpoint && url.pathname !== `${endpoint}/`) return;
      page ??= render().catch((e: unknown) => {
        page = null; // tried again on the next request
        throw e;
      });
      const gzipped = acceptsGzip(request.headers.get('accept-encoding'));
      return page.then((p) =>
        endResponse(
          new fetchAPI.Response(gzipped ? p.gzipped : p.html, {
            status: 200,
            headers: {
              'content-type': 'text/html',
              vary: 'accept-encoding',
              ...GRAPHIQL_HEADERS,
              ...(gzipped ? { 'content-encoding': 'gzip' } : {}),
            },
          }),
        ),
      );
    },
  };
}

/** Accept-Encoding takes gzip: named (or x-gzip), else by "*", with a weight above 0 (RFC 9110 12.5.3). */
export function acceptsGzip(header: string | null): boolean {
  if (!header) return false;
  let named: boolean | null = null;
  let any = false;
  for (const entry of header.split(',')) {
    const [name, ...params] = entry.split(';').map((p) => p.trim().toLowerCase());
    const q = params.find((p) => p.startsWith('q='));
    const weighted = q === undefined || Number(q.slice(2)) > 0;
    if (name === 'gzip' || name === 'x-gzip') named = weighted;
    else if (name === '*') any = weighted;
  }
  return named ?? any;
}
