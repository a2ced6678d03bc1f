// Builds the page served at / into ui/dist: one JS and one CSS bundle (content-hashed names, so the server can let
// browsers cache them for good), index.html pointing at them, and gzip/brotli copies the server sends to browsers
// that accept them. Run by `npm install` (root postinstall) and `npm run build:ui`; `--watch` rebuilds on change.
// Everything the page needs is in the bundle: it loads nothing from outside the gateway.
import * as esbuild from 'esbuild';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const UI = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(UI, 'dist');
const watch = process.argv.includes('--watch');

/** Replaced in one step: a gateway serving the folder meanwhile sends the old file or the new one, never half. */
async function atomicWrite(file, data) {
  await writeFile(`${file}.tmp`, data);
  await rename(`${file}.tmp`, file);
}

/** Writes index.html for the bundles esbuild produced, and compressed copies of the text files. */
const finish = {
  name: 'finish',
  setup(build) {
    build.onEnd(async (result) => {
      if (result.errors.length) return;
      const outputs = Object.keys(result.metafile.outputs).map((f) => path.basename(f));
      const js = outputs.find((f) => f.endsWith('.js'));
      const css = outputs.find((f) => f.endsWith('.css'));
      const template = await readFile(path.join(UI, 'index.html'), 'utf8');
      const html = template
        .replace('<!-- styles -->', css ? `<link rel="stylesheet" href="/assets/${css}">` : '')
        .replace('<!-- script -->', `<script type="module" src="/assets/${js}"></script>`);
      await atomicWrite(path.join(DIST, 'index.html'), html);
      const written = [path.join(DIST, 'index.html'), ...outputs.map((f) => path.join(DIST, 'assets', f))];
      const sizes = [];
      for (const file of written) {
        const bytes = await readFile(file);
        const gz = gzipSync(bytes, { level: 9 });
        await atomicWrite(`${file}.gz`, gz);
        await atomicWrite(`${file}.br`, brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
        sizes.push(`${path.basename(file)} ${(bytes.length / 1024).toFixed(1)} kB (gzip ${(gz.length / 1024).toFixed(1)} kB)`);
      }
      // drop the bundles of earlier builds
      for (const f of await readdir(path.join(DIST, 'assets'))) {
        if (!outputs.includes(f.replace(/\.(gz|br)$/, ''))) await rm(path.join(DIST, 'assets', f));
      }
      console.log(`ui: built ui/dist: ${sizes.join(', ')}`);
    });
  },
};

// not emptied first: a running gateway keeps serving the previous build until this one is complete
await mkdir(path.join(DIST, 'assets'), { recursive: true });

const options = {
  entryPoints: [path.join(UI, 'src', 'main.tsx')],
  bundle: true,
  outdir: path.join(DIST, 'assets'),
  entryNames: 'app-[hash]',
  assetNames: '[name]-[hash]',
  format: 'esm',
  platform: 'browser',
  target: ['es2022', 'chrome111', 'firefox111', 'safari16.4'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  minify: !watch,
  sourcemap: watch ? 'inline' : false,
  legalComments: 'eof',
  metafile: true,
  logLevel: 'warning',
  plugins: [finish],
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log('ui: watching ui/src (Ctrl+C to stop)');
} else {
  await esbuild.build(options);
}
