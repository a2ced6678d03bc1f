import path from 'node:path';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createLogger } from './log.ts';
import { createEngine } from './engine/index.ts';
import { ModelRepository } from './repository/repository.ts';
import { createGateway } from './server.ts';
import { checkImageInput } from './inference.ts';

const isLoopback = (host: string) => host === 'localhost' || host === '::1' || host.startsWith('127.');

/** config -> engine -> repository -> server -> listen; SIGTERM/SIGINT -> drain and exit 0. */
async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(e instanceof ConfigError && /^Usage/.test(e.message) ? 0 : 2);
  }
  const logger = createLogger(config.logLevel, { service: 'inference-gateway' });
  let engine;
  try {
    engine = await createEngine(config.engine);
  } catch (e) {
    logger.error('engine unavailable', { engine: config.engine, error: (e as Error).message });
    process.stderr.write(`\n${(e as Error).message}\n`);
    process.exit(1);
  }
  if (!isLoopback(config.host) && !config.adminToken) {
    logger.warn(`listening on ${config.host} without ADMIN_TOKEN: anyone who can reach this port can load, unload and update models. Set ADMIN_TOKEN (and API_TOKENS to guard inference).`);
  }
  const repository = new ModelRepository({
    root: path.resolve(config.modelRepository),
    engine,
    logger,
    modelRoots: config.modelRoots,
    pollIntervalMs: config.pollIntervalMs,
    dynamicBatch: config.dynamicBatch,
    loadOptions: { intraOpThreads: config.engineThreads },
    checkModel: checkImageInput,
  });
  const gateway = createGateway({ config, repository, logger });
  const { url } = await gateway.listen();
  logger.info('listening', { url: `${url}/graphql`, engine: engine.name, repository: repository.root });
  await repository.start();
  logger.info('repository loaded', { models: repository.models().map((m) => `${m.name}:${[...m.versions.values()].map((v) => `${v.version}=${v.state}`).join(',')}`) });

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info('shutting down', { signal });
    const force = setTimeout(() => {
      logger.error('shutdown timed out');
      process.exit(1);
    }, config.shutdownTimeoutMs + 5000);
    force.unref();
    await gateway.close();
    await repository.close();
    logger.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

void main();
