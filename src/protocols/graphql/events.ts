import { Repeater } from '@repeaterjs/repeater';
import { ErrorCode, GatewayError } from '../../errors.ts';
import type { ModelStatusEvent } from '../../repository/version.ts';

/** Where status events come from: the model manager, or with several replicas a feed of all of theirs (src/cluster). */
export interface StatusSource {
  on(event: 'status', listener: (e: ModelStatusEvent) => void): unknown;
  off(event: 'status', listener: (e: ModelStatusEvent) => void): unknown;
}

/**
 * Status events for one subscriber, as an async iterator (a Repeater) that ends cleanly: when the client leaves
 * (return()), or when the server shuts down (signal). A subscriber that falls more than maxQueued events behind is
 * ended with an error saying so, rather than losing events silently.
 */
export function statusEvents(
  source: StatusSource,
  filter: (e: ModelStatusEvent) => boolean,
  signal: AbortSignal,
  maxQueued = 1000,
  /** Called once when the stream ends, however it ends. */
  onEnd: () => void = () => {},
): AsyncIterableIterator<ModelStatusEvent> {
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    onEnd();
  };
  const events = new Repeater<ModelStatusEvent>(async (push, stop) => {
    let behind = 0;
    const onEvent = (e: ModelStatusEvent) => {
      if (!filter(e)) return;
      if (++behind > maxQueued) {
        stop(new GatewayError(ErrorCode.LIMIT_EXCEEDED, `this subscriber fell more than ${maxQueued} events behind; subscribe again`));
        return;
      }
      void push(e).then(() => behind--);
    };
    const onAbort = () => stop();
    source.on('status', onEvent);
    if (signal.aborted) stop();
    else signal.addEventListener('abort', onAbort);
    await stop;
    source.off('status', onEvent);
    signal.removeEventListener('abort', onAbort);
    end();
  });
  // a Repeater starts on its first next(): one returned before that never runs the code above, so end here too
  const finish = events.return.bind(events);
  events.return = (value?: PromiseLike<unknown> | unknown) => {
    end();
    return finish(value as never);
  };
  return events;
}
