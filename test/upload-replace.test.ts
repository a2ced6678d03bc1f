import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ElemType, identityModel } from './onnx-builder.ts';
import { startGateway } from './helpers.ts';

describe('an upload that names a serving version ("file:1/model.onnx")', () => {
  it('that does not load leaves that version serving, listed and announced as it was', async () => {
    const gw = await startGateway({ models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } } });
    const events: string[] = [];
    gw.repository.on('status', (e) => e.model === 'ident' && events.push(`${e.version} ${e.removed ? 'removed' : e.state}`));
    const post = async (p: string, body: unknown) => {
      const r = await fetch(`${gw.url}/v2${p}`, { method: 'POST', body: JSON.stringify(body) });
      return { status: r.status, body: (await r.json()) as { error?: string; outputs?: { data: number[] }[] } };
    };
    try {
      const served = gw.repository.get('ident')!.versions.get(1)!;
      const bad = await post('/repository/models/ident/load', {
        parameters: { 'file:1/model.onnx': Buffer.from('not an onnx model').toString('base64') },
      });
      expect(bad.status).toBe(400); // the upload is refused...
      // ...and version 1 serves on, as before the upload: it was dropped from the list, never unloaded (its session
      // open for good), and said removed to subscribers, while the watcher was off
      expect(gw.repository.get('ident')!.versions.get(1) === served).toBe(true);
      expect(served.state).toBe('AVAILABLE');
      const r = await post('/models/ident/versions/1/infer', {
        inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, 4] }],
      });
      expect([r.status, r.body.outputs?.[0].data]).toEqual([200, [1, 2, 3, 4]]);
      expect(events.filter((e) => e === '1 removed' || e === '1 END')).toEqual([]);
    } finally {
      await gw.close();
    }
  });

  it('that loads takes over with no event that says the version is not serving', async () => {
    const gw = await startGateway({ models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } } });
    const events: string[] = [];
    gw.repository.on('status', (e) => e.model === 'ident' && events.push(`${e.version} ${e.removed ? 'removed' : e.state}`));
    try {
      const r = await fetch(`${gw.url}/v2/repository/models/ident/load`, {
        method: 'POST',
        body: JSON.stringify({
          parameters: { 'file:1/model.onnx': Buffer.from(identityModel(ElemType.FLOAT, ['N', 4])).toString('base64') },
        }),
      });
      expect(r.status).toBe(200);
      // for clients version 1 stayed AVAILABLE (as a new configuration's instance is loaded, unpublished): subscribers
      // (the page) were told it was LOADING
      expect(events).toEqual([]);
    } finally {
      await gw.close();
    }
  });

  it('that loads is never missing from disk while it is committed (a scan of another replica on the shared volume would unload it)', async () => {
    const gw = await startGateway({ models: { ident: { onnx: identityModel(ElemType.FLOAT, ['N', 4]), config: { task: 'raw' } } } });
    const file = path.join(gw.root, 'ident', '1', 'model.onnx');
    // what a scan would see, looked at every turn of the event loop while the upload runs
    let missing = 0;
    let watching = true;
    const watch = () => {
      if (!existsSync(file)) missing++;
      if (watching) setImmediate(watch);
    };
    try {
      for (let i = 0; i < 5; i++) {
        watch();
        const r = await fetch(`${gw.url}/v2/repository/models/ident/load`, {
          method: 'POST',
          body: JSON.stringify({
            parameters: { 'file:1/model.onnx': Buffer.from(identityModel(ElemType.FLOAT, ['N', 4])).toString('base64') },
          }),
        });
        expect(r.status).toBe(200);
        watching = false;
        await new Promise((r) => setImmediate(r));
        watching = true;
      }
      // the version's folder was moved aside, then the staged one renamed in: gone for a moment each time
      expect(missing).toBe(0);
    } finally {
      watching = false;
      await gw.close();
    }
  });
});
