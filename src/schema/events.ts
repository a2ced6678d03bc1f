import type { ModelRepository } from '../repository/repository.ts';
import type { ModelStatusEvent } from '../repository/version.ts';

/**
 * Status events as an async iterator that ends cleanly: when the client leaves (return()), or when the server
 * shuts down (signal). Events are queued per subscriber, with a bound so a slow client cannot grow memory.
 */
export function statusEvents(repo: ModelRepository, filter: (e: ModelStatusEvent) => boolean, signal: AbortSignal, maxQueued = 1000): AsyncIterableIterator<ModelStatusEvent> {
  const queue: ModelStatusEvent[] = [];
  let waiting: ((r: IteratorResult<ModelStatusEvent>) => void) | null = null;
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    repo.off('status', onEvent);
    signal.removeEventListener('abort', finish);
    if (waiting) {
      waiting({ value: undefined, done: true });
      waiting = null;
    }
  };
  const onEvent = (e: ModelStatusEvent) => {
    if (done || !filter(e)) return;
    if (waiting) {
      const w = waiting;
      waiting = null;
      w({ value: e, done: false });
    } else {
      queue.push(e);
      if (queue.length > maxQueued) queue.shift();
    }
  };
  repo.on('status', onEvent);
  if (signal.aborted) finish();
  else signal.addEventListener('abort', finish);
  return {
    next() {
      const e = queue.shift();
      if (e) return Promise.resolve({ value: e, done: false });
      if (done) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve) => (waiting = resolve));
    },
    return() {
      finish();
      return Promise.resolve({ value: undefined, done: true });
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}
