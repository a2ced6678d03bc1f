import type { Metrics } from '../metrics.ts';
import type { ModelManager } from '../repository/manager.ts';
import { sendJson, type Route } from './http.ts';

/**
 * The operations endpoints, open to probes whatever the tokens: /health (the process answers), /ready (every model
 * the repository asks for is AVAILABLE, with per-model detail) and /metrics (Prometheus text).
 */
export function opsRoutes(models: ModelManager, metrics: Metrics): Route[] {
  return [
    { match: (p) => p === '/health', handle: (_, res) => sendJson(res, 200, { status: 'ok' }) },
    {
      match: (p) => p === '/ready',
      handle: (_, res) => {
        const detail = models.models().map((m) => ({
          name: m.name,
          ready: m.ready,
          versions: [...m.versions.values()].map((v) => ({ version: v.version, state: v.state, errorCode: v.errorCode })),
        }));
        sendJson(res, models.ready ? 200 : 503, { ready: models.ready, models: detail });
      },
    },
    {
      match: (p) => p === '/metrics',
      handle: (_, res) => {
        void metrics.render().then((text) => {
          res.writeHead(200, { 'content-type': metrics.contentType });
          res.end(text);
        });
      },
    },
  ];
}
