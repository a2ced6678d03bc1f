import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixture, image, modelAsset, modelFile, ROOT, startGateway, type TestGateway } from './helpers.ts';

/**
 * A newcomer's mistakes in the model repository, as the README tells them to lay it out: each one is told what went
 * wrong where they look (the CLI they ran, the server's log), not left to guess.
 */
function gateway(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(ROOT, 'bin', 'gateway.mjs'), ...args],
      { cwd: ROOT, env: { ...process.env, GATEWAY_URL: '', GATEWAY_TOKEN: '' } },
      (error, stdout, stderr) => resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

const imagenet = readFileSync(modelAsset('mobilenet', 'labels.txt'), 'utf8').split('\n').filter(Boolean);

describe("a newcomer's repository mistakes", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      models: {
        // a trailing comma: the server knows the line and column
        typo: { onnx: modelFile('mobilenet'), files: { 'model.json': { text: '{\n  "task": "classification",\n}\n' } } },
        mobilenet: fixture('mobilenet'),
        // the ImageNet labels as a JSON list, in a file whose extension is written in capitals
        shouting: {
          ...fixture('mobilenet', { labels: 'Labels.JSON' }),
          files: { 'Labels.JSON': { text: JSON.stringify(imagenet) } },
        },
      },
      pollIntervalMs: 100,
    });
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('`gateway load` of a model that does not load says why (the message naming the line), not only its code', async () => {
    const r = await gateway(['load', 'typo', '--url', gw.url]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('typo: v1 END INVALID_MODEL_CONFIG\n');
    expect(r.stderr).toMatch(/typo: v1: INVALID_MODEL_CONFIG: .*not valid JSON at line 2, column 27 \(a trailing comma/);
  });

  it('`gateway models` says why a model.json is not in force, beside its table (it showed the state alone)', async () => {
    const r = await gateway(['models', '--url', gw.url]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^typo +raw +no +v1 END INVALID_MODEL_CONFIG$/m);
    expect(r.stderr).toMatch(/^typo: .*not valid JSON at line 2, column 27 \(a trailing comma/m);
    expect(r.stderr).not.toMatch(/^mobilenet:/m);
  });

  it('a model folder whose name the repository cannot serve (a space, a leading "_") is logged, not silently ignored', async () => {
    for (const name of ['My Model', '_draft']) {
      await mkdir(path.join(gw.root, name, '1'), { recursive: true });
      await writeFile(path.join(gw.root, name, 'model.json'), '{"task": "classification"}');
    }
    const deadline = Date.now() + 5000;
    const said = () => ['My Model', '_draft'].every((n) => gw.logs.some((l) => l.includes(JSON.stringify(n)) && /model name/.test(l)));
    while (!said() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(said(), gw.logs.filter((l) => !/"request"/.test(l)).join('\n')).toBe(true);
    // once per folder, not at every rescan
    await new Promise((r) => setTimeout(r, 500));
    expect(gw.logs.filter((l) => l.includes('"My Model"')).length).toBe(1);
    const listed = await gw.gql<{ models: { name: string }[] }>('{ models { name } }');
    expect(listed.data!.models.map((m) => m.name)).not.toContain('My Model');
    // a model folder that is a symbolic link is not followed: said too
    await symlink(path.join(gw.root, 'mobilenet'), path.join(gw.root, 'linked'));
    const linked = () => gw.logs.some((l) => l.includes('"linked"') && /symbolic link/.test(l));
    const until = Date.now() + 5000;
    while (!linked() && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    expect(linked()).toBe(true);
    await rm(path.join(gw.root, 'linked'));
    // a link to a file, or to nothing, is no model folder: not said to be one
    await symlink(path.join(gw.root, 'mobilenet', 'model.json'), path.join(gw.root, 'notes'));
    await symlink(path.join(gw.root, 'nowhere'), path.join(gw.root, 'dangling'));
    await new Promise((r) => setTimeout(r, 500));
    expect(gw.logs.filter((l) => /"(notes|dangling)"/.test(l) && /symbolic link/.test(l))).toEqual([]);
    await rm(path.join(gw.root, 'notes'));
    await rm(path.join(gw.root, 'dangling'));
  });

  it('a labels file named with its extension in capitals (Labels.JSON) is read as what it is, not one label per line', async () => {
    const r = await gw.gql<{ classify: { predictions: { label: string }[] } }>(
      'mutation($f: File!) { classify(model: "shouting", image: { file: $f }, topK: 1) { predictions { label } } }',
      { f: null },
      { files: { f: image('zebra.jpeg') } },
    );
    expect(r.errors).toBeUndefined();
    expect(r.data!.classify.predictions[0].label).toBe('zebra');
  });
});

describe('a warm-up run past ENGINE_CALL_TIMEOUT_MS (a busy machine, or the setting given in seconds)', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, env: { ENGINE_CALL_TIMEOUT_MS: '5' } });
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('fails the load naming the setting, not "model.json does not fit the model" (the configuration is right)', async () => {
    const r = await gw.gql<{
      model: { configurationError: string | null; versions: { state: string; errorCode: string; errorMessage: string }[] };
    }>('{ model(name: "mobilenet") { configurationError versions { state errorCode errorMessage } } }');
    const [v] = r.data!.model.versions;
    expect(v.state).toBe('END');
    expect(v.errorMessage).toMatch(/ENGINE_CALL_TIMEOUT_MS/);
    expect(v.errorMessage).not.toMatch(/model\.json/);
    expect(v.errorCode).toBe('MODEL_LOAD_FAILED');
    expect(r.data!.model.configurationError).toBeNull();
  });
});
