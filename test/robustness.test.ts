import { copyFile, mkdir, readFile, rm, mkdtemp, symlink, writeFile } from 'node:fs/promises';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { crc32, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import sharp from 'sharp';
import {
  IMAGES,
  errorCode,
  image,
  openGraphqlWs,
  startGateway,
  timedTries,
  until,
  uploadFiles,
  type TestGateway,
  fixture,
  watchStalls,
} from './helpers.ts';
import { encodeMultipart } from '../src/client/multipart.ts';
import { startReplica } from '../bench/cluster-lib.ts';
import { buildModel, ElemType } from './onnx-builder.ts';

/**
 * A decompression bomb: a real PNG whose IHDR is patched to claim width x height. It must be refused from its
 * header, before anything is decoded.
 */
async function pngClaiming(width: number, height: number): Promise<Uint8Array> {
  const png = Buffer.from(
    await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } })
      .png()
      .toBuffer(),
  );
  const crc = (b: Uint8Array) => crc32(b); // PNG's chunk CRC
  // signature (8) | length (4) | "IHDR" (4) | width (4) | height (4) | ... (5) | crc (4)
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(crc(png.subarray(12, 29)), 29);
  return png;
}

const models = () => ({ mobilenet: fixture('mobilenet') });
const CLASSIFY = `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { classId } } }`;

describe('bad input gets a typed error and the server stays healthy', () => {
  let gw: TestGateway;
  let outside: string;
  beforeAll(async () => {
    outside = await mkdtemp(path.join(os.tmpdir(), 'gw-outside-'));
    gw = await startGateway({
      models: { ...models(), ppocr: fixture('ppocr') },
      env: { IMAGE_ROOTS: IMAGES, MAX_IMAGE_PIXELS: '4000000' },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await rm(outside, { recursive: true, force: true });
  });

  const good = async () => {
    const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: image('bee.jpeg') } });
    expect(r.data?.classify.predictions[0].classId).toBe(309);
  };

  it.each([
    ['bytes that are not an image', () => Buffer.from('%PDF-1.4 definitely not a picture'), 'INVALID_IMAGE'],
    ['an empty file', () => Buffer.alloc(0), 'INVALID_IMAGE'],
    ['a truncated JPEG', async () => (await readFile(image('dog.jpg'))).subarray(0, 20_000), 'INVALID_IMAGE'],
    ['a PNG header claiming 100000 x 100000 pixels', () => pngClaiming(100_000, 100_000), 'IMAGE_TOO_LARGE'],
    ['a PNG header claiming 3000 x 3000 (over MAX_IMAGE_PIXELS)', () => pngClaiming(3000, 3000), 'IMAGE_TOO_LARGE'],
  ])('%s', async (_, bytes, code) => {
    const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: await bytes() } });
    expect(errorCode(r)).toBe(code);
    await good();
  });

  it("a broken image's message says what is wrong with it, not only libvips' name for its decoder", async () => {
    const photo = await readFile(image('zebra.jpeg'));
    const cut = async (b: Buffer | Promise<Buffer>) => (await b).subarray(0, 2000);
    const cases: [string, Buffer, RegExp][] = [
      ['jpeg', photo.subarray(0, 3000), /premature end of JPEG image/],
      ['png', await cut(sharp(photo).png().toBuffer()), /read error/],
      ['webp', await cut(sharp(photo).webp().toBuffer()), /unable to parse image/],
      ['gif', await cut(sharp(photo).gif().toBuffer()), /end of GIF/],
    ];
    for (const [format, bytes, reason] of cases) {
      const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: bytes } });
      expect(errorCode(r), format).toBe('INVALID_IMAGE');
      const message = r.errors![0].message;
      expect(message, format).toMatch(reason);
      expect(message, format).not.toMatch(/vips|gifload|webp:/i);
    }
    await good();
  });

  it('a JPEG whose ICC profile has a description of an odd length (small, or past 64 KB) is decoded or refused as INVALID_IMAGE, never a 500', async () => {
    /** An ICC profile holding one tag, `desc`, of type mluc and `size` bytes, in APP2 segments after the SOI. */
    const withProfile = (jpeg: Buffer, size: number) => {
      const desc = Buffer.alloc(size);
      desc.write('mluc', 0, 'latin1');
      const icc = Buffer.concat([Buffer.alloc(132), Buffer.alloc(12), desc]);
      icc.writeUInt32BE(icc.length, 0);
      icc.write('RGB XYZ ', 16, 'latin1');
      icc.write('acsp', 36, 'latin1');
      icc.writeUInt32BE(1, 128);
      icc.write('desc', 132, 'latin1');
      icc.writeUInt32BE(144, 136);
      icc.writeUInt32BE(size, 140);
      const parts: Buffer[] = [];
      const n = Math.ceil(icc.length / 65519);
      for (let i = 0; i < n; i++) {
        const part = icc.subarray(i * 65519, (i + 1) * 65519);
        const head = Buffer.alloc(18);
        head.writeUInt16BE(0xffe2, 0);
        head.writeUInt16BE(16 + part.length, 2);
        head.write('ICC_PROFILE\0', 4, 'latin1');
        head[16] = i + 1;
        head[17] = n;
        parts.push(head, part);
      }
      return Buffer.concat([jpeg.subarray(0, 2), ...parts, jpeg.subarray(2)]);
    };
    const photo = await readFile(image('airliner.jpeg'));
    for (const size of [17, 200_001]) {
      const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: withProfile(photo, size) } });
      if (r.errors) expect(errorCode(r), String(size)).toBe('INVALID_IMAGE');
      else expect(r.data?.classify.predictions).toHaveLength(1);
    }
    await good();
  });

  it('/health, /ready and /metrics take GET and HEAD only: other methods are 405 with Allow', async () => {
    for (const p of ['/health', '/ready', '/metrics']) {
      expect((await fetch(`${gw.url}${p}`)).status, p).toBe(200);
      const head = await fetch(`${gw.url}${p}`, { method: 'HEAD' });
      expect([head.status, await head.text()], p).toEqual([200, '']);
      for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
        const r = await fetch(`${gw.url}${p}`, { method, ...(method === 'OPTIONS' ? {} : { body: '{}' }) });
        expect([r.status, r.headers.get('allow')], `${method} ${p}`).toEqual([405, 'GET, HEAD']);
      }
    }
  });

  it('a body that is not JSON says where (also where Node 20 gives no position), and is not echoed back', async () => {
    const post = async (body: string) => {
      const r = await fetch(`${gw.url}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      const text = await r.text();
      return { status: r.status, size: text.length, error: JSON.parse(text).errors[0] };
    };
    for (const [body, where, reason] of [
      // a trailing comma after the last member (Node 20 names the position of the brace): said at the comma
      [
        '{"query": "{ models { name } }",}',
        'at position 31 (line 1, column 32)',
        'a trailing comma: JSON has none before } or ], remove it',
      ],
      // a trailing comma in a list, a bare word: Node 20 gives no position for an unexpected token
      [
        '{\n  "query": "{ models { name } }",\n  "variables": {"ids": [1, 2,]}\n}',
        'at position 64 (line 3, column 29)',
        'a trailing comma: JSON has none before } or ], remove it',
      ],
      ['{"query": models}', 'at position 10 (line 1, column 11)', "Unexpected token 'm'"],
    ]) {
      const r = await post(body);
      expect([r.status, r.error.extensions.code], body).toEqual([400, 'BAD_REQUEST']);
      expect(r.error.message, body).toBe(`the request body is not valid JSON ${where}: ${reason}`);
    }
    // a megabyte of it: the answer was the megabyte again (the parse error's message, which quotes the whole text, in
    // extensions.originalError)
    const big = await post(`{"query": "{ models { name } }", "variables": {"x": "${'A'.repeat(1_000_000)}"},}`);
    expect([big.status, big.error.extensions.code]).toEqual([400, 'BAD_REQUEST']);
    expect(big.size).toBeLessThan(1000);
    expect(big.error.message).toMatch(
      /^the request body is not valid JSON at position 1000055 \(line 1, column 1000056\): a trailing comma/,
    );
    await good();
  });

  it("a GET or a form whose variables or extensions are not JSON is the client's 400 naming the parameter, not a 500", async () => {
    const headers = { 'x-graphql-yoga-csrf': '1', accept: 'application/json' };
    const errorsBefore = gw.logs.filter((l) => l.includes('unexpected error')).length;
    for (const [param, value] of [
      ['variables', '{"a": 1,}'],
      ['extensions', '{"persistedQuery": NaN}'],
    ]) {
      const search = new URLSearchParams({ query: '{ __typename }', [param]: value });
      for (const r of [
        await fetch(`${gw.url}/graphql?${search}`, { headers }),
        await fetch(`${gw.url}/graphql`, {
          method: 'POST',
          headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded' },
          body: search.toString(),
        }),
      ]) {
        const error = (await r.json()).errors[0];
        expect([r.status, error.extensions.code], `${param} ${value}`).toEqual([400, 'BAD_REQUEST']);
        expect(error.message).toMatch(
          new RegExp(`^the "${param}" parameter is not valid JSON at position \\d+ \\(line 1, column \\d+\\): `),
        );
      }
    }
    // the client's mistake, not the server's: no "unexpected error" logged for it
    expect(gw.logs.filter((l) => l.includes('unexpected error')).length).toBe(errorsBefore);
    await good();
  });

  it('variables holding more values than MAX_VARIABLE_VALUES are refused before they are parsed or coerced, over HTTP (JSON, multipart, a form) and WebSocket', async () => {
    // graphql-js coerces a list value by value on the event loop: 1M items held it about a second, 25M (a 50 MB body)
    // over 20 s
    const query = 'mutation($x: [String!]) { infer(model: "nope", inputs: [], outputs: $x) { __typename } }';
    const many = { x: Array.from({ length: 70_000 }, (_, i) => `o${i}`) };
    const json = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query, variables: many }),
    });
    const jsonError = (await json.json()).errors[0];
    expect([json.status, jsonError.extensions.code]).toEqual([400, 'LIMIT_EXCEEDED']);
    expect(jsonError.message).toMatch(/more than 65536 values \(MAX_VARIABLE_VALUES\)/);
    const { body, contentType } = encodeMultipart(
      { query: query.replace('$x:', '$f: File, $x:'), variables: { f: null, ...many } },
      {
        f: { name: 'bee.jpeg', bytes: await readFile(image('bee.jpeg')) },
      },
    );
    const multipart = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': contentType, 'x-graphql-yoga-csrf': '1' },
      body,
    });
    const multipartError = (await multipart.json()).errors[0];
    expect([multipart.status, multipartError.extensions.code]).toEqual([400, 'LIMIT_EXCEEDED']);
    // a form (application/x-www-form-urlencoded, as a GET's query string but without its size bound)
    const form = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-graphql-yoga-csrf': '1' },
      body: new URLSearchParams({ query, variables: JSON.stringify(many) }).toString(),
    });
    const formError = (await form.json()).errors[0];
    expect([form.status, formError.extensions.code]).toEqual([400, 'LIMIT_EXCEEDED']);
    // a form's extensions, and a multipart request's map, are JSON yoga parses too
    const formExtensions = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-graphql-yoga-csrf': '1' },
      body: new URLSearchParams({ query: '{ __typename }', extensions: JSON.stringify(many) }).toString(),
    });
    expect([formExtensions.status, (await formExtensions.json()).errors[0].extensions.code]).toEqual([400, 'LIMIT_EXCEEDED']);
    const bigMap = Object.fromEntries(many.x.map((name) => [name, ['variables.f']]));
    const mapped = new FormData();
    mapped.set('operations', JSON.stringify({ query: 'query($f: File) { __typename }', variables: { f: null } }));
    mapped.set('map', JSON.stringify(bigMap));
    const mappedAnswer = await fetch(`${gw.url}/graphql`, { method: 'POST', headers: { 'x-graphql-yoga-csrf': '1' }, body: mapped });
    expect([mappedAnswer.status, (await mappedAnswer.json()).errors[0].extensions.code]).toEqual([400, 'LIMIT_EXCEEDED']);
    // a multipart body cut short, or without its boundary, is still the client's 400 (reading the form to count its
    // values made it a 500)
    for (const type of ['multipart/form-data; boundary=XX', 'multipart/form-data']) {
      const cut = await fetch(`${gw.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': type, 'x-graphql-yoga-csrf': '1' },
        body: '--XX\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{"query":"{__typename}"}\r\n--XX\r\nContent-Disposition: form-data; name="map"\r\n\r\n{}\r\n',
      });
      expect([cut.status, (await cut.json()).errors[0].extensions.code], type).toEqual([400, 'BAD_REQUEST']);
    }
    const ws = createClient({ url: `${gw.url.replace('http', 'ws')}/graphql`, webSocketImpl: WebSocket, retryAttempts: 0 });
    const over = await new Promise<unknown>((resolve) =>
      ws.subscribe({ query, variables: many }, { next: resolve, error: resolve, complete: () => undefined }),
    );
    expect(JSON.stringify(over)).toMatch(/LIMIT_EXCEEDED.*MAX_VARIABLE_VALUES|MAX_VARIABLE_VALUES.*LIMIT_EXCEEDED/);
    // and the document's own bound, MAX_QUERY_BYTES, as over HTTP (a 200 kB comment ran over WebSocket)
    const longDocument = await new Promise<unknown>((resolve) =>
      ws.subscribe({ query: `# ${'x'.repeat(200_000)}\n{ __typename }` }, { next: resolve, error: resolve, complete: () => undefined }),
    );
    expect(JSON.stringify(longDocument)).toMatch(/LIMIT_EXCEEDED.*MAX_QUERY_BYTES|MAX_QUERY_BYTES.*LIMIT_EXCEEDED/);
    // under the limit, all three are served
    const few = { x: ['a', 'b'] };
    const under = await new Promise<unknown>((resolve) =>
      ws.subscribe({ query, variables: few }, { next: resolve, error: resolve, complete: () => undefined }),
    );
    expect(JSON.stringify(under)).toMatch(/MODEL_NOT_FOUND/);
    await ws.dispose();
    expect(errorCode(await gw.gql(query, few))).toBe('MODEL_NOT_FOUND');
    await good();
  });

  it('unknown models and versions, a model that is not ready', async () => {
    expect(errorCode(await gw.gql(CLASSIFY.replace('"mobilenet"', '"nope"'), { f: null }, { files: { f: image('bee.jpeg') } }))).toBe(
      'MODEL_NOT_FOUND',
    );
    expect(
      errorCode(await gw.gql(CLASSIFY.replace('topK: 1', 'version: 4, topK: 1'), { f: null }, { files: { f: image('bee.jpeg') } })),
    ).toBe('MODEL_NOT_FOUND');
    await gw.gql(`mutation { unloadModel(name: "mobilenet") { name } }`);
    expect(errorCode(await gw.gql(CLASSIFY, { f: null }, { files: { f: image('bee.jpeg') } }))).toBe('MODEL_NOT_READY');
    await gw.gql(`mutation { loadModel(name: "mobilenet") { name } }`);
    await good();
  });

  it('base64 that is not base64 says why and what to send, over GraphQL and KServe REST, without repeating it', async () => {
    const photo = (await readFile(path.join(IMAGES, 'bee.jpeg'))).toString('base64');
    const urlSafe = photo.replace(/\+/g, '-').replace(/\//g, '_');
    const at = Math.min(...['-', '_'].map((c) => urlSafe.indexOf(c)).filter((i) => i >= 0));
    const classify = async (b: string) => {
      const r = await gw.gql(`mutation($b: String!) { classify(model: "mobilenet", image: { base64: $b }) { predictions { classId } } }`, {
        b,
      });
      expect(errorCode(r)).toBe('INVALID_IMAGE');
      return r.errors![0].message;
    };
    // each was "ImageInput.base64 is not base64", whatever the mistake
    expect(await classify(urlSafe)).toBe(
      `ImageInput.base64 is not base64: "${urlSafe[at]}" at character ${at} is of base64url's alphabet; send standard base64 (+ and /)`,
    );
    expect(await classify(photo.slice(0, 80) + ' ' + photo.slice(80))).toBe(
      'ImageInput.base64 is not base64: a space at character 80; only line breaks may come between its characters',
    );
    expect(await classify(photo.slice(0, 81))).toMatch(
      /^ImageInput\.base64 is not base64: its 81 characters leave one over \(base64 comes in groups of four\): it was cut short, or has one too many$/,
    );
    expect(await classify('QUJD=QUJD')).toBe('ImageInput.base64 is not base64: "=" at character 4 pads only its end');
    expect(await classify('QUJD\u00e9')).toBe('ImageInput.base64 is not base64: "\u00e9" (U+00E9) at character 4 is no base64 character');
    // KServe REST: "b64 is not base64"; a data: URL is read as such over GraphQL only
    const b64 = async (text: string) => {
      const r = await fetch(`${gw.url}/v2/models/mobilenet/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [{ b64: text }] }] }),
      });
      expect(r.status).toBe(400);
      return ((await r.json()) as { error: string }).error;
    };
    expect(await b64(`data:image/jpeg;base64,${photo}`)).toBe(
      'input input: b64 is not base64: it begins as a data: URL; send only the base64 after its comma',
    );
    expect(await b64(urlSafe)).toMatch(/^input input: b64 is not base64: "[-_]" at character \d+ is of base64url's alphabet/);
    await good();
  });

  it('paths outside IMAGE_ROOTS, with .. and symlinks resolved first', async () => {
    await symlink('/etc/hostname', path.join(outside, 'link'));
    const q = `mutation($p: String!) { classify(model: "mobilenet", image: { path: $p }) { predictions { classId } } }`;
    for (const p of [
      '/etc/hostname',
      path.join(IMAGES, '..', 'images', '..', '..', '..', 'models', 'yolox', '1', 'model.onnx'),
      path.join(outside, 'link'),
      '../../../../etc/hostname',
      '',
    ]) {
      expect(errorCode(await gw.gql(q, { p })), p).toBe('FORBIDDEN_PATH');
    }
    expect(errorCode(await gw.gql(q, { p: path.join(IMAGES, 'missing.jpg') }))).toBe('INVALID_INPUT');
    // a name that begins with two dots is inside (it is not the parent folder): not there, not forbidden
    expect(errorCode(await gw.gql(q, { p: path.join(IMAGES, '..missing.jpg') }))).toBe('INVALID_INPUT');
    const ok = await gw.gql(q, { p: path.join(IMAGES, '..', 'images', 'bee.jpeg') });
    expect(ok.data.classify.predictions[0].classId).toBe(309);
  });

  it('tensors whose dtype, shape or byte length do not match', async () => {
    const q = (dtype: string, shape: number[], data: string) =>
      gw.gql(
        `mutation($s: [Int!]!, $d: String!) { infer(model: "mobilenet", inputs: [{ name: "input", dtype: ${dtype}, shape: $s, data: $d }]) { outputs { name } } }`,
        { s: shape, d: data },
      );
    const bytes = Buffer.alloc(3 * 224 * 224 * 4).toString('base64');
    expect(errorCode(await q('FLOAT16', [1, 3, 224, 224], bytes))).toBe('INVALID_INPUT');
    expect(errorCode(await q('FLOAT32', [1, 3, 224, 225], bytes))).toBe('INVALID_INPUT');
    expect(errorCode(await q('FLOAT32', [1, 3, 224], bytes))).toBe('INVALID_INPUT');
    expect(errorCode(await q('FLOAT32', [1, 3, 224, 224], bytes.slice(0, -8)))).toBe('INVALID_INPUT');
    expect(errorCode(await q('FLOAT32', [1, 3, 224, 224], '***not base64***'))).toBe('INVALID_INPUT');
    expect(errorCode(await q('FLOAT32', [100000, 3, 224, 224], bytes))).toBe('INVALID_INPUT');
    // -1 is how metadata writes a dynamic dimension, not a size: it was said as "has shape [-1,3,224,224], got [-1,3,224,224]"
    const dynamic = await q('FLOAT32', [-1, 3, 224, 224], bytes);
    expect(errorCode(dynamic)).toBe('INVALID_INPUT');
    expect(dynamic.errors![0].message).toBe(
      "input input: shape [-1,3,224,224] must hold sizes (integers of 0 or more): the -1 of the model's shape [-1,3,224,224] marks a dimension of any size; send the size your data has there (1 for the batch)",
    );
    expect((await q('FLOAT32', [1, -3, 224, 224], bytes)).errors![0].message).toBe(
      'input input: shape [1,-3,224,224] must hold sizes (integers of 0 or more)',
    );
    await good();
  });

  it("a zero-sized dimension the model cannot compute is the client's INVALID_INPUT naming the input, not a server error; others are served", async () => {
    const q = (shape: number[], data: string) =>
      gw.gql(
        `mutation($s: [Int!]!, $d: String!) { infer(model: "ppocr", inputs: [{ name: "x", dtype: FLOAT32, shape: $s, data: $d }]) { outputs { shape } } }`,
        { s: shape, d: data },
      );
    const [zero, ok] = await Promise.all([q([1, 3, 0, 0], ''), q([1, 3, 64, 64], Buffer.alloc(3 * 64 * 64 * 4).toString('base64'))]);
    expect(errorCode(zero)).toBe('INVALID_INPUT');
    expect(zero.errors![0].message).toMatch(/^input x has a zero-sized dimension \(shape \[1, 3, 0, 0\]\)/);
    expect(ok.data.infer.outputs[0].shape).toEqual([1, 1, 64, 64]);
  });

  it('many open subscriptions print no listener-leak warning (each listens to the shutdown signal), and all end', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    const { ws, messages } = await openGraphqlWs(gw.url);
    for (let i = 0; i < 16; i++)
      ws.send(JSON.stringify({ id: String(i), type: 'subscribe', payload: { query: 'subscription { modelStatus { model } }' } }));
    await new Promise((r) => setTimeout(r, 500));
    for (let i = 0; i < 16; i++) ws.send(JSON.stringify({ id: String(i), type: 'complete' }));
    ws.close();
    await new Promise((r) => ws.once('close', r));
    await new Promise((r) => setTimeout(r, 50));
    process.off('warning', onWarning);
    expect(messages.filter((m) => m.type === 'error')).toEqual([]);
    expect(warnings).not.toContain('MaxListenersExceededWarning');
  });

  it('a WebSocket client that does not read its answers is not read either: what the server holds for it stays bounded, and nothing is lost', async () => {
    // graphql-ws answers a ping with a pong carrying its payload: a client that sent 1 MB pings and read nothing had the
    // server read on and keep every pong (250 MB of pings: 2.6 GB more RSS, /health at 0.4 s)
    const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/graphql`, 'graphql-transport-ws');
    const pongs: number[] = [];
    let acked = false;
    ws.on('message', (d) => {
      const m = JSON.parse(String(d));
      if (m.type === 'connection_ack') acked = true;
      if (m.type === 'pong') pongs.push(m.payload.n);
    });
    await new Promise((resolve) => ws.once('open', resolve));
    ws.send(JSON.stringify({ type: 'connection_init' }));
    await until(async () => acked, 5000, 'the connection acknowledged');
    const raw = (ws as unknown as { _socket: net.Socket })._socket;
    raw.pause(); // this client reads nothing more
    const filler = 'x'.repeat(900_000);
    for (let n = 0; n < 128; n++) ws.send(JSON.stringify({ type: 'ping', payload: { n, filler } }));
    await new Promise((r) => setTimeout(r, 4000)); // the server, reading on, had read it all after 1.5-2 s
    // the server stopped reading the client once it held about a message of answers for it: the rest of what the client
    // sent waits on its side (less what the kernel's buffers hold, a few MB each way)
    expect(ws.bufferedAmount).toBeGreaterThan(64 * 900_000);
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
    raw.resume();
    await until(async () => pongs.length === 128, 30_000, 'every pong');
    expect(pongs).toEqual([...Array(128).keys()]);
    ws.close();
  });

  it("a WebSocket client's mistakes and departures print nothing on stderr (graphql-ws wrote a plain-text stack for each)", async () => {
    const printed: unknown[] = [];
    const error = console.error;
    console.error = (...a: unknown[]) => void printed.push(a[0]);
    try {
      const url = `${gw.url.replace('http', 'ws')}/graphql`;
      const open = async () => {
        const ws = new WebSocket(url, 'graphql-transport-ws');
        await new Promise((resolve) => ws.once('open', resolve));
        ws.on('error', () => undefined);
        return ws;
      };
      // a frame past the message limit: closed 1009 by ws, then "Internal error emitted on a WebSocket socket"; the
      // close says why (ws closed it with no reason)
      const big = await open();
      const closed = new Promise<[number, string]>((resolve) => big.once('close', (code, reason) => resolve([code, String(reason)])));
      big.send('x'.repeat(2 * 1024 * 1024));
      const [code, reason] = await closed;
      expect(code).toBe(1009);
      expect(reason).toMatch(/^a message is at most 1048576 bytes \(MAX_WS_MESSAGE_BYTES\)/);
      expect(Buffer.byteLength(reason)).toBeLessThanOrEqual(123);
      // pings whose pongs are written after the client has gone: "Internal error occurred during message handling"
      for (let i = 0; i < 5; i++) {
        const ws = await open();
        ws.send(JSON.stringify({ type: 'connection_init' }));
        for (let n = 0; n < 20; n++) ws.send(JSON.stringify({ type: 'ping', payload: { filler: 'x'.repeat(200_000) } }));
        ws.terminate();
      }
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      console.error = error;
    }
    expect(printed).toEqual([]);
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });

  it('a broken model.json ends the load with an error that names the field', async () => {
    const r = await gw.gql(`mutation($c: JSON) { loadModel(name: "broken", path: $p, config: $c) { name } }`.replace('path: $p, ', ''), {
      c: { task: 'detection', postprocessing: { format: 'yolo9000' } },
    });
    expect(errorCode(r)).toBe('INVALID_MODEL_CONFIG');
    expect(r.errors![0].message).toMatch(/postprocessing\.format/);
    await good();
  });
});

describe('limits', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: models(),
      env: {
        MAX_UPLOAD_BYTES: '200000',
        MAX_JSON_BODY_BYTES: '100000',
        MAX_FILES_PER_REQUEST: '2',
        MAX_IMAGES_PER_REQUEST: '2',
        MAX_QUERY_DEPTH: '4',
        MAX_ALIASES: '3',
        MAX_WS_CONNECTIONS_PER_CLIENT: '2',
        MAX_SUBSCRIPTIONS_PER_CONNECTION: '2',
        WS_KEEPALIVE_MS: '1000',
      },
    });
  });
  afterAll(() => gw?.close());

  /** Classifications answered so far (the metric): a request that ran shows here, whether or not its answer went out. */
  const inferences = async () => {
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    return Number(/^gateway_inference_request_success_total\{model="mobilenet"[^}]*\} (\d+)/m.exec(text)?.[1] ?? 0);
  };
  /** A classification of the bee photo as a JSON body (base64), to send raw. */
  const classifyJson = async () =>
    JSON.stringify({
      query: `mutation { classify(model: "mobilenet", image: { base64: "${(await readFile(image('bee.jpeg'))).toString('base64')}" }) { predictions { classId } } }`,
    });

  it('refuses a JSON body over MAX_JSON_BODY_BYTES (parsed on the event loop) with 413, saying what to send instead; the same bytes as a multipart upload are taken', async () => {
    const json = JSON.stringify({ query: '{ __typename }', variables: { pad: 'x'.repeat(150_000) } });
    const graphql = await fetch(`${gw.url}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: json });
    expect(graphql.status).toBe(413);
    const body = (await graphql.json()) as any;
    expect(body.errors[0].extensions.code).toBe('PAYLOAD_TOO_LARGE');
    expect(body.errors[0].message).toMatch(/JSON body of 150\d+ bytes .*MAX_JSON_BODY_BYTES \(100000\).*multipart/);
    // sent chunked (no Content-Length): refused as it comes
    const chunked = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(`${gw.url}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode!, text }));
      });
      req.on('error', reject);
      for (let i = 0; i < json.length; i += 16_384) req.write(json.slice(i, i + 16_384));
      req.end();
    });
    expect(chunked.status).toBe(413);
    expect(chunked.text).toMatch(/MAX_JSON_BODY_BYTES/);
    // KServe v2 REST's JSON too
    const rest = await fetch(`${gw.url}/v2/models/mobilenet/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: json,
    });
    expect(rest.status).toBe(413);
    expect(((await rest.json()) as any).error).toMatch(/MAX_JSON_BODY_BYTES/);
    // compressed for KServe REST (a few hundred bytes sent): refused once inflated, before it is parsed
    const gz = await fetch(`${gw.url}/v2/models/mobilenet/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
      body: gzipSync(json),
    });
    expect(gz.status).toBe(413);
    expect(((await gz.json()) as any).error).toMatch(/JSON body of 150\d+ bytes is past MAX_JSON_BODY_BYTES/);
    // the same JSON as a form's variables, or as a multipart request's operations, is parsed all the same: refused
    const form = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-graphql-yoga-csrf': '1' },
      body: new URLSearchParams({ query: '{ __typename }', variables: JSON.stringify({ pad: 'x'.repeat(150_000) }) }).toString(),
    });
    expect(form.status).toBe(413);
    expect(await form.text()).toMatch(/MAX_JSON_BODY_BYTES/);
    const boundary = 'json-limit';
    const operations = JSON.stringify({ query: CLASSIFY, variables: { f: null, pad: 'x'.repeat(150_000) } });
    const multipart = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'x-graphql-yoga-csrf': '1' },
      body:
        `--${boundary}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n${operations}\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="map"\r\n\r\n{"0":["variables.f"]}\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="0"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\nxx\r\n--${boundary}--\r\n`,
    });
    expect(multipart.status).toBe(413);
    expect(await multipart.text()).toMatch(/multipart field operations: .*MAX_JSON_BODY_BYTES/);
    // KServe binary data sent as application/json: only its JSON header is JSON (a photo of 160 kB after 200 bytes)
    const photo = await readFile(image('dog.jpg'));
    const header = JSON.stringify({
      inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], parameters: { binary_data_size: photo.length + 4 } }],
      outputs: [{ name: 'output', parameters: { classification: 1 } }],
    });
    const length = Buffer.alloc(4);
    length.writeUInt32LE(photo.length);
    const binary = await fetch(`${gw.url}/v2/models/mobilenet/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'inference-header-content-length': String(header.length) },
      body: Buffer.concat([Buffer.from(header), length, photo]),
    });
    expect(binary.status, await binary.clone().text()).toBe(200);
    // a multipart upload of 150 kB is not parsed as JSON: taken (the bytes are no image: INVALID_IMAGE, HTTP 200)
    const upload = await gw.gql(CLASSIFY, { f: null }, { files: { f: Buffer.alloc(150_000, 7) } });
    expect(upload.status).toBe(200);
    expect(errorCode(upload)).toBe('INVALID_IMAGE');
  });

  it('refuses a body over MAX_UPLOAD_BYTES with 413 and PAYLOAD_TOO_LARGE', async () => {
    const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: new Uint8Array(300_000) } });
    expect(r.status).toBe(413);
    expect(errorCode(r)).toBe('PAYLOAD_TOO_LARGE');
    const ok = await gw.gql(CLASSIFY, { f: null }, { files: { f: image('bee.jpeg') } });
    expect(ok.data.classify.predictions[0].classId).toBe(309);
  });

  it('refuses an oversized file sent without Content-Length (chunked) with 413 and PAYLOAD_TOO_LARGE', async () => {
    const boundary = 'limit-test';
    const ops = JSON.stringify({ query: CLASSIFY, variables: { f: null } });
    const head = `--${boundary}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n${ops}\r\n--${boundary}\r\nContent-Disposition: form-data; name="map"\r\n\r\n{"0":["variables.f"]}\r\n--${boundary}\r\nContent-Disposition: form-data; name="0"; filename="big.bin"\r\n\r\n`;
    const body = Buffer.concat([Buffer.from(head), Buffer.alloc(300_000, 1), Buffer.from(`\r\n--${boundary}--\r\n`)]);
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(
        `${gw.url}/graphql`,
        {
          method: 'POST',
          headers: {
            'content-type': `multipart/form-data; boundary=${boundary}`,
            'transfer-encoding': 'chunked',
            'x-graphql-yoga-csrf': '1',
          },
        },
        (res) => {
          let t = '';
          res.on('data', (d) => (t += d));
          res.on('end', () => resolve({ status: res.statusCode!, text: t }));
        },
      );
      req.on('error', reject);
      req.write(body.subarray(0, 1000)); // no Content-Length: the up-front check cannot see the size
      req.end(body.subarray(1000));
    });
    expect(status).toBe(413);
    expect(JSON.parse(text).errors[0].extensions.code).toBe('PAYLOAD_TOO_LARGE');
  });

  it('a refused request is answered to a client still sending its body: the connection lingers, reading, until the client is done (GraphQL and KServe REST)', async () => {
    // a client that sends a body far over MAX_UPLOAD_BYTES as fast as it can, reading as it goes: without a lingering
    // close the server closes with bytes unread, the kernel resets the connection and the answer is lost with it
    const port = Number(new URL(gw.url).port);
    for (const target of ['/graphql', '/v2/models/mobilenet/infer'])
      for (const framing of ['Content-Length: 20000000', 'Transfer-Encoding: chunked'])
        for (let i = 0; i < 5; i++) {
          const head = `POST ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${framing}\r\n\r\n`;
          const { answer, error } = await sendingAll(port, head, 20_000_000, { chunked: framing.startsWith('Transfer') });
          expect([answer.slice(0, 12), error], `${target}, ${framing}`).toEqual(['HTTP/1.1 413', null]);
          expect(answer, target).toMatch(/PAYLOAD_TOO_LARGE/);
        }
    // a client that stops sending and keeps its side open is not kept for long: read while it sends, closed once silent
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let text = '';
    let failed: string | null = null;
    socket.on('data', (d) => (text += d));
    socket.on('error', (e: NodeJS.ErrnoException) => (failed = e.code ?? e.message));
    socket.write('POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 20000000\r\n\r\n{');
    await until(async () => text.includes('PAYLOAD_TOO_LARGE'), 5000, 'the answer');
    await new Promise((r) => setTimeout(r, 1000));
    socket.write('x'); // still read: no reset
    await new Promise((r) => setTimeout(r, 300));
    expect(failed).toBeNull();
    await new Promise((r) => setTimeout(r, 4500)); // silent past the lingering's 2 to 4 s
    // the first byte written to a closed connection is answered with a reset, the next one fails
    await until(
      async () => {
        if (!socket.destroyed) socket.write('x');
        return failed !== null;
      },
      3000,
      'the connection reset: closed while the client was silent',
    );
    socket.destroy();
    expect((await gw.gql(CLASSIFY, { f: null }, { files: { f: image('bee.jpeg') } })).data.classify.predictions[0].classId).toBe(309);
  });

  it('a request pipelined behind one refused for its size, sent while the connection lingers, is not run', async () => {
    const port = Number(new URL(gw.url).port);
    const before = await inferences();
    const classify = await classifyJson();
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let text = '';
    socket.on('data', (d) => (text += d));
    socket.on('error', () => undefined);
    socket.write('POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 300000\r\n\r\n');
    await until(async () => text.includes('PAYLOAD_TOO_LARGE'), 5000, 'the answer');
    // the refused body, then a request after it on the same connection
    socket.write(Buffer.alloc(300_000, 32));
    socket.write(
      `POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${classify.length}\r\n\r\n${classify}`,
    );
    await new Promise((r) => setTimeout(r, 1000));
    expect(await inferences()).toBe(before);
    expect(text.match(/HTTP\/1.1/g)).toHaveLength(1);
    socket.destroy();
  });

  it('after an answer that closes its connection, nothing more sent on it is parsed: no WebSocket upgrade, no request parked', async () => {
    const port = Number(new URL(gw.url).port);
    const closed = async () => {
      const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      let text = '';
      socket.on('data', (d) => (text += d));
      socket.on('error', () => undefined);
      socket.write('GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n'); // 403, Connection: close
      await until(async () => text.startsWith('HTTP/1.1 403') && text.includes('}'), 5000, 'the 403');
      return { socket, text: () => text };
    };
    // an upgrade after it: answered on an ended socket, it threw where nobody listened (the process ended)
    for (const [host, target] of [
      ['evil.example', '/graphql'],
      ['127.0.0.1', '/elsewhere'],
      ['127.0.0.1', '/graphql'],
    ]) {
      const c = await closed();
      c.socket.write(
        `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n`,
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(c.text().match(/HTTP\/1.1 /g), `${host} ${target}`).toHaveLength(1);
      c.socket.destroy();
    }
    // requests pipelined after it: parsed and parked, never answered, they held memory without bound, and the
    // connection's close then held the event loop for seconds (Node ends each parked request in turn)
    const c = await closed();
    await new Promise((r) => c.socket.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.repeat(50_000), r));
    await new Promise((r) => setTimeout(r, 1500));
    expect(c.text().match(/HTTP\/1.1 /g)).toHaveLength(1);
    const stalls = watchStalls();
    c.socket.destroy();
    await new Promise((r) => setTimeout(r, 1000));
    // 1.5 s and more before (Node ended each parked request in turn); the bound leaves room for a GC of vitest's heap
    // on a busy machine
    expect(stalls.stop()).toBeLessThan(600);
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });

  it('requests behind a refusal that waits its turn (an open subscription ahead of it) are not parked without bound', async () => {
    const port = Number(new URL(gw.url).port);
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let text = '';
    socket.on('data', (d) => (text += d));
    socket.on('error', () => undefined);
    // a subscription answered as a stream, which stays open; behind it a request the server refuses (403, closing)
    socket.write(
      'GET /graphql?query=subscription%7BmodelStatus%7B__typename%7D%7D HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nx-graphql-yoga-csrf: 1\r\n\r\n',
    );
    await until(async () => text.startsWith('HTTP/1.1 200'), 5000, 'the subscription');
    socket.write('GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n');
    // then requests as fast as the server takes them, for 1.5 s: skipped, they were parsed and kept for nothing, with no
    // backpressure (they answer nothing), and the connection's close then ended them one by one
    const batch = Buffer.from('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.repeat(1000));
    const until15 = Date.now() + 1500;
    while (Date.now() < until15 && !socket.destroyed) {
      if (!socket.write(batch))
        await new Promise<void>((resolve) => {
          // drained, or 100 ms: the listener goes either way (left behind, they piled up past ten on this socket)
          const done = () => (clearTimeout(timer), socket.off('drain', done), resolve());
          const timer = setTimeout(done, 100);
          socket.once('drain', done);
        });
    }
    await new Promise((r) => setTimeout(r, 500));
    const stalls = watchStalls();
    socket.destroy();
    await new Promise((r) => setTimeout(r, 1000));
    // 1.5 s and more before (Node ended each parked request in turn); the bound leaves room for a GC of vitest's heap
    // on a busy machine
    expect(stalls.stop()).toBeLessThan(600);
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });

  it('requests sent in the same write as one refused with an answer that closes the connection are not run', async () => {
    const port = Number(new URL(gw.url).port);
    const before = await inferences();
    const body = await classifyJson();
    const classify = `POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let text = '';
    socket.on('data', (d) => (text += d));
    socket.on('error', () => undefined);
    socket.write('GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n' + classify.repeat(5));
    await new Promise((r) => setTimeout(r, 2000));
    expect(await inferences()).toBe(before);
    expect(text.match(/HTTP\/1.1 /g)).toHaveLength(1);
    socket.destroy();
  });

  it('refuses more files than MAX_FILES_PER_REQUEST', async () => {
    const q = `mutation($a: File!, $b: File!, $c: File!) { a: classify(model: "mobilenet", image: { file: $a }) { predictions { classId } } }`;
    const r = await gw.gql(
      q,
      { a: null, b: null, c: null },
      { files: { a: image('bee.jpeg'), b: image('bee.jpeg'), c: image('bee.jpeg') } },
    );
    expect(r.status).toBe(400);
    expect(errorCode(r)).toBe('LIMIT_EXCEEDED');
    expect(r.errors![0].message).toMatch(/Files limit exceeded/);
  });

  it('answers LIMIT_EXCEEDED past MAX_IMAGES_PER_REQUEST, and for queries too deep or with too many aliases', async () => {
    const three = `mutation($f: File!) { a: classify(model: "mobilenet", image: { file: $f }) { predictions { classId } } b: classify(model: "mobilenet", image: { file: $f }) { predictions { classId } } c: classify(model: "mobilenet", image: { file: $f }) { predictions { classId } } }`;
    const r = await gw.gql(three, { f: null }, { files: { f: image('bee.jpeg') } });
    expect(r.errors?.map((e) => e.extensions?.code)).toEqual(['LIMIT_EXCEEDED']);
    // the message names the setting and what to do
    expect(r.errors![0].message).toBe(
      'more than 2 images or inferences in one request (MAX_IMAGES_PER_REQUEST): send the others in another request',
    );
    const deep = await gw.gql(`{ models { versions { stats { batchSizes { size } } } } }`);
    expect(errorCode(deep)).toBe('LIMIT_EXCEEDED');
    expect(deep.errors![0].message).toMatch(/depth limit of 4 exceeded, found 5 \(MAX_QUERY_DEPTH\)$/);
    // through fragments too
    const viaFragment = await gw.gql(`query { models { ...M } } fragment M on Model { versions { stats { batchSizes { size } } } }`);
    expect(errorCode(viaFragment)).toBe('LIMIT_EXCEEDED');
    // introspection is not counted: GraphiQL's schema query is deeper than any limit a server would set
    const introspection = await gw.gql(`{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }`);
    expect(introspection.errors).toBeUndefined();
    const aliases = await gw.gql(`{ a: models { name } b: models { name } c: models { name } d: models { name } }`);
    expect(errorCode(aliases)).toBe('LIMIT_EXCEEDED');
    expect(aliases.errors![0].message).toMatch(/limit of 3 exceeded, found 4 \(MAX_ALIASES\)$/);
    expect((await gw.gql(`{ a: models { name } b: models { name } }`)).errors).toBeUndefined();
    // aliases inside a fragment count every time the fragment is spread
    const spread = await gw.gql(`{ models { ...A } m2: models { ...A } } fragment A on Model { x: name y: name }`);
    expect(errorCode(spread)).toBe('LIMIT_EXCEEDED');
    // refused documents are request errors: HTTP 400
    expect([deep.status, viaFragment.status, aliases.status, spread.status]).toEqual([400, 400, 400, 400]);
  });

  /** A WebSocket connection to this gateway once open (refused: an error naming the HTTP status of the upgrade). */
  const openWs = () =>
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(gw.url.replace('http', 'ws') + '/graphql', 'graphql-transport-ws');
      ws.on('error', reject);
      ws.once('open', () => resolve(ws));
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c));
        res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${body}`)));
      });
    });
  /** Wait until this client may open one more connection (a slot of MAX_WS_CONNECTIONS_PER_CLIENT is free). */
  const slotFrees = (ms: number, what: string) =>
    until(
      async () =>
        openWs().then(
          (ws) => (ws.close(), true),
          () => false,
        ),
      ms,
      what,
    );

  it('limits WebSocket connections per client and subscriptions per connection', async () => {
    const url = gw.url.replace('http', 'ws') + '/graphql';
    const a = await openWs();
    const b = await openWs();
    // the refusal names the setting
    await expect(openWs()).rejects.toThrow(
      /^HTTP 429: more than 2 WebSocket connections from one client \(MAX_WS_CONNECTIONS_PER_CLIENT\)/,
    );
    a.close();
    b.close();
    await slotFrees(5000, 'a slot frees up');

    const client = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0 });
    const results: string[] = [];
    for (let i = 0; i < 3; i++) {
      client.subscribe(
        { query: 'subscription { modelStatus { model } }' },
        { next: () => {}, error: (e: any) => results.push(`error ${JSON.stringify(e)}`), complete: () => results.push('complete') },
      );
    }
    await until(() => results.length > 0, 5000, 'third subscription refused');
    expect(results[0]).toMatch(/LIMIT_EXCEEDED/);
    await client.dispose();
  });

  it('WS_KEEPALIVE_MS: a WebSocket client that answers pings stays; one that reads none of what it is sent is closed, and its slot freed', async () => {
    const open = async () => {
      const ws = await openWs();
      ws.send(JSON.stringify({ type: 'connection_init' }));
      return ws;
    };
    const idle = await open();
    const stuck = await open();
    await new Promise((r) => setTimeout(r, 300));
    (stuck as unknown as { _socket: net.Socket })._socket.pause();
    // each ping within the message limit here (MAX_WS_MESSAGE_BYTES follows MAX_JSON_BODY_BYTES, 100000: a larger one
    // is closed 1009, a close the stuck client never reads, which ws then waits 30 s on)
    for (let n = 0; n < 200; n++) stuck.send(JSON.stringify({ type: 'ping', payload: { filler: 'x'.repeat(90_000) } }));
    // two connections per client here: a third is refused until the server has closed the one that reads nothing
    await expect(openWs()).rejects.toThrow(/429/);
    await slotFrees(8000, 'the stuck connection closed by the server (graphql-ws kept such a client 12-24 s)');
    expect(idle.readyState).toBe(WebSocket.OPEN); // it answered every ping (ws answers them itself)
    idle.close();
    stuck.terminate();
  });

  it('a client that sends a message past MAX_WS_MESSAGE_BYTES and reads nothing more frees its slot at once, not after 30 s', async () => {
    // (the tests before may still hold their slots a moment)
    const first = await until(() => openWs().catch(() => null), 5000, 'a slot');
    const stuck = await until(() => openWs().catch(() => null), 5000, 'a second slot');
    // (else graphql-ws closes them after 3 s for that, which frees a slot too)
    for (const ws of [first, stuck]) ws.send(JSON.stringify({ type: 'connection_init' }));
    await new Promise((r) => setTimeout(r, 300));
    (stuck as unknown as { _socket: net.Socket })._socket.pause(); // never reads the server's close
    stuck.send('x'.repeat(200_000)); // past this gateway's 100000
    // ws waited 30 s for the close frame of a client that reads nothing, its slot held all along
    await slotFrees(5000, 'the slot of the connection closed 1009');
    first.close();
    stuck.terminate();
  });
});

describe('an image path swapped while the server reads it (a folder under IMAGE_ROOTS that others write to)', () => {
  let gw: TestGateway;
  let dir: string;
  let root: string;
  let swapper: ChildProcess | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'swap-'));
    root = path.join(dir, 'root');
    await mkdir(root);
    await copyFile(image('bee.jpeg'), path.join(root, 'good.jpeg'));
    await copyFile(image('zebra.jpeg'), path.join(dir, 'secret.jpeg')); // outside the root
    execFileSync('mkfifo', [path.join(root, 'fifo')]);
    await mkdir(path.join(root, 'in'));
    await mkdir(path.join(dir, 'out'));
    await copyFile(image('bee.jpeg'), path.join(root, 'in', 'a.jpeg'));
    await copyFile(image('zebra.jpeg'), path.join(dir, 'out', 'a.jpeg'));
    gw = await startGateway({ models: models(), env: { IMAGE_ROOTS: root } });
  });
  afterAll(async () => {
    swapper?.kill('SIGKILL');
    // a reader blocked on the FIFO (the defect) is let go: a writer opens it and closes it
    await new Promise<void>((resolve) => {
      const w = spawn('sh', ['-c', `exec 3>"${path.join(root, 'fifo')}"`], { stdio: 'ignore' });
      const t = setTimeout(() => (w.kill('SIGKILL'), resolve()), 1000);
      w.on('exit', () => (clearTimeout(t), resolve()));
    });
    await gw?.close();
    await rm(dir, { recursive: true, force: true });
  });
  /**
   * A process that keeps renaming over `a.jpeg`, in turn, the photo (a hard link to good.jpeg) and `other`, and puts
   * in place of the folder `in` a symlink to a folder outside the root for a moment, while requests read `a.jpeg` or
   * `in/a.jpeg`: each request's check sees one, its read may see the other.
   */
  const swap = (other: string) => {
    const code = `
      const fs = require('node:fs');
      const [root, other] = process.argv.slice(1);
      const a = root + '/a.jpeg';
      // a pause in the state that reads well, so that requests are answered in it too, however busy the machine
      const pause = () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
      for (;;) {
        try {
          fs.rmSync(root + '/f.tmp', { force: true });
          fs.linkSync(root + '/good.jpeg', root + '/f.tmp');
          fs.renameSync(root + '/f.tmp', a);
          pause();
          fs.rmSync(root + '/o.tmp', { force: true });
          if (other === 'fifo') fs.linkSync(root + '/fifo', root + '/o.tmp');
          else fs.symlinkSync(other, root + '/o.tmp');
          fs.renameSync(root + '/o.tmp', a);
          // a folder on the way: in/ is moved aside and a symlink to a folder outside the root put in its place
          fs.renameSync(root + '/in', root + '/in.aside');
          fs.symlinkSync(root + '/../out', root + '/in');
          fs.rmSync(root + '/in');
          fs.renameSync(root + '/in.aside', root + '/in');
          pause();
        } catch {}
      }`;
    swapper = spawn(process.execPath, ['-e', code, root, other], { stdio: 'ignore' });
  };
  const stop = () =>
    new Promise<void>((resolve) => {
      if (!swapper || swapper.exitCode !== null) return resolve();
      swapper.once('exit', () => resolve());
      swapper.kill('SIGKILL');
    });
  const q = `mutation($p: String!) { classify(model: "mobilenet", image: { path: $p }, topK: 1) { predictions { classId } } }`;
  /** `n` classifications of `p`, four at a time: the classes answered, and the error codes. */
  const classifyMany = async (n: number, p = 'a.jpeg') => {
    const seen: Record<string, number> = {};
    let next = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next++ < n && !seen['no answer in 10 s']) {
          const r = await Promise.race([gw.gql<any>(q, { p }), new Promise<null>((resolve) => setTimeout(() => resolve(null), 10_000))]);
          const key = r === null ? 'no answer in 10 s' : (errorCode(r) ?? String(r.data?.classify.predictions[0].classId));
          seen[key] = (seen[key] ?? 0) + 1;
        }
      }),
    );
    return seen;
  };

  it('swapped for a symlink out of the roots between the check and the read: never read', async () => {
    swap(path.join(dir, 'secret.jpeg'));
    const seen = await classifyMany(200);
    await stop();
    expect(seen['340'], JSON.stringify(seen)).toBeUndefined(); // the zebra outside the root
    expect(seen['309'], JSON.stringify(seen)).toBeGreaterThan(0);
    expect(seen['INTERNAL_SERVER_ERROR'], JSON.stringify(seen)).toBeUndefined(); // a typed error for every other
  });

  it('a folder on the way swapped for a symlink out of the roots between the check and the read: never read', async () => {
    swap(path.join(dir, 'secret.jpeg'));
    const seen = await classifyMany(400, 'in/a.jpeg'); // a folder's swap is caught less often than a file's
    await stop();
    expect(seen['340'], JSON.stringify(seen)).toBeUndefined(); // dir/out/a.jpeg, the zebra outside the root
    // the path was read through the folder, or refused through the link (usually ~370 and ~15 of 400; once, in a full
    // run on a busy machine, no read succeeded at all)
    expect((seen['309'] ?? 0) + (seen['FORBIDDEN_PATH'] ?? 0), JSON.stringify(seen)).toBeGreaterThan(0);
    expect(seen['INTERNAL_SERVER_ERROR'], JSON.stringify(seen)).toBeUndefined(); // a typed error for every other
  });

  it('swapped for a FIFO between the check and the read: refused, no decoding thread waits on it for ever', async () => {
    swap('fifo');
    const seen = await classifyMany(200);
    await stop();
    expect(seen['no answer in 10 s'], JSON.stringify(seen)).toBeUndefined();
    expect(seen['309'], JSON.stringify(seen)).toBeGreaterThan(0);
    expect(seen['INTERNAL_SERVER_ERROR'], JSON.stringify(seen)).toBeUndefined(); // a typed error for every other
    await copyFile(image('bee.jpeg'), path.join(root, 'b.jpeg'));
    expect((await gw.gql<any>(q, { p: 'b.jpeg' })).data?.classify.predictions[0].classId).toBe(309);
  });
});

describe('a large model loads without holding the event loop', () => {
  it('loading a 150 MB model (dynamic batch and preprocessing rewritten into its graph, two engine instances): /health is answered meanwhile', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'large-model-'));
    const repo = await mkdtemp(path.join(os.tmpdir(), 'large-repo-'));
    // a server process, as npm start runs it: what is measured is what a liveness probe sees of it, not the heap of
    // this test process (vitest's, with the 300 MB this test builds the model from)
    const server = await startReplica({ name: 'large', repository: repo, env: { MODEL_ROOTS: dir, ENGINE_INSTANCES: '2' } });
    try {
      await mkdir(path.join(dir, 'large', '1'), { recursive: true });
      // a classifier of channel means, fixed at batch 1 (made dynamic at load), with 150 MB of weights it never uses
      const weights = new Uint8Array(150 * 1024 * 1024);
      for (let i = 0; i < weights.length; i += 4096) weights[i] = i & 255;
      const model = buildModel({
        nodes: [
          { op: 'GlobalAveragePool', inputs: ['image'], outputs: ['pooled'] },
          { op: 'Flatten', inputs: ['pooled'], outputs: ['scores'], attrs: { axis: 1 } },
        ],
        inputs: [{ name: 'image', elemType: ElemType.FLOAT, shape: [1, 3, 32, 32] }],
        outputs: [{ name: 'scores', elemType: ElemType.FLOAT, shape: [1, 3] }],
        initializers: [{ name: 'unused', elemType: ElemType.UINT8, dims: [weights.length], raw: weights }],
      });
      await writeFile(path.join(dir, 'large', '1', 'model.onnx'), model);
      await writeFile(path.join(dir, 'large', 'model.json'), JSON.stringify({ task: 'classification', instances: 2 }));
      // no stretch of the load holds the server's event loop for long: 0.7-2.4 s here before, when the model's bytes were
      // copied on the main thread for each rewrite and cloned into each engine worker; 45-85 ms after (90-120 ms with
      // three busy processes beside it on the two cores). The worst of thousands of round trips over seconds, between two
      // processes: up to three loads (unloaded between them), as a loaded machine can hold either process off the cores
      // for a while; the fault holds the server's loop in every load
      const load = async () => {
        let loading = true;
        const loaded = server
          .gql<any>(`mutation($p: String!) { loadModel(name: "large", path: $p) { versions { state } } }`, { p: path.join(dir, 'large') })
          .finally(() => (loading = false));
        // /health asked back to back on one keep-alive connection while the model loads
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        let worst = 0;
        let asked = 0;
        try {
          while (loading) {
            const t = performance.now();
            const status = await new Promise<number>((resolve, reject) =>
              http
                .get(`${server.url}/health`, { agent }, (res) => res.resume().on('end', () => resolve(res.statusCode!)))
                .on('error', reject),
            );
            expect(status).toBe(200);
            worst = Math.max(worst, performance.now() - t);
            asked++;
          }
        } finally {
          agent.destroy();
        }
        const r = await loaded;
        expect(r.errors).toBeUndefined();
        expect(r.data.loadModel.versions[0].state).toBe('AVAILABLE');
        expect(asked).toBeGreaterThan(20);
        return { value: worst, bound: 500 };
      };
      let loads = 0;
      const { best, all } = await timedTries(3, async () => {
        // another load after one past the bound: the model unloaded first, to be loaded anew
        if (loads++ > 0) expect((await server.gql<any>(`mutation { unloadModel(name: "large") { name } }`)).errors).toBeUndefined();
        return load();
      });
      expect(best.value, `the longest /health round trip of each load: ${all.map((t) => Math.round(t.value)).join(', ')} ms`).toBeLessThan(
        best.bound,
      );
      const form = new FormData();
      form.set(
        'operations',
        JSON.stringify({
          query: `mutation($f: File!) { classify(model: "large", image: { file: $f }, topK: 3) { predictions { classId } } }`,
          variables: { f: null },
        }),
      );
      form.set('map', JSON.stringify({ 0: ['variables.f'] }));
      form.set('0', new Blob([await readFile(image('bee.jpeg'))]), 'bee.jpeg');
      const c = (await (
        await fetch(`${server.url}/graphql`, { method: 'POST', body: form, headers: { 'x-graphql-yoga-csrf': '1' } })
      ).json()) as any;
      expect(c.errors).toBeUndefined();
      expect(c.data.classify.predictions).toHaveLength(3);
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
      await rm(repo, { recursive: true, force: true });
    }
  }, 180_000);
});

describe('access', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: models(),
      env: { ADMIN_TOKEN: 'admin-secret', API_TOKENS: 'client-a,client-b', CORS_ORIGINS: 'https://app.example' },
    });
  });
  afterAll(() => gw?.close());

  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

  it('API_TOKENS guard every GraphQL request', async () => {
    const q = `{ models { name } }`;
    expect(errorCode(await gw.gql(q))).toBe('UNAUTHENTICATED');
    expect(errorCode(await gw.gql(q, {}, { headers: bearer('nope') }))).toBe('FORBIDDEN');
    expect((await gw.gql(q, {}, { headers: bearer('client-b') })).data.models).toHaveLength(1);
    expect((await gw.gql(q, {}, { headers: bearer('admin-secret') })).data.models).toHaveLength(1);
    // a header sent in another form is told as such (it was "needs Authorization: Bearer <token>", as if none was sent)
    for (const authorization of ['Bearer client a', 'client-a', 'Basic Y2xpZW50LWE6']) {
      const odd = await gw.gql(q, {}, { headers: { authorization } });
      expect([errorCode(odd), odd.errors![0].message], authorization).toEqual([
        'UNAUTHENTICATED',
        'the Authorization header is not of the form "Bearer <token>" (one token, no spaces)',
      ]);
    }
    const r = await gw.gql(CLASSIFY, { f: null }, { files: { f: image('bee.jpeg') }, headers: bearer('client-a') });
    expect(r.data.classify.predictions[0].classId).toBe(309);
    // /health stays open for probes
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });

  it('a WebSocket refused for its token is told why, as HTTP says it (graphql-ws said only "Forbidden")', async () => {
    for (const [authorization, reason] of [
      [undefined, 'UNAUTHENTICATED: this gateway needs Authorization: Bearer <token>'],
      ['Bearer nope', 'FORBIDDEN: the token is not valid'],
      ['Bearer client a', 'UNAUTHENTICATED: the Authorization header is not of the form "Bearer <token>" (one token, no spaces)'],
    ] as const) {
      const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/graphql`, 'graphql-transport-ws');
      const closed = new Promise<[number, string]>((resolve) => ws.once('close', (code, why) => resolve([code, String(why)])));
      await new Promise((resolve) => ws.once('open', resolve));
      ws.send(JSON.stringify({ type: 'connection_init', payload: authorization ? { authorization } : {} }));
      expect(await closed, authorization).toEqual([4403, reason]);
    }
  });

  it('ADMIN_TOKEN guards loadModel, unloadModel and updateModel', async () => {
    for (const m of [
      `mutation { loadModel(name: "mobilenet") { name } }`,
      `mutation { unloadModel(name: "mobilenet") { name } }`,
      `mutation { updateModel(name: "mobilenet", description: "x") { name } }`,
    ]) {
      // a valid API token is not the admin token, and the answer says so
      const r = await gw.gql(m, {}, { headers: bearer('client-a') });
      expect([r.status, errorCode(r)], m).toEqual([403, 'FORBIDDEN']); // an error of who is calling: the request's status
      expect(r.errors![0].message, m).toMatch(/needs the admin token \(ADMIN_TOKEN\); the token sent is an API token/);
    }
    const noToken = await gw.gql(
      `mutation { updateModel(name: "mobilenet", description: "x") { name } }`,
      {},
      { headers: { authorization: '' } },
    );
    expect([noToken.status, errorCode(noToken)]).toEqual([401, 'UNAUTHENTICATED']);
    const ok = await gw.gql(
      `mutation { updateModel(name: "mobilenet", description: "by admin") { description } }`,
      {},
      { headers: bearer('admin-secret') },
    );
    expect(ok.data.updateModel.description).toBe('by admin');
  });

  it('keeps CSRF prevention on for multipart and answers CORS for configured origins only', async () => {
    const upload = encodeMultipart({ query: CLASSIFY }, await uploadFiles({ f: image('bee.jpeg') }));
    const r = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      body: upload.body,
      headers: { 'content-type': upload.contentType, ...bearer('client-a') },
    });
    expect(r.status).toBe(403);
    const refused = await r.json();
    expect(refused.errors[0].extensions.code).toBe('FORBIDDEN');
    expect(refused.errors[0].message).toMatch(/needs the header x-graphql-yoga-csrf .*CSRF/);
    // curl --data sends a form (application/x-www-form-urlencoded): the answer says to send JSON
    const form = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      body: JSON.stringify({ query: '{ models { name } }' }),
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...bearer('client-a') },
    });
    expect(form.status).toBe(403);
    expect(((await form.json()) as any).errors[0].message).toMatch(/content-type: application\/json/);
    const pre = await fetch(`${gw.url}/graphql`, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,authorization',
      },
    });
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example');
    const evil = await fetch(`${gw.url}/graphql`, {
      method: 'OPTIONS',
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
    });
    expect(evil.headers.get('access-control-allow-origin')).not.toBe('https://evil.example');
  });

  it('tags responses and log lines with a request id', async () => {
    const r = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'trace-42', ...bearer('client-a') },
      body: JSON.stringify({ query: '{ models { name } }' }),
    });
    expect(r.headers.get('x-request-id')).toBe('trace-42');
    const line = gw.logs.map((l) => JSON.parse(l)).find((l) => l.requestId === 'trace-42');
    expect(line).toMatchObject({ level: 'info', msg: 'request', method: 'POST', path: '/graphql', status: 200 });
    const other = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...bearer('client-a') },
      body: '{"query":"{ models { name } }"}',
    });
    expect(other.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    // an answer with errors says their codes in its log line (a GraphQL error is HTTP 200: the status alone hid it)
    await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'trace-43', ...bearer('client-a') },
      body: JSON.stringify({ query: 'mutation { classify(model: "nope", image: { base64: "AAAA" }) { predictions { label } } }' }),
    });
    const failed = gw.logs.map((l) => JSON.parse(l)).find((l) => l.requestId === 'trace-43');
    expect(failed).toMatchObject({ msg: 'request', status: 200, errors: ['MODEL_NOT_FOUND'] });
    expect(line.errors).toBeUndefined();
    // probes are not logged: a readiness probe every few seconds would fill the log
    const before = gw.logs.length;
    for (const p of ['/ready', '/health']) await fetch(`${gw.url}${p}`);
    expect(gw.logs.slice(before).filter((l) => /"msg":"request"/.test(l))).toEqual([]);
  });
});

/**
 * A raw request whose body the client sends as fast as it can (up to `total` bytes, in chunks of 64 KiB, framed as
 * chunked if told, then ends its side), reading whatever comes meanwhile, as curl, Go or undici do:
 * what was answered, and how the connection ended.
 */
function sendingAll(
  port: number,
  head: string,
  total: number,
  { chunked = false } = {},
): Promise<{ answer: string; error: string | null; ms: number }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let answer = '';
    let error: string | null = null;
    // half-open as curl or Python: the server's end of its side does not end the client's, which goes on sending
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('data', (d) => (answer += d));
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    socket.on('close', () => resolve({ answer, error, ms: performance.now() - t0 }));
    socket.write(head);
    const chunk = Buffer.alloc(64 * 1024, 32);
    let sent = 0;
    const pump = () => {
      while (!socket.destroyed && sent < total) {
        const piece = chunk.subarray(0, Math.min(chunk.length, total - sent));
        sent += piece.length;
        const framed = chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]) : piece;
        if (!socket.write(framed)) return void socket.once('drain', pump);
      }
      if (!socket.destroyed) socket.end(chunked ? '0\r\n\r\n' : '');
    };
    pump();
  });
}

describe('a route that throws', () => {
  it('answers 500 with a masked message, logs the error once as the server’s, and the process serves on', async () => {
    const { createHttpServer } = await import('../src/server/http.ts');
    const { createLogger } = await import('../src/log.ts');
    const lines: string[] = [];
    const thrower = (sent: boolean) => ({
      match: (p: string) => p === (sent ? '/after-headers' : '/before-headers'),
      handle(_req: http.IncomingMessage, res: http.ServerResponse) {
        if (sent) res.writeHead(200, { 'content-length': '10' });
        throw new RangeError('a bug in a route');
      },
    });
    const ok = { match: (p: string) => p === '/ok', handle: (_: http.IncomingMessage, res: http.ServerResponse) => void res.end('ok') };
    const server = createHttpServer({
      logger: createLogger('info', {}, (line) => lines.push(line)),
      routes: [thrower(false), thrower(true), ok],
      maxBodyBytes: 1024,
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    try {
      const res = await fetch(`${url}/before-headers`);
      expect(res.status).toBe(500);
      expect(await res.json()).toEqual({ errors: [{ message: 'Unexpected error.', extensions: { code: 'INTERNAL_SERVER_ERROR' } }] });
      // headers already sent: the connection is cut (the client sees the answer end short), nothing else
      await expect(fetch(`${url}/after-headers`).then((r) => r.text())).rejects.toThrow();
      expect(await (await fetch(`${url}/ok`)).text()).toBe('ok');
      const errors = lines.map((l) => JSON.parse(l)).filter((l) => l.level === 'error');
      expect(errors).toHaveLength(2);
      expect(errors[0].err.message).toBe('a bug in a route');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
