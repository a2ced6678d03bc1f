/**
 * Baseline for `npm run bench:protocol`, not the product and not a server to run: the least a GraphQL multipart upload
 * can cost in Node. node:http, busboy for the body (the parser whatwg-node uses), graphql-js executing a document parsed
 * and validated once against the gateway's own schema, JSON out. No limit, no token, no CSRF check, no typed error, no
 * metrics: the ceiling of a "lean path in front of yoga" before it keeps any of the gateway's rules.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Busboy, type BusboyHeaders } from '@fastify/busboy';
import { execute, parse, validate, type DocumentNode } from 'graphql';
import { schema } from '../../src/protocols/graphql/schema/index.ts';

const documents = new Map<string, DocumentNode>();
const server = createServer((req, res) => {
  const fields = new Map<string, string>();
  const files = new Map<string, File>();
  const form = new Busboy({ headers: req.headers as BusboyHeaders });
  form.on('field', (name: string, value: string) => fields.set(name, value));
  form.on('file', (name: string, stream: NodeJS.ReadableStream, filename: string) => {
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    stream.on('data', (c: Buffer<ArrayBuffer>) => chunks.push(c));
    stream.on('end', () => files.set(name, new File(chunks, filename)));
  });
  form.on('finish', async () => {
    const operations = JSON.parse(fields.get('operations') ?? '{}') as { query: string; variables: Record<string, unknown> };
    const map = JSON.parse(fields.get('map') ?? '{}') as Record<string, string[]>;
    for (const [part, paths] of Object.entries(map)) for (const p of paths) operations.variables[p.split('.')[1]] = files.get(part);
    let document = documents.get(operations.query);
    if (!document) {
      document = parse(operations.query);
      if (validate(schema, document).length > 0) throw new Error('invalid document');
      documents.set(operations.query, document);
    }
    const text = JSON.stringify(await execute({ schema, document, variableValues: operations.variables, contextValue: {} }));
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
  });
  req.pipe(form);
}).listen(Number(process.argv[2]), '127.0.0.1', () => console.log(`ready ${(server.address() as AddressInfo).port}`));
process.once('SIGTERM', () => server.close(() => process.exit(0)));
