import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import type { Engine } from '../src/engine/types.ts';
import { ElemType, buildModel, identityModel } from './onnx-builder.ts';
import { ROOT, addModel, errorCode, fixture, image, modelFile, startGateway, until, untilAnswers } from './helpers.ts';

/** An ONNX Runtime engine that counts the sessions it opened and the ones closed since (`onLoad` runs before each). */
function countingEngine(onLoad: (file: string) => Promise<void> = async () => {}): { engine: Engine; open: () => number } {
  const inner = createOnnxRuntimeEngine();
  let opened = 0;
  let closed = 0;
  const engine: Engine = Object.create(inner);
  engine.load = async (p, options) => {
    await onLoad(p);
    const session = await inner.load(p, options);
    opened++;
    const close = session.close.bind(session);
    session.close = async () => {
      closed++;
      return close();
    };
    return session;
  };
  return { engine, open: () => opened - closed };
}

const scanOf = (gw: { repository: unknown }) => () => (gw.repository as { watcher: { tick(): Promise<void> } }).watcher.tick();

describe("the repository under an operator's hands", () => {
  it('an upload whose next version folder is already there without a model file (being filled) is no internal error, and leaks no session', async () => {
    const { engine, open } = countingEngine();
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, engine });
    const events: string[] = [];
    gw.repository.on('status', (e) => e.model === 'mobilenet' && events.push(`${e.version} ${e.removed ? 'removed' : e.state}`));
    try {
      expect(open()).toBe(1);
      // an operator has made version folder 2 and not yet copied the model into it (a note is there already)
      await mkdir(path.join(gw.root, 'mobilenet', '2'));
      await writeFile(path.join(gw.root, 'mobilenet', '2', 'notes.txt'), 'copying...');
      const r = await gw.gql(
        `mutation($files: [File!]!) { loadModel(name: "mobilenet", files: $files) { versions { version state } } }`,
        { files: [null] },
        { files: { 'files.0': modelFile('mobilenet') } },
      );
      // it was INTERNAL_SERVER_ERROR (ENOTEMPTY renaming the staged version over the operator's folder)
      expect(errorCode(r)).not.toBe('INTERNAL_SERVER_ERROR');
      const listed = [...gw.repository.get('mobilenet')!.versions.values()].filter((v) => v.state === 'AVAILABLE').map((v) => v.version);
      // every session opened is one that serves (the version loaded for the upload was left open, never to be closed)
      expect(open()).toBe(listed.length);
      // and what subscribers were told agrees with the list: a version announced AVAILABLE is listed, or was removed since
      const last = new Map<string, string>();
      for (const e of events) last.set(e.split(' ')[0], e.split(' ')[1]);
      const announced = [...last].filter(([, s]) => s === 'AVAILABLE').map(([v]) => Number(v));
      expect(announced.sort()).toEqual(listed.sort());
    } finally {
      await gw.close();
    }
  });

  it('a version folder an operator makes while an upload of that number loads: a typed error, the loaded version closed and said gone', async () => {
    let dir = '';
    const { engine, open } = countingEngine(async (file) => {
      // the upload's version is loading from its staging folder: the operator copies a version 2 in by hand meanwhile
      if (file.includes('.upload-')) {
        await mkdir(path.join(dir, '2'));
        await writeFile(path.join(dir, '2', 'notes.txt'), 'copying...');
      }
    });
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, engine });
    dir = path.join(gw.root, 'mobilenet');
    const events: string[] = [];
    gw.repository.on('status', (e) => e.model === 'mobilenet' && events.push(`${e.version} ${e.removed ? 'removed' : e.state}`));
    try {
      const r = await gw.gql(
        `mutation($files: [File!]!) { loadModel(name: "mobilenet", files: $files) { versions { version state } } }`,
        { files: [null] },
        { files: { 'files.0': modelFile('mobilenet') } },
      );
      expect(errorCode(r)).not.toBe('INTERNAL_SERVER_ERROR');
      expect(r.errors?.[0]?.message ?? '').not.toMatch(/ENOTEMPTY|\/work|\/tmp/);
      const listed = [...gw.repository.get('mobilenet')!.versions.values()].filter((v) => v.state === 'AVAILABLE').map((v) => v.version);
      expect(open()).toBe(listed.length);
      const last = new Map<string, string>();
      for (const e of events) last.set(e.split(' ')[0], e.split(' ')[1]);
      // no version announced AVAILABLE that the list does not hold (subscribers would show it for good)
      expect([...last].filter(([v, s]) => s === 'AVAILABLE' && !listed.includes(Number(v)))).toEqual([]);
    } finally {
      await gw.close();
    }
  });

  it('a model.json that does not fit the model leaves Model.task saying what the serving version runs (the page picks its mutation by it)', async () => {
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } }); // the watcher off: scans run here
    const file = path.join(gw.root, 'mobilenet', 'model.json');
    try {
      const config = JSON.parse(await readFile(file, 'utf8'));
      await writeFile(file, JSON.stringify({ ...config, task: 'segmentation' }, null, 2)); // a slip: the file of another model
      await scanOf(gw)();
      const m = (await gw.gql(`{ model(name: "mobilenet") { task configurationError versions { state } } }`)).data.model;
      expect(m.configurationError).toMatch(/does not fit/);
      expect(m.versions).toEqual([{ state: 'AVAILABLE' }]);
      // the version serves classification with the configuration it loaded; the list said "segmentation", and segment
      // (what a client of the list sends) answers "model mobilenet is a classification model, not segmentation"
      expect(m.task).toBe('classification');
    } finally {
      await gw.close();
    }
  });

  it('a model.json edited while a newer version failed beside the serving one reaches the serving version (or says why not)', async () => {
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } }); // the watcher off: scans run here
    const scan = scanOf(gw);
    const dir = path.join(gw.root, 'mobilenet');
    const confidence = async () =>
      (
        await gw.gql(
          `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { confidence } } }`,
          { f: null },
          { files: { f: image('zebra.jpeg') } },
        )
      ).data.classify.predictions[0].confidence;
    try {
      // a version 2 that does not load (a copy cut short): version 1 keeps serving, as it should
      await mkdir(path.join(dir, '.2'));
      await writeFile(path.join(dir, '.2', 'model.onnx'), (await readFile(modelFile('mobilenet'))).subarray(0, 100_000));
      await rename(path.join(dir, '.2'), path.join(dir, '2'));
      await scan();
      const versions = async () =>
        (await gw.gql(`{ model(name: "mobilenet") { configurationError versions { version state } } }`)).data.model;
      expect((await versions()).versions).toEqual([
        { version: 1, state: 'AVAILABLE' },
        { version: 2, state: 'END' },
      ]);
      // meanwhile the operator changes the configuration: raw scores
      const config = JSON.parse(await readFile(path.join(dir, 'model.json'), 'utf8'));
      await writeFile(path.join(dir, 'model.json'), JSON.stringify({ ...config, postprocessing: { activation: 'none' } }, null, 2));
      await scan();
      await scan();
      // version 1 went on with softmax for good, and configurationError said nothing
      const m = await versions();
      expect({ scores: (await confidence()) > 1 || m.configurationError }).toEqual({ scores: true });
    } finally {
      await gw.close();
    }
  });

  it('updateModel does not swallow an edit of model.json the watcher has not read yet (the server serving the old configuration for good)', async () => {
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') } }); // the watcher off: scans run here
    const scan = scanOf(gw);
    const file = path.join(gw.root, 'mobilenet', 'model.json');
    const classify = async () =>
      (
        await gw.gql(
          `mutation($f: File!) { classify(model: "mobilenet", image: { file: $f }, topK: 1) { predictions { label confidence } } }`,
          {
            f: null,
          },
          { files: { f: image('zebra.jpeg') } },
        )
      ).data.classify.predictions[0];
    try {
      expect((await classify()).confidence).toBeLessThanOrEqual(1);
      // the operator edits model.json: raw scores, and a metadata key...
      const config = JSON.parse(await readFile(file, 'utf8'));
      config.postprocessing = { ...config.postprocessing, activation: 'none' };
      config.metadata = { ...config.metadata, owner: 'ops' };
      await writeFile(file, JSON.stringify(config, null, 2));
      // ...and before the next scan, an automation sets the description
      const u = await gw.gql(`mutation { updateModel(name: "mobilenet", description: "nightly") { description } }`);
      expect(u.errors).toBeUndefined();
      await scan();
      await scan();
      const onDisk = JSON.parse(await readFile(file, 'utf8'));
      expect([onDisk.postprocessing.activation, onDisk.metadata.owner, onDisk.description]).toEqual(['none', 'ops', 'nightly']);
      // the server must serve what the file says (it kept softmax and the old metadata until the file changed again)
      const m = (await gw.gql(`{ model(name: "mobilenet") { description metadata } }`)).data.model;
      expect([m.description, m.metadata.owner]).toEqual(['nightly', 'ops']);
      await until(async () => (await classify()).confidence > 1, 10_000, 'activation "none" in force');
    } finally {
      await gw.close();
    }
  });
});

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });

/**
 * The server as npm start runs it, on `root`: not as root, who reads whatever a file's mode says (as root, it runs as
 * nobody). `gql` asks it a query; `stop` ends it (SIGINT) and gives what it logged.
 */
async function serverAsUser(root: string): Promise<{ gql: (query: string) => Promise<any>; stop: () => Promise<string> }> {
  const port = await freePort();
  const node = [process.execPath, '--import', 'tsx', path.join(ROOT, 'src', 'main.ts')];
  const [cmd, ...args] = process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...node] : node;
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, HOME: os.tmpdir(), PORT: String(port), GRPC_PORT: 'off', MODEL_REPOSITORY: root, MODEL_POLL_INTERVAL_MS: '100' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((r) => child.once('exit', r));
  const url = `http://127.0.0.1:${port}`;
  try {
    await untilAnswers(`${url}/ready`, 'server ready');
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${(e as Error).message}: ${stderr.slice(-500)}`);
  }
  return {
    gql: async (query) =>
      (
        await fetch(`${url}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query }) })
      ).json(),
    stop: async () => {
      child.kill('SIGINT');
      await exited;
      return stderr;
    },
  };
}

/** A repository others may read (mkdtemp makes it 0700), with mobilenet. */
async function readableRepository(): Promise<string> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'gw-perm-'));
  await chmod(root, 0o755);
  await addModel(root, 'mobilenet', fixture('mobilenet'));
  return root;
}

describe('a model file replaced in place under a serving version', () => {
  it('is loaded beside it and takes over with no gap; one that does not load leaves it serving and says why, until fixed', async () => {
    // how another replica sees a version replaced by an upload that names it (tritonclient's "file:1/model.onnx"), and
    // how an operator replaces a version's file: it went on serving the file it had loaded, for good
    const doubling = buildModel({
      nodes: [{ op: 'Add', inputs: ['x', 'x'], outputs: ['y'] }],
      inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 4] }],
      outputs: [{ name: 'y', elemType: ElemType.FLOAT, shape: ['N', 4] }],
    });
    const gw = await startGateway({ models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } } });
    const scan = scanOf(gw);
    const file = path.join(gw.root, 'ident', '1', 'model.onnx');
    const answer = async () => {
      const r = await fetch(`${gw.url}/v2/models/ident/versions/1/infer`, {
        method: 'POST',
        body: JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, 4] }] }),
      });
      return ((await r.json()) as { outputs?: { data: number[] }[] }).outputs?.[0].data ?? r.status;
    };
    const put = async (bytes: Uint8Array) => {
      await writeFile(`${file}.new`, bytes);
      await rename(`${file}.new`, file); // the safe way: never half a file
    };
    const error = async () => (await gw.gql(`{ model(name: "ident") { configurationError } }`)).data.model.configurationError;
    try {
      expect(await answer()).toEqual([1, 2, 3, 4]);
      await put(doubling);
      await scan();
      expect(await answer()).toEqual([2, 4, 6, 8]);
      // one that does not load: the version serves on with the file it loaded, and the model says why
      await put(doubling.subarray(0, 40));
      await scan();
      await scan(); // tried once, not at every scan
      expect(await answer()).toEqual([2, 4, 6, 8]);
      expect(await error()).toMatch(/ident: the model file of version 1 changed and does not load.*keeps serving the file it loaded/);
      await put(identityModel(ElemType.FLOAT, ['N', 4]));
      await scan();
      expect(await answer()).toEqual([1, 2, 3, 4]);
      expect(await error()).toBeNull();
    } finally {
      await gw.close();
    }
  });
});

describe('a model folder the server cannot read for a moment', () => {
  it('keeps its serving version and says why, rather than unloading it and telling to put the model at <name>/1/model.onnx', async () => {
    const root = await readableRepository();
    const server = await serverAsUser(root);
    const versions = async () => (await server.gql(`{ model(name: "mobilenet") { versions { version state } } }`)).data.model.versions;
    const dir = path.join(root, 'mobilenet');
    try {
      expect(await versions()).toEqual([{ version: 1, state: 'AVAILABLE' }]);
      await chmod(dir, 0o700); // a deploy step's chmod -R, a wrong umask, an NFS hiccup: the folder cannot be read
      await new Promise((r) => setTimeout(r, 1000)); // several scans
      const seen = await versions();
      const r = await server.gql(`{ model(name: "mobilenet") { configurationError } }`);
      await chmod(dir, 0o755);
      // it was unloaded and left the list; requests and loadModel said "its folder has no version folder: put the
      // model file at mobilenet/1/model.onnx"
      expect(seen).toEqual([{ version: 1, state: 'AVAILABLE' }]);
      expect(r.data.model.configurationError).toMatch(/permission denied/);
    } finally {
      await chmod(dir, 0o755).catch(() => undefined);
      expect(await server.stop()).not.toMatch(/unhandled/);
      await rm(root, { recursive: true, force: true });
    }
  }, 30_000);

  it('a file that could not be read is read again once the server may read it ("let the server read it" is all it takes)', async () => {
    const root = await readableRepository();
    const server = await serverAsUser(root);
    const model = async () =>
      (await server.gql(`{ model(name: "mobilenet") { configurationError versions { version state } } }`)).data.model as {
        configurationError: string | null;
        versions: { version: number; state: string }[];
      };
    const dir = path.join(root, 'mobilenet');
    try {
      // a new labels file and a new version copied in by someone whose umask is 077: the server may not read them
      const labels = await readFile(path.join(dir, 'labels.txt'));
      await writeFile(path.join(dir, '.labels.txt.tmp'), labels, { mode: 0o600 });
      await rename(path.join(dir, '.labels.txt.tmp'), path.join(dir, 'labels.txt'));
      await mkdir(path.join(dir, '.2'));
      await writeFile(path.join(dir, '.2', 'model.onnx'), await readFile(modelFile('mobilenet')), { mode: 0o600 });
      await rename(path.join(dir, '.2'), path.join(dir, '2'));
      await until(async () => /permission denied/.test((await model()).configurationError ?? ''), 10_000, 'labels.txt refused');
      await until(
        async () => (await model()).versions.some((v: { version: number; state: string }) => v.version === 2 && v.state === 'END'),
        10_000,
        'version 2 failed',
      );
      // as told: let the server read them
      await chmod(path.join(dir, 'labels.txt'), 0o644);
      await chmod(path.join(dir, '2', 'model.onnx'), 0o644);
      // they stayed refused until a loadModel or a touch: a chmod changes no modification time
      await until(
        async () => {
          const m = await model();
          return (
            m.configurationError === null &&
            m.versions.some((v: { version: number; state: string }) => v.version === 2 && v.state === 'AVAILABLE')
          );
        },
        10_000,
        'labels.txt and version 2 read again',
      );
    } finally {
      expect(await server.stop()).not.toMatch(/unhandled/);
      await rm(root, { recursive: true, force: true });
    }
  }, 40_000);
});

describe('shutting down while a new configuration loads beside the serving version', () => {
  it('gives that load up as it gives up the loads of listed versions, instead of waiting for it to end', async () => {
    // a large model's load, which stops when its load is given up (ENGINE_LOAD_TIMEOUT_MS, or a shutdown), as ONNX
    // Runtime's worker does
    let slowMs = 0;
    const inner = createOnnxRuntimeEngine();
    const engine: Engine = Object.create(inner);
    engine.load = async (p, options) => {
      if (slowMs)
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, slowMs);
          options?.signal?.addEventListener('abort', () => (clearTimeout(timer), reject(options.signal!.reason)), { once: true });
        });
      return inner.load(p, options);
    };
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, engine });
    let closed = false;
    try {
      slowMs = 20_000;
      const file = path.join(gw.root, 'mobilenet', 'model.json');
      const config = JSON.parse(await readFile(file, 'utf8'));
      await writeFile(file, JSON.stringify({ ...config, postprocessing: { activation: 'sigmoid' } }, null, 2));
      const scanning = scanOf(gw)(); // the watcher finds the edit: a new instance of version 1 loads beside it
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      await gw.close(); // SIGTERM's shutdown: the gateway, then every model
      closed = true;
      await scanning;
      // it waited the whole 20 s load of an instance that could only be unloaded once loaded
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      slowMs = 0;
      if (!closed) await gw.close();
    }
  }, 40_000);
});

describe('a version folder the server may not enter (copied in under umask 077)', () => {
  it('leaves the rest of the model reconciled: a newer version beside it loads', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'gw-perm-'));
    await chmod(root, 0o755);
    await addModel(root, 'mobilenet', fixture('mobilenet'));
    const server = await serverAsUser(root);
    const dir = path.join(root, 'mobilenet');
    const model = async () =>
      (await server.gql(`{ model(name: "mobilenet") { configurationError versions { version state } } }`)).data.model as {
        configurationError: string | null;
        versions: { version: number; state: string }[];
      };
    try {
      // someone with umask 077 copies version 2 in: its folder is drwx------, not the server's
      await mkdir(path.join(dir, '.2'), { mode: 0o700 });
      await writeFile(path.join(dir, '.2', 'model.onnx'), await readFile(modelFile('mobilenet')), { mode: 0o600 });
      await rename(path.join(dir, '.2'), path.join(dir, '2'));
      // and version 3, readable
      await mkdir(path.join(dir, '.3'));
      await writeFile(path.join(dir, '.3', 'model.onnx'), await readFile(modelFile('mobilenet')));
      await rename(path.join(dir, '.3'), path.join(dir, '3'));
      // the model's folder reads fine; it said "mobilenet: its folder cannot be read (permission denied)" and froze the
      // whole model: version 3 never loaded (nor would a removed version unload)
      await until(
        async () => (await model()).versions.some((v) => v.version === 3 && v.state === 'AVAILABLE'),
        10_000,
        `version 3 AVAILABLE (${JSON.stringify(await model())})`,
      );
      // what to do names the folder to open up, and is still said after model.json is read again (it was cleared for good)
      expect((await model()).configurationError).toMatch(/mobilenet\/2: .*cannot be read \(permission denied\)/);
      const later = new Date(Date.now() + 2000);
      await utimes(path.join(dir, 'model.json'), later, later);
      await new Promise((r) => setTimeout(r, 1000)); // several scans
      expect((await model()).configurationError).toMatch(/mobilenet\/2: .*cannot be read/);
      await chmod(path.join(dir, '2'), 0o755);
      await until(async () => (await model()).configurationError === null, 10_000, 'the error gone once the folder reads');
    } finally {
      expect(await server.stop()).not.toMatch(/unhandled/);
      await rm(root, { recursive: true, force: true });
    }
  }, 40_000);
});
