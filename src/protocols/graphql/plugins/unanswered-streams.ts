import { isAsyncIterable, type Plugin } from 'graphql-yoga';

/**
 * A subscription's stream that no answer will read is ended: yoga subscribes before it looks for a way to answer, and
 * a client that accepts no streaming type (`Accept: application/json`) gets 406 with the stream left open. Ending it
 * gives back what it holds (the client's share of MAX_SUBSCRIPTIONS_PER_CLIENT, its status listener); before, 32 such
 * requests locked a client out of subscribing until a restart. Yoga's own result processors run before this plugin's
 * hook, so one that answers has been chosen by then.
 */
export function useUnansweredStreams(): Plugin {
  return {
    onResultProcess({ result, resultProcessor }) {
      if (resultProcessor || !isAsyncIterable(result)) return;
      const iterator = result[Symbol.asyncIterator]();
      void iterator.return?.()?.catch(() => undefined);
    },
  };
}
