import path from 'node:path';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createLogger } from './log.ts';
import { Metrics } from './metrics.ts';
import { createEngine } from './engine/index.ts';
import { ModelManager } from './repository/manager.ts';
import { checkImageInput } from './inference/service.ts';
import { createGateway } from './server/gateway.ts';

const isLoopback = (host: string) => host === 'localhost' || host === '::1' || host.startsWith('127.');

/** config -> engine -> repository -> servers -> listen; SIGTERM/SIGINT -> drain and exit 0. */
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
    logger.error({ engine: config.engine, error: (e as Error).message }, 'engine unavailable');
    logger.flush();
    process.stderr.write(`\n${(e as Error).message}\n`);
    process.exit(1);
  }
  if (!isLoopback(config.host) && !config.adminToken) {
    logger.warn(
      `listening on ${config.host} without ADMIN_TOKEN: anyone who can reach this port can load, unload and update models. Set ADMIN_TOKEN (and API_TOKENS to guard inference).`,
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
    loadOptions: { intraOpThreads: config.engineThreads, dynamicBatch: config.dynamicBatch },
    checkModel: checkImageInput,
  });
  const gateway = createGateway({ config, models, logger, metrics });
  const { url, grpcPort } = await gateway.listen();
  logger.info({ url: `${url}/graphql`, kserve: `${url}/v2`, grpcPort, engine: engine.name, repository: models.root }, 'listening');
  await models.start();
  logger.info(
    { models: models.models().map((m) => `${m.name}:${[...m.versions.values()].map((v) => `${v.version}=${v.state}`).join(',')}`) },
    'repository loaded',
  );

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => {
      logger.error('shutdown timed out');
      logger.flush();
      process.exit(1);
    }, config.shutdownTimeoutMs + 5000);
    force.unref();
    await gateway.close();
    await models.close();
    logger.info('stopped');
    logger.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

void main();
