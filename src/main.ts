import { constants } from 'node:fs';
import { access, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import v8 from 'node:v8';
import sharp from 'sharp';
import {
  ConfigError,
  MAX_TIMER_MS,
  cores,
  loadConfig,
  loadOptionsOf,
  emptyTokenSettings,
  misspelledSettings,
  processMemory,
  uvThreadpoolSize,
  type Config,
} from './config.ts';
import { errorMessage } from './errors.ts';
import { createLogger, type Logger } from './log.ts';
import { Metrics } from './metrics.ts';
import { createEngine } from './engine/index.ts';
import { ModelManager } from './repository/manager.ts';
import { checkModel } from './inference/warmup.ts';
import { createGateway } from './server/gateway.ts';
import { Cluster } from './cluster/index.ts';
import { ClientAddresses } from './client-address.ts';

const isLoopback = (host: string) => host === 'localhost' || host === '::1' || host.startsWith('127.');

/**
 * The process cannot start: one JSON line naming the problem (no stack trace), flushed before exiting with `code`
 * (2 for a bad setting, 1 for anything else).
 */
function fatal(logger: Logger, message: string, code: 1 | 2, fields: Record<string, unknown> = {}): never {
  logger.fatal(fields, message);
  logger.flush(() => process.exit(code));
  // flush() calls back once the line is written; nothing else runs meanwhile
  return undefined as never;
}

/** config -> engine -> repository -> servers -> listen; SIGTERM/SIGINT -> drain and exit 0. */
async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError && /^Usage/.test(e.message)) {
      process.stdout.write(`${e.message}\n`);
      process.exit(0);
    }
    return fatal(createLogger('info', { service: 'inference-gateway' }), errorMessage(e).split('\n')[0], 2, {
      hint: 'npm start -- --help lists the settings',
    });
  }
  sharp.concurrency(config.vipsConcurrency);
  // V8 sizes the old generation from how fast its collections run; this heap is mostly large strings (GraphiQL's
  // bundle) that are cheap to mark, so it grew by ~2 MB between full collections and, with uploads promoting their
  // buffers, ran one every ~8 large photos (~16% of the CPU per photo, bench/). Growing it by 100% instead costs memory
  // in proportion to the live heap (tens of MB) and removes most of them.
  v8.setFlagsFromString('--heap-growing-percent=100');
  const logger = createLogger(config.logLevel, { service: 'inference-gateway' });
  // a setting's name misspelled in the environment is read by nothing: the setting keeps its default
  for (const { variable, meant, why } of misspelledSettings())
    logger.warn(
      { variable, meant },
      `${variable} is not a setting of this server, so it is ignored: ${why ? `${why}, set ${meant}` : `did you mean ${meant}?`} (npm start -- --help lists the settings)`,
    );
  // (unless a flag gave one: flags win)
  for (const name of emptyTokenSettings().filter((n) => (n === 'API_TOKENS' ? config.apiTokens.length === 0 : config.adminToken === null)))
    logger.warn(
      { setting: name },
      name === 'API_TOKENS'
        ? 'API_TOKENS is set but empty, which is no token: anyone who can reach the server can run inference; give comma-separated tokens, or leave API_TOKENS out of the environment'
        : 'ADMIN_TOKEN is set but empty, which is no token: admin operations are allowed from this machine (loopback) only; give a token, or leave ADMIN_TOKEN out of the environment',
    );
  const repository = path.resolve(config.modelRepository);
  // Node sizes its libuv pool once, at start, from the environment: decodes beyond it would wait there instead
  const uvPool = uvThreadpoolSize();
  if (config.decodeThreads > uvPool)
    logger.warn(
      { decodeThreads: config.decodeThreads, uvThreadpoolSize: uvPool },
      `DECODE_THREADS is ${config.decodeThreads} but the libuv pool has ${uvPool} threads: start the process with UV_THREADPOOL_SIZE=${config.decodeThreads} or more`,
    );
  // each engine instance computes a batch at once with ENGINE_THREADS threads (0: one per core)
  const engineThreads = config.engineInstances * (config.engineThreads || cores());
  if (engineThreads > cores())
    logger.warn(
      { engineInstances: config.engineInstances, engineThreads: config.engineThreads, cores: cores() },
      `ENGINE_INSTANCES x ENGINE_THREADS is ${config.engineInstances} x ${config.engineThreads || `${cores()} (0: one per core)`} = ${engineThreads} engine threads for ${cores()} cores: batches on the instances will compete for the cores; set ENGINE_THREADS to ${Math.max(1, Math.floor(cores() / config.engineInstances))} or lower ENGINE_INSTANCES`,
    );
  // the budget of request bytes is at least four of the largest request, which may not fit a small container
  const memory = processMemory();
  if (config.maxBytesInFlight > memory / 2)
    logger.warn(
      { maxBytesInFlight: config.maxBytesInFlight, memory },
      `MAX_BYTES_IN_FLIGHT is ${config.maxBytesInFlight} bytes, more than half of the ${memory} this process may use: requests held at once could exhaust its memory; lower MAX_BYTES_IN_FLIGHT, or MAX_UPLOAD_BYTES (the budget is at least four times it)`,
    );
  // blocks that hold unrelated public addresses (0.0.0.0/0, ::ffff:0:0/96, 0.0.0.0/1 with 128.0.0.0/1...) believe
  // nearly every peer's X-Forwarded-For: anyone could count itself as anyone else
  const trusted = new ClientAddresses(config.trustedProxies);
  const everyone = [
    ['8.8.8.8', '1.1.1.1'],
    ['2001:4860:4860::8888', '2606:4700:4700::1111'],
  ].filter((pair) => pair.every((a) => trusted.isProxy(a)));
  if (everyone.length > 0)
    logger.warn(
      { trustedProxies: config.trustedProxies },
      `TRUSTED_PROXIES trusts addresses all over the internet (${everyone[0].join(' and ')} among them): any client can name the address it is counted as (and use up another's per-client limits) with X-Forwarded-For; name the proxies' own addresses`,
    );
  const st = await stat(repository).catch(() => null);
  if (!st?.isDirectory())
    return fatal(
      logger,
      `MODEL_REPOSITORY ${repository} does not exist or is not a directory: set MODEL_REPOSITORY (or --model-repository) to a folder of models`,
      1,
    );
  try {
    await readdir(repository);
    // listed is not enough: a folder without search (x) permission for this user shows its models' names, and each
    // then fails to load while /ready says 200
    await access(repository, constants.R_OK | constants.X_OK);
  } catch (e) {
    return fatal(logger, `MODEL_REPOSITORY ${repository} cannot be read: ${errorMessage(e)}`, 1);
  }
  // a root that is not there would refuse every path under it, request after request, as outside the roots
  for (const [setting, roots] of [
    ['IMAGE_ROOTS', config.imageRoots],
    ['MODEL_ROOTS', config.modelRoots],
  ] as const)
    for (const root of roots) {
      if (!(await stat(root).catch(() => null))?.isDirectory())
        return fatal(
          logger,
          `${setting} names ${root}, which does not exist or is not a directory: ${setting} lists directories (colon-separated); create it, or leave it out`,
          1,
        );
      // one this user cannot enter answered "does not exist" to every path under it, request after request
      const denied = await access(root, constants.R_OK | constants.X_OK).then(
        () => null,
        (e: NodeJS.ErrnoException) => e.code ?? errorMessage(e),
      );
      if (denied)
        return fatal(
          logger,
          `${setting} names ${root}, which this process's user cannot read (${denied}): let it read and enter the folder, or leave it out of ${setting}`,
          1,
        );
    }
  let engine;
  try {
    engine = await createEngine(config.engine);
  } catch (e) {
    return fatal(logger, errorMessage(e), 1, { engine: config.engine });
  }
  if (!isLoopback(config.host) && config.adminToken && config.apiTokens.length === 0) {
    logger.warn(
      `listening on ${config.host} with ADMIN_TOKEN but without API_TOKENS: anyone who can reach this port can run inference. Set API_TOKENS to guard it.`,
    );
  }
  if (!isLoopback(config.host) && !config.adminToken) {
    logger.warn(
      `listening on ${config.host} without ADMIN_TOKEN: admin operations are refused to every client but this machine's own (loopback), and anyone who can reach this port can run inference. Set ADMIN_TOKEN to manage models remotely, and API_TOKENS to guard inference.`,
    );
  }
  const metrics = new Metrics();
  const models = new ModelManager({
    root: path.resolve(config.modelRepository),
    engine,
    logger,
    metrics,
    modelRoots: config.modelRoots,
    pollIntervalMs: config.pollIntervalMs,
    loadOptions: loadOptionsOf(config),
    checkModel: (files, session) => checkModel(files, session, { fusePreprocessing: config.fusedPreprocessing }),
    replica: config.replicaName,
  });
  // with REDIS_URL: events and admin changes shared with the other replicas (connects in the background; never blocks)
  const cluster = config.redisUrl
    ? new Cluster({ url: config.redisUrl, prefix: config.redisKeyPrefix, replica: config.replicaName, manager: models, logger, metrics })
    : null;
  const gateway = createGateway({ config, models, logger, metrics, cluster });
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    // Drain (rolling restarts): /ready turns 503 now, and the server goes on serving for DRAIN_DELAY_MS, long enough
    // for a load balancer's health checks (or Kubernetes' endpoint removal) to stop sending; then it stops accepting,
    // finishes what is in flight and unloads.
    // Ctrl-C (SIGINT) is someone at a terminal, not an orchestrator: no delay
    const drainDelayMs = signal === 'SIGINT' ? 0 : config.drainDelayMs;
    gateway.drain();
    logger.info({ signal, drainDelayMs }, 'draining');
    const force = setTimeout(
      () => {
        logger.error('shutdown timed out');
        logger.flush();
        process.exit(1);
      },
      // (a timer past 2^31-1 ms would fire at once: each setting is at most that, not their sum)
      Math.min(drainDelayMs + config.shutdownTimeoutMs + 5000, MAX_TIMER_MS),
    );
    force.unref();
    await new Promise((r) => setTimeout(r, drainDelayMs));
    logger.info('shutting down');
    await gateway.close();
    await models.close();
    await cluster?.close();
    logger.info('stopped');
    logger.flush();
    process.exit(0);
  };
  // from before the port is open: a SIGTERM while the repository still loads (a rolling restart, a scale-down) drains
  // like any other, instead of killing the process with requests in flight (installed after the port opened, a
  // SIGTERM sent on the "listening" line could come first, on a busy machine, and the process died of it)
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  let url: string;
  let grpcPort: number | null;
  try {
    ({ url, grpcPort } = await gateway.listen());
  } catch (e) {
    // the HTTP port, or the gRPC one (gateway.listen says which)
    const { code, port = config.port, setting = 'PORT' } = e as NodeJS.ErrnoException & { port?: number; setting?: string };
    const flag = '--' + setting.toLowerCase().replace(/_/g, '-');
    if (code === 'EADDRINUSE')
      return fatal(
        logger,
        `port ${port} on ${config.host} is in use: stop what uses it, or set ${setting} (or ${flag}) to another port`,
        1,
      );
    if (code === 'EACCES')
      return fatal(logger, `port ${port} on ${config.host} needs privileges this process does not have: set ${setting} above 1023`, 1);
    if (code === 'EADDRNOTAVAIL') return fatal(logger, `HOST ${config.host} is not an address of this machine: set HOST`, 1);
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN')
      return fatal(logger, `HOST ${config.host} does not resolve to an address of this machine: set HOST to one`, 1);
    return fatal(logger, `cannot listen on ${config.host}:${port} (${setting}): ${errorMessage(e)}`, 1);
  }
  logger.info(
    {
      url: `${url}/graphql`,
      // the browser page (GraphiQL at url, for a browser)
      page: `${url}/`,
      kserve: `${url}/v2`,
      grpcPort,
      engine: engine.name,
      repository: models.root,
      replica: config.replicaName,
      cluster: cluster ? 'redis' : 'none',
    },
    'listening',
  );
  // a promise rejected with no one to hear it is a bug of ours: logged, and the server goes on (Node would end the
  // process, and every client's requests with it, whatever request led there)
  process.on('unhandledRejection', (e) => logger.error({ err: e }, 'unhandled rejection (a bug in the gateway: please report it)'));

  try {
    await models.start();
  } catch (e) {
    if (stopping) return; // shut down during start-up: stop() ends the process
    return fatal(logger, errorMessage(e), 1);
  }
  if (stopping) return;
  logger.info(
    { models: models.models().map((m) => `${m.name}:${[...m.versions.values()].map((v) => `${v.version}=${v.state}`).join(',')}`) },
    'repository loaded',
  );
  await cluster?.join();
}

void main();
