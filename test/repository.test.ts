import { copyFile, readFile, rename, rm, mkdir, symlink, writeFile, mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { printSchema } from 'graphql';
import { schema } from '../src/protocols/graphql/schema/index.ts';
import {
  ROOT,
  addModel,
  errorCode,
  fixtureConfigs,
  image,
  modelAsset,
  modelFile,
  startGateway,
  until,
  type TestGateway,
  fixture,
} from './helpers.ts';
import { ElemType, buildModel } from './onnx-builder.ts';

const MODEL_FIELDS = `name task description metadata updatedAt labels versions { version state errorCode errorMessage } inputs { name dtype shape layout } outputs { name dtype shape }`;
const mobilenet = () => fixture('mobilenet');

describe('model repository over GraphQL', () => {
  let gw: TestGateway;
  let extraRoot: string;

  beforeAll(async () => {
    extraRoot = await mkdtemp(path.join(os.tmpdir(), 'gw-extra-'));
    gw = await startGateway({
      models: {
        mobilenet: mobilenet(),
        yolox: fixture('yolox', { description: 'COCO detector' }),
      },
      env: { MODEL_ROOTS: extraRoot },
      pollIntervalMs: 100,
    });
  });
  afterAll(async () => {
    await gw?.close();
    await rm(extraRoot, { recursive: true, force: true });
  });

  it('lists models with their versions, inputs, outputs and labels', async () => {
    const r = await gw.gql(`{ models { ${MODEL_FIELDS} } }`);
    expect(r.errors).toBeUndefined();
    const byName = Object.fromEntries(r.data.models.map((m: any) => [m.name, m]));
    expect(Object.keys(byName).sort()).toEqual(['mobilenet', 'yolox']);
    const m = byName.mobilenet;
    expect(m.task).toBe('classification');
    expect(m.versions).toEqual([{ version: 1, state: 'AVAILABLE', errorCode: null, errorMessage: null }]);
    expect(m.inputs).toEqual([{ name: 'input', dtype: 'FLOAT32', shape: [null, 3, 224, 224], layout: 'NCHW' }]);
    expect(m.outputs).toEqual([{ name: 'output', dtype: 'FLOAT32', shape: [null, 1000] }]);
    expect(m.labels).toHaveLength(1000);
    expect(m.labels[404]).toMatch(/airliner/);
    expect(new Date(m.updatedAt).getTime()).toBeGreaterThan(0);
    expect(byName.yolox.description).toBe('COCO detector');
    // yolox fixes its batch at 1; the gateway made it dynamic after a trial run, and says so
    expect(byName.yolox.inputs[0].shape).toEqual([null, 3, 416, 416]);
    expect(byName.yolox.metadata.dynamicBatch).toMatch(/^rewritten/);
    expect(byName.mobilenet.metadata).toMatchObject({ license: 'Apache-2.0' });
  });

  it('answers inputShape, with dynamic dimensions as null', async () => {
    const r = await gw.gql(`{ a: inputShape(model: "mobilenet") b: inputShape(model: "yolox", version: 1, input: "images") }`);
    expect(r.errors).toBeUndefined();
    expect(r.data).toEqual({ a: [null, 3, 224, 224], b: [null, 3, 416, 416] });
    const missing = await gw.gql(`{ inputShape(model: "nope") }`);
    expect(errorCode(missing)).toBe('MODEL_NOT_FOUND');
    const badInput = await gw.gql(`{ inputShape(model: "mobilenet", input: "nope") }`);
    expect(errorCode(badInput)).toBe('INVALID_INPUT');
  });

  it('model(name) returns null for an unknown model', async () => {
    const r = await gw.gql(`{ model(name: "nope") { name } }`);
    expect(r.data).toEqual({ model: null });
  });

  it('loads a model from the repository by name, and again harmlessly', async () => {
    // unload then load back
    let r = await gw.gql(`mutation { unloadModel(name: "mobilenet") { versions { version state } } }`);
    expect(r.data.unloadModel.versions).toEqual([{ version: 1, state: 'END' }]);
    r = await gw.gql(`mutation { loadModel(name: "mobilenet") { name versions { version state } } }`);
    expect(r.errors).toBeUndefined();
    expect(r.data.loadModel.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
    r = await gw.gql(`mutation { loadModel(name: "mobilenet") { versions { version state } } }`);
    expect(r.data.loadModel.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
    const unknown = await gw.gql(`mutation { loadModel(name: "not-there") { name } }`);
    expect(errorCode(unknown)).toBe('MODEL_NOT_FOUND');
  });

  it('loads a model from a server path under an allowed root, and refuses others', async () => {
    await addModel(extraRoot, 'pathmodel', mobilenet());
    const r = await gw.gql(
      `mutation($p: String!) { loadModel(name: "from-path", path: $p) { name task labels versions { version state } } }`,
      { p: path.join(extraRoot, 'pathmodel') },
    );
    expect(r.errors).toBeUndefined();
    expect(r.data.loadModel.task).toBe('classification');
    expect(r.data.loadModel.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
    expect(r.data.loadModel.labels).toHaveLength(1000);
    // a bare .onnx file with the configuration given inline
    await writeFile(path.join(extraRoot, 'bare.onnx'), await readFile(modelFile('mobilenet')));
    const file = await gw.gql(
      `mutation($p: String!, $c: JSON) { loadModel(name: "bare-file", path: $p, config: $c) { task versions { state } } }`,
      { p: path.join(extraRoot, 'bare.onnx'), c: { task: 'raw' } },
    );
    expect(file.errors).toBeUndefined();
    expect(file.data.loadModel).toEqual({ task: 'raw', versions: [{ state: 'AVAILABLE' }] });
    for (const p of [path.join(ROOT, 'models', 'mobilenet'), '/etc', `${extraRoot}/../..`, `${gw.root}/../../etc/passwd`]) {
      const denied = await gw.gql(`mutation($p: String!) { loadModel(name: "evil", path: $p) { name } }`, { p });
      expect(errorCode(denied), p).toBe('FORBIDDEN_PATH');
      expect(denied.errors![0].message, p).toMatch(/not under an allowed root: MODEL_ROOTS names the folders models may be loaded from/);
    }
    // a symlink inside an allowed root that points outside it is refused too
    await symlink(path.join(ROOT, 'models', 'mobilenet'), path.join(extraRoot, 'sneaky'));
    const sneaky = await gw.gql(`mutation($p: String!) { loadModel(name: "evil", path: $p) { name } }`, {
      p: path.join(extraRoot, 'sneaky'),
    });
    expect(errorCode(sneaky)).toBe('FORBIDDEN_PATH');
  });

  it('loads a model from uploaded files and writes them into the repository', async () => {
    const config = {
      task: 'classification',
      description: 'uploaded',
      preprocessing: fixtureConfigs.mobilenet.preprocessing,
      labels: 'labels.txt',
    };
    const r = await gw.gql(
      `mutation($files: [File!]!) { loadModel(name: "uploaded", files: $files) { name description labels versions { version state } } }`,
      { files: [null, null, null] },
      {
        files: {
          'files.0': modelFile('mobilenet'),
          'files.1': modelAsset('mobilenet', 'labels.txt'),
          'files.2': { name: 'model.json', bytes: Buffer.from(JSON.stringify(config)) },
        },
      },
    );
    expect(r.errors).toBeUndefined();
    expect(r.data.loadModel.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
    expect(r.data.loadModel.description).toBe('uploaded');
    expect(r.data.loadModel.labels[0]).toMatch(/tench/);
    const written = await readFile(path.join(gw.root, 'uploaded', '1', 'model.onnx'));
    expect(written.length).toBe(3655033);
    expect(JSON.parse(await readFile(path.join(gw.root, 'uploaded', 'model.json'), 'utf8')).description).toBe('uploaded');
    // a second upload becomes version 2 and, with the default policy (latest 1), replaces version 1
    const r2 = await gw.gql(
      `mutation($files: [File!]!) { loadModel(name: "uploaded", files: $files) { versions { version state } } }`,
      { files: [null] },
      { files: { 'files.0': modelFile('mobilenet') } },
    );
    expect(r2.errors).toBeUndefined();
    expect(r2.data.loadModel.versions).toEqual([
      { version: 1, state: 'END' },
      { version: 2, state: 'AVAILABLE' },
    ]);
  });

  it('an uploaded version that fails to load is announced removed after its END (it is not kept in the list)', async () => {
    const events: string[] = [];
    const listen = (e: { model: string; version: number; state: string; removed?: boolean }) =>
      e.model === 'uploaded-broken' && events.push(`${e.version} ${e.removed ? 'removed' : e.state}`);
    gw.repository.on('status', listen);
    try {
      const r = await gw.gql(
        `mutation($files: [File!]!) { loadModel(name: "uploaded-broken", files: $files) { name } }`,
        { files: [null, null] },
        {
          files: {
            'files.0': { name: 'model.onnx', bytes: Buffer.from('not an onnx model') },
            'files.1': { name: 'model.json', bytes: Buffer.from(JSON.stringify({ task: 'raw' })) },
          },
        },
      );
      expect(errorCode(r)).toBe('MODEL_LOAD_FAILED');
      // the list kept from these events showed a version 1 that no query would show
      expect(events).toEqual(['1 LOADING', '1 END', '1 removed']);
    } finally {
      gw.repository.off('status', listen);
      await gw.gql(`mutation { deleteModel(name: "uploaded-broken") }`);
    }
  });

  it('a model.json uploaded alone loads beside the serving version unseen: no status event, its state metric stays AVAILABLE', async () => {
    const config = { task: 'classification', preprocessing: fixtureConfigs.mobilenet.preprocessing };
    const upload = (json: object) =>
      gw.gql(
        `mutation($files: [File!]!) { loadModel(name: "config-only", files: $files) { description versions { version state } } }`,
        { files: json === config ? [null, null] : [null] },
        {
          files: {
            'files.0': { name: 'model.json', bytes: Buffer.from(JSON.stringify(json)) },
            ...(json === config ? { 'files.1': modelFile('mobilenet') } : {}),
          },
        },
      );
    expect((await upload(config)).data.loadModel.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
    const events: string[] = [];
    const listen = (e: { model: string; version: number; state: string }) =>
      e.model === 'config-only' && events.push(`${e.version} ${e.state}`);
    gw.repository.on('status', listen);
    const stateMetric = async () =>
      (await (await fetch(`${gw.url}/metrics`)).text())
        .split('\n')
        .filter((l) => l.startsWith('gateway_model_version_state{model="config-only"') && l.endsWith(' 1'));
    try {
      const bad = await upload({ ...config, postprocessing: { output: 'nope' } });
      expect(errorCode(bad)).toBe('INVALID_MODEL_CONFIG');
      expect(await stateMetric()).toEqual(['gateway_model_version_state{model="config-only",version="1",state="AVAILABLE"} 1']);
      const good = await upload({ ...config, description: 'configured again' });
      expect(good.data.loadModel).toEqual({ description: 'configured again', versions: [{ version: 1, state: 'AVAILABLE' }] });
      expect(await stateMetric()).toEqual(['gateway_model_version_state{model="config-only",version="1",state="AVAILABLE"} 1']);
      expect(events).toEqual([]);
    } finally {
      gw.repository.off('status', listen);
    }
  });

  it('a model with an output of a type the gateway does not carry fails its load, naming the output (not every request later)', async () => {
    const onnx = buildModel({
      nodes: [
        { op: 'Identity', inputs: ['x'], outputs: ['y'] },
        { op: 'Cast', inputs: ['x'], outputs: ['d'], attrs: { to: 11 } }, // DOUBLE
      ],
      inputs: [{ name: 'x', elemType: ElemType.FLOAT, shape: ['N', 4] }],
      outputs: [
        { name: 'y', elemType: ElemType.FLOAT, shape: ['N', 4] },
        { name: 'd', elemType: 11, shape: ['N', 4] },
      ],
    });
    await addModel(gw.root, 'float64-out', { onnx, config: { task: 'raw' } });
    const r = await gw.gql(`mutation { loadModel(name: "float64-out") { versions { state errorCode errorMessage } } }`);
    expect(r.data.loadModel.versions).toEqual([
      {
        state: 'END',
        errorCode: 'MODEL_LOAD_FAILED',
        errorMessage: expect.stringMatching(/output d has type float64, which the gateway does not carry \(float32, float16, .*\)/),
      },
    ]);
    expect((await gw.gql(`mutation { deleteModel(name: "float64-out") }`)).data.deleteModel).toBe(true); // /ready again
  });

  it('a version loaded again goes on from the state its clients last saw (END -> LOADING), not from a new START', async () => {
    const events: string[] = [];
    const listen = (e: { model: string; state: string; previousState: string | null }) =>
      e.model === 'config-only' && events.push(`${e.previousState} -> ${e.state}`);
    gw.repository.on('status', listen);
    try {
      expect((await gw.gql(`mutation { unloadModel(name: "config-only") { name } }`)).errors).toBeUndefined();
      const r = await gw.gql(`mutation { loadModel(name: "config-only") { versions { state } } }`);
      expect(r.data.loadModel.versions).toEqual([{ state: 'AVAILABLE' }]);
      expect(events).toEqual(['AVAILABLE -> UNLOADING', 'UNLOADING -> END', 'END -> LOADING', 'LOADING -> AVAILABLE']);
    } finally {
      gw.repository.off('status', listen);
    }
  });

  it("an upload of a model this engine does not load (OpenVINO model.xml) says so, not in the protobuf parser's words", async () => {
    const r = await gw.gql(
      `mutation($files: [File!]!) { loadModel(name: "openvino-ir", files: $files) { name } }`,
      { files: [null, null] },
      {
        files: {
          'files.0': { name: 'model.xml', bytes: Buffer.from('<?xml version="1.0"?><net name="m" version="11"></net>') },
          'files.1': { name: 'model.bin', bytes: Buffer.alloc(16) },
        },
      },
    );
    expect(errorCode(r)).toBe('INVALID_INPUT');
    expect(r.errors![0].message).toMatch(
      /^the uploaded model is model\.xml, and this server's engine \(ENGINE=onnxruntime\) loads model\.onnx/,
    );
    const none = await gw.gql(
      `mutation($files: [File!]!) { loadModel(name: "no-model", files: $files) { name } }`,
      { files: [null] },
      { files: { 'files.0': { name: 'labels.txt', bytes: Buffer.from('a\nb\n') } } },
    );
    expect(none.errors![0].message).toBe('no model file among the uploads: send the model as a .onnx file');
    expect((await gw.gql(`{ a: model(name: "openvino-ir") { name } b: model(name: "no-model") { name } }`)).data).toEqual({
      a: null,
      b: null,
    });
  });

  it('an upload says what is wrong with its model.json: under another name, or not JSON (where)', async () => {
    const upload = (name: string, text: string) =>
      gw.gql(
        `mutation($files: [File!]!) { loadModel(name: "misnamed-config", files: $files) { name } }`,
        { files: [null, null] },
        { files: { 'files.0': modelFile('mobilenet'), 'files.1': { name, bytes: Buffer.from(text) } } },
      );
    const renamed = await upload('my-config.json', JSON.stringify({ task: 'classification' }));
    expect(errorCode(renamed)).toBe('INVALID_INPUT');
    expect(renamed.errors![0].message).toMatch(/my-config\.json looks like a model configuration: upload it under the name model\.json/);
    const broken = await upload('model.json', '{\n  "task": "classification",\n}');
    expect(errorCode(broken)).toBe('INVALID_MODEL_CONFIG');
    expect(broken.errors![0].message).toMatch(/uploaded model\.json: not valid JSON at line 2, column 27 \(a trailing comma/);
    expect((await gw.gql(`{ model(name: "misnamed-config") { name } }`)).data.model).toBeNull(); // nothing written
  });

  it('unloads one version and updates the editable fields (persisted)', async () => {
    let r = await gw.gql(
      `mutation { updateModel(name: "yolox", description: "new words", metadata: { owner: "vision-team" }) { description metadata } }`,
    );
    // metadata is a JSON Merge Patch: the keys of model.json (license, source) stay
    expect(r.data.updateModel).toEqual({
      description: 'new words',
      metadata: { ...(fixtureConfigs.yolox.metadata as object), owner: 'vision-team', dynamicBatch: expect.stringMatching(/^rewritten/) },
    });
    const saved = JSON.parse(await readFile(path.join(gw.root, 'yolox', 'model.json'), 'utf8'));
    expect(saved.description).toBe('new words');
    expect(saved.metadata).toEqual({ ...(fixtureConfigs.yolox.metadata as object), owner: 'vision-team' });
    expect(saved.preprocessing).toEqual(fixtureConfigs.yolox.preprocessing);
    const bad = await gw.gql(`mutation { updateModel(name: "yolox", preprocessing: {}) { name } }`);
    expect(bad.errors?.[0].message).toMatch(/preprocessing/);
    r = await gw.gql(`mutation { unloadModel(name: "yolox", version: 1) { versions { version state } } }`);
    expect(r.data.unloadModel.versions).toEqual([{ version: 1, state: 'END' }]);
    const infer = await gw.gql(`mutation { detect(model: "yolox", image: { base64: "AAAA" }) { imageWidth } }`);
    expect(errorCode(infer)).toBe('MODEL_NOT_READY');
    const noVersion = await gw.gql(`mutation { unloadModel(name: "yolox", version: 7) { name } }`);
    expect(errorCode(noVersion)).toBe('MODEL_NOT_FOUND');
    r = await gw.gql(`mutation { loadModel(name: "yolox") { versions { version state } } }`);
    expect(r.data.loadModel.versions).toEqual([{ version: 1, state: 'AVAILABLE' }]);
  });

  it('ends a corrupt model file in an error state and stays up', async () => {
    await addModel(gw.root, 'corrupt', { onnx: new Uint8Array(Buffer.from('this is not an onnx model')), config: { task: 'raw' } });
    const r = await gw.gql(`mutation { loadModel(name: "corrupt") { versions { version state errorCode errorMessage } } }`);
    expect(r.errors).toBeUndefined();
    const [v] = r.data.loadModel.versions;
    expect(v.state).toBe('END');
    expect(v.errorCode).toBe('MODEL_LOAD_FAILED');
    expect(v.errorMessage).toMatch(/cannot load/);
    // said plainly, not in the protobuf parser's words ("unsupported wire type 3")
    expect(v.errorMessage).toMatch(/model\.onnx is not an ONNX model: it does not read as ONNX's protobuf format/);
    const ready = await fetch(`${gw.url}/ready`);
    expect(ready.status).toBe(503);
    const health = await fetch(`${gw.url}/health`);
    expect(health.status).toBe(200);
    const still = await gw.gql(`{ model(name: "mobilenet") { versions { state } } }`);
    expect(still.data.model.versions[0].state).toBe('AVAILABLE');
    // a broken model.json names the field
    await addModel(gw.root, 'badconfig', {
      onnx: modelFile('mobilenet'),
      config: { task: 'classification', preprocessing: { resizeType: 'STRETCH' } },
    });
    const bad = await gw.gql(`mutation { loadModel(name: "badconfig") { versions { state errorCode errorMessage } } }`);
    expect(bad.data.loadModel.versions[0]).toMatchObject({ state: 'END', errorCode: 'INVALID_MODEL_CONFIG' });
    expect(bad.data.loadModel.versions[0].errorMessage).toMatch(/preprocessing\.resizeType/);
    // a model.json that parses but does not fit the model fails the load too, not every request afterwards
    await addModel(gw.root, 'misfit', {
      onnx: modelFile('mobilenet'),
      config: { task: 'classification', preprocessing: { colorChannels: 'L' } },
    });
    const misfit = await gw.gql(`mutation { loadModel(name: "misfit") { configurationError versions { state errorCode errorMessage } } }`);
    expect(misfit.data.loadModel.versions[0]).toMatchObject({ state: 'END', errorCode: 'INVALID_MODEL_CONFIG' });
    // the model says it too, as for a model.json that does not parse
    expect(misfit.data.loadModel.configurationError).toMatch(/preprocessing\.colorChannels/);
    expect(misfit.data.loadModel.versions[0].errorMessage).toMatch(
      /preprocessing\.colorChannels: L gives 1 channel\(s\) but input input \(\[\?,3,224,224\], NCHW\) has 3/,
    );
    // given with loadModel, such a model.json is refused naming the field, as one that does not parse is; a version
    // that serves keeps serving with the configuration it had
    await addModel(gw.root, 'misfit-given', fixture('mobilenet'));
    const loaded = await gw.gql(`mutation { loadModel(name: "misfit-given") { versions { state } } }`);
    expect(loaded.data.loadModel.versions).toEqual([{ state: 'AVAILABLE' }]);
    const given = await gw.gql(`mutation($c: JSON!) { loadModel(name: "misfit-given", config: $c) { versions { state } } }`, {
      c: { ...(fixture('mobilenet').config as object), preprocessing: { colorChannels: 'L' } },
    });
    expect(errorCode(given)).toBe('INVALID_MODEL_CONFIG');
    expect(given.errors![0].extensions?.field).toBe('preprocessing.colorChannels');
    expect(given.errors![0].message).toMatch(/preprocessing\.colorChannels: L gives 1 channel/);
    const served = await gw.gql(
      `mutation($f: File!) { classify(model: "misfit-given", image: { file: $f }, topK: 1) { predictions { label } } }`,
      { f: null },
      { files: { f: image('zebra.jpeg') } },
    );
    expect(served.data.classify.predictions[0].label).toBe('zebra');
    // and the refused configuration is not left on disk, where a restart would find it
    const onDisk = JSON.parse(await readFile(path.join(gw.root, 'misfit-given', 'model.json'), 'utf8'));
    expect(onDisk).toEqual(fixture('mobilenet').config);
    expect((await gw.gql(`{ model(name: "misfit-given") { configurationError } }`)).data.model.configurationError).toBeNull();
    // nor is one refused when the model's folder is read with it (a labels file that is not there): it stayed, and the
    // next start found the model broken
    const missing = await gw.gql(`mutation($c: JSON!) { loadModel(name: "misfit-given", config: $c) { name } }`, {
      c: { ...(fixture('mobilenet').config as object), labels: 'nope.txt' },
    });
    expect(errorCode(missing)).toBe('INVALID_MODEL_CONFIG');
    expect(JSON.parse(await readFile(path.join(gw.root, 'misfit-given', 'model.json'), 'utf8'))).toEqual(fixture('mobilenet').config);
    expect((await gw.gql(`{ model(name: "misfit-given") { configurationError } }`)).data.model.configurationError).toBeNull();
    await rm(path.join(gw.root, 'misfit-given'), { recursive: true });
    await rm(path.join(gw.root, 'misfit'), { recursive: true });
    await rm(path.join(gw.root, 'corrupt'), { recursive: true });
    await rm(path.join(gw.root, 'badconfig'), { recursive: true });
  });

  it('a model without model.json is served as raw tensors, and its load says so (and how to classify with it)', async () => {
    await addModel(gw.root, 'bare', { onnx: modelFile('mobilenet') });
    const r = await gw.gql(`mutation { loadModel(name: "bare") { task versions { state notes } } }`);
    expect(r.errors).toBeUndefined();
    expect(r.data.loadModel.task).toBe('raw');
    const [v] = r.data.loadModel.versions;
    expect(v.state).toBe('AVAILABLE');
    expect(v.notes.warnings).toEqual([expect.stringMatching(/no model\.json: served as task "raw".*"task": "classification"/)]);
    await rm(path.join(gw.root, 'bare'), { recursive: true });
  });

  it('a model file under another name, or not in a version folder, is an error that says where it goes', async () => {
    // a newcomer's first model: the file under its own name, or straight in the model folder
    await addModel(gw.root, 'misnamed', { config: { task: 'classification' } });
    await mkdir(path.join(gw.root, 'misnamed', '1'));
    await copyFile(modelFile('mobilenet'), path.join(gw.root, 'misnamed', '1', 'mobilenet.onnx'));
    const r = await gw.gql(`mutation { loadModel(name: "misnamed") { versions { version } } }`);
    expect(errorCode(r)).toBe('MODEL_LOAD_FAILED');
    expect(r.errors![0].message).toContain('misnamed/1/model.onnx');
    expect(r.errors![0].message).toContain('mobilenet.onnx'); // what the folder holds instead
    expect(r.errors![0].message).not.toContain(gw.root);
    await addModel(gw.root, 'flat', { config: { task: 'classification' } });
    await copyFile(modelFile('mobilenet'), path.join(gw.root, 'flat', 'model.onnx'));
    const flat = await gw.gql(`mutation { loadModel(name: "flat") { versions { version } } }`);
    expect(errorCode(flat)).toBe('MODEL_LOAD_FAILED');
    expect(flat.errors![0].message).toMatch(/no version folder: put the model file at flat\/1\/model\.onnx/);
    const asked = await gw.gql(`mutation { classify(model: "flat", image: { base64: "AAAA" }) { predictions { label } } }`);
    expect(errorCode(asked)).toBe('MODEL_NOT_READY');
    expect(asked.errors![0].message).toMatch(/no version folder: put the model file at flat\/1\/model\.onnx/);
    // neither model can serve: not ready, over GraphQL as over KServe (it said ready: true with no version)
    for (const name of ['misnamed', 'flat']) {
      expect((await gw.gql(`{ model(name: "${name}") { ready versions { version } } }`)).data.model).toEqual({
        ready: false,
        versions: [],
      });
      expect((await fetch(`${gw.url}/v2/models/${name}/ready`)).status).toBe(503);
    }
    // a folder still being filled, or left empty, is no reason to take the server out of its load balancer (waited
    // for: the watcher may still be forgetting the folders an earlier test removed)
    await until(async () => (await fetch(`${gw.url}/ready`)).status === 200, 10_000, '/ready 200 with these folders present');
    await rm(path.join(gw.root, 'misnamed'), { recursive: true });
    await rm(path.join(gw.root, 'flat'), { recursive: true });
  });

  it('a request for a version that no longer serves says which one does, or how to serve it again', async () => {
    await addModel(gw.root, 'replaced', { onnx: modelFile('mobilenet'), config: { task: 'raw', versionPolicy: { latest: 1 } } });
    const versions = async () => (await gw.gql(`{ model(name: "replaced") { versions { version state } } }`)).data?.model?.versions;
    await until(async () => JSON.stringify(await versions()) === '[{"version":1,"state":"AVAILABLE"}]', 15_000, 'version 1');
    await mkdir(path.join(gw.root, 'replaced', '2'));
    await copyFile(modelFile('mobilenet'), path.join(gw.root, 'replaced', '2', 'model.onnx'));
    await until(
      async () => JSON.stringify(await versions()) === '[{"version":1,"state":"END"},{"version":2,"state":"AVAILABLE"}]',
      15_000,
      'version 2 in place of 1',
    );
    const pinned = (v: number) => gw.gql(`mutation { infer(model: "replaced", version: ${v}, inputs: []) { outputs { name } } }`);
    const replaced = await pinned(1);
    expect(errorCode(replaced)).toBe('MODEL_NOT_READY');
    // it said only "model replaced version 1 is END"
    expect(replaced.errors![0].message).toBe(
      'model replaced version 1 is END: version 2 serves now (model.json versionPolicy chooses the versions served); leave the version out for the newest',
    );
    await gw.gql(`mutation { unloadModel(name: "replaced", version: 2) { name } }`);
    expect((await pinned(2)).errors![0].message).toBe('model replaced version 2 is END: it was unloaded (loadModel serves it again)');
    await rm(path.join(gw.root, 'replaced'), { recursive: true });
  });

  it('picks up a new version folder and drops a removed one (watcher)', async () => {
    await addModel(gw.root, 'watched', { onnx: modelFile('mobilenet'), config: { task: 'raw', versionPolicy: { all: true } } });
    const versions = async () => (await gw.gql(`{ model(name: "watched") { versions { version state } } }`)).data?.model?.versions;
    await until(
      async () => JSON.stringify(await versions()) === JSON.stringify([{ version: 1, state: 'AVAILABLE' }]),
      15_000,
      'new model picked up',
    );
    await mkdir(path.join(gw.root, 'watched', '2'));
    await copyFile(modelFile('mobilenet'), path.join(gw.root, 'watched', '2', 'model.onnx'));
    await until(
      async () =>
        JSON.stringify(await versions()) ===
        JSON.stringify([
          { version: 1, state: 'AVAILABLE' },
          { version: 2, state: 'AVAILABLE' },
        ]),
      15_000,
      'version 2 loaded',
    );
    await rm(path.join(gw.root, 'watched', '1'), { recursive: true });
    // a version whose folder is gone is unloaded and leaves the list (and /metrics)
    await until(
      async () => JSON.stringify(await versions()) === JSON.stringify([{ version: 2, state: 'AVAILABLE' }]),
      15_000,
      'version 1 gone',
    );
  });

  it('a failed version whose folder is removed leaves the list with an event (subscribers re-read what is gone)', async () => {
    const client = createClient({ url: gw.url.replace('http', 'ws') + '/graphql', webSocketImpl: WebSocket, retryAttempts: 0 });
    const events: any[] = [];
    const listeners = gw.repository.listenerCount('status');
    const unsubscribe = client.subscribe(
      { query: `subscription { modelStatus(name: "gone-broken") { version state previousState errorCode removed } }` },
      { next: (msg: any) => msg.data?.modelStatus && events.push(msg.data.modelStatus), error: () => {}, complete: () => {} },
    );
    try {
      await until(() => gw.repository.listenerCount('status') > listeners, 5000, 'subscribed');
      await addModel(gw.root, 'gone-broken', { onnx: Buffer.from('not an onnx model'), config: { task: 'raw' } });
      await until(() => events.some((e) => e.errorCode === 'MODEL_LOAD_FAILED'), 15_000, 'the load failed');
      await rm(path.join(gw.root, 'gone-broken'), { recursive: true });
      // it was dropped without a word: a page that re-reads its list on events kept showing it
      await until(() => events.some((e) => e.removed), 15_000, 'the removal said');
      expect(events.at(-1)).toEqual({ version: 1, state: 'END', previousState: 'END', errorCode: null, removed: true });
      expect(events.slice(0, -1).every((e) => e.removed === false)).toBe(true);
      // the model itself goes at the scan that finds its folder gone: one scan may have come while rm was half done
      // (the version folder gone, the model's not yet), and the version's removal is said there
      await until(async () => (await gw.gql(`{ model(name: "gone-broken") { name } }`)).data.model === null, 15_000, 'the model gone');
    } finally {
      unsubscribe();
      await client.dispose();
      await until(() => gw.repository.listenerCount('status') === listeners, 5000, 'subscription released');
    }
  });

  async function lifecycle(subscribe: (events: any[]) => Promise<() => void>, name: string) {
    const events: any[] = [];
    const listeners = gw.repository.listenerCount('status');
    const stop = await subscribe(events);
    await until(() => gw.repository.listenerCount('status') > listeners, 5000, 'subscription registered');
    await addModel(extraRoot, name, mobilenet());
    const loaded = await gw.gql(`mutation($p: String!, $n: String!) { loadModel(name: $n, path: $p) { versions { state } } }`, {
      p: path.join(extraRoot, name),
      n: name,
    });
    expect(loaded.errors).toBeUndefined();
    await gw.gql(`mutation($n: String!) { unloadModel(name: $n) { name } }`, { n: name });
    await until(() => events.length >= 4, 5000, 'four events');
    stop();
    // the server lets go of the subscription when the client leaves
    await until(() => gw.repository.listenerCount('status') === listeners, 5000, 'subscription released');
    expect(events.map((e) => [e.previousState, e.state])).toEqual([
      ['START', 'LOADING'],
      ['LOADING', 'AVAILABLE'],
      ['AVAILABLE', 'UNLOADING'],
      ['UNLOADING', 'END'],
    ]);
    for (const e of events) {
      expect(e).toMatchObject({ model: name, version: 1, errorCode: null, errorMessage: null });
      expect(Date.parse(e.at)).toBeGreaterThan(0);
    }
  }

  const SUB = `subscription($n: String) { modelStatus(name: $n) { model version state previousState errorCode errorMessage at } }`;

  it('streams LOADING, AVAILABLE, UNLOADING, END over server-sent events', async () => {
    await lifecycle(async (events) => {
      const ctrl = new AbortController();
      const res = await fetch(`${gw.url}/graphql`, {
        method: 'POST',
        signal: ctrl.signal,
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ query: SUB, variables: { n: 'sse-model' } }),
      });
      expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
      (async () => {
        const decoder = new TextDecoder();
        let buf = '';
        try {
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            buf += decoder.decode(chunk, { stream: true });
            let i;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const frame = buf.slice(0, i);
              buf = buf.slice(i + 2);
              const data = frame
                .split('\n')
                .filter((l) => l.startsWith('data:'))
                .map((l) => l.slice(5))
                .join('');
              if (data.trim()) {
                const msg = JSON.parse(data);
                if (msg.data?.modelStatus) events.push(msg.data.modelStatus);
              }
            }
          }
        } catch {
          /* aborted */
        }
      })();
      return () => ctrl.abort();
    }, 'sse-model');
  });

  it('modelStatus(name:) with a name no model can have is refused at once, naming the rule (it streamed nothing for good)', async () => {
    for (const n of ['../mobilenet', 'x'.repeat(129), '']) {
      const res = await fetch(`${gw.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ query: SUB, variables: { n } }),
        signal: AbortSignal.timeout(5000),
      });
      // the stream says the error and ends
      const text = await res.text();
      const frames = text
        .split('\n')
        .filter((l) => l.startsWith('data:') && l.length > 6)
        .map((l) => JSON.parse(l.slice(5)));
      expect(frames[0]?.errors?.[0]?.extensions?.code, n).toBe('INVALID_INPUT');
      expect(frames[0].errors[0].message, n).toMatch(n.length > 128 ? /at most 128/ : /invalid model name .*letters, digits/);
    }
  });

  it('streams LOADING, AVAILABLE, UNLOADING, END over WebSocket (graphql-ws)', async () => {
    const client = createClient({ url: gw.url.replace('http', 'ws') + '/graphql', webSocketImpl: WebSocket, retryAttempts: 0 });
    try {
      await lifecycle(async (events) => {
        const unsubscribe = client.subscribe(
          { query: SUB, variables: { n: 'ws-model' } },
          {
            next: (msg: any) => msg.data?.modelStatus && events.push(msg.data.modelStatus),
            error: (e) => events.push({ error: e }),
            complete: () => {},
          },
        );
        return unsubscribe;
      }, 'ws-model');
    } finally {
      await client.dispose();
    }
  });

  it('serves GraphiQL to browsers and answers /health', async () => {
    const page = await fetch(`${gw.url}/graphql`, { headers: { accept: 'text/html' } });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toMatch(/GraphQL inference gateway/);
    expect(html).not.toMatch(/unpkg\.com|cdn\.jsdelivr/); // self-contained: works on a closed network
    // ~9 MB of HTML: sent gzipped to a browser that takes it (as every browser does), as it is to one that does not
    const raw = (encoding?: string) =>
      new Promise<{ encoding: string | undefined; vary: string | undefined; bytes: Buffer }>((resolve, reject) =>
        http
          .get(`${gw.url}/graphql`, { headers: { accept: 'text/html', ...(encoding ? { 'accept-encoding': encoding } : {}) } }, (r) => {
            const chunks: Buffer[] = [];
            r.on('data', (c) => chunks.push(c));
            r.on('end', () => resolve({ encoding: r.headers['content-encoding'], vary: r.headers.vary, bytes: Buffer.concat(chunks) }));
          })
          .on('error', reject),
      );
    const zipped = await raw('gzip, deflate, br');
    expect(zipped.encoding).toBe('gzip');
    expect(zipped.vary).toMatch(/accept-encoding/i);
    expect(zipped.bytes.length).toBeLessThan(html.length / 3);
    expect(gunzipSync(zipped.bytes).toString()).toBe(html);
    const plain = await raw();
    expect(plain.encoding).toBeUndefined();
    expect(plain.bytes.toString()).toBe(html);
    // gzip refused by weight (RFC 9110): the page as it is
    expect((await raw('gzip;q=0, identity')).encoding).toBeUndefined();
    expect((await raw('br, GZIP;q=0.5')).encoding).toBe('gzip');
    expect((await raw('*, gzip;q=0')).encoding).toBeUndefined();
    const health = await fetch(`${gw.url}/health`);
    expect(await health.json()).toEqual({ status: 'ok' });
  });

  it('a new version that loads or fails beside a serving one keeps the server ready (every replica would leave its load balancer at once)', async () => {
    await addModel(extraRoot, 'steady', { ...mobilenet(), config: { ...(mobilenet().config as object), versionPolicy: { latest: 1 } } });
    await gw.repository.load('steady', { path: path.join(extraRoot, 'steady') });
    const dir = gw.repository.get('steady')!.dir;
    try {
      expect((await fetch(`${gw.url}/ready`)).status).toBe(200);
      await mkdir(path.join(dir, '.v2'));
      await writeFile(path.join(dir, '.v2', 'model.onnx'), 'not a model');
      await rename(path.join(dir, '.v2'), path.join(dir, '2')); // a corrupt new version, put in place the safe way
      const versions = async () => (await gw.gql(`{ model(name: "steady") { ready versions { version state errorCode } } }`)).data.model;
      await until(
        async () => (await versions()).versions.some((v: { errorCode: string }) => v.errorCode === 'MODEL_LOAD_FAILED'),
        10_000,
        'v2 failed',
      );
      expect(await versions()).toEqual({
        ready: true,
        versions: [
          { version: 1, state: 'AVAILABLE', errorCode: null },
          { version: 2, state: 'END', errorCode: 'MODEL_LOAD_FAILED' },
        ],
      });
      expect((await fetch(`${gw.url}/ready`)).status).toBe(200);
    } finally {
      await gw.gql(`mutation { unloadModel(name: "steady") { name } }`);
    }
  });

  it('unloadModel of a version that leaves the list while it waits for the model (a rescan found its folder gone) is MODEL_NOT_FOUND', async () => {
    await addModel(extraRoot, 'rotate', {
      ...mobilenet(),
      versions: [1, 2],
      config: { ...(mobilenet().config as object), versionPolicy: { all: true } },
    });
    await gw.repository.load('rotate', { path: path.join(extraRoot, 'rotate') });
    try {
      await gw.gql(`mutation { unloadModel(name: "rotate") { name } }`);
      await rm(path.join(extraRoot, 'rotate', '2'), { recursive: true });
      // the load takes the model (version 1 loads: hundreds of ms) and drops version 2, gone from disk; the unload of
      // version 2 waits for it
      const load = gw.gql(`mutation { loadModel(name: "rotate") { name } }`);
      await new Promise((r) => setTimeout(r, 50));
      const unload = await gw.gql(`mutation { unloadModel(name: "rotate", version: 2) { name } }`);
      expect((await load).errors).toBeUndefined();
      expect([errorCode(unload), unload.errors?.[0].message]).toEqual([
        'MODEL_NOT_FOUND',
        'model rotate has no version 2 (its versions: 1)',
      ]);
      expect((await gw.gql(`{ model(name: "rotate") { versions { version state } } }`)).data.model.versions).toEqual([
        { version: 1, state: 'AVAILABLE' },
      ]);
    } finally {
      await gw.gql(`mutation { unloadModel(name: "rotate") { name } }`);
    }
  });

  it('an upload queued behind a deleteModel of the same name lands in the model the list holds, not in the one deleted', async () => {
    const onnx = new Uint8Array(await readFile(modelFile('mobilenet')));
    const upload = () => gw.repository.load('churn', { files: [{ name: 'model.onnx', bytes: onnx }] });
    expect((await upload()).versions.get(1)!.state).toBe('AVAILABLE');
    const deleted = gw.repository.delete('churn'); // takes the model first
    const again = upload(); // waits for it
    expect(await deleted).toBe(true);
    const model = await again;
    try {
      expect(gw.repository.get('churn')).toBe(model); // was: the upload answered AVAILABLE into a model no list held
      expect((await gw.gql(`{ model(name: "churn") { versions { version state } } }`)).data.model.versions).toEqual([
        { version: 1, state: 'AVAILABLE' },
      ]);
    } finally {
      await gw.repository.delete('churn');
    }
  });

  it('an unload, an update or a delete queued behind a deleteModel of the same name is MODEL_NOT_FOUND, and nothing is announced', async () => {
    const onnx = new Uint8Array(await readFile(modelFile('mobilenet')));
    const announced: string[] = [];
    const onAdmin = (op: { op: string; name: string }) => op.name === 'gone' && announced.push(op.op);
    gw.repository.on('admin', onAdmin);
    try {
      for (const [what, queued] of [
        ['unloadModel', () => gw.gql(`mutation { unloadModel(name: "gone") { name } }`)],
        ['updateModel', () => gw.gql(`mutation { updateModel(name: "gone", description: "d") { name } }`)],
        ['deleteModel', () => gw.gql(`mutation { deleteModel(name: "gone") }`)],
      ] as const) {
        await gw.repository.load('gone', { files: [{ name: 'model.onnx', bytes: onnx }] });
        announced.length = 0;
        const deleted = gw.repository.delete('gone'); // takes the model first
        const r = await queued(); // waits for it
        expect(await deleted).toBe(true);
        // was: a masked 500 (the update wrote into the removed folder), or success for a model no list holds
        expect([errorCode(r), r.errors?.[0].message], what).toEqual(['MODEL_NOT_FOUND', expect.stringMatching(/"gone"/)]);
        expect(announced, what).toEqual(['delete']);
        expect(gw.repository.get('gone'), what).toBeUndefined();
      }
    } finally {
      gw.repository.off('admin', onAdmin);
    }
  });

  it('a versionPolicy that names no version on disk keeps the serving version and says so (it unloaded it without a word)', async () => {
    await addModel(extraRoot, 'typo', mobilenet());
    await gw.repository.load('typo', { path: path.join(extraRoot, 'typo') });
    const dir = gw.repository.get('typo')!.dir;
    try {
      const config = JSON.parse(await readFile(path.join(dir, 'model.json'), 'utf8'));
      await writeFile(path.join(dir, 'model.json.tmp'), JSON.stringify({ ...config, versionPolicy: { specific: [5] } }));
      await rename(path.join(dir, 'model.json.tmp'), path.join(dir, 'model.json'));
      const model = async () => (await gw.gql(`{ model(name: "typo") { configurationError versions { version state } } }`)).data.model;
      await until(async () => (await model()).configurationError !== null, 10_000, 'the policy named');
      await new Promise((r) => setTimeout(r, 300)); // a few more scans
      expect(await model()).toEqual({
        configurationError: 'typo/model.json: versionPolicy selects none of the versions on disk (1); the versions serving keep serving',
        versions: [{ version: 1, state: 'AVAILABLE' }],
      });
      await writeFile(path.join(dir, 'model.json.tmp'), JSON.stringify(config));
      await rename(path.join(dir, 'model.json.tmp'), path.join(dir, 'model.json'));
      await until(async () => (await model()).configurationError === null, 10_000, 'the error gone with the fix');
    } finally {
      await gw.gql(`mutation { unloadModel(name: "typo") { name } }`);
    }
  });

  it('a model.json that does not fit the serving model is tried once per change, unpublished: the version serves and says AVAILABLE', async () => {
    await addModel(extraRoot, 'refit', mobilenet());
    await gw.repository.load('refit', { path: path.join(extraRoot, 'refit') });
    const dir = gw.repository.get('refit')!.dir;
    const events: string[] = [];
    const onStatus = (e: { model: string; state: string }) => e.model === 'refit' && events.push(e.state);
    gw.repository.on('status', onStatus);
    const loads = () => gw.metrics.registry.getSingleMetricAsString('gateway_model_version_state');
    try {
      const config = JSON.parse(await readFile(path.join(dir, 'model.json'), 'utf8'));
      const misfit = { ...config, postprocessing: { ...config.postprocessing, output: 'no-such-output' } };
      await writeFile(path.join(dir, 'model.json.tmp'), JSON.stringify(misfit));
      await rename(path.join(dir, 'model.json.tmp'), path.join(dir, 'model.json'));
      const error = async () => (await gw.gql(`{ model(name: "refit") { configurationError } }`)).data.model.configurationError;
      await until(async () => /postprocessing\.output/.test((await error()) ?? ''), 10_000, 'the configuration refused');
      await new Promise((r) => setTimeout(r, 1500)); // 15 scans at 100 ms: each reloaded the model and failed again
      expect(gw.repository.get('refit')!.versions.get(1)!.state).toBe('AVAILABLE');
      expect(events).toEqual([]); // for clients the version never stopped serving
      const tries = gw.logs.filter((l) => l.includes('refit') && l.includes('the new configuration did not load'));
      expect(tries).toHaveLength(1);
      expect(await loads()).toMatch(/gateway_model_version_state\{model="refit",version="1",state="AVAILABLE"\} 1/);
      expect(await error()).toMatch(/postprocessing\.output/);
    } finally {
      gw.repository.off('status', onStatus);
      await gw.gql(`mutation { unloadModel(name: "refit") { name } }`);
    }
  });
});

describe('a load that takes longer than ENGINE_LOAD_TIMEOUT_MS', () => {
  it('ends with MODEL_LOAD_FAILED, stops its engine worker, and the server keeps serving', async () => {
    const threads = async () => Number(/^Threads:\s+(\d+)/m.exec(await readFile('/proc/self/status', 'utf8'))![1]);
    // 1 ms: shorter than any real load (reading the file alone takes longer)
    const gw = await startGateway({ models: { mobilenet: mobilenet() }, env: { ENGINE_LOAD_TIMEOUT_MS: '1' } });
    try {
      const r = await gw.gql(`{ model(name: "mobilenet") { versions { state errorCode errorMessage } } }`);
      expect(r.data.model.versions).toEqual([
        {
          state: 'END',
          errorCode: 'MODEL_LOAD_FAILED',
          errorMessage: expect.stringMatching(/took longer than 1 ms \(ENGINE_LOAD_TIMEOUT_MS\)/),
        },
      ]);
      // wherever the limit falls (while the file is read, as here, or with a worker running: faults.test.ts covers
      // each step), a given-up load leaves no thread behind
      const before = await threads();
      for (let i = 0; i < 4; i++) {
        const again = await gw.gql(`mutation { loadModel(name: "mobilenet") { name versions { state errorCode } } }`);
        expect(again.data.loadModel.versions).toEqual([{ state: 'END', errorCode: 'MODEL_LOAD_FAILED' }]);
      }
      await until(async () => (await threads()) <= before + 1, 10_000, 'the workers of the given-up loads to end');
      expect((await fetch(`${gw.url}/health`)).status).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('schema.graphql', () => {
  it('is fresh (run npm run schema after changing the schema)', async () => {
    const committed = await readFile(path.join(ROOT, 'schema.graphql'), 'utf8');
    expect(committed).toBe(printSchema(schema) + '\n');
  });
});
