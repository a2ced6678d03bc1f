import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { copyFile, lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GatewayClient, GatewayClientError } from '../src/client/client.ts';
import { matchLabel, percentile } from '../src/client/eval.ts';
import { fixture, image, ROOT, startGateway, type TestGateway } from './helpers.ts';

/**
 * The command-line client (`gateway`, package.json "bin") as a user runs it: the real bin/gateway.mjs in a child
 * process, against a live gateway with the real models, on the fixture photos.
 */
interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** `timeout`: ms after which the CLI is killed (0: none). */
function gateway(args: string[], env: Record<string, string> = {}, timeout = 0): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(ROOT, 'bin', 'gateway.mjs'), ...args],
      { cwd: ROOT, env: { ...process.env, GATEWAY_URL: '', GATEWAY_TOKEN: '', ...env }, maxBuffer: 16 * 1024 * 1024, timeout },
      (error, stdout, stderr) => resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

const ADMIN = 'cli-admin-token';
const run = promisify(execFile);

describe('gateway (command-line client)', () => {
  let gw: TestGateway;
  let tmp: string;
  let evalDir: string;
  let url: string[];

  beforeAll(async () => {
    gw = await startGateway({
      models: { mobilenet: fixture('mobilenet'), yolox: fixture('yolox'), bodypix: fixture('bodypix') },
      env: { ADMIN_TOKEN: ADMIN },
    });
    url = ['--url', gw.url];
    tmp = await mkdtemp(path.join(os.tmpdir(), 'gw-cli-'));
    // ImageFolder: four photos in the folders of their own classes, one (the pelican) filed as a zebra, and one
    // folder named by class id; expected: top-1 4/5
    evalDir = path.join(tmp, 'eval');
    const place = async (folder: string, photo: string) => {
      await mkdir(path.join(evalDir, folder), { recursive: true });
      await copyFile(image(photo), path.join(evalDir, folder, photo));
    };
    await place('zebra', 'zebra.jpeg');
    await place('zebra', 'pelican.jpeg');
    await place('bee', 'bee.jpeg');
    await place('snail', 'snail.jpeg');
    await place('144', 'pelican.jpeg');
    await writeFile(path.join(evalDir, 'bee', 'notes.txt'), 'not an image: skipped by extension');
  });
  afterAll(async () => {
    await gw?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('models: lists the models and the state of their versions', async () => {
    const text = await gateway(['models', ...url]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^mobilenet\s+classification\s+yes\s+v1 AVAILABLE$/m);
    expect(text.stdout).toMatch(/^yolox\s+detection\s+yes\s+v1 AVAILABLE$/m);
    const json = await gateway(['models', '--json'], { GATEWAY_URL: gw.url });
    expect(json.code, json.stderr).toBe(0);
    const models = JSON.parse(json.stdout) as { name: string; task: string; versions: { state: string }[] }[];
    expect(models.map((m) => m.name).sort()).toEqual(['bodypix', 'mobilenet', 'yolox']);
    expect(models.find((m) => m.name === 'bodypix')?.task).toBe('segmentation');
  });

  it('classify: the top classes of each photo, in the order given; --json', async () => {
    const text = await gateway(['classify', '--model', 'mobilenet', '-k', '3', ...url, image('zebra.jpeg'), image('bee.jpeg')]);
    expect(text.code, text.stderr).toBe(0);
    const blocks = text.stdout.split(/\n(?=\S)/);
    expect(blocks[0]).toContain('zebra.jpeg');
    expect(blocks[0].split('\n')[1]).toMatch(/^\s+\d+\.\d%\s+zebra$/);
    expect(blocks[1]).toContain('bee.jpeg');
    expect(blocks[1].split('\n')[1]).toMatch(/%\s+bee$/);
    expect(blocks[1].trim().split('\n')).toHaveLength(4); // the file and its top 3

    const json = await gateway(['classify', '-m', 'mobilenet', '--json', ...url, image('snail.jpeg'), image('pelican.jpeg')]);
    expect(json.code, json.stderr).toBe(0);
    const answers = JSON.parse(json.stdout);
    expect(answers.map((a: any) => [path.basename(a.file), a.result.predictions[0].label, a.result.predictions[0].classId])).toEqual([
      ['snail.jpeg', 'snail', 113],
      ['pelican.jpeg', 'pelican', 144],
    ]);
    expect(answers[0].result.predictions).toHaveLength(5);
  });

  it('classify: a file that is not an image fails alone, with the server code, and the exit code says so', async () => {
    const r = await gateway(['classify', '-m', 'mobilenet', ...url, path.join(ROOT, 'package.json'), image('zebra.jpeg'), 'missing.jpg']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('package.json: INVALID_IMAGE');
    expect(r.stderr).toContain('missing.jpg: UNREADABLE_FILE: cannot read missing.jpg: ENOENT (no such file)\n');
    // a folder given for a photo, and to eval a file or nothing: said in words, with what to give instead
    const folder = await gateway(['classify', '-m', 'mobilenet', ...url, path.join(ROOT, 'test')]);
    expect(folder.code).toBe(1);
    expect(folder.stderr).toMatch(
      /test: UNREADABLE_FILE: cannot read .*test: EISDIR \(a folder: give the images in it, as DIR\/\*\.jpg\)\n$/,
    );
    for (const [dir, why] of [
      [path.join(ROOT, 'package.json'), 'ENOTDIR (not a folder: --dir takes a folder of <label>/ folders)'],
      [path.join(ROOT, 'no-such-folder'), 'ENOENT (no such folder)'],
    ]) {
      const e = await gateway(['eval', '-m', 'mobilenet', '-d', dir, ...url]);
      expect(e.code).toBe(1);
      expect(e.stderr).toBe(`error: UNREADABLE_FILE: cannot read ${dir}: ${why}\n`);
    }
    expect(r.stdout).toMatch(/zebra\.jpeg.*\n\s+\d+\.\d%\s+zebra\n/);
    const json = await gateway(['classify', '-m', 'nope', '--json', ...url, image('zebra.jpeg')]);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)[0].error.code).toBe('MODEL_NOT_FOUND');
  });

  it('classify on a model of another task says which command runs it', async () => {
    const r = await gateway(['classify', '-m', 'yolox', ...url, image('zebra.jpeg')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/INVALID_INPUT.*model yolox is a detection model, not classification: use detect for it/);
    const s = await gateway(['detect', '-m', 'bodypix', ...url, image('zebra.jpeg')]);
    expect(s.stderr).toMatch(/model bodypix is a segmentation model, not detection: use segment for it/);
  });

  it('detect: labelled boxes in pixels; --out writes the photo with its boxes', async () => {
    const out = path.join(tmp, 'detected');
    const r = await gateway(['detect', '-m', 'yolox', '--out', out, ...url, image('dog.jpg')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/dog\.jpg\s+768x576, \d+ objects/);
    expect(r.stdout).toMatch(/^\s+\d+\.\d%\s+dog\s+\d+,\d+ - \d+,\d+$/m);
    expect(r.stdout).toMatch(/^\s+\d+\.\d%\s+bicycle\s+/m);
    const written = path.join(out, 'dog.detected.png');
    expect(r.stdout).toContain(`-> ${written}`);
    const meta = await sharp(await readFile(written)).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 768, 576]);

    const json = await gateway(['detect', '-m', 'yolox', '--json', '--min-confidence', '0.6', ...url, image('dog.jpg')]);
    const [answer] = JSON.parse(json.stdout);
    expect(answer.result.objects.map((o: any) => o.label).sort()).toEqual(['bicycle', 'car', 'dog']);
    expect(answer.result.objects.every((o: any) => o.confidence >= 0.6)).toBe(true);
    expect(answer.result.annotatedImage).toBeUndefined();
  });

  it('--out writes a file of its own for each photo, follows no link planted where it writes, and waits on no FIFO', async () => {
    // two photos of one name in different folders (one file was written, twice, the first photo's lost), and a folder
    // another user could have made (the README's /tmp/detected) with a link where the picture goes (it was written
    // through: the linked file was overwritten with the server's bytes) and a FIFO (the CLI waited on it for good)
    const dir = path.join(tmp, 'out-safety');
    const out = path.join(dir, 'out');
    await mkdir(path.join(dir, 'a'), { recursive: true });
    await mkdir(path.join(dir, 'b'), { recursive: true });
    await mkdir(out, { recursive: true });
    await copyFile(image('dog.jpg'), path.join(dir, 'a', 'dog.jpg'));
    await copyFile(image('zebra.jpeg'), path.join(dir, 'b', 'dog.jpg'));
    const victim = path.join(dir, 'precious.txt');
    await writeFile(victim, 'precious');
    await symlink(victim, path.join(out, 'dog.detected.png'));
    await run('mkfifo', [path.join(out, 'people1.segmented.png')]);

    const r = await gateway([
      'detect',
      '-m',
      'yolox',
      '--out',
      out,
      ...url,
      path.join(dir, 'a', 'dog.jpg'),
      path.join(dir, 'b', 'dog.jpg'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(victim, 'utf8')).toBe('precious');
    const first = path.join(out, 'dog.detected.png');
    const second = path.join(out, 'dog-2.detected.png');
    expect(r.stdout).toContain(`-> ${first}\n`);
    expect(r.stdout).toContain(`-> ${second}\n`);
    expect((await lstat(first)).isFile()).toBe(true); // the link itself was replaced
    expect((await sharp(await readFile(first)).metadata()).width).toBe(768); // a/dog.jpg is dog.jpg
    expect((await sharp(await readFile(second)).metadata()).width).not.toBe(768); // b/dog.jpg is the zebra
    expect((await readdir(out)).filter((f) => f.endsWith('.tmp'))).toEqual([]);

    const s = await gateway(['segment', '-m', 'bodypix', '--out', out, ...url, image('people1.jpeg')]);
    expect(s.code, s.stderr).toBe(0);
    expect((await lstat(path.join(out, 'people1.segmented.png'))).isFile()).toBe(true);
  });

  it('segment: the classes present and their share; --out writes the mask over the photo', async () => {
    const out = path.join(tmp, 'segmented');
    const r = await gateway(['segment', '-m', 'bodypix', '--json', '--out', out, ...url, image('people1.jpeg')]);
    expect(r.code, r.stderr).toBe(0);
    const [answer] = JSON.parse(r.stdout);
    expect([answer.result.width, answer.result.height]).toEqual([1200, 800]);
    const person = answer.result.classes.find((c: any) => c.label === 'person');
    expect(person.pixelFraction).toBeGreaterThan(0.3);
    expect(person.pixelFraction).toBeLessThan(0.6);
    expect(answer.result.written).toBe(path.join(out, 'people1.segmented.png'));
    expect((await sharp(await readFile(answer.result.written)).metadata()).width).toBe(1200);
    const text = await gateway(['segment', '-m', 'bodypix', ...url, image('people1.jpeg')]);
    expect(text.stdout).toMatch(/^\s+\d+\.\d%\s+person$/m);
  });

  it('eval: top-1 and top-5 accuracy, images/s and latency percentiles over an ImageFolder', async () => {
    const r = await gateway(['eval', '--model', 'mobilenet', '--dir', evalDir, '--concurrency', '3', ...url]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^images\s+5 in 4 classes/m);
    expect(r.stdout).toMatch(/^top-1\s+80\.0% \(4\/5\)$/m);
    expect(r.stdout).toMatch(/^top-5\s+80\.0% \(4\/5\)$/m);
    expect(r.stdout).toMatch(/^throughput\s+\d+\.\d images\/s at concurrency 3/m);
    expect(r.stdout).toMatch(/^latency\s+p50 [\d.]+ ms, p90 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms/m);
    expect(r.stdout).toMatch(/^zebra\s+340\s+2\s+50\.0%\s+50\.0%$/m);
    expect(r.stdout).toMatch(/^144\s+144\s+1\s+100\.0%\s+100\.0%$/m);

    const json = await gateway(['eval', '-m', 'mobilenet', '-d', evalDir, '--json', ...url]);
    const report = JSON.parse(json.stdout);
    expect(report).toMatchObject({ images: 5, answered: 5, top1Correct: 4, top5Correct: 4, top1: 0.8, errors: [] });
    expect(report.imagesPerSecond).toBeGreaterThan(0);
    const l = report.latencyMs;
    expect(0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max).toBe(true);
    expect(report.classes.find((c: any) => c.folder === 'bee')).toMatchObject({ classId: 309, label: 'bee', images: 1, top1: 1 });
    // what the gateway counted: every image answered by the model
    const stats = await gw.gql(`{ model(name: "mobilenet") { stats { requests } } }`);
    expect(stats.data.model.stats[0].requests).toBeGreaterThanOrEqual(10);
  });

  it('eval: folders that match no label, or two, are refused by name; a detector is refused', async () => {
    await mkdir(path.join(evalDir, 'unicorn'));
    await mkdir(path.join(evalDir, 'crane'));
    try {
      const r = await gateway(['eval', '-m', 'mobilenet', '-d', evalDir, ...url]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('folder unicorn matches none');
      expect(r.stderr).toMatch(/folder crane matches classes 134, 517/);
    } finally {
      await rm(path.join(evalDir, 'unicorn'), { recursive: true });
      await rm(path.join(evalDir, 'crane'), { recursive: true });
    }
    const d = await gateway(['eval', '-m', 'yolox', '-d', evalDir, ...url]);
    expect(d.code).toBe(1);
    expect(d.stderr).toContain('yolox is a detection model');
  });

  it('eval stopped with Ctrl-C on a terminal gives the cursor and line wrapping back, says how far it got, and exits 130', async () => {
    // enough photos to be stopped mid-run, one at a time
    const dir = path.join(tmp, 'many', 'zebra');
    await mkdir(dir, { recursive: true });
    for (let i = 0; i < 300; i++) await copyFile(image('zebra.jpeg'), path.join(dir, `${i}.jpeg`));
    // stderr taken for a terminal, as it is in a shell, so that the progress bar is drawn (it hides the cursor and
    // turns line wrapping off while it runs)
    const child = spawn(
      process.execPath,
      [
        '--import',
        'data:text/javascript,process.stderr.isTTY=true',
        path.join(ROOT, 'bin', 'gateway.mjs'),
        'eval',
        '-m',
        'mobilenet',
        '-d',
        path.dirname(dir),
        '-c',
        '1',
      ],
      { cwd: ROOT, env: { ...process.env, GATEWAY_URL: gw.url, GATEWAY_TOKEN: '' } },
    );
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await expect.poll(() => /\d+\/300 images/.test(stderr), { timeout: 20_000 }).toBe(true);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    const after = stderr.slice(stderr.lastIndexOf('\x1b[?25l'));
    expect(after).toContain('\x1b[?25h'); // the cursor shown again
    expect(after).toContain('\x1b[?7h'); // lines wrap again
    expect(stderr).toMatch(/eval: interrupted after \d+ of 300 images/);
    expect(stderr).not.toMatch(/\n\s+at /); // no stack trace
  }, 30_000);

  it('load and unload: the admin token is needed, and inference answers MODEL_NOT_READY while unloaded', async () => {
    const anonymous = await gateway(['unload', 'mobilenet', ...url]);
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toContain('UNAUTHENTICATED');
    expect(anonymous.stderr).toMatch(/--token <token> or GATEWAY_TOKEN/); // what to do about it
    const unloaded = await gateway(['unload', 'mobilenet', ...url], { GATEWAY_TOKEN: ADMIN });
    expect(unloaded.code, unloaded.stderr).toBe(0);
    expect(unloaded.stdout).toBe('mobilenet: v1 UNLOADED\n');
    const refused = await gateway(['classify', '-m', 'mobilenet', ...url, image('zebra.jpeg')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('MODEL_NOT_READY');
    // the list says it is not ready to serve (it said "yes": nothing of it kept the server from being ready)
    expect((await gateway(['models', ...url])).stdout).toMatch(/^mobilenet\s+classification\s+no\s+v1 UNLOADED$/m);
    const loaded = await gateway(['load', 'mobilenet', '--token', ADMIN, ...url]);
    expect(loaded.stdout).toBe('mobilenet: v1 AVAILABLE\n');
  });

  it('usage errors and an unreachable gateway are reported plainly', async () => {
    const noModel = await gateway(['classify', image('zebra.jpeg')]);
    expect(noModel.code).toBe(1);
    expect(noModel.stderr).toContain("required option '-m, --model <name>' not specified");
    const badK = await gateway(['classify', '-m', 'mobilenet', '-k', '0', image('zebra.jpeg')]);
    expect(badK.stderr).toContain('expected a positive integer');
    const help = await gateway(['--help']);
    expect(help.code).toBe(0);
    for (const c of ['models', 'classify', 'detect', 'segment', 'eval']) expect(help.stdout).toContain(`  ${c} `);
    // a photo refused for its token says what to do, as the admin commands do
    const closed = await startGateway({ env: { API_TOKENS: 'cli-user-token' } });
    const noToken = await gateway(['classify', '-m', 'mobilenet', '--url', closed.url, image('zebra.jpeg')]);
    expect(noToken.stderr).toMatch(/zebra\.jpeg: UNAUTHENTICATED: .*\(give a token with --token <token> or GATEWAY_TOKEN\)\n$/);
    // a port nothing listens on (that gateway's, once it is closed)
    await closed.close();
    const down = await gateway(['models', '--url', closed.url]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/UNREACHABLE: cannot reach http:\/\/127\.0\.0\.1:\d+\/graphql: ECONNREFUSED/);
    // and what to do about it, for a photo's error too
    expect(down.stderr).toMatch(/ \(is the gateway running\? npm start starts it; --url or GATEWAY_URL gives its address\)\n$/);
    const downPhoto = await gateway(['classify', '-m', 'mobilenet', '--url', closed.url, image('zebra.jpeg')]);
    expect(downPhoto.stderr).toMatch(/zebra\.jpeg: UNREACHABLE: .* \(is the gateway running\? npm start starts it/);
    // https:// to a gateway that speaks plain HTTP: it is running, the address is what is wrong
    const tls = await gateway(['models', '--url', gw.url.replace(/^http:/, 'https:')]);
    expect(tls.code).toBe(1);
    expect(tls.stderr).toMatch(
      /^error: UNREACHABLE: cannot reach https:.*: ERR_SSL_WRONG_VERSION_NUMBER \(it answers, but not over TLS: give its address as http:\/\/\)\n$/,
    );
    // an address without its scheme is read as http://, as curl reads it (it was ERR_INVALID_URL)
    const bare = await gateway(['models', '--json', '--url', gw.url.replace(/^http:\/\//, '')]);
    expect(bare.code, bare.stderr).toBe(0);
  });

  it('npx gateway runs the package bin in the project', async () => {
    const r = await new Promise<Ran>((resolve) =>
      execFile('npx', ['--no-install', 'gateway', 'models', '--json', '--url', gw.url], { cwd: ROOT }, (error, stdout, stderr) =>
        resolve({ code: error ? 1 : 0, stdout, stderr }),
      ),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).length).toBe(3);
  });
});

/**
 * A gateway that is not one: answers each request with what `answer` returns for it (the operation's name), to see what
 * the client does with answers a real gateway would not give (a compromised server, or one in the way).
 */
async function fakeGateway(
  answer: (operation: string, req: http.IncomingMessage, res: http.ServerResponse) => void,
  port = 0,
): Promise<{ url: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const body: Buffer[] = [];
    req.on('data', (c: Buffer) => body.push(c));
    req.on('end', () => answer(/(?:query|mutation) (\w+)/.exec(Buffer.concat(body).toString('latin1'))?.[1] ?? '', req, res));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

const sendJson = (res: http.ServerResponse, value: unknown) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
};

describe('gateway (command-line client) against a server that is not a gateway', () => {
  // what a terminal acts on: clear the screen, set the clipboard (OSC 52), a disguised link (OSC 8), the window title,
  // move the cursor up over earlier lines, CSI in its 8-bit form (U+009B), a carriage return; and a right-to-left override
  const HOSTILE =
    '\x1b[2J\x1b[H\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07\x1b]8;;https://evil.example/\x07link\x1b]8;;\x07\x1b]0;title\x07\x1b[1A\x9b2J\rzebra\u202egpj.exe';
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  const TERMINAL_CONTROLS = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;

  it('prints no terminal control from its answers (labels, model names, states, error codes and messages) but shows them escaped; --json keeps them exact', async () => {
    const fake = await fakeGateway((op, _req, res) => {
      if (op === 'Models')
        return sendJson(res, {
          data: {
            models: [
              {
                name: `m${HOSTILE}`,
                task: 'classification',
                description: '',
                ready: true,
                versions: [{ version: 1, state: `END${HOSTILE}`, errorCode: `E${HOSTILE}`, errorMessage: null }],
              },
            ],
          },
        });
      if (op === 'Classify')
        return sendJson(res, { data: { classify: { predictions: [{ classId: 1, label: HOSTILE, confidence: 0.9 }] } } });
      if (op === 'Detect')
        return sendJson(res, {
          data: {
            detect: {
              imageWidth: 2,
              imageHeight: 2,
              objects: [{ classId: 1, label: HOSTILE, confidence: 0.9, box: { xMin: 0, yMin: 0, xMax: 1, yMax: 1 } }],
              // not asked for (no --out): ignored (it was taken for one, and failed the photo)
              annotatedImage: 'iVBORw0KGgo=',
            },
          },
        });
      if (op === 'Segment') {
        res.writeHead(502, { 'content-type': 'text/html' });
        return res.end(`<h1>bad gateway</h1>${HOSTILE}`);
      }
      sendJson(res, { errors: [{ message: `refused ${HOSTILE}`, extensions: { code: `CODE${HOSTILE}` } }] });
    });
    try {
      const url = ['--url', fake.url];
      const runs = [
        await gateway(['models', ...url]),
        await gateway(['classify', '-m', 'x', ...url, image('zebra.jpeg')]),
        await gateway(['detect', '-m', 'x', ...url, image('dog.jpg')]),
        await gateway(['segment', '-m', 'x', ...url, image('people1.jpeg')]),
        await gateway(['load', 'x', ...url]),
      ];
      for (const r of runs) {
        expect(r.stdout + r.stderr).not.toMatch(TERMINAL_CONTROLS);
        expect(r.stdout + r.stderr).toContain('\\u001b]52;c;'); // shown, escaped
      }
      expect(runs[1].stdout).toMatch(/^\s+90\.0%\s+\\u001b\[2J.*\\u000dzebra\\u202egpj\.exe$/m);
      expect(runs[2].code, runs[2].stderr).toBe(0);
      expect(runs[3].stderr).toContain('HTTP_502');
      expect(runs[4].stderr).toMatch(/^error: CODE\\u001b\[2J.*: refused \\u001b\[2J/);
      // JSON says the same strings, escaped the JSON way: parsed, they are what the server sent
      const json = await gateway(['classify', '-m', 'x', '--json', ...url, image('zebra.jpeg')]);
      expect(json.stdout).not.toMatch(TERMINAL_CONTROLS);
      expect(JSON.parse(json.stdout)[0].result.predictions[0].label).toBe(HOSTILE);
    } finally {
      await fake.close();
    }
  });

  it('follows no redirect: says where it points (the query went on to the other host, a photo failed as UNREACHABLE)', async () => {
    const reached: string[] = [];
    const elsewhere = await fakeGateway((op, req, res) => {
      reached.push(`${req.method} ${op} ${req.headers.authorization ?? ''}`);
      sendJson(res, { errors: [{ message: 'elsewhere', extensions: { code: 'ELSEWHERE' } }] });
    });
    const target = `${elsewhere.url.replace('127.0.0.1', 'localhost')}/graphql`;
    const redirecting = await fakeGateway((_op, _req, res) => {
      res.writeHead(307, { location: target });
      res.end();
    });
    try {
      for (const args of [['models'], ['classify', '-m', 'x', image('zebra.jpeg')]]) {
        const r = await gateway([...args, '--url', redirecting.url, '--token', 'secret']);
        expect(r.code).toBe(1);
        expect(r.stderr, args[0]).toContain(
          `REDIRECTED: ${redirecting.url}/graphql redirects (307) to ${target}: give that address instead`,
        );
      }
      expect(reached).toEqual([]);
    } finally {
      await redirecting.close();
      await elsewhere.close();
    }
  });

  it('--timeout (or GATEWAY_TIMEOUT) gives up on an answer that does not come in full: headers never sent, or the answer a byte at a time', async () => {
    const timers: NodeJS.Timeout[] = [];
    const fake = await fakeGateway((op, _req, res) => {
      if (op === 'Models') return; // no answer at all
      // headers at once, then a byte every 200 ms for ever: undici's own body timeout restarts with each
      res.writeHead(200, { 'content-type': 'application/json' });
      timers.push(setInterval(() => res.write(' '), 200));
    });
    try {
      for (const args of [['models'], ['classify', '-m', 'x', image('zebra.jpeg')]]) {
        const t0 = performance.now();
        const r = await gateway([...args, '--url', fake.url, '--timeout', '1.5']);
        expect(r.code, args[0]).toBe(1);
        expect(r.stderr, args[0]).toContain(`TIMEOUT: ${fake.url}/graphql did not answer in full within 1.5 s (--timeout)`);
        expect(performance.now() - t0, args[0]).toBeLessThan(10_000);
      }
      const env = await gateway(['models', '--url', fake.url], { GATEWAY_TIMEOUT: '1' });
      expect(env.stderr).toContain('within 1 s (--timeout)');
      const bad = await gateway(['models', '--url', fake.url, '--timeout', '0']);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain('expected a number of seconds > 0');
    } finally {
      timers.forEach(clearInterval);
      await fake.close();
    }
  });

  it('reads no more of an answer than its limit (an endless one held 7.9 GB after a minute), whether announced or not', async () => {
    let sent = 0;
    const fake = await fakeGateway((op, _req, res) => {
      if (op === 'Models') {
        // announced: ten gigabytes (none of which comes)
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(10 * 1024 ** 3) });
        return res.write('{"data":');
      }
      // not announced: a string without end, as fast as it is read
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"data":{"classify":{"predictions":[{"label":"');
      const chunk = Buffer.alloc(1024 * 1024, 'a');
      const pump = () => {
        while (!res.destroyed && res.write(chunk)) sent += chunk.length;
        if (!res.destroyed) res.once('drain', pump);
      };
      res.on('close', () => res.removeAllListeners('drain'));
      pump();
    });
    try {
      const announced = await gateway(['models', '--url', fake.url]);
      expect(announced.code).toBe(1);
      expect(announced.stderr).toMatch(/RESPONSE_TOO_LARGE: .* answered 10737418240 bytes, more than the 268435456 this client reads/);
      const endless = await gateway(['classify', '-m', 'x', '--url', fake.url, image('zebra.jpeg')]);
      expect(endless.code).toBe(1);
      expect(endless.stderr).toMatch(/RESPONSE_TOO_LARGE: .* answered over 268435456 bytes/);
      // the importable client takes its own limit
      const client = new GatewayClient({ url: fake.url, maxResponseBytes: 1024 * 1024 });
      sent = 0;
      const err = await client.classify('x', image('zebra.jpeg')).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'RESPONSE_TOO_LARGE' });
      await new Promise((r) => setTimeout(r, 200));
      expect(sent).toBeLessThan(64 * 1024 * 1024); // the connection was dropped, not read to the end
    } finally {
      await fake.close();
    }
  });
});

describe('gateway (command-line client): answers that are wrong, partial or refused', () => {
  // each answer by the first segment of the URL's path (the CLI posts to <url>/graphql)
  const MODEL = { name: 'm', task: 'classification', description: '', ready: true, versions: [] };
  const OBJECTS = [{ classId: 1, label: 'dog', confidence: 0.9, box: { xMin: 0, yMin: 0, xMax: 1, yMax: 1 } }];
  const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
  const answers: Record<string, (op: string, res: http.ServerResponse) => void> = {
    wrongtypes: (op, res) =>
      sendJson(res, {
        data: {
          Models: { models: 'not a list' },
          Classify: { classify: { predictions: 'not a list' } },
          Detect: { detect: { imageWidth: 1, imageHeight: 1, objects: [{ ...OBJECTS[0], box: null }] } },
          Segment: { segment: { width: 1, height: 1, classes: [{ classId: 1, label: { toString: 1 }, pixelFraction: 1 }] } },
          Load: { loadModel: { name: 'm', versions: 'x' } },
        }[op],
      }),
    deep: (op, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`{"data":{"classify":{"predictions":[{"classId":1,"confidence":0.5,"label":${deep(200_000)}}]}}}`);
    },
    null: (_op, res) => sendJson(res, null),
    errors: (_op, res) => sendJson(res, { errors: 'not a list', data: null }),
    loadfailed: (_op, res) =>
      sendJson(res, {
        data: {
          loadModel: {
            ...MODEL,
            ready: false,
            versions: [{ version: 1, state: 'END', errorCode: 'MODEL_LOAD_FAILED', errorMessage: 'no' }],
          },
        },
      }),
    // what a gateway with MAX_RESPONSE_BYTES too small for the picture answers (HTTP 200)
    partial: (op, res) =>
      op === 'Detect'
        ? sendJson(res, {
            data: { detect: { imageWidth: 768, imageHeight: 576, objects: OBJECTS, annotatedImage: null } },
            errors: [{ message: 'more than 1024 bytes', path: ['detect', 'annotatedImage'], extensions: { code: 'LIMIT_EXCEEDED' } }],
          })
        : sendJson(res, {
            data: { segment: { width: 2, height: 2, classes: [{ classId: 1, label: 'person', pixelFraction: 1 }], overlay: null } },
            errors: [{ message: 'more than 1024 bytes', path: ['segment', 'overlay'], extensions: { code: 'LIMIT_EXCEEDED' } }],
          }),
    picture: (_op, res) =>
      sendJson(res, { data: { detect: { imageWidth: 768, imageHeight: 576, objects: OBJECTS, annotatedImage: 'iVBORw0KGgo=' } } }),
    // 16 MB of valid JSON, [{},{},...]: JSON.parse made it some 590 MB of heap
    dense: (_op, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`{"data":{"models":[${'{},'.repeat(16 << 18)}{}]}}`);
    },
    evalfails: (op, res) =>
      op === 'Model'
        ? sendJson(res, { data: { model: { ...MODEL, labels: ['zebra'] } } })
        : sendJson(res, {
            data: { classify: null },
            errors: [{ message: 'not an image', path: ['classify'], extensions: { code: 'INVALID_IMAGE' } }],
          }),
  };
  let fake: { url: string; close(): Promise<void> };
  let tmp: string;
  const at = (mode: string) => ['--url', `${fake.url}/${mode}`];
  beforeAll(async () => {
    fake = await fakeGateway((op, req, res) => answers[req.url!.split('/')[1]](op, res));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'gw-cli-answers-'));
  });
  afterAll(async () => {
    await fake?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });
  const noStack = (r: Ran) => {
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).not.toMatch(/^\s+at |TypeError|RangeError|node:internal/m);
    expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
  };

  it('an answer of the wrong types, nested 200000 deep or null is one error line and exit 1, not a stack trace', async () => {
    for (const args of [
      ['classify', '-m', 'x', image('zebra.jpeg'), ...at('wrongtypes')],
      ['detect', '-m', 'x', image('zebra.jpeg'), ...at('wrongtypes')],
      ['segment', '-m', 'x', image('zebra.jpeg'), ...at('wrongtypes')],
      ['segment', '-m', 'x', '--json', image('zebra.jpeg'), ...at('wrongtypes')],
      ['classify', '-m', 'x', image('zebra.jpeg'), ...at('deep')],
      ['classify', '-m', 'x', '--json', image('zebra.jpeg'), ...at('deep')],
      ['models', ...at('wrongtypes')],
      ['load', 'm', ...at('wrongtypes')],
      ['models', ...at('null')],
      ['models', ...at('errors')],
    ]) {
      const r = await gateway(args);
      noStack(r);
      if (!args.includes('--json')) expect(r.stderr, args.join(' ')).toMatch(/^(error|.*zebra\.jpeg): (MALFORMED_ANSWER|HTTP_200): /);
    }
    const text = await gateway(['classify', '-m', 'x', image('zebra.jpeg'), ...at('wrongtypes')]);
    expect(text.stderr).toContain(
      `MALFORMED_ANSWER: ${fake.url}/wrongtypes/graphql answered a string for classify.predictions, not a list`,
    );
    const json = await gateway(['classify', '-m', 'x', '--json', image('zebra.jpeg'), ...at('deep')]);
    expect(JSON.parse(json.stdout)[0].error.code).toBe('MALFORMED_ANSWER');
  });

  it('an answer of too many values is refused before it is parsed (16 MB of [{},...] ran a 256 MB heap out: exit 134)', async () => {
    const r = await gateway(['models', ...at('dense')], { NODE_OPTIONS: '--max-old-space-size=256' });
    noStack(r);
    expect(r.stderr).toMatch(/^error: RESPONSE_TOO_LARGE: .* answered more than 1000000 values/);
  });

  it('load exits 1 when the model did not load (errorCode on a version), printing what became of it', async () => {
    const r = await gateway(['load', 'm', ...at('loadfailed')]);
    expect(r.stdout).toBe('m: v1 END MODEL_LOAD_FAILED\n');
    expect(r.code).toBe(1);
  });

  it('a partial answer (the picture null, LIMIT_EXCEEDED at its path) prints what came and each error with its field; exit 1', async () => {
    const d = await gateway(['detect', '-m', 'x', '--out', path.join(tmp, 'partial'), image('dog.jpg'), ...at('partial')]);
    expect(d.code).toBe(1);
    expect(d.stdout).toMatch(/dog\.jpg\s+768x576, 1 object .*\n\s+90\.0%\s+dog\s+0,0 - 768,576\n$/);
    expect(d.stderr).toMatch(/dog\.jpg: detect\.annotatedImage: LIMIT_EXCEEDED: more than 1024 bytes\n$/);
    const s = await gateway(['segment', '-m', 'x', '--out', path.join(tmp, 'partial'), '--json', image('people1.jpeg'), ...at('partial')]);
    expect(s.code).toBe(1);
    const [answer] = JSON.parse(s.stdout);
    expect(answer.result.classes[0].label).toBe('person');
    expect(answer.errors).toEqual([{ code: 'LIMIT_EXCEEDED', message: 'more than 1024 bytes', path: 'segment.overlay' }]);
  });

  it('--out that cannot be written names --out and still prints the results; under /proc it fails, not spins', async () => {
    const file = path.join(tmp, 'a-file');
    await writeFile(file, 'x');
    for (const out of [file, '/proc/gw-cli-nope/x']) {
      if (out.startsWith('/proc') && process.platform !== 'linux') continue;
      const t0 = performance.now();
      const r = await gateway(['detect', '-m', 'x', '--out', out, image('dog.jpg'), ...at('picture')], {}, 15_000);
      expect(performance.now() - t0).toBeLessThan(10_000);
      expect(r.code, out).toBe(1);
      expect(r.stdout).toMatch(/^\s+90\.0%\s+dog\s+/m);
      expect(r.stderr, out).toMatch(/dog\.jpg: --out: OUT_NOT_WRITTEN: cannot write .*: E[A-Z]+ \(give --out a folder/);
    }
  }, 30_000);

  it('a --token an HTTP header cannot carry, or a --url that is not http(s), is refused naming the option (not UNREACHABLE)', async () => {
    for (const [args, env] of [
      [['--token', 'ключ'], {}],
      [['--token', 'api one'], {}],
      [[], { GATEWAY_TOKEN: 'api-one\nsecret' }],
    ] as const) {
      const r = await gateway(['models', ...at('null'), ...args], env);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('--token');
      expect(r.stderr).not.toMatch(/ключ|api one|secret|UNREACHABLE|is the gateway running/);
    }
    for (const url of ['ftp://127.0.0.1:19930', 'file:///etc/passwd', 'http://[::1']) {
      const r = await gateway(['models', '--url', url]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("option '--url <url>'");
      expect(r.stderr).toContain('expected the gateway’s http:// or https:// address');
      expect(r.stderr).not.toMatch(/UNREACHABLE|is the gateway running/);
    }
  });

  it('--top-k, --max-detections and --version past what the gateway takes are refused naming them', async () => {
    for (const [option, value] of [
      ['--top-k', '99999999999'],
      ['--top-k', '1001'],
      ['--max-detections', '10001'],
      ['--version', '2147483648'],
    ]) {
      const command = option === '--max-detections' ? 'detect' : 'classify';
      const r = await gateway([command, '-m', 'x', option, value, image('zebra.jpeg'), ...at('null')]);
      expect(r.code).toBe(1);
      expect(r.stderr, option).toMatch(
        new RegExp(`option '.*${option} <n>' argument '${value}' is invalid. expected a positive integer, at most`),
      );
    }
  });

  it('eval where every image failed gives no rate nor 0.0 ms latencies', async () => {
    const dir = path.join(tmp, 'eval', 'zebra');
    await mkdir(dir, { recursive: true });
    await copyFile(image('zebra.jpeg'), path.join(dir, 'a.jpeg'));
    const r = await gateway(['eval', '-m', 'x', '-d', path.dirname(dir), ...at('evalfails')]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^throughput\s+none: no image answered/m);
    expect(r.stdout).toMatch(/^latency\s+none: no image answered$/m);
    expect(r.stdout).toMatch(/^errors\s+INVALID_IMAGE x1/m);
    const json = JSON.parse((await gateway(['eval', '-m', 'x', '-d', path.dirname(dir), '--json', ...at('evalfails')])).stdout);
    expect(json).toMatchObject({ answered: 0, imagesPerSecond: 0, latencyMs: null });
  });
});

describe("the README's command-line examples, run as written against the default repository", () => {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(
    readme.indexOf('## Command-line client'),
    readme.indexOf('\n## ', readme.indexOf('## Command-line client') + 3),
  );
  // each ```sh block, with the ```text block that shows its output (if one follows)
  const examples = [...section.matchAll(/```sh\n([\s\S]*?)```\n(?:\n```text\n([\s\S]*?)```)?/g)].map((m) => ({
    code: m[1],
    output: m[2] ?? '',
  }));
  let gw: TestGateway;
  let tmp: string;
  beforeAll(async () => {
    gw = await startGateway({ root: path.join(ROOT, 'models') }); // read-only: the examples load nothing
    tmp = await mkdtemp(path.join(os.tmpdir(), 'gw-cli-readme-'));
  });
  afterAll(async () => {
    await gw?.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('has an example of every command', () => {
    for (const c of ['models', 'classify', 'detect', 'segment', 'eval']) expect(section).toMatch(new RegExp(`npx gateway ${c} `));
    expect(examples.length).toBeGreaterThanOrEqual(3);
  });

  it.each(examples.map((e, i) => [i + 1, e] as const))('example %i', async (_, { code, output }) => {
    expect(code).toContain('--url http://127.0.0.1:4000');
    // the test's server, and /tmp paths in a folder of the test's own
    const command = code.replaceAll('http://127.0.0.1:4000', gw.url).replaceAll('/tmp/', `${tmp}/`);
    const { stdout } = await run('bash', ['-c', `set -eo pipefail\n${command}`], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });
    // every line of the output shown, but those that vary (times, rates) or are cut (...)
    const steady = output.split('\n').filter((l) => l.trim() && !/\d ms|images\/s|\.\.\./.test(l));
    for (const line of steady) expect(stdout.replaceAll(`${tmp}/`, '/tmp/'), line).toContain(line);
  });
});

describe('GatewayClient and eval helpers (typed, importable)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } });
  });
  afterAll(() => gw?.close());

  it('a token no header can carry, or an address that is not http(s), is refused when the client is made, the token not quoted', async () => {
    for (const token of ['ключ', 'api one', 'a\nsecret'])
      expect(() => new GatewayClient({ url: gw.url, token }), token).toThrow(
        expect.objectContaining({ message: expect.not.stringMatching(/ключ|api one|secret/) }),
      );
    expect(() => new GatewayClient({ url: gw.url, token: 'ключ' })).toThrow(/^token: /);
    for (const url of ['ftp://127.0.0.1:1', 'not a url']) expect(() => new GatewayClient({ url }), url).toThrow(/^url: /);
  });

  it("classify's --min-confidence takes any number (a model giving raw scores takes any bound; the gateway judges)", async () => {
    const r = await gateway(['classify', '-m', 'mobilenet', '--min-confidence', '-1', '--url', gw.url, image('zebra.jpeg')]);
    expect(r.stderr).toMatch(/INVALID_INPUT: minConfidence must be 0\.\.1: mobilenet gives probabilities/);
    const bad = await gateway(['classify', '-m', 'mobilenet', '--min-confidence', 'much', '--url', gw.url, image('zebra.jpeg')]);
    expect(bad.stderr).toMatch(/--min-confidence.*expected a number/);
  });

  it('classify takes a path or bytes; errors carry the server code', async () => {
    const client = new GatewayClient({ url: `${gw.url}/graphql` });
    expect((await client.classify('mobilenet', image('zebra.jpeg'), { topK: 1 })).predictions).toEqual([
      expect.objectContaining({ classId: 340, label: 'zebra' }),
    ]);
    const bytes = await readFile(image('bee.jpeg'));
    expect((await client.classify('mobilenet', { name: 'b.jpeg', bytes })).predictions[0].label).toBe('bee');
    const err = await client.detect('mobilenet', image('zebra.jpeg')).catch((e) => e);
    expect(err).toBeInstanceOf(GatewayClientError);
    expect(err.code).toBe('INVALID_INPUT');
    expect((await client.model('mobilenet'))?.labels?.[340]).toBe('zebra');
    expect(await client.model('nope')).toBeNull();
  });

  it('matches folder names to labels: id, whole label, one of its names, any case and separator', () => {
    const labels = ['tench, Tinca tinca', 'great white shark, white shark', 'crane', 'tiger cat', 'crane'];
    expect(matchLabel('1', labels)).toBe(1);
    expect(matchLabel('tench', labels)).toBe(0);
    expect(matchLabel('Great_White-Shark', labels)).toBe(1);
    expect(matchLabel('white_shark', labels)).toBe(1);
    expect(matchLabel('tiger_cat', labels)).toBe(3);
    expect(() => matchLabel('crane', labels)).toThrow(/matches classes 2, 4/);
    expect(() => matchLabel('tiger', labels)).toThrow(/matches none/);
    expect(() => matchLabel('9', labels)).toThrow(/no class 9/);
  });

  it('percentile is nearest-rank', () => {
    const v = Array.from({ length: 100 }, (_, i) => i + 1);
    expect([percentile(v, 50), percentile(v, 90), percentile(v, 99), percentile(v, 100)]).toEqual([50, 90, 99, 100]);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBe(0);
  });
});

describe('gateway (command-line client): limits of --timeout and what --out leaves behind', () => {
  it('--timeout past what a timer can wait (24.8 days) is refused as an argument, not a TIMEOUT at once or a CLIENT_ERROR', async () => {
    // answers after 300 ms: a 25-day timeout must not give up first (Node runs a timer past 2^31-1 ms after 1 ms)
    const fake = await fakeGateway((_op, _req, res) => void setTimeout(() => sendJson(res, { data: { models: [] } }), 300), 4931);
    try {
      for (const timeout of ['2200000', '5000000']) {
        const r = await gateway(['models', '--url', fake.url, '--timeout', timeout]);
        expect(r.code, timeout).toBe(1);
        expect(r.stderr, timeout).not.toMatch(/TIMEOUT|CLIENT_ERROR|TimeoutOverflowWarning/);
        expect(r.stderr, timeout).toContain('expected a number of seconds > 0, at most 2147483');
      }
      const most = await gateway(['models', '--url', fake.url, '--timeout', '2147483']);
      expect(most.code, most.stderr).toBe(0);
      expect(() => new GatewayClient({ timeoutMs: 2 ** 31 })).toThrow(TypeError);
      expect(new GatewayClient({ timeoutMs: 2 ** 31 - 1 }).timeoutMs).toBe(2 ** 31 - 1);
    } finally {
      await fake.close();
    }
  });

  it.skipIf(process.platform === 'win32')(
    '--out leaves no temporary file behind when writing it fails (a full disk, a file size limit)',
    async () => {
      const fake = await fakeGateway(
        (_op, _req, res) =>
          sendJson(res, {
            data: { detect: { imageWidth: 2, imageHeight: 2, objects: [], annotatedImage: Buffer.alloc(2_000_000, 7).toString('base64') } },
          }),
        4932,
      );
      const out = await mkdtemp(path.join(os.tmpdir(), 'cli-out-fail-'));
      try {
        // a file size limit of 100 KiB: the 2 MB picture's write fails part-way (EFBIG; Node ignores SIGXFSZ)
        const r = await run('sh', [
          '-c',
          'ulimit -f 200; exec "$0" "$@"; ',
          process.execPath,
          path.join(ROOT, 'bin', 'gateway.mjs'),
          'detect',
          '-m',
          'x',
          '--url',
          fake.url,
          '--out',
          out,
          image('dog.jpg'),
        ]).catch((e: { code: number; stderr: string }) => e);
        expect(r.stderr).toContain('EFBIG');
        expect(await readdir(out)).toEqual([]);
      } finally {
        await rm(out, { recursive: true, force: true });
        await fake.close();
      }
    },
  );
});
