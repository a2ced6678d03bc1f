import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { createOnnxRuntimeEngine } from '../src/engine/onnx/onnxruntime.ts';
import type { Engine } from '../src/engine/types.ts';
import { fixture, image, modelAsset, modelFile, openGraphqlWs, startGateway, until, type TestGateway } from './helpers.ts';

/**
 * What modelStatus says against what the server does, for uploads (GraphQL multipart, and the KServe repository
 * extension's "file:<version>/model.onnx", as tritonclient's load_model(files=...) sends it): an AVAILABLE event is a
 * version requests can reach; a failed upload leaves the serving version as it was (listed, serving, its session its
 * own); each event's previousState is the state the one before it said.
 */
describe('modelStatus tells the truth about uploads', () => {
  let gw: TestGateway;
  /** Engine sessions open now (loaded and not closed). */
  let open = 0;
  const counting = (engine: Engine): Engine => ({
    name: engine.name,
    modelFiles: engine.modelFiles,
    dtypes: engine.dtypes,
    async load(file, options) {
      const session = await engine.load(file, options);
      open++;
      const close = session.close.bind(session);
      let closed = false;
      session.close = async () => {
        if (!closed) open--;
        closed = true;
        return close();
      };
      return session;
    },
  });
  const zebra = async () => (await readFile(image('zebra.jpeg'))).toString('base64');
  type Event = { model: string; version: number; state: string; previousState: string; removed: boolean };
  type Message = {
    id?: string;
    type: string;
    payload?: { data?: Record<string, any>; errors?: { message: string; extensions?: { code?: string } }[] };
  };

  beforeAll(async () => {
    // no watcher: what the server does is what the upload did (a rescan would bring a dropped version back)
    gw = await startGateway({
      models: { mobilenet: fixture('mobilenet') },
      engine: counting(createOnnxRuntimeEngine()),
      pollIntervalMs: 0,
    });
  });
  afterAll(async () => {
    await gw?.close();
  });

  /** Subscribe `ws` (as id "s") to the status of `model`, once the server listens for it (`listeners` before). */
  const subscribe = async (ws: WebSocket, model: string, listeners: number) => {
    ws.send(
      JSON.stringify({
        id: 's',
        type: 'subscribe',
        payload: { query: `subscription { modelStatus(name: "${model}") { model version state previousState removed } }` },
      }),
    );
    await until(() => gw.repository.listenerCount('status') > listeners, 5000, 'subscribed');
  };

  it('a failed upload that names the serving version (file:1/model.onnx) leaves it serving, listed, and says nothing of it', async () => {
    const listeners = gw.repository.listenerCount('status');
    const { ws, messages } = await openGraphqlWs<Message>(gw.url);
    try {
      await subscribe(ws, 'mobilenet', listeners);
      const sessions = open;
      const r = await fetch(`${gw.url}/v2/repository/models/mobilenet/load`, {
        method: 'POST',
        body: JSON.stringify({ parameters: { 'file:1/model.onnx': Buffer.from('not an onnx model').toString('base64') } }),
      });
      expect(r.status).toBe(400);
      expect((await r.json()).error).toMatch(/the upload was not loaded/);
      // README: "A failed upload answers with its error ... and leaves nothing behind: the serving versions, the files,
      // the list and /ready are as they were". The serving version 1 was dropped from the list (versions: []), its
      // requests refused MODEL_NOT_READY until a rescan loaded it again (never, without the watcher)
      const listed = await gw.gql(`{ model(name: "mobilenet") { versions { version state } } }`);
      expect(listed.data.model.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
      const served = await gw.gql(
        `mutation($i: String!) { classify(model: "mobilenet", image: { base64: $i }, topK: 1) { predictions { label } } }`,
        {
          i: await zebra(),
        },
      );
      expect(served.errors).toBeUndefined();
      expect(served.data.classify.predictions[0].label).toBe('zebra');
      // the dropped instance was never unloaded: its engine session (and worker threads, ~30 MB of RSS each time) stayed
      // open, with nothing left to close it
      expect(open).toBe(sessions);
      await new Promise((r) => setTimeout(r, 200));
      const events: Event[] = messages.filter((m) => m.id === 's' && m.type === 'next').map((m) => m.payload!.data!.modelStatus);
      // subscribers were told version 1 left the list (removed: true, state AVAILABLE) while it went on being loaded
      expect(events.filter((e) => e.removed)).toEqual([]);
    } finally {
      ws.close();
      await until(() => gw.repository.listenerCount('status') === listeners, 5000, 'the subscription released');
    }
  });

  it('a successful upload that replaces the serving version keeps its chain of events true (previousState)', async () => {
    const listeners = gw.repository.listenerCount('status');
    const { ws, messages } = await openGraphqlWs<Message>(gw.url);
    try {
      await subscribe(ws, 'mobilenet', listeners);
      // (whatever the test before left)
      expect((await gw.gql(`mutation { loadModel(name: "mobilenet") { name } }`)).errors).toBeUndefined();
      messages.length = 0;
      const before = await gw.gql(`{ model(name: "mobilenet") { versions { version state } } }`);
      expect(before.data.model.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
      const r = await fetch(`${gw.url}/v2/repository/models/mobilenet/load`, {
        method: 'POST',
        body: JSON.stringify({ parameters: { 'file:1/model.onnx': (await readFile(modelFile('mobilenet'))).toString('base64') } }),
      });
      expect(r.status).toBe(200);
      await new Promise((r) => setTimeout(r, 200));
      const events: Event[] = messages.filter((m) => m.id === 's' && m.type === 'next').map((m) => m.payload!.data!.modelStatus);
      // "Each event's previousState is the state the one before it said": version 1 said AVAILABLE last, and served
      // throughout; subscribers got LOADING (previousState START), then AVAILABLE, for it
      let said = 'AVAILABLE';
      for (const e of events) {
        expect(`${e.version}: ${e.previousState} -> ${e.state}`).toBe(`${e.version}: ${said} -> ${e.state}`);
        said = e.state;
      }
      expect(said).toBe('AVAILABLE');
    } finally {
      ws.close();
      await until(() => gw.repository.listenerCount('status') === listeners, 5000, 'the subscription released');
    }
  });

  it('an uploaded version is reachable by the time its AVAILABLE event arrives', async () => {
    const listeners = gw.repository.listenerCount('status');
    const { ws, messages } = await openGraphqlWs<Message>(gw.url);
    const answers: Message[] = [];
    const photo = await zebra();
    // the moment its AVAILABLE arrives, this client classifies on the same connection, with the version and without
    ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as Message;
      const e = m.id === 's' && m.type === 'next' ? (m.payload?.data?.modelStatus as Event) : null;
      if (e?.state === 'AVAILABLE' && !e.removed)
        ws.send(
          JSON.stringify({
            id: `q${e.version}`,
            type: 'subscribe',
            payload: {
              query: `mutation($v: Int, $i: String!) {
                named: classify(model: "uploaded", version: $v, image: { base64: $i }, topK: 1) { predictions { label } }
                newest: classify(model: "uploaded", image: { base64: $i }, topK: 1) { predictions { label } }
              }`,
              variables: { v: e.version, i: photo },
            },
          }),
        );
      if (m.type === 'next' && m.id?.startsWith('q')) answers.push(m);
    });
    try {
      await subscribe(ws, 'uploaded', listeners);
      const upload = () =>
        gw.gql(
          `mutation($files: [File!]!) { loadModel(name: "uploaded", files: $files) { versions { version state } } }`,
          { files: [null, null, null] },
          {
            files: {
              'files.0': modelFile('mobilenet'),
              'files.1': modelAsset('mobilenet', 'labels.txt'),
              'files.2': modelAsset('mobilenet', 'model.json'),
            },
          },
        );
      for (const version of [1, 2]) {
        const loaded = await upload();
        expect(loaded.errors).toBeUndefined();
        await until(() => answers.some((a) => a.id === `q${version}`), 10_000, `the answer after version ${version}'s AVAILABLE`);
      }
      expect(messages.length).toBeGreaterThan(0);
      // AVAILABLE was published while the upload's version was loaded from its staging folder, before it was listed:
      // "model uploaded has no version 1" (MODEL_NOT_FOUND), "has no AVAILABLE version" (MODEL_NOT_READY), every time
      for (const a of answers) {
        expect(a.payload?.errors?.map((e) => `${a.id}: ${e.extensions?.code} ${e.message}`) ?? []).toEqual([]);
        expect(a.payload?.data?.named?.predictions[0].label).toBe('zebra');
      }
    } finally {
      ws.close();
      await until(() => gw.repository.listenerCount('status') === listeners, 5000, 'the subscription released');
    }
  });
});
