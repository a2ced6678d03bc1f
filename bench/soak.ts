/**
 * npm run soak: a long run at high concurrency against the real server (default 10 minutes at concurrency 64),
 * reporting requests served, errors by code, and the server's resident memory from start to end.
 * The traffic mixes classification, detection, segmentation with masks of large photos, and hostile input (junk
 * bytes, truncated and SVG images, decompression-bomb headers, oversized and deep documents, alias amplification); one
 * model has a small queue so overload is exercised. A probe asks /health every second and records its latency.
 * Only talks to 127.0.0.1; stops by itself. SOAK_SECONDS and SOAK_CONCURRENCY override the defaults.
 */
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import sharp from 'sharp';
import { IMAGES, ROOT, modelAsset, modelFile, multipartBody, post, rssMiB, startServer } from './lib.ts';
import zlib from 'node:zlib';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 600);
const CONCURRENCY = Number(process.env.SOAK_CONCURRENCY ?? 64);

async function main() {
  const mobilenet = {
    task: 'classification',
    labels: 'labels.txt',
    postprocessing: { activation: 'softmax' },
    preprocessing: { resizeType: 'CROP', cropFraction: 0.875, pixelScaling: 1, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
  };
  const server = await startServer({
    mobilenet: {
      onnx: modelFile('mobilenet'),
      config: { ...mobilenet, batching: { maxBatchSize: 16, maxDelayMs: 2, maxQueueSize: 256 } },
      files: { 'labels.txt': modelAsset('mobilenet', 'labels.txt') },
    },
    'mobilenet-small-queue': {
      onnx: modelFile('mobilenet'),
      config: { ...mobilenet, batching: { maxBatchSize: 8, maxDelayMs: 2, maxQueueSize: 8 } },
      files: { 'labels.txt': modelAsset('mobilenet', 'labels.txt') },
    },
    yolox: {
      onnx: modelFile('yolox'),
      files: { 'labels.txt': modelAsset('yolox', 'labels.txt') },
      config: {
        task: 'detection',
        labels: 'labels.txt',
        preprocessing: { resizeType: 'FILL', fillAlign: 'topLeft', fillColor: [114, 114, 114], colorChannels: 'BGR', pixelScaling: 255 },
        postprocessing: { format: 'yolox', minConfidence: 0.3 },
      },
    },
    bodypix: { onnx: modelFile('bodypix'), config: JSON.parse(await readFile(modelAsset('bodypix', 'model.json'), 'utf8')) },
  });
  const pid = server.child.pid!;
  const photo = (p: string) => readFile(path.join(IMAGES, p));
  const classify = (m: string) =>
    `mutation($f: File!) { classify(model: "${m}", image: { file: $f }, topK: 3) { predictions { classId label confidence } } }`;
  const detect = `mutation($f: File!) { detect(model: "yolox", image: { file: $f }) { objects { label confidence box { xMin yMin xMax yMax } } } }`;
  const mix = [
    ...(await Promise.all(
      ['bee.jpeg', 'zebra.jpeg', 'pelican.jpeg', 'snail.jpeg', 'gorilla.jpeg', 'airliner.jpeg'].map(async (p) =>
        multipartBody(classify('mobilenet'), await photo(p), p),
      ),
    )),
    multipartBody(classify('mobilenet-small-queue'), await photo('peacock.jpeg'), 'peacock.jpeg'),
    multipartBody(classify('mobilenet-small-queue'), await photo('arctic-fox.jpeg'), 'fox.jpeg'),
    multipartBody(detect, await photo('dog.jpg'), 'dog.jpg'),
    multipartBody(classify('mobilenet'), Buffer.from('this is not an image'), 'junk.bin'),
    multipartBody(classify('mobilenet'), (await photo('coco.jpg')).subarray(0, 30_000), 'truncated.jpg'),
    // hostile: an SVG, a PNG whose header claims 100000 x 100000, a 12-megapixel photo masked and overlaid twice
    multipartBody(
      classify('mobilenet'),
      Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9" height="9"/></svg>'),
      'x.svg',
    ),
    multipartBody(classify('mobilenet'), pngClaiming(100_000, 100_000), 'bomb.png'),
    multipartBody(
      `mutation($f: File!) { segment(model: "bodypix", image: { file: $f }) { classes { label pixelFraction } mask overlay a: mask b: overlay } }`,
      await sharp({ create: { width: 4000, height: 3000, channels: 3, background: '#806040' } })
        .jpeg()
        .toBuffer(),
      'large.jpg',
    ),
    // a pipeline on a 12-megapixel photo: every box classified three times over (the photo is decoded once per answer)
    multipartBody(
      `mutation($f: File!) { detect(model: "yolox", image: { file: $f }, minConfidence: 0.1) { objects { a: classify(model: "mobilenet") { predictions { classId } } b: classify(model: "mobilenet") { predictions { classId } } c: classify(model: "mobilenet") { predictions { classId } } } } }`,
      await sharp(await photo('dog.jpg'))
        .resize(4000, 3000)
        .jpeg()
        .toBuffer(),
      'dog-12mp.jpg',
    ),
    json(`{ models { name } } # ${'x'.repeat(300_000)}`),
    json(`{ ${Array.from({ length: 100 }, (_, k) => `a${k}: models { name }`).join(' ')} }`),
    json('{ models { versions { stats { batchSizes { size count } } } } } '.repeat(1)),
  ];
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY * 2 });
  // /health every second on its own connection: the server must answer it promptly whatever the load
  const healthMs: number[] = [];
  let probing = true;
  const probe = (async () => {
    while (probing) {
      const h0 = performance.now();
      const ok = await fetch(`http://127.0.0.1:${server.port}/health`).then(
        (r) => r.ok,
        () => false,
      );
      healthMs.push(ok ? performance.now() - h0 : Infinity);
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  const byCode = new Map<string, number>();
  let served = 0;
  let transportErrors = 0;
  const rss: { t: number; mib: number }[] = [{ t: 0, mib: await rssMiB(pid) }];
  console.log(`soak: ${SECONDS}s at concurrency ${CONCURRENCY}; server pid ${pid}, RSS at start ${rss[0].mib} MiB`);
  const t0 = Date.now();
  const end = t0 + SECONDS * 1000;
  let i = 0;
  const worker = async () => {
    while (Date.now() < end) {
      const { body, type } = mix[i++ % mix.length];
      try {
        const r = JSON.parse(await post(agent, server.port, body, type)) as {
          data?: unknown;
          errors?: { extensions?: { code?: string } }[];
        };
        if (r.errors?.length)
          for (const e of r.errors) byCode.set(e.extensions?.code ?? 'NO_CODE', (byCode.get(e.extensions?.code ?? 'NO_CODE') ?? 0) + 1);
        else served++;
      } catch {
        transportErrors++;
      }
    }
  };
  const sampler = setInterval(
    async () => {
      const mib = await rssMiB(pid).catch(() => -1);
      rss.push({ t: Math.round((Date.now() - t0) / 1000), mib });
      const errors = [...byCode.values()].reduce((a, b) => a + b, 0);
      console.log(`  t=${String(rss.at(-1)!.t).padStart(4)}s  served ${served}  errors ${errors}  RSS ${mib} MiB`);
    },
    Math.max(5, Math.min(30, SECONDS / 20)) * 1000,
  );
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  clearInterval(sampler);
  probing = false;
  await probe;
  rss.push({ t: Math.round((Date.now() - t0) / 1000), mib: await rssMiB(pid) });
  const health = await fetch(`http://127.0.0.1:${server.port}/health`).then(
    (r) => r.status,
    () => 0,
  );
  agent.destroy();
  const exitCode = await server.stop();
  const half = rss.filter((s) => s.t >= SECONDS / 2).map((s) => s.mib);
  const result = {
    date: new Date().toISOString(),
    seconds: SECONDS,
    concurrency: CONCURRENCY,
    served,
    errorsByCode: Object.fromEntries([...byCode.entries()].sort()),
    transportErrors,
    rssMiB: {
      start: rss[0].mib,
      end: rss.at(-1)!.mib,
      max: Math.max(...rss.map((s) => s.mib)),
      secondHalfMin: Math.min(...half),
      secondHalfMax: Math.max(...half),
    },
    healthChecks: { count: healthMs.length, maxMs: Math.round(Math.max(...healthMs)), over1s: healthMs.filter((ms) => ms > 1000).length },
    healthAfter: health,
    exitCodeAfterSigterm: exitCode,
    samples: rss,
  };
  console.log(JSON.stringify({ ...result, samples: undefined }, null, 2));
  await writeFile(path.join(ROOT, 'bench', 'soak-results.json'), JSON.stringify(result, null, 2) + '\n');
  console.log('wrote bench/soak-results.json');
}

/** A JSON GraphQL request body. */
function json(query: string): { body: Uint8Array; type: string } {
  return { body: Buffer.from(JSON.stringify({ query })), type: 'application/json' };
}

/** A real PNG whose header claims width x height (a decompression bomb, refused from the header). */
function pngClaiming(width: number, height: number): Buffer {
  const crc = (b: Uint8Array) => zlib.crc32(b); // PNG's chunk CRC
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==', 'base64');
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(crc(png.subarray(12, 29)), 29);
  return png;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
