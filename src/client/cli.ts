// Over 250 lines on purpose: every command of `npx gateway` with its options and output, side by side.
/**
 * `gateway`, the command-line client (package.json "bin"; `npx gateway --help`): runs models on files, lists models,
 * evaluates a classifier over a labelled folder. Everything goes through GatewayClient, over the GraphQL API on HTTP.
 * Argument parsing is commander's, the progress bar cli-progress's.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { Presets, SingleBar } from 'cli-progress';
import {
  DEFAULT_URL,
  MAX_TIMEOUT_MS,
  GatewayClient,
  GatewayClientError,
  isGatewayUrl,
  isHeaderToken,
  type Classification,
  type Detection,
  type FieldError,
  type ModelSummary,
  type Segmentation,
} from './client.ts';
import { evaluate, type EvalReport } from './eval.ts';

interface Io {
  out(text: string): void;
  err(text: string): void;
  /** Whether stderr is a terminal (the progress bar is drawn only there). */
  tty: boolean;
}

const defaultIo: Io = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  tty: Boolean(process.stderr.isTTY),
};

const positiveInt = (v: string) => {
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError('expected a positive integer');
  return Number(v);
};
/**
 * A positive integer the gateway takes: at most `max` (its own limit: topK 1..1000, maxDetections 1..10000; a GraphQL
 * Int is at most 2^31-1). Past it every image failed with the server's words about a variable the user never named.
 */
const positiveIntUpTo = (max: number, why: string) => (v: string) => {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > max)
    throw new InvalidArgumentError(`expected a positive integer, at most ${max} (${why})`);
  return Number(v);
};
const version = positiveIntUpTo(2 ** 31 - 1, 'a GraphQL Int');
/** The longest --timeout, in seconds: a timer waits at most 2^31-1 ms (24.8 days); past it Node fires it after 1 ms. */
const MAX_TIMEOUT_SECONDS = Math.floor(MAX_TIMEOUT_MS / 1000);
const seconds = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n <= 0 || n > MAX_TIMEOUT_SECONDS)
    throw new InvalidArgumentError(`expected a number of seconds > 0, at most ${MAX_TIMEOUT_SECONDS} (24.8 days)`);
  return n;
};
/** A bound on scores: a probability for most models, any number for one that gives raw scores (the gateway says which). */
const score = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number');
  return n;
};
const fraction = (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('expected a number from 0 to 1');
  return n;
};

/** Where --out wrote the picture (it then stays out of the JSON). */
interface Written {
  written?: string;
}

interface Common {
  url: string;
  token?: string;
  timeout?: number;
  json?: boolean;
}

/** A --url as fetch takes it, or refused naming --url (it failed as UNREACHABLE, "is the gateway running?"). */
const gatewayUrl = (u: string) => {
  if (u === '') return DEFAULT_URL; // GATEWAY_URL= set empty: not set
  // an address without its scheme (127.0.0.1:4000) is read as http://, as curl reads it
  const url = /^[a-z][a-z0-9+.-]*:\/\//i.test(u) ? u : `http://${u}`;
  if (!isGatewayUrl(url)) throw new InvalidArgumentError('expected the gateway’s http:// or https:// address, as http://127.0.0.1:4000');
  return url;
};

/**
 * What an Authorization header can carry: visible ASCII (a token with a space, a control character or a letter past
 * ASCII failed as UNREACHABLE, "is the gateway running?", and fetch's message quoted the token on stderr). Checked before
 * a command runs, not as commander's argument check, whose message quotes the value.
 */
function checkToken(token: string | undefined): string | null {
  if (!token || isHeaderToken(token)) return null;
  return 'error: --token (or GATEWAY_TOKEN) holds a character an HTTP header cannot carry (a space, a control character or one past ASCII): give the token as the gateway has it';
}

/** --url, --token and --json, on every command. */
function common(cmd: Command): Command {
  return cmd
    .addOption(new Option('--url <url>', 'the gateway').env('GATEWAY_URL').default(DEFAULT_URL).argParser(gatewayUrl))
    .addOption(new Option('--token <token>', 'sent as Authorization: Bearer <token>').env('GATEWAY_TOKEN'))
    .addOption(
      new Option('--timeout <seconds>', 'give up on an answer not in full after this long (default: wait; load waits for the model)')
        .env('GATEWAY_TIMEOUT')
        .argParser(seconds),
    )
    .option('--json', 'print JSON instead of text');
}

/**
 * What a terminal would act on rather than show: C0 controls but tab and newline (ESC starts the sequences that clear
 * the screen, move the cursor over earlier lines, set the clipboard (OSC 52), the window title or a link (OSC 8); CR
 * rewrites a line), DEL, the C1 controls (U+009B is CSI too), and the bidirectional overrides and isolates (a label
 * that reads backwards). Labels, model names and error messages come from the gateway (a model's labels file is its
 * author's), folder and file names from wherever the files came from.
 */
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const TERMINAL_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

/** Text as it may reach a terminal: each such character written as a `\uXXXX` escape (in JSON, the same string). */
export const printable = (text: string) => text.replace(TERMINAL_CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

const pct = (x: number) => `${(x * 100).toFixed(1)}%`.padStart(6);
const ms = (x: number) => `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`;
const name = (p: { classId: number; label: string | null }) => p.label || `class ${p.classId}`;

/**
 * mkdir -p, one level at a time: Node's recursive mkdir loops for ever where a file system answers ENOENT to a mkdir
 * under a folder that is there (/proc/x spun at 100% CPU, --timeout or not).
 */
async function makeDir(dir: string): Promise<void> {
  try {
    await mkdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return; // a file there fails the write after, naming it
    if (code !== 'ENOENT' || path.dirname(dir) === dir) throw e;
    await makeDir(path.dirname(dir));
    await mkdir(dir).catch((again: NodeJS.ErrnoException) => {
      if (again.code !== 'EEXIST') throw again;
    });
  }
}

/** What became of a file: its result (with the errors of the fields that did not come, for a partial one), or an error. */
type Outcome<T> = { value: T; ms: number; errors?: FieldError[] } | { error: GatewayClientError };

/**
 * Runs `task` on every file, `concurrency` at a time, and reports each in the order given as soon as it can. A partial
 * answer (a GatewayClientError with the result that came) is reported with its errors, and counts as failed.
 */
async function eachFile<T>(
  files: string[],
  concurrency: number,
  task: (file: string) => Promise<T>,
  report: (file: string, outcome: Outcome<T>) => void,
): Promise<number> {
  const outcomes: (Outcome<T> | undefined)[] = [];
  let next = 0;
  let shown = 0;
  let failed = 0;
  const flush = () => {
    while (shown < files.length && outcomes[shown]) report(files[shown], outcomes[shown++]!);
  };
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      const t0 = performance.now();
      try {
        outcomes[i] = { value: await task(files[i]), ms: performance.now() - t0 };
      } catch (e) {
        failed++;
        if (e instanceof GatewayClientError && e.partial)
          outcomes[i] = { value: e.partial.data as T, ms: performance.now() - t0, errors: e.partial.errors };
        else outcomes[i] = { error: e instanceof GatewayClientError ? e : new GatewayClientError('CLIENT_ERROR', (e as Error).message) };
      }
      flush();
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, worker));
  return failed;
}

/** What to do about an error whose fix is the client's: a missing or refused token, a gateway not running. */
function hintFor(code: string, message = ''): string {
  // https:// to a gateway that speaks plain HTTP (the default): "is the gateway running?" sent the user the wrong way
  if (code === 'UNREACHABLE' && /^cannot reach https:.*: ERR_SSL_(WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG)$/.test(message))
    return ' (it answers, but not over TLS: give its address as http://)';
  if (code === 'UNAUTHENTICATED' || code === 'FORBIDDEN') return ' (give a token with --token <token> or GATEWAY_TOKEN)';
  if (code === 'UNREACHABLE') return ' (is the gateway running? npm start starts it; --url or GATEWAY_URL gives its address)';
  return '';
}

function stateOf(m: ModelSummary): string {
  if (!m.versions.length) return 'no version';
  return m.versions
    .map((v) => `v${v.version} ${v.state === 'END' && !v.errorCode ? 'UNLOADED' : v.state}${v.errorCode ? ` ${v.errorCode}` : ''}`)
    .join(', ');
}

function table(cells: string[][]): string {
  // escaped first, so that the columns line up as printed
  const rows = cells.map((r) => r.map(printable));
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]))).join('  ')).join('\n') + '\n';
}

export function formatEval(r: EvalReport): string {
  const lines = [
    `model       ${r.model}`,
    `images      ${r.images} in ${r.classes.length} classes (${r.dir})`,
    `top-1       ${pct(r.top1).trim()} (${r.top1Correct}/${r.images})`,
    `top-5       ${pct(r.top5).trim()} (${r.top5Correct}/${r.images})`,
    // of the images answered: a rate and times of failures said nothing of the model (0.0 ms with none answered)
    r.latencyMs
      ? `throughput  ${r.imagesPerSecond.toFixed(1)} images/s at concurrency ${r.concurrency} (${r.seconds.toFixed(2)} s)`
      : `throughput  none: no image answered (${r.seconds.toFixed(2)} s)`,
    r.latencyMs
      ? `latency     p50 ${ms(r.latencyMs.p50)}, p90 ${ms(r.latencyMs.p90)}, p95 ${ms(r.latencyMs.p95)}, p99 ${ms(r.latencyMs.p99)}, max ${ms(r.latencyMs.max)}, mean ${ms(r.latencyMs.mean)}`
      : 'latency     none: no image answered',
    `errors      ${r.errors.length ? r.errors.map((e) => `${e.code} x${e.count} (e.g. ${e.example})`).join('; ') : 'none'}`,
    '',
  ];
  const rows = [['class', 'id', 'images', 'top-1', 'top-5']].concat(
    r.classes.map((c) => [c.folder, String(c.classId), String(c.images), pct(c.top1 / c.images), pct(c.top5 / c.images)]),
  );
  return lines.join('\n') + table(rows);
}

/** Builds the program; `io` lets a test catch what it prints. */
export function program(output: Io = defaultIo, setExitCode: (code: number) => void = (c) => (process.exitCode = c)): Command {
  // everything printed, --json and commander's own messages (which quote the arguments) included
  const io: Io = { out: (t) => output.out(printable(t)), err: (t) => output.err(printable(t)), tty: output.tty };
  const cli = new Command('gateway')
    .description('Command-line client of the GraphQL inference gateway (talks to its GraphQL API over HTTP).')
    .showHelpAfterError('(gateway <command> --help for usage)')
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride()
    .hook('preAction', (_, command) => {
      const wrong = checkToken((command.opts() as Common).token);
      if (wrong) command.error(wrong);
    });
  const client = (o: Common) => new GatewayClient({ url: o.url, token: o.token, timeoutMs: o.timeout ? o.timeout * 1000 : null });
  const fail = (e: unknown) => {
    const err = e instanceof GatewayClientError ? e : new GatewayClientError('CLIENT_ERROR', (e as Error).message);
    io.err(`error: ${err.code}: ${err.message}${hintFor(err.code, err.message)}\n`);
    setExitCode(1);
  };

  common(cli.command('models').description('list the models and the state of their versions')).action(async (o: Common) => {
    try {
      const models = await client(o).listModels();
      if (o.json) return io.out(JSON.stringify(models, null, 2) + '\n');
      // ready: it serves now (a version AVAILABLE, the rest settled); Model.ready alone is also true for a model unloaded
      // on purpose, which keeps the server ready but serves nothing
      const serves = (m: ModelSummary) => m.ready && m.versions.some((v) => v.state === 'AVAILABLE');
      io.out(table([['model', 'task', 'ready', 'versions'], ...models.map((m) => [m.name, m.task, serves(m) ? 'yes' : 'no', stateOf(m)])]));
      // a model.json edit that did not take (the versions serve with what they loaded): said, not hidden behind "yes"
      for (const m of models) if (m.configurationError) io.err(printable(`${m.name}: ${m.configurationError}`) + '\n');
    } catch (e) {
      fail(e);
    }
  });

  const fileCommand = <T>(
    command: string,
    description: string,
    extra: (cmd: Command) => Command,
    run: (gw: GatewayClient, file: string, o: Common & Record<string, unknown>) => Promise<T>,
    print: (file: string, value: T, ms: number) => string,
  ) =>
    extra(
      common(
        cli
          .command(command)
          .description(description)
          .argument('<files...>', 'image files')
          .requiredOption('-m, --model <name>', 'the model')
          .option('--version <n>', 'model version (default: the newest available)', version)
          .option('-c, --concurrency <n>', 'requests in flight at once', positiveInt, 4),
      ),
    ).action(async (files: string[], o: Common & { model: string; concurrency: number } & Record<string, unknown>) => {
      const gw = client(o);
      const json: unknown[] = [];
      const failed = await eachFile(
        files,
        o.concurrency,
        (f) => run(gw, f, o),
        (file, outcome) => {
          if ('error' in outcome) {
            if (o.json) json.push({ file, error: { code: outcome.error.code, message: outcome.error.message } });
            else io.err(`${file}: ${outcome.error.code}: ${outcome.error.message}${hintFor(outcome.error.code, outcome.error.message)}\n`);
            return;
          }
          const { errors } = outcome;
          if (o.json) json.push({ file, ms: Math.round(outcome.ms * 10) / 10, result: outcome.value, ...(errors ? { errors } : {}) });
          else {
            io.out(print(file, outcome.value, outcome.ms));
            // what did not come, each with the field it concerns (detect.annotatedImage: the picture, not the photo, failed)
            for (const e of errors ?? [])
              io.err(`${file}: ${e.path ? `${e.path}: ` : ''}${e.code}: ${e.message}${hintFor(e.code, e.message)}\n`);
          }
        },
      );
      if (o.json) io.out(JSON.stringify(json, null, 2) + '\n');
      if (failed) setExitCode(1);
    });

  /**
   * The file --out writes for each photo: <dir>/<name>.<suffix>.png, taken by the first photo of that name in the order
   * given, <name>-2, -3... by the next ones (photos of one name in two folders wrote one file, the first one's lost).
   * Names are taken when a photo's run starts, so in the order given whatever the concurrency.
   */
  const outNames = (suffix: string) => {
    const byFile = new Map<string, string>();
    const taken = new Set<string>(); // lower case: one file on a file system that ignores case
    return (dir: string, file: string) => {
      const key = path.resolve(file);
      let name = byFile.get(key);
      if (name === undefined) {
        const stem = path.parse(file).name;
        name = `${stem}.${suffix}.png`;
        for (let n = 2; taken.has(name.toLowerCase()); n++) name = `${stem}-${n}.${suffix}.png`;
        taken.add(name.toLowerCase());
        byFile.set(key, name);
      }
      return path.join(dir, name);
    };
  };

  /**
   * Writes a new file beside the target and renames it into place: whatever was there (a link another user planted in
   * a shared folder such as /tmp/detected, a FIFO) is replaced, never written through or waited on; created exclusively,
   * the new file follows no link either.
   */
  const outFile = async (target: string, base64: string) => {
    await makeDir(path.dirname(target));
    const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}-${randomBytes(6).toString('hex')}.tmp`);
    try {
      await writeFile(temp, Buffer.from(base64, 'base64'), { flag: 'wx' });
    } catch (e) {
      // a write that failed part-way (a full disk, a file size limit) left what it wrote; EEXIST: not ours to remove
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') await rm(temp, { force: true });
      throw e;
    }
    try {
      await rename(temp, target);
    } catch (e) {
      await rm(temp, { force: true });
      throw e;
    }
    return target;
  };
  /**
   * The result with the picture written, or, when writing it failed, the result with an error naming --out (the
   * result is still printed: it was thrown away with the picture).
   */
  const withPicture = async <T extends object>(value: T, target: string | null, base64: string | null | undefined) => {
    if (!target || !base64) return value;
    try {
      return { ...value, written: await outFile(target, base64) };
    } catch (e) {
      const message = `cannot write ${target}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (give --out a folder this user can write to)`;
      throw new GatewayClientError('OUT_NOT_WRITTEN', message, {
        data: value,
        errors: [{ code: 'OUT_NOT_WRITTEN', message, path: '--out' }],
      });
    }
  };
  const detectedName = outNames('detected');
  const segmentedName = outNames('segmented');

  fileCommand<Classification>(
    'classify',
    'classify images: the top classes with their confidence',
    (cmd) =>
      cmd
        .option('-k, --top-k <n>', 'classes per image', positiveIntUpTo(1000, 'the gateway gives at most 1000'), 5)
        .option('--min-confidence <x>', 'drop classes below (0..1, or any score for a model giving raw scores)', score),
    (gw, f, o) =>
      gw.classify(o.model as string, f, {
        topK: o.topK as number,
        minConfidence: (o.minConfidence as number | undefined) ?? null,
        version: (o.version as number | undefined) ?? null,
      }),
    (file, r, t) =>
      `${file}  (${ms(t)})\n${r.predictions.map((p) => `  ${pct(p.confidence)}  ${name(p)}\n`).join('') || '  nothing above the threshold\n'}`,
  );

  fileCommand<Detection & Written>(
    'detect',
    'detect objects: label, confidence and box (pixels) of each',
    (cmd) =>
      cmd
        .option('--min-confidence <x>', 'drop objects below (default: the model’s)', fraction)
        .option('--iou-threshold <x>', 'non-maximum suppression overlap', fraction)
        .option('--max-detections <n>', 'objects per image', positiveIntUpTo(10_000, 'the gateway gives at most 10000'))
        .option('-o, --out <dir>', 'also write each photo with its boxes drawn, as <dir>/<name>.detected.png'),
    async (gw, f, o) => {
      const target = o.out ? detectedName(o.out as string, f) : null;
      const { annotatedImage, ...d } = await gw.detect(o.model as string, f, {
        minConfidence: (o.minConfidence as number | undefined) ?? null,
        iouThreshold: (o.iouThreshold as number | undefined) ?? null,
        maxDetections: (o.maxDetections as number | undefined) ?? null,
        version: (o.version as number | undefined) ?? null,
        annotated: Boolean(o.out),
      });
      return withPicture(d, target, annotatedImage);
    },
    (file, d, t) => {
      const px = (x: number, size: number) => String(Math.round(x * size));
      const rows = d.objects.map((b) => [
        `  ${pct(b.confidence)}`,
        name(b),
        `${px(b.box.xMin, d.imageWidth)},${px(b.box.yMin, d.imageHeight)} - ${px(b.box.xMax, d.imageWidth)},${px(b.box.yMax, d.imageHeight)}`,
      ]);
      return (
        `${file}  ${d.imageWidth}x${d.imageHeight}, ${d.objects.length} object${d.objects.length === 1 ? '' : 's'} (${ms(t)})\n` +
        (rows.length ? table(rows) : '') +
        (d.written ? `  -> ${d.written}\n` : '')
      );
    },
  );

  fileCommand<Segmentation & Written>(
    'segment',
    'segment images: the classes present and their share of the pixels',
    (cmd) => cmd.option('-o, --out <dir>', 'also write each mask over its photo, as <dir>/<name>.segmented.png'),
    async (gw, f, o) => {
      const target = o.out ? segmentedName(o.out as string, f) : null;
      const { overlay, ...seg } = await gw.segment(o.model as string, f, {
        version: (o.version as number | undefined) ?? null,
        overlay: Boolean(o.out),
      });
      return withPicture(seg, target, overlay);
    },
    (file, seg, t) =>
      `${file}  ${seg.width}x${seg.height} (${ms(t)})\n${seg.classes.map((c) => `  ${pct(c.pixelFraction)}  ${name(c)}\n`).join('')}` +
      (seg.written ? `  -> ${seg.written}\n` : ''),
  );

  common(
    cli
      .command('eval')
      .description('accuracy (top-1, top-5), images/s and latency of a classifier over DIR/<label>/*.jpg (ImageFolder)')
      .requiredOption('-m, --model <name>', 'a classification model')
      .requiredOption('-d, --dir <dir>', 'folder of <label>/ folders; a label is a class id, a label of the model or one of its names')
      .option('-c, --concurrency <n>', 'requests in flight at once', positiveInt, 4)
      .option('--limit <n>', 'stop after this many images', positiveInt)
      .option('--version <n>', 'model version (default: the newest available)', version),
  ).action(async (o: Common & { model: string; dir: string; concurrency: number; limit?: number; version?: number }) => {
    const bar = new SingleBar(
      {
        format: 'eval {bar} {value}/{total} images | {rate} images/s | top-1 {top1}',
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: true,
        noTTYOutput: false,
      },
      Presets.shades_classic,
    );
    let started = 0;
    const progress = { done: 0, total: 0 };
    // Ctrl-C (or a kill) mid-run: the bar hides the cursor and turns line wrapping off while it draws, which the
    // terminal kept after the process was gone (and nothing said how far it had got)
    const interrupted = (signal: NodeJS.Signals) => {
      if (started) bar.stop();
      io.err(`eval: interrupted after ${progress.done} of ${progress.total || '?'} images (${signal}); --limit <n> evaluates fewer\n`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    };
    process.once('SIGINT', interrupted).once('SIGTERM', interrupted);
    try {
      const report = await evaluate(client(o), {
        model: o.model,
        dir: o.dir,
        concurrency: o.concurrency,
        limit: o.limit,
        version: o.version ?? null,
        onProgress: (done, total, top1) => {
          Object.assign(progress, { done, total });
          if (!io.tty) return;
          if (!started) {
            started = performance.now();
            bar.start(total, 0, { rate: '-', top1: '-' });
          }
          const s = (performance.now() - started) / 1000;
          bar.update(done, { rate: s > 0 ? (done / s).toFixed(1) : '-', top1: pct(top1 / done).trim() });
        },
      });
      if (started) bar.stop();
      io.out(o.json ? JSON.stringify(report, null, 2) + '\n' : formatEval(report));
      if (report.errors.length) setExitCode(1);
    } catch (e) {
      if (started) bar.stop();
      fail(e);
    } finally {
      process.off('SIGINT', interrupted).off('SIGTERM', interrupted);
    }
  });

  for (const [command, load] of [
    ['load', true],
    ['unload', false],
  ] as const) {
    common(
      cli
        .command(command)
        .description(`${command} a model (admin: needs the admin token when the gateway has one)`)
        .argument('<model>', 'model name'),
    ).action(async (model: string, o: Common) => {
      try {
        const gw = client(o);
        const m = load ? await gw.loadModel(model) : await gw.unloadModel(model);
        io.out(o.json ? JSON.stringify(m, null, 2) + '\n' : `${m.name}: ${stateOf(m)}\n`);
        // the mutation answers a model that failed to load as it is (errorCode on its version), not with an error;
        // its message says what to fix (the field, the line and column of model.json, where the file goes)
        if (load && m.versions.some((v) => v.errorCode)) {
          if (!o.json)
            for (const v of m.versions)
              if (v.errorCode) io.err(`${m.name}: v${v.version}: ${v.errorCode}${v.errorMessage ? `: ${v.errorMessage}` : ''}\n`);
          setExitCode(1);
        }
      } catch (e) {
        fail(e);
      }
    });
  }
  return cli;
}

/** Runs the command line; resolves to the exit code. */
export async function main(argv: readonly string[] = process.argv, io: Io = defaultIo): Promise<number> {
  let code = 0;
  try {
    await program(io, (c) => (code = c)).parseAsync([...argv]);
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    // one line, never a stack trace, whatever went wrong
    const err = e instanceof GatewayClientError ? e : new GatewayClientError('CLIENT_ERROR', (e as Error)?.message ?? String(e));
    io.err(printable(`error: ${err.code}: ${err.message}\n`));
    return 1;
  }
  return code;
}
