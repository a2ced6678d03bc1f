import { AsyncLocalStorage } from 'node:async_hooks';
import pino, { type DestinationStream, type Logger as PinoLogger } from 'pino';

/**
 * Structured logging with pino: one JSON object per line on stderr, `{"time":"<ISO>","level":"info","msg":..., ...}`.
 * Lines written while a request is handled carry its `requestId` (from the request context), so an error logged deep
 * in the repository can be traced to the request that caused it. Our fields never overwrite `time`, `level` or `msg`:
 * pino writes those itself.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
export type Logger = PinoLogger;

/** What is known about the request being handled, for logs (set by the HTTP server for each request). */
export const requestContext = new AsyncLocalStorage<RequestContext>();

/** What a request's log lines carry: its id, and the codes of the errors its answer holds (noted as it is made). */
export interface RequestContext {
  requestId: string;
  errorCodes?: string[];
}

/** Note the codes of errors an answer holds, for its request's log line (an answer with errors may be HTTP 200). */
export function noteErrorCodes(codes: Iterable<unknown>, context = requestContext.getStore()): void {
  if (!context) return;
  for (const c of codes) {
    const code = typeof c === 'string' ? c : 'INTERNAL_SERVER_ERROR';
    if (!(context.errorCodes ??= []).includes(code)) context.errorCodes.push(code);
  }
}

export function createLogger(
  level: LogLevel = 'info',
  base: Record<string, unknown> = {},
  destination?: DestinationStream | ((line: string) => void),
): Logger {
  const dest: DestinationStream =
    typeof destination === 'function'
      ? { write: (line: string) => destination(line.endsWith('\n') ? line.slice(0, -1) : line) }
      : (destination ?? pino.destination({ dest: 2, sync: false, minLength: 0 }));
  return pino(
    {
      level,
      base,
      messageKey: 'msg',
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin: () => {
        const ctx = requestContext.getStore();
        return ctx ? { requestId: ctx.requestId } : {};
      },
    },
    dest,
  );
}
