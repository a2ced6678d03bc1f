/**
 * The baseline the gateway must beat: the server a user would write in an afternoon. A plain node:http handler that
 * takes the photo as the request body, decodes and resizes it with sharp (resize 256, center crop 224), fills a float
 * tensor on the main thread, runs onnxruntime on the main thread (its defaults), one image per call, no batching, and
 * answers the top class as JSON. It is clearly not the product: it exists to be measured against.
 *
 * Usage: node --import tsx bench/naive.ts <port> <model.onnx> [exact]
 *
 * `exact`: the same int8 arithmetic as the gateway where its CPU saturates int8 products (ENGINE_EXACT_INT8, ONNX
 * Runtime's session option x64quantprecision), so that the two are compared on serving, not on what they compute. On a
 * CPU with VNNI it changes nothing; the bench passes it when the gateway's default sets it.
 */
import http from 'node:http';
import ort from 'onnxruntime-node';
import sharp from 'sharp';

const [port, modelPath, exact] = process.argv.slice(2);
const session = await ort.InferenceSession.create(
  modelPath,
  exact === 'exact' ? ({ extra: { session: { x64quantprecision: '1' } } } as ort.InferenceSession.SessionOptions) : {},
);
const MEAN = [0.485, 0.456, 0.406];
const STD = [0.229, 0.224, 0.225];

async function classify(photo: Buffer): Promise<{ classId: number; score: number }> {
  const meta = await sharp(photo).metadata();
  const scale = 256 / Math.min(meta.width!, meta.height!);
  const w = Math.round(meta.width! * scale);
  const h = Math.round(meta.height! * scale);
  const { data } = await sharp(photo)
    .resize(w, h)
    .extract({ left: Math.floor((w - 224) / 2), top: Math.floor((h - 224) / 2), width: 224, height: 224 })
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const input = new Float32Array(3 * 224 * 224);
  for (let c = 0; c < 3; c++) for (let i = 0; i < 224 * 224; i++) input[c * 224 * 224 + i] = (data[i * 3 + c] / 255 - MEAN[c]) / STD[c];
  const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', input, [1, 3, 224, 224]) });
  const scores = out[session.outputNames[0]].data as Float32Array;
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return { classId: best, score: scores[best] };
}

http
  .createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      classify(Buffer.concat(chunks)).then(
        (r) => res.end(JSON.stringify(r)),
        (e) => {
          res.statusCode = 400;
          res.end(JSON.stringify({ error: String(e) }));
        },
      );
    });
  })
  .listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\n'));
