import type { ModelStatusEvent } from '../../repository/version.ts';
import type { ModelManager } from '../../repository/manager.ts';
import type { RequestBudget } from '../../inference/budget.ts';
import type { ImageReadLimits } from '../../inference/images.ts';
import type { GraphQLResolveInfo } from 'graphql';
import type { InferenceService, RunOptions } from '../../inference/service.ts';

/** What every resolver gets. Built per request (HTTP) or per operation (WebSocket) by yoga.ts. */
export interface Context {
  service: InferenceService;
  models: ModelManager;
  /** How ImageInput paths and sizes are checked. */
  imageLimits: ImageReadLimits;
  /** Images and inferences this request may still spend. */
  budget: RequestBudget;
  /** Is the caller allowed to run admin mutations? Throws the typed error when not. */
  requireAdmin: () => void;
  /** Status events for a subscription; they end when the client leaves or the server shuts down. */
  statusEvents: (filter: (e: ModelStatusEvent) => boolean) => AsyncIterable<ModelStatusEvent>;
}

/**
 * What the inference service is told of the request for the root field this resolver runs under (its response key):
 * the calls of one root field (a detection's crops) are counted together against a client's share of a model's queue,
 * and a later mutation field apart from them.
 */
export function runOptions(ctx: Context, info: Pick<GraphQLResolveInfo, 'path'>): RunOptions {
  let path = info.path;
  while (path.prev) path = path.prev;
  return ctx.budget.runOptionsFor(String(path.key));
}
