import { errorMessage } from '../errors.ts';
import type { Metrics } from '../metrics.ts';
import type { ModelManager } from '../repository/manager.ts';
import { type Route } from './http.ts';
import { sendJson } from '../send-json.ts';

/** What /ready says besides the models: a drain in progress, and the bus between replicas (when there is one). */
export interface ReadyState {
  /** SIGTERM was received: /ready is 503 so the load balancer stops sending, while requests are still served. */
  draining?: () => boolean;
  /**
   * The Redis bus (src/cluster). Its loss is reported but does not make the replica unready (local inference works);
   * a replica that starts is ready once it has joined (applied the cluster's unloaded models).
   */
  cluster?: () => { joined: boolean } | undefined;
}

/** Is the server ready besides its models: not draining, and joined to its cluster when it has one (/ready, KServe's). */
export function serverReady(state: ReadyState): boolean {
  return !(state.draining?.() ?? false) && (state.cluster?.()?.joined ?? true);
}

/**
 * The operations endpoints, open to probes whatever the tokens: /health (the process answers), /ready (every model
 * the repository asks for is AVAILABLE, with per-model detail) and /metrics (Prometheus text).
 */
export function opsRoutes(models: ModelManager, metrics: Metrics, state: ReadyState = {}): Route[] {
  return readOnly([
    { match: (p) => p === '/health', handle: (_, res) => sendJson(res, 200, { status: 'ok' }) },
    {
      match: (p) => p === '/ready',
      handle: (_, res) => {
        const detail = models.models().map((m) => ({
          name: m.name,
          ready: m.ready,
          versions: [...m.versions.values()].map((v) => ({ version: v.version, state: v.state, errorCode: v.errorCode })),
        }));
        const draining = state.draining?.() ?? false;
        const cluster = state.cluster?.();
        const ready = models.ready && serverReady(state);
        sendJson(res, ready ? 200 : 503, {
          ready,
          replica: models.replica,
          ...(draining ? { draining } : {}),
          ...(cluster ? { cluster } : {}),
          models: detail,
        });
      },
    },
    {
      match: (p) => p === '/metrics',
      handle: (_, res) => {
        metrics.render().then(
          (text) => {
            res.writeHead(200, { 'content-type': metrics.contentType });
            res.end(text);
          },
          // a failing collector: an answer, not an unhandled rejection
          (e: unknown) => sendJson(res, 500, { error: { code: 'INTERNAL', message: `metrics: ${errorMessage(e)}` } }),
        );
      },
    },
  ]);
}

/** Probes and scrapes read: GET and HEAD (Node leaves the body out); any other method is 405 with Allow. */
function readOnly(routes: Route[]): Route[] {
  return routes.map((r) => ({
    ...r,
    handle(req, res) {
      if (req.method === 'GET' || req.method === 'HEAD') return r.handle(req, res);
      sendJson(
        res,
        405,
        { error: { code: 'METHOD_NOT_ALLOWED', message: `${req.method} is not allowed here: GET or HEAD` } },
        { allow: 'GET, HEAD' },
      );
    },
  }));
}
