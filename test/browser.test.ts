import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import puppeteer, { type Browser, type HTTPRequest, type Page } from 'puppeteer-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture, image, ROOT, startGateway, type TestGateway } from './helpers.ts';
import { ElemType, identityModel } from './onnx-builder.ts';

/**
 * The page at / (ui/), served by the gateway: first over plain HTTP (what is served, how), then driven in a real
 * headless Chromium (Debian's /usr/bin/chromium, with puppeteer-core) against a live gateway with the real models and
 * photos. The screenshots it takes are the README's pictures (docs/*.jpg).
 */
const CHROMIUM = '/usr/bin/chromium';
const DOCS = path.join(ROOT, 'docs');
const ADMIN = 'browser-admin-token';
/** A model of tensors, which the page cannot run on a photo (and which loads at once). */
const RAW = { onnx: identityModel(ElemType.FLOAT, ['N', 3]), config: { task: 'raw' } };
const run = promisify(execFile);

/**
 * What stands between a browser and a gateway, on its own 127.0.0.1 port: everything passes through (the page, its
 * bundles, GraphQL, the WebSocket), but a POST whose body `hold` picks is taken and never answered, as a server that
 * stalled or a proxy that holds the connection would. `held` counts those, `abandoned` those the browser gave up (its
 * connection closed).
 */
async function holdingProxy(target: string) {
  const to = new URL(target);
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };
  const proxy = { url: '', hold: (_body: string) => false, held: 0, abandoned: 0, close: async () => {} };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (req.method === 'POST' && proxy.hold(body.toString('latin1'))) {
        proxy.held++;
        res.once('close', () => proxy.abandoned++);
        return;
      }
      const out = httpRequest({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode!, r.headers);
        r.pipe(res);
      });
      out.on('error', () => res.destroy());
      out.end(body);
    });
  });
  server.on('connection', track);
  server.on('upgrade', (req, socket: Socket, head: Buffer) => {
    const up = connect(Number(to.port), to.hostname);
    track(up);
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    up.write(`${lines.join('\r\n')}\r\n\r\n`);
    up.write(head);
    socket.pipe(up).pipe(socket);
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  proxy.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return proxy;
}

interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** The share of pixels that differ clearly between two pictures, outside `ignore` (1 when their sizes differ). */
async function changedShare(a: Buffer, b: Buffer, ignore: Rect | null): Promise<number> {
  const [x, y] = await Promise.all([a, b].map((p) => sharp(p).removeAlpha().raw().toBuffer({ resolveWithObject: true })));
  const { width, height } = x.info;
  if (width !== y.info.width || height !== y.info.height) return 1;
  const inside = (px: number, py: number) =>
    ignore !== null && px >= ignore.x && px < ignore.x + ignore.width && py >= ignore.y && py < ignore.y + ignore.height;
  let changed = 0;
  for (let p = 0; p < width * height; p++) {
    const i = p * 3;
    const diff = Math.max(
      Math.abs(x.data[i] - y.data[i]),
      Math.abs(x.data[i + 1] - y.data[i + 1]),
      Math.abs(x.data[i + 2] - y.data[i + 2]),
    );
    if (diff > 48 && !inside(p % width, Math.floor(p / width))) changed++;
  }
  return changed / (width * height);
}

// test what ui/src says now, not an older build
beforeAll(async () => {
  await run(process.execPath, [path.join(ROOT, 'ui', 'build.mjs')], { cwd: ROOT });
});

describe('the page at / over HTTP', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway();
  });
  afterAll(() => gw?.close());

  it('serves index.html and its bundles with their types, caching and compression', async () => {
    const page = await fetch(`${gw.url}/?model=mobilenet`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html;charset=utf-8');
    expect(page.headers.get('cache-control')).toBe('no-cache');
    expect(page.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(page.headers.get('content-security-policy')).toContain("connect-src 'self'");
    const html = await page.text();
    const js = /src="(\/assets\/app-\w+\.js)"/.exec(html)?.[1];
    const css = /href="(\/assets\/app-\w+\.css)"/.exec(html)?.[1];
    expect(js && css).toBeTruthy();

    const script = await fetch(`${gw.url}${js}`, { headers: { 'accept-encoding': 'br' } });
    expect(script.headers.get('content-type')).toBe('text/javascript');
    expect(script.headers.get('content-encoding')).toBe('br');
    expect(script.headers.get('cache-control')).toContain('immutable');
    expect((await script.text()).length).toBeGreaterThan(10_000); // fetch decodes brotli
    const style = await fetch(`${gw.url}${css}`);
    expect(style.headers.get('content-type')).toBe('text/css');
    expect(await style.text()).toContain('.box');
    // the compressed copies are served for the file they compress (by Accept-Encoding), not as files of their own (they
    // came as text/javascript without a Content-Encoding)
    for (const copy of [`${js}.gz`, `${js}.br`, `${css}.gz`, `${js}.gz/`, `${js}.br//`])
      expect((await fetch(`${gw.url}${copy}`)).status, copy).toBe(404);

    const plain = await fetch(`${gw.url}/`, { headers: { 'accept-encoding': 'identity' } });
    expect(plain.headers.get('content-encoding')).toBeNull();
    const etag = plain.headers.get('etag')!;
    expect((await fetch(`${gw.url}/`, { headers: { 'if-none-match': etag, 'accept-encoding': 'identity' } })).status).toBe(304);
  });

  it('ignores a Range header, whatever it says (one reversed range crashed the server), and serves the whole file', async () => {
    const { request } = await import('node:http');
    const get = (range: string) =>
      new Promise<{ status: number; bytes: number; contentRange: string | undefined }>((resolve, reject) => {
        const req = request(`${gw.url}/`, { headers: { range, 'accept-encoding': 'identity' } }, (r) => {
          let bytes = 0;
          r.on('data', (c: Buffer) => (bytes += c.length));
          r.on('end', () => resolve({ status: r.statusCode!, bytes, contentRange: r.headers['content-range'] }));
          r.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      });
    const whole = (await get('')).bytes;
    expect(whole).toBeGreaterThan(100);
    // reversed, suffix (sirv served the first bytes for "the last 10"), several, past the end, nonsense
    for (const range of [
      'bytes=5-1',
      'bytes=-10',
      'bytes=0-0,5-10',
      'bytes=0-5',
      'bytes=99999999-',
      'bytes=-',
      'pages=1-2',
      'bytes=1e3-2',
    ]) {
      const r = await get(range);
      expect(r, range).toEqual({ status: 200, bytes: whole, contentRange: undefined });
    }
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });

  it('the bundle is self-contained: no URL in it but XML namespaces, and it is small', async () => {
    const dist = path.join(ROOT, 'ui', 'dist');
    const files = [path.join(dist, 'index.html'), ...(await readdir(path.join(dist, 'assets'))).map((f) => path.join(dist, 'assets', f))];
    let bytes = 0;
    for (const f of files.filter((f) => /\.(html|js|css)$/.test(f))) {
      const text = await readFile(f, 'utf8');
      bytes += Buffer.byteLength(text);
      const urls = [...text.matchAll(/\b(?:https?|wss?):\/\/[^\s"'`)]+/g)].map((m) => m[0]);
      expect(
        urls.filter((u) => !u.startsWith('http://www.w3.org/')),
        f,
      ).toEqual([]);
    }
    expect(bytes).toBeLessThan(100 * 1024);
  });

  it('refuses other methods, unknown assets and paths out of the folder; GraphiQL stays at /graphql', async () => {
    expect((await fetch(`${gw.url}/`, { method: 'POST', body: 'x' })).status).toBe(405);
    expect((await fetch(`${gw.url}/assets/nope.js`)).status).toBe(404);
    for (const p of ['/assets/../../package.json', '/assets/%2e%2e/%2e%2e/package.json', '/assets/..%2f..%2fpackage.json']) {
      const res = await new Promise<number>((resolve, reject) => {
        // fetch() normalizes dot segments away: send the path as written
        import('node:http').then(({ get }) => get(`${gw.url}${p}`, (r) => resolve(r.statusCode!)).on('error', reject));
      });
      expect(res, p).toBe(404);
    }
    const graphiql = await fetch(`${gw.url}/graphql`, { headers: { accept: 'text/html' } });
    expect(graphiql.status).toBe(200);
    expect(await graphiql.text()).toMatch(/graphiql/i);
  });

  it('GraphiQL and the page cannot be framed by another page (GraphiQL was: a page of any origin framed it with a mutation in ?query= and one click ran it, as this machine)', async () => {
    for (const encoding of ['gzip', 'identity']) {
      const graphiql = await fetch(`${gw.url}/graphql?query=${encodeURIComponent('mutation { unloadModel(name: "m") { name } }')}`, {
        headers: { accept: 'text/html', 'accept-encoding': encoding },
      });
      expect(graphiql.status).toBe(200);
      expect(graphiql.headers.get('content-security-policy'), encoding).toMatch(/frame-ancestors 'none'/);
      expect(graphiql.headers.get('x-frame-options'), encoding).toBe('DENY');
      expect(graphiql.headers.get('x-content-type-options'), encoding).toBe('nosniff');
      expect(graphiql.headers.get('referrer-policy'), encoding).toBe('no-referrer');
      await graphiql.arrayBuffer();
    }
    // the page at / too, as the README says
    const page = await fetch(`${gw.url}/`);
    expect([page.headers.get('content-security-policy'), page.headers.get('x-frame-options')]).toEqual([
      expect.stringMatching(/frame-ancestors 'none'/),
      'DENY',
    ]);
    await page.arrayBuffer();
  });
});

const HAS_CHROMIUM = existsSync(CHROMIUM);
const inChromium = HAS_CHROMIUM
  ? 'the page in headless Chromium'
  : `the page in headless Chromium: SKIPPED, ${CHROMIUM} is not installed (apt-get install chromium; .ci/run installs it)`;

describe.skipIf(!HAS_CHROMIUM)(inChromium, () => {
  let gw: TestGateway;
  let browser: Browser;
  let page: Page;
  let profile: string;
  /** Every URL the page asked for (HTTP and WebSocket), and those refused for leaving 127.0.0.1. */
  const requested: string[] = [];
  const leaving: string[] = [];
  const problems: string[] = [];

  const text = (selector: string) => page.$$eval(selector, (els) => els.map((e) => (e.textContent ?? '').trim()));
  const stateOf = (model: string) => page.$eval(`.model[data-name="${model}"]`, (e) => e.getAttribute('data-state'));
  const waitForState = (model: string, state: string) =>
    page.waitForFunction((m, s) => document.querySelector(`.model[data-name="${m}"]`)?.getAttribute('data-state') === s, {}, model, state);
  const upload = async (file: string) => (await page.$('input[type=file]'))!.uploadFile(file);
  const firstPrediction = (label: string) =>
    page.waitForFunction((l) => document.querySelector('.prediction .label')?.textContent === l, {}, label);
  /** Until the page shows what `model` made of `picture` (earlier answers, e.g. on switching models, are not it). */
  const resultOf = (model: string, picture: string) => page.waitForSelector(`.output[data-result="${model}:${picture}"]`);
  /** Until the run of `picture` is over (answered or failed). */
  const settled = (picture: string) => page.waitForSelector(`.output[data-picture="${picture}"][data-busy="false"]`);
  /** A File made in the page from these bytes, then dropped or pasted as a user would. */
  const give = async (how: 'drop' | 'paste', file: string) => {
    const b64 = (await readFile(file)).toString('base64');
    await page.evaluate(
      (data, name, kind) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: 'image/jpeg' }));
        const target = document.querySelector('main')!;
        if (kind === 'drop') target.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        else target.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
      },
      b64,
      path.basename(file),
      how,
    );
  };
  /**
   * The README's pictures (JPEG: a tenth of a PNG's size for photos). A picture that differs from the one in docs/
   * only in its status line (the round-trip time) is left as it is, so a test run does not touch the committed files.
   */
  const shoot = async (name: string) => {
    const file = path.join(DOCS, `${name}.jpg`);
    const fresh = await sharp(await page.screenshot({ type: 'png' }))
      .jpeg({ quality: 85, mozjpeg: true })
      .toBuffer();
    const status = await page.$eval('.status', (e) => {
      const r = e.getBoundingClientRect();
      return { x: Math.floor(r.x) - 4, y: Math.floor(r.y) - 4, width: Math.ceil(r.width) + 8, height: Math.ceil(r.height) + 8 };
    });
    if (existsSync(file) && (await changedShare(await readFile(file), fresh, status)) < 0.0005) return;
    await writeFile(file, fresh);
  };
  const setToken = async (token: string) => {
    await page.click('input[name=token]', { count: 3 });
    await page.keyboard.press('Backspace');
    if (token) await page.type('input[name=token]', token);
    await page.keyboard.press('Tab'); // the token applies when the field is left (change event)
  };

  /** A tab that lists every URL it asks for, refuses (and lists) any leaving 127.0.0.1, and collects its errors. */
  const open = async (): Promise<Page> => {
    const tab = await browser.newPage();
    await tab.setViewport({ width: 1200, height: 760, deviceScaleFactor: 1 });
    // what the page asks for, as the network sees it (HTTP and WebSocket)...
    const cdp = await tab.createCDPSession();
    await cdp.send('Network.enable');
    cdp.on('Network.requestWillBeSent', (e) => requested.push(e.request.url));
    cdp.on('Network.webSocketCreated', (e) => requested.push(e.url));
    // ...and nothing may leave 127.0.0.1: such a request is refused, and listed
    await tab.setRequestInterception(true);
    tab.on('request', (r) => {
      const u = new URL(r.url());
      if (u.protocol === 'data:' || u.protocol === 'blob:' || u.hostname === '127.0.0.1') return void r.continue();
      leaving.push(r.url());
      void r.abort();
    });
    tab.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    tab.on('pageerror', (e) => problems.push(`page error: ${(e as Error).message}`));
    return tab;
  };

  beforeAll(async () => {
    gw = await startGateway({
      models: { mobilenet: fixture('mobilenet'), yolox: fixture('yolox'), bodypix: fixture('bodypix') },
      env: { ADMIN_TOKEN: ADMIN },
    });
    profile = await mkdtemp(path.join(os.tmpdir(), 'gw-chromium-'));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true, // --headless
      userDataDir: profile, // a fresh --user-data-dir
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = await open();
    await mkdir(DOCS, { recursive: true });
  });

  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    if (profile) await rm(profile, { recursive: true, force: true });
  });

  it('lists the models live, preselects ?model=, and classifies a chosen photo at once: zebra.jpeg is a zebra', async () => {
    await page.goto(`${gw.url}/?model=mobilenet`);
    await waitForState('mobilenet', 'AVAILABLE');
    expect((await text('.model .name')).sort()).toEqual(['bodypix', 'mobilenet', 'yolox']);
    expect(await page.$eval('.model.selected .name', (e) => e.textContent)).toBe('mobilenet');
    await page.waitForFunction(() => document.querySelector('.connection')?.textContent === 'live');
    await page.evaluate(() => ((window as unknown as { loadedOnce: boolean }).loadedOnce = true));

    await upload(image('zebra.jpeg'));
    await firstPrediction('zebra');
    const predictions = await text('.prediction');
    expect(predictions).toHaveLength(5);
    expect(predictions[0]).toMatch(/^zebra\s*\d+\.\d%$/);
    expect(await page.$eval('.latency', (e) => e.textContent)).toMatch(/^mobilenet · \d+ ms round trip$/);
    await shoot('screenshot-classify');
  });

  it('takes a dropped photo and a pasted one', async () => {
    await give('drop', image('bee.jpeg'));
    await firstPrediction('bee');
    await give('paste', image('snail.jpeg'));
    await firstPrediction('snail');
  });

  it('detects on dog.jpg with yolox: boxes labelled dog and bicycle, over the photo where they are', async () => {
    await page.click('.model[data-name="yolox"] .pick');
    expect(new URL(page.url()).search).toBe('?model=yolox');
    await upload(image('dog.jpg'));
    await resultOf('yolox', 'dog.jpg');
    await page.waitForFunction(() => {
      const labels = [...document.querySelectorAll('.box-label')].map((e) => e.textContent ?? '');
      return labels.some((l) => l.startsWith('dog ')) && labels.some((l) => l.startsWith('bicycle '));
    });
    const geometry = await page.$$eval('.box', (boxes) => {
      const photo = document.querySelector('.viewer img')!.getBoundingClientRect();
      return boxes.map((b) => {
        const r = b.getBoundingClientRect();
        return {
          label: b.querySelector('.box-label')!.textContent!.split(' ')[0],
          // the box's centre, as a fraction of the photo
          x: (r.left + r.width / 2 - photo.left) / photo.width,
          y: (r.top + r.height / 2 - photo.top) / photo.height,
        };
      });
    });
    const dog = geometry.find((g) => g.label === 'dog')!;
    const bike = geometry.find((g) => g.label === 'bicycle')!;
    // dog.jpg (768x576): the dog sits lower left (box 133,205 - 323,543), the bicycle spans the middle (61,133 - 572,428)
    expect(dog.x).toBeGreaterThan(0.2);
    expect(dog.x).toBeLessThan(0.4);
    expect(dog.y).toBeGreaterThan(0.55);
    expect(bike.y).toBeLessThan(dog.y);
    expect(await text('.objects li')).toEqual(expect.arrayContaining([expect.stringMatching(/^dog \d+%$/)]));
    await shoot('screenshot');
  });

  it('segments people1.jpeg with bodypix: the mask over the photo covers the people', async () => {
    await page.click('.model[data-name="bodypix"] .pick');
    await upload(image('people1.jpeg'));
    await resultOf('bodypix', 'people1.jpeg');
    expect(await text('.segment-class .label')).toEqual(['background', 'person']);
    // the mask is drawn once its PNG is decoded: the share of coloured pixels is the person share (~0.47)
    const covered = await page.waitForFunction(() => {
      const c = document.querySelector('canvas.mask') as HTMLCanvasElement | null;
      if (!c || c.width < 2) return 0;
      const px = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
      return n ? n / (c.width * c.height) : 0;
    });
    const share = (await covered.jsonValue()) as number;
    expect(share).toBeGreaterThan(0.35);
    expect(share).toBeLessThan(0.6);
    await shoot('screenshot-segment');
  });

  it('shows an unload made through the API without a reload, and the server errors readably', async () => {
    const r = await gw.gql(`mutation { unloadModel(name: "mobilenet") { name } }`, {}, { headers: { authorization: `Bearer ${ADMIN}` } });
    expect(r.errors).toBeUndefined();
    await waitForState('mobilenet', 'UNLOADED');
    expect(await page.evaluate(() => (window as unknown as { loadedOnce?: boolean }).loadedOnce)).toBe(true); // the same page

    await page.click('.model[data-name="mobilenet"] .pick');
    await upload(image('zebra.jpeg'));
    await settled('zebra.jpeg');
    expect(await page.$eval('.error', (e) => e.textContent)).toMatch(/^MODEL_NOT_READY .*mobilenet/);
    expect(await page.$('.output[data-result=""]')).not.toBeNull();

    await page.click('.model[data-name="yolox"] .pick');
    await give('drop', path.join(ROOT, 'package.json'));
    await settled('package.json');
    expect(await page.$eval('.error', (e) => e.textContent)).toMatch(/^INVALID_IMAGE /);
  });

  it('with a token, offers load and unload: a wrong one is refused (FORBIDDEN), the admin token loads the model', async () => {
    expect(await page.$('.model .admin')).toBeNull();
    // the page cannot tell whether the gateway has an admin token: its hint says both cases
    expect(await page.$eval('aside p.small', (e) => e.textContent)).toMatch(
      /admin token if the gateway sets ADMIN_TOKEN.*this machine only/,
    );
    await setToken('not-the-token');
    await page.waitForSelector('.model[data-name="mobilenet"] .admin');
    expect(await page.$eval('.model[data-name="mobilenet"] .admin', (e) => e.textContent)).toBe('Load');
    await page.click('.model[data-name="yolox"] .admin');
    // said by the model whose button it was
    await page.waitForFunction(() => document.querySelector('.model[data-name="yolox"] .model-note')?.textContent?.startsWith('FORBIDDEN'));
    expect(await stateOf('yolox')).toBe('AVAILABLE');

    await setToken(ADMIN);
    expect(await page.$('.model-note')).toBeNull(); // the refusal was of the token before
    await page.click('.model[data-name="mobilenet"] .admin');
    await waitForState('mobilenet', 'AVAILABLE');
    expect(await page.$('.model-note')).toBeNull();
    await page.click('.model[data-name="mobilenet"] .pick');
    await upload(image('zebra.jpeg'));
    await firstPrediction('zebra');
  });

  it('on a gateway with API tokens: says UNAUTHENTICATED readably, and works once the token is entered', async () => {
    const guarded = await startGateway({ models: { mobilenet: fixture('mobilenet') }, env: { API_TOKENS: 'reader-token' } });
    const tab = await open();
    try {
      await tab.goto(`${guarded.url}/`);
      await tab.waitForFunction(() => document.querySelector('.error')?.textContent?.startsWith('UNAUTHENTICATED'));
      expect(await tab.$$('.model')).toHaveLength(0);
      // the subscription was refused too (4403) and waits to try again: the token is entered during that wait, when
      // the page drops its WebSocket client (its dispose() then rejects; an unhandled rejection is a page error)
      await tab.waitForSelector('.connection.offline');
      // the badge says why: no token was given (graphql-ws's own close reason is just "Forbidden")
      await tab.waitForFunction(() => document.querySelector('.connection')?.getAttribute('title')?.startsWith('UNAUTHENTICATED'));
      const before = problems.length;
      await tab.type('input[name=token]', 'reader-token');
      await tab.keyboard.press('Tab');
      await tab.waitForFunction(() => document.querySelector('.model[data-name="mobilenet"]')?.getAttribute('data-state') === 'AVAILABLE');
      await tab.waitForFunction(() => document.querySelector('.connection')?.textContent === 'live');
      expect(await tab.$('.error')).toBeNull();
      await (await tab.$('input[type=file]'))!.uploadFile(image('zebra.jpeg'));
      await tab.waitForFunction(() => document.querySelector('.prediction .label')?.textContent === 'zebra');
      // the dropped client's wait (500 ms after the first refusal) is over by now: nothing was thrown when it ended
      await new Promise((r) => setTimeout(r, 1000));
      expect(problems.slice(before)).toEqual([]);
      // this gateway has no ADMIN_TOKEN: the token typed shows Load / Unload, which work from this machine
      await tab.click('.model[data-name="mobilenet"] .admin');
      await tab.waitForFunction(() => document.querySelector('.model[data-name="mobilenet"]')?.getAttribute('data-state') === 'UNLOADED');
      expect(await tab.$('.error')).toBeNull();
    } finally {
      await tab.close();
      await guarded.close();
    }
  });

  it("a wrong token's FORBIDDEN goes once a valid token lists the models (it stayed on screen)", async () => {
    const guarded = await startGateway({ models: { tensors: RAW }, env: { API_TOKENS: 'reader-token' } });
    const tab = await open();
    try {
      await tab.goto(`${guarded.url}/`);
      await tab.type('input[name=token]', 'wrong');
      await tab.keyboard.press('Tab');
      await tab.waitForFunction(() => document.querySelector('.error')?.textContent?.startsWith('FORBIDDEN'));
      await tab.click('input[name=token]', { count: 3 });
      await tab.type('input[name=token]', 'reader-token');
      await tab.keyboard.press('Tab');
      await tab.waitForSelector('.model[data-name="tensors"]');
      expect(await tab.$$eval('.error', (e) => e.map((x) => x.textContent))).toEqual([]);
    } finally {
      await tab.close();
      await guarded.close();
    }
  });

  it('refuses a token a header cannot carry, naming the Token field (it said NETWORK_ERROR, the gateway did not answer)', async () => {
    const tab = await open();
    try {
      await tab.goto(`${gw.url}/`); // (not /?model=: the last test counts the page's loads with a query)
      await tab.waitForSelector('.model[data-name="mobilenet"] .pick');
      await tab.click('.model[data-name="mobilenet"] .pick');
      await tab.type('input[name=token]', 'ключ');
      await tab.keyboard.press('Tab');
      await tab.waitForSelector('.error');
      expect(await tab.$eval('.error', (e) => e.textContent)).toMatch(/^INVALID_TOKEN the Token field /);
      await tab.waitForFunction(() => document.querySelector('.connection')?.getAttribute('title')?.startsWith('INVALID_TOKEN'));
      // a photo run with it is refused alike; once the token is taken out, that refusal goes (it stayed on screen)
      await (await tab.$('input[type=file]'))!.uploadFile(image('zebra.jpeg'));
      await tab.waitForSelector('.output[data-busy="false"]');
      expect(await tab.$eval('.error', (e) => e.textContent)).toMatch(/^INVALID_TOKEN/);
      await tab.click('input[name=token]', { count: 3 });
      await tab.keyboard.press('Backspace');
      await tab.keyboard.press('Tab');
      await tab.waitForFunction(() => document.querySelector('.connection')?.textContent?.includes('live'));
      await tab.waitForFunction(() => !document.querySelector('.error'));
    } finally {
      await tab.close();
    }
  });

  it('a partial answer shows the data it got and each error, code first, naming the part (the mask missing said nothing)', async () => {
    // past MAX_RESPONSE_BYTES the mask is left out (null) with LIMIT_EXCEEDED at segment.mask; the classes still come
    const small = await startGateway({ models: { bodypix: fixture('bodypix') }, env: { MAX_RESPONSE_BYTES: '1024' } });
    const tab = await open();
    try {
      await tab.goto(`${small.url}/?model=bodypix`);
      await (await tab.$('input[type=file]'))!.uploadFile(image('people1.jpeg'));
      await tab.waitForSelector('.output[data-result="bodypix:people1.jpeg"]');
      expect(await tab.$$eval('.segment-class .label', (e) => e.map((x) => x.textContent))).toEqual(['background', 'person']);
      expect(await tab.$$eval('.error', (e) => e.map((x) => x.textContent))).toEqual([
        expect.stringMatching(/^LIMIT_EXCEEDED mask: .*1024/),
      ]);
    } finally {
      await tab.close();
      await small.close();
    }
  });

  it("a model of tensors picked while a photo runs shows no answer, not the model before's, and is not busy", async () => {
    const gwRaw = await startGateway({ models: { mobilenet: fixture('mobilenet'), tensors: RAW } });
    const tab = await open();
    try {
      await tab.goto(`${gwRaw.url}/?model=mobilenet`);
      await tab.waitForSelector('.model[data-name="mobilenet"][data-state="AVAILABLE"]');
      // the answer takes a second to come back: time to pick the other model while it runs
      const cdp = await tab.createCDPSession();
      await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 1000, downloadThroughput: -1, uploadThroughput: -1 });
      // the upload ends, answered or given up (the page gives up a run whose answer it no longer wants)
      const ended = new Promise<void>((resolve) => {
        const end = (r: HTTPRequest) => r.headers()['content-type']?.startsWith('multipart/') && resolve();
        tab.on('requestfinished', end);
        tab.on('requestfailed', end);
      });
      await (await tab.$('input[type=file]'))!.uploadFile(image('zebra.jpeg'));
      await tab.waitForSelector('.running');
      await tab.click('.model[data-name="tensors"] .pick');
      await ended;
      await new Promise((r) => setTimeout(r, 300)); // the page has read it
      expect(await tab.$('.notice')).not.toBeNull();
      expect(await tab.$$('.prediction')).toHaveLength(0);
      expect(await tab.$eval('.output', (e) => e.getAttribute('data-busy'))).toBe('false');
    } finally {
      await tab.close();
      await gwRaw.close();
    }
  });

  it("a model of tensors picked after a failed run shows no error of the model before's (its INVALID_IMAGE stayed)", async () => {
    const gwRaw = await startGateway({ models: { mobilenet: fixture('mobilenet'), tensors: RAW } });
    const tab = await open();
    try {
      await tab.goto(`${gwRaw.url}/?model=mobilenet`);
      await tab.waitForSelector('.model[data-name="mobilenet"][data-state="AVAILABLE"]');
      await (await tab.$('input[type=file]'))!.uploadFile(path.join(ROOT, 'package.json'));
      await tab.waitForSelector('.output[data-picture="package.json"][data-busy="false"]');
      expect(await tab.$eval('.error', (e) => e.textContent)).toMatch(/^INVALID_IMAGE /);
      await tab.click('.model[data-name="tensors"] .pick');
      await tab.waitForSelector('.notice');
      expect(await tab.$('.error')).toBeNull();
    } finally {
      await tab.close();
      await gwRaw.close();
    }
  });

  it("a model's text cannot hide the results, widen the page or turn a confidence around", async () => {
    // a description of 300 KB (it pushed the results 136 000 px down), labels of 20 000 letters without a space (the page
    // grew 297 000 px wide), and labels that open a right-to-left override and do not close it ("85%" read "%58")
    const labels = Array.from({ length: 80 }, (_, i) => (i % 2 ? 'W'.repeat(20_000) : `\u202elabel${i}`)).join('\n');
    const hostile = await startGateway({
      models: {
        wordy: fixture('yolox', { description: 'lorem ipsum '.repeat(25_000) }),
        spoof: { ...fixture('yolox', { description: 'W'.repeat(20_000) }), files: { 'labels.txt': { text: labels } } },
      },
    });
    const tab = await open();
    try {
      for (const model of ['wordy', 'spoof']) {
        await tab.goto(`${hostile.url}/?model=${model}`);
        await tab.waitForFunction(
          (m) => document.querySelector(`.model[data-name="${m}"]`)?.getAttribute('data-state') === 'AVAILABLE',
          {},
          model,
        );
        await (await tab.$('input[type=file]'))!.uploadFile(image('dog.jpg'));
        await tab.waitForSelector(`.output[data-result="${model}:dog.jpg"]`);
        const layout = await tab.evaluate(() => ({
          width: document.documentElement.scrollWidth,
          viewport: document.documentElement.clientWidth,
          photoTop: document.querySelector('.output .viewer')!.getBoundingClientRect().top,
        }));
        expect(layout.width, model).toBeLessThanOrEqual(layout.viewport);
        expect(layout.photoTop, model).toBeLessThan(400); // in sight, under the description
      }
      // each object's confidence reads as a number, after its label (in the list and over the photo): the label's text is
      // laid out on its own
      const order = await tab.$$eval('.objects li, .box-label', (items) =>
        items.map((item) => {
          const left = (node: Node) => {
            const range = document.createRange();
            range.selectNodeContents(node);
            return range.getBoundingClientRect().left;
          };
          const nodes = [...item.childNodes];
          const label = nodes.find((n) => (n.textContent ?? '').includes('label'));
          const percent = nodes.find((n) => /\d%$/.test(n.textContent ?? ''));
          const onPhoto = item.classList.contains('box-label');
          return { label: label && left(label), percent: percent && left(percent), onPhoto, width: item.getBoundingClientRect().width };
        }),
      );
      expect(order.length).toBeGreaterThan(0);
      for (const o of order) {
        if (o.label !== undefined) expect(o.percent).toBeGreaterThan(o.label);
        if (o.onPhoto) expect(o.width).toBeLessThan(400);
      }
    } finally {
      await tab.close();
      await hostile.close();
    }
  });

  it('GraphiQL stores no token typed in its Headers tab (it kept it in localStorage for good)', async () => {
    const tab = await open();
    try {
      const sent: string[] = [];
      tab.on('request', (r) => r.method() === 'POST' && sent.push(r.headers().authorization ?? ''));
      await tab.goto(`${gw.url}/graphql`);
      await tab.waitForSelector('.graphiql-execute-button');
      const [headersTab] = await tab.$$("xpath/.//button[normalize-space()='Headers']");
      await headersTab.click();
      // the headers editor is the one shown in the tools pane (the variables editor is hidden)
      const editors = await tab.$$('.graphiql-editor-tool .graphiql-editor');
      const shown = [];
      for (const e of editors) if (await e.evaluate((el) => !el.closest('.hidden') && el.getBoundingClientRect().height > 0)) shown.push(e);
      expect(shown).toHaveLength(1);
      await shown[0].click();
      await tab.keyboard.type(`{"authorization": "Bearer ${ADMIN}"}`);
      await tab.click('.graphiql-execute-button');
      await tab.waitForFunction(() => document.querySelector('.graphiql-response')?.textContent?.includes('"models"'));
      expect(sent).toContain(`Bearer ${ADMIN}`); // it was typed where GraphiQL reads it
      await new Promise((r) => setTimeout(r, 1500)); // GraphiQL writes its storage 500 ms after a change
      const kept = await tab.evaluate((t) => Object.keys(localStorage).filter((k) => localStorage.getItem(k)!.includes(t)), ADMIN);
      expect(kept).toEqual([]);
    } finally {
      await tab.close();
    }
  });

  it('a photo moved away once chosen still runs on another model, and a folder chosen is named unreadable (both said NETWORK_ERROR, the gateway did not answer)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-page-'));
    const photo = path.join(dir, 'zebra.jpeg');
    await writeFile(photo, await readFile(image('zebra.jpeg')));
    const tab = await open();
    try {
      await tab.goto(`${gw.url}/`); // (not /?model=: the last test counts the page's loads with a query)
      await tab.waitForSelector('.model[data-name="mobilenet"][data-state="AVAILABLE"]');
      await tab.click('.model[data-name="mobilenet"] .pick');
      await (await tab.$('input[type=file]'))!.uploadFile(photo);
      await tab.waitForSelector('.output[data-result="mobilenet:zebra.jpeg"]');
      await rm(photo);
      await tab.click('.model[data-name="yolox"] .pick');
      await tab.waitForSelector('.output[data-result="yolox:zebra.jpeg"]');
      expect(await tab.$('.error')).toBeNull();
      await (await tab.$('input[type=file]'))!.uploadFile(dir);
      await tab.waitForSelector('.error');
      expect(await tab.$eval('.error', (e) => e.textContent)).toMatch(
        new RegExp(`^UNREADABLE_FILE cannot read ${path.basename(dir)}\\b.*choose an image file`),
      );
    } finally {
      await tab.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  /** Until `ok()` holds (checked every 20 ms), or fails after `ms`. */
  const until = async (what: string, ok: () => boolean, ms = 10_000) => {
    for (const end = Date.now() + ms; !ok(); await new Promise((r) => setTimeout(r, 20)))
      if (Date.now() > end) throw new Error(`still not so after ${ms} ms: ${what}`);
  };

  it('a run that never answers can be cancelled: the page says so, is usable at once, and Try again runs it (it waited for ever)', async () => {
    const proxy = await holdingProxy(gw.url);
    const tab = await open();
    try {
      await tab.goto(`${proxy.url}/?model=yolox`);
      await tab.waitForSelector('.model[data-name="yolox"][data-state="AVAILABLE"]');
      proxy.hold = (body) => body.includes('mutation Detect');
      await (await tab.$('input[type=file]'))!.uploadFile(image('dog.jpg'));
      await tab.waitForSelector('.running');
      await until('the upload reached the proxy', () => proxy.held === 1);
      await tab.click('.output .cancel');
      await tab.waitForSelector('.output[data-picture="dog.jpg"][data-busy="false"]');
      expect(await tab.$eval('.error', (e) => e.textContent)).toMatch(/^CANCELLED .*cancelled/);
      expect(await tab.$('.running')).toBeNull();
      // the request itself was given up (its connection closed), not only forgotten by the page
      await until('the browser gave the held request up', () => proxy.abandoned === 1);
      // usable again: Try again runs the same photo on the same model, and its answer replaces the message
      proxy.hold = () => false;
      await tab.click('.output .retry');
      await tab.waitForSelector('.output[data-result="yolox:dog.jpg"]');
      expect(await tab.$('.error')).toBeNull();
      expect(await tab.$('.output .retry')).toBeNull();
      // the status stream went on through all this
      expect(await tab.$eval('.connection', (e) => e.textContent)).toBe('live');
    } finally {
      await tab.close();
      await proxy.close();
    }
  });

  it('a run that never answers is given up past the bound (?timeout= seconds), saying so and what to try (it waited for ever)', async () => {
    const proxy = await holdingProxy(gw.url);
    const tab = await open();
    try {
      await tab.goto(`${proxy.url}/?model=yolox&timeout=2`);
      await tab.waitForSelector('.model[data-name="yolox"][data-state="AVAILABLE"]');
      proxy.hold = (body) => body.includes('mutation Detect');
      const t0 = Date.now();
      await (await tab.$('input[type=file]'))!.uploadFile(image('dog.jpg'));
      await tab.waitForSelector('.output[data-picture="dog.jpg"][data-busy="false"]', { timeout: 15_000 });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1900);
      expect(await tab.$eval('.error', (e) => e.textContent)).toMatch(/^TIMEOUT no answer within 2 s\b.*Try again.*\?timeout=/);
      await until('the browser gave the held request up', () => proxy.abandoned === 1);
      // picking a model keeps the bound in the address (?model= is rewritten, ?timeout= stays)
      await tab.click('.model[data-name="mobilenet"] .pick');
      expect(new URL(tab.url()).search).toBe('?model=mobilenet&timeout=2');
    } finally {
      await tab.close();
      await proxy.close();
    }
  });

  it('a ?timeout= that is no number of seconds is said on the page, with the bounds it keeps (it was ignored without a word)', async () => {
    // through a proxy that holds nothing, on an origin of its own (the last test counts the page's loads at gw.url/?)
    const proxy = await holdingProxy(gw.url);
    const tab = await open();
    try {
      for (const given of ['abc', '0', '-5', '']) {
        await tab.goto(`${proxy.url}/?timeout=${given}`);
        await tab.waitForSelector('.model[data-name="yolox"]');
        expect(await tab.$eval('.timeout-unusable', (e) => e.textContent), given).toMatch(
          new RegExp(`^\\?timeout=${given} is not a number of seconds above 0.*5 min for a run.*\\?timeout=600`),
        );
      }
      await tab.goto(`${proxy.url}/?timeout=2.5`);
      await tab.waitForSelector('.model[data-name="yolox"]');
      expect(await tab.$('.timeout-unusable')).toBeNull();
    } finally {
      await tab.close();
      await proxy.close();
    }
  });

  it('a read of the model list that never answers is given up past the bound, and read again (the list never came, nor any change after)', async () => {
    const proxy = await holdingProxy(gw.url);
    const tab = await open();
    try {
      proxy.hold = (body) => body.includes('query Models') && proxy.held === 0; // the first read only
      await tab.goto(`${proxy.url}/?timeout=2`);
      await until('the first read reached the proxy', () => proxy.held === 1);
      // the read asked for meanwhile (the WebSocket connected) is made once the first is given up
      await tab.waitForSelector('.model[data-name="yolox"][data-state="AVAILABLE"]', { timeout: 15_000 });
      expect(proxy.abandoned).toBe(1);
      expect(await tab.$('.error')).toBeNull();
    } finally {
      await tab.close();
      await proxy.close();
    }
  });

  it('a Load that never answers can be cancelled, or is given up past the bound, said by the model (the button stayed … for ever)', async () => {
    const small = await startGateway({ models: { tensors: RAW } });
    const proxy = await holdingProxy(small.url);
    const tab = await open();
    const note = () => tab.$eval('.model[data-name="tensors"] .model-note', (e) => e.textContent);
    try {
      await tab.goto(`${proxy.url}/`);
      await tab.type('input[name=token]', 'any-token'); // no ADMIN_TOKEN: Load works from this machine with any
      await tab.keyboard.press('Tab');
      await tab.waitForSelector('.model[data-name="tensors"][data-state="AVAILABLE"] .admin');
      await tab.click('.model[data-name="tensors"] .admin');
      await tab.waitForSelector('.model[data-name="tensors"][data-state="UNLOADED"]');

      proxy.hold = (body) => body.includes('mutation Load');
      await tab.click('.model[data-name="tensors"] .admin');
      await until('the Load reached the proxy', () => proxy.held === 1);
      await tab.click('.model[data-name="tensors"] .model-wait .cancel');
      await tab.waitForFunction(() =>
        document.querySelector('.model[data-name="tensors"] .model-note')?.textContent?.startsWith('CANCELLED'),
      );
      expect(await note()).toMatch(/^CANCELLED .*cancelled/);
      expect(await tab.$eval('.model[data-name="tensors"] .admin', (e) => [e.textContent, (e as HTMLButtonElement).disabled])).toEqual([
        'Load',
        false,
      ]);
      await until('the browser gave the held Load up', () => proxy.abandoned === 1);

      // past the bound (2 s here), given up, saying so; the token is kept for the tab
      await tab.goto(`${proxy.url}/?timeout=2`);
      await tab.waitForSelector('.model[data-name="tensors"][data-state="UNLOADED"] .admin');
      await tab.click('.model[data-name="tensors"] .admin');
      await tab.waitForFunction(
        () => document.querySelector('.model[data-name="tensors"] .model-note')?.textContent?.startsWith('TIMEOUT'),
        {
          timeout: 15_000,
        },
      );
      expect(await note()).toMatch(/^TIMEOUT no answer within 2 s\b.*\?timeout=/);
      await until('the browser gave the held Load up', () => proxy.abandoned === 2);

      // the next action replaces the message: a Load that answers loads the model, and nothing is left by it
      proxy.hold = () => false;
      await tab.click('.model[data-name="tensors"] .admin');
      await tab.waitForSelector('.model[data-name="tensors"][data-state="AVAILABLE"]');
      expect(await tab.$('.model-note')).toBeNull();
    } finally {
      await tab.close();
      await proxy.close();
      await small.close();
    }
  });

  /** The page of a gateway whose repository holds a model that cannot load (`broken`, beside `tensors`), in a tab. */
  const withBrokenModel = async (fn: (tab: Page, note: string) => Promise<void>) => {
    const broken = await startGateway({
      models: { tensors: RAW, broken: { onnx: new Uint8Array([8, 1, 2, 3, 4, 5]), config: { task: 'classification' } } },
    });
    const tab = await open();
    try {
      await tab.goto(`${broken.url}/`);
      await fn(tab, '.model[data-name="broken"] .model-note');
    } finally {
      await tab.close();
      await broken.close();
    }
  };

  it('a model that failed before the page opened shows its error by the model too, without a Load or a token (it was a tooltip only)', async () => {
    await withBrokenModel(async (tab, note) => {
      await tab.waitForSelector(note);
      expect(await tab.$eval(note, (e) => e.textContent)).toMatch(
        /^MODEL_LOAD_FAILED cannot load version 1 of broken: model\.onnx is not an ONNX model/,
      );
      expect(await tab.$('.model[data-name="tensors"] .model-note')).toBeNull();
      // dismissed, it stays gone when the list is read again (an Unload of another model changes the list)
      await tab.click(`${note} .dismiss`);
      expect(await tab.$(note)).toBeNull();
      await tab.type('input[name=token]', 'any-token');
      await tab.keyboard.press('Tab');
      await tab.click('.model[data-name="tensors"] .admin');
      await tab.waitForSelector('.model[data-name="tensors"][data-state="UNLOADED"]');
      expect(await tab.$(note)).toBeNull();
    });
  });

  it("a failed Load shows the version's error by the model, code first, readable and dismissable (it was a tooltip only)", async () => {
    await withBrokenModel(async (tab, note) => {
      await tab.type('input[name=token]', 'any-token');
      await tab.keyboard.press('Tab');
      await tab.waitForSelector('.model[data-name="broken"][data-state="MODEL_LOAD_FAILED"] .admin');
      await tab.click('.model[data-name="broken"] .admin');
      await tab.waitForSelector(note);
      expect(await tab.$eval(note, (e) => e.textContent)).toMatch(
        /^MODEL_LOAD_FAILED cannot load version 1 of broken: model\.onnx is not an ONNX model: .*protobuf/,
      );
      // in sight, in the list beside its model, its whole text laid out (not clipped to a line), within the list's width
      const where = await tab.$eval(note, (e) => {
        const r = e.getBoundingClientRect();
        const aside = document.querySelector('aside')!.getBoundingClientRect();
        return { height: r.height, inList: r.left >= aside.left && r.right <= aside.right, clipped: e.scrollHeight > e.clientHeight + 1 };
      });
      expect(where.height).toBeGreaterThan(20);
      expect(where).toMatchObject({ inList: true, clipped: false });
      // under its model, whose button stays on the model's line, in the list (the state's long code pushed it out)
      const row = await tab.$eval('.model[data-name="broken"]', (li) => {
        const [pick, admin, text] = ['.pick', '.admin', '.model-note'].map((s) => li.querySelector(s)!.getBoundingClientRect());
        return { beside: admin.left >= pick.right && admin.top < pick.bottom, under: text.top >= pick.bottom, right: admin.right };
      });
      expect(row).toMatchObject({ beside: true, under: true });
      expect(row.right).toBeLessThanOrEqual(await tab.$eval('aside', (e) => e.getBoundingClientRect().right));
      // dismissed, it goes; the next Load says it again
      await tab.click(`${note} .dismiss`);
      expect(await tab.$(note)).toBeNull();
      await tab.click('.model[data-name="broken"] .admin');
      await tab.waitForSelector(note);
      // an action on another model replaces it
      await tab.click('.model[data-name="tensors"] .admin');
      await tab.waitForSelector('.model[data-name="tensors"][data-state="UNLOADED"]');
      expect(await tab.$(note)).toBeNull();
    });
  });

  it('asked for nothing outside 127.0.0.1, and logged no error (no CSP violation either)', async () => {
    expect(leaving).toEqual([]);
    const origin = new URL(gw.url);
    const outside = requested.filter((u) => {
      const p = new URL(u);
      return !['data:', 'blob:'].includes(p.protocol) && p.hostname !== '127.0.0.1';
    });
    expect(outside).toEqual([]);
    // what it did ask for: the page, its bundles, GraphQL over HTTP and the subscription over WebSocket
    expect(requested).toEqual(
      expect.arrayContaining([
        `${gw.url}/?model=mobilenet`,
        expect.stringMatching(/\/assets\/app-\w+\.js$/),
        expect.stringMatching(/\/assets\/app-\w+\.css$/),
        `${gw.url}/graphql`,
        `ws://${origin.host}/graphql`,
      ]),
    );
    // the page loaded once: the unload showed through the subscription, not a reload
    expect(requested.filter((u) => u.startsWith(`${gw.url}/?`))).toHaveLength(1);
    // the refused admin action and the bad uploads are answered (HTTP 200 or 4xx) and shown, not thrown
    expect(problems.filter((p) => !/Failed to load resource: the server responded with a status of 4\d\d/.test(p))).toEqual([]);
  });
});
