import { describe, expect, it } from 'vitest';
import { engineWorkers, errorCode, fixture, image, startGateway, until } from './helpers.ts';
import type { SessionInstances } from '../src/engine/instances.ts';

/**
 * Engine instances (ENGINE_INSTANCES, model.json "instances"): copies of a model that compute batches side by side.
 * Through the gateway: the answers are those of one instance, every instance takes calls, a crash of any one of them
 * takes the version down and back up whole, and a bad count is refused at load, naming the field.
 */
const CLASSIFY = (model: string) =>
  `mutation($f: File!) { classify(model: "${model}", image: { file: $f }, topK: 3) { predictions { classId confidence } } }`;
const PHOTOS = ['zebra.jpeg', 'bee.jpeg', 'snail.jpeg', 'pelican.jpeg', 'gorilla.jpeg', 'peacock.jpeg'];

describe('engine instances', () => {
  it('two instances answer as one does, and both take calls under concurrent load', async () => {
    const gw = await startGateway({
      models: { two: fixture('mobilenet'), one: fixture('mobilenet', { instances: 1 }) },
      env: { ENGINE_INSTANCES: '2' },
    });
    try {
      const notes = async (m: string) => (await gw.gql(`{ model(name: "${m}") { versions { notes } } }`)).data.model.versions[0].notes;
      expect((await notes('two')).instances).toBe(2);
      // the load's warm-up ran once on each copy, before any request
      const session = gw.repository.get('two')!.servingVersion()!.session as unknown as SessionInstances;
      expect(session.calls).toEqual([1, 1]);
      expect((await notes('one')).instances).toBeUndefined();
      const run = (m: string) =>
        Promise.all(
          Array.from({ length: 24 }, (_, i) => gw.gql(CLASSIFY(m), { f: null }, { files: { f: image(PHOTOS[i % PHOTOS.length]) } })),
        );
      const [two, one] = [await run('two'), await run('one')];
      for (const r of [...two, ...one]) expect(r.errors).toBeUndefined();
      // the same classes in the same order; confidences equal to float rounding (batches form differently under load,
      // and a lone call runs on more threads: ONNX Runtime may sum in another order)
      two.forEach((r, i) => {
        const [a, b] = [r.data.classify.predictions, one[i].data.classify.predictions];
        expect(a.map((p: { classId: number }) => p.classId)).toEqual(b.map((p: { classId: number }) => p.classId));
        a.forEach((p: { confidence: number }, k: number) => expect(p.confidence).toBeCloseTo(b[k].confidence, 5));
      });
      // each copy took requests, not only its warm-up call (one call at a time would leave the second copy idle)
      expect(session.calls).toHaveLength(2);
      expect(Math.min(...session.calls), `calls per instance ${session.calls}`).toBeGreaterThan(1);
    } finally {
      await gw.close();
    }
  });

  it('on an idle server, the images of one request are spread over the instances: two calls of four, the answers of one call', async () => {
    const gw = await startGateway({
      models: { two: fixture('mobilenet'), one: fixture('mobilenet', { instances: 1 }) },
      env: { ENGINE_INSTANCES: '2' },
    });
    try {
      const photos = [...PHOTOS, 'airliner.jpeg', 'arctic-fox.jpeg'];
      const batch = (m: string, some = photos) =>
        gw.gql(
          `mutation($images: [ImageInput!]!) { classifyBatch(model: "${m}", images: $images, topK: 3) { predictions { classId confidence } } }`,
          { images: some.map(() => ({ file: null })) },
          { files: Object.fromEntries(some.map((p, i) => [`images.${i}.file`, image(p)])) },
        );
      const sizes = async (m: string) =>
        (await gw.gql(`{ model(name: "${m}") { stats { batchSizes { size count } } } }`)).data.model.stats[0].batchSizes;
      const session = gw.repository.get('two')!.servingVersion()!.session as unknown as SessionInstances;
      const before = [...session.calls];
      const [two, one] = [await batch('two'), await batch('one')];
      expect(two.errors).toBeUndefined();
      expect(one.errors).toBeUndefined();
      // both copies computed half of it, side by side; one instance computes all eight in one call
      expect(session.calls.map((c, k) => c - before[k])).toEqual([1, 1]);
      expect(await sizes('two')).toContainEqual({ size: 4, count: 2 });
      expect((await sizes('two')).find((b: { size: number }) => b.size === 8)).toBeUndefined();
      expect(await sizes('one')).toContainEqual({ size: 8, count: 1 });
      // in order, and what one call of eight answers
      two.data.classifyBatch.forEach((r: { predictions: { classId: number; confidence: number }[] }, i: number) => {
        const b = one.data.classifyBatch[i].predictions;
        expect(r.predictions.map((p) => p.classId)).toEqual(b.map((p: { classId: number }) => p.classId));
        r.predictions.forEach((p, k) => expect(p.confidence).toBeCloseTo(b[k].confidence, 5));
      });
      expect(two.data.classifyBatch[0].predictions[0].classId).toBe(340); // zebra
      // a call keeps two items at least: two photos stay one call (two calls of one cost more CPU than they save)
      const pair = await batch('two', photos.slice(0, 2));
      expect(pair.errors).toBeUndefined();
      expect(await sizes('two')).toContainEqual({ size: 2, count: 1 });
    } finally {
      await gw.close();
    }
  });

  it('a crash of the second instance takes the version down, and it reloads with all its instances', async () => {
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet') }, env: { ENGINE_INSTANCES: '2' } });
    try {
      const serving = gw.repository.get('mobilenet')!.servingVersion()!;
      const events: string[] = [];
      gw.repository.on('status', (e: { state: string; errorCode: string | null }) =>
        events.push(`${e.state}${e.errorCode ? ':' + e.errorCode : ''}`),
      );
      const workers = engineWorkers(serving.session);
      expect(workers).toHaveLength(2);
      await workers[1].terminate();
      await until(() => events.includes('AVAILABLE'), 15_000, 'the version back');
      expect(events).toEqual(['UNLOADING', 'END:ENGINE_FAILED', 'LOADING', 'AVAILABLE']);
      expect(engineWorkers(gw.repository.get('mobilenet')!.servingVersion()!.session)).toHaveLength(2);
      const r = await gw.gql(CLASSIFY('mobilenet'), { f: null }, { files: { f: image('zebra.jpeg') } });
      expect(r.data.classify.predictions[0].classId).toBe(340);
    } finally {
      await gw.close();
    }
  });

  it('model.json "instances": 0 is refused at load, naming the field', async () => {
    const gw = await startGateway({ models: { mobilenet: fixture('mobilenet', { instances: 0 }) } });
    try {
      const [v] = (await gw.gql(`{ model(name: "mobilenet") { versions { state errorCode errorMessage } } }`)).data.model.versions;
      expect(v).toMatchObject({ state: 'END', errorCode: 'INVALID_MODEL_CONFIG' });
      expect(v.errorMessage).toMatch(/instances/);
      expect(errorCode(await gw.gql(CLASSIFY('mobilenet'), { f: null }, { files: { f: image('zebra.jpeg') } }))).toBe('MODEL_NOT_READY');
    } finally {
      await gw.close();
    }
  });
});
