/**
 * Long synchronous work on the event loop, one piece per turn of the loop.
 *
 * Parsing a KServe JSON request of MAX_JSON_VALUES values, or writing such an answer, holds the event loop for
 * 0.1-0.3 s. The limit bounds one request, not several: twelve such requests whose bodies had all come ran their
 * parses back to back, in promise callbacks with no I/O between them, and every other client waited 1.4-2.8 s. Work
 * given to `inTurn` runs in a callback of its own (setImmediate), one at a time and in order, so that the loop reads
 * sockets and runs timers between two pieces: no client waits for more than one piece of another's.
 *
 * Hand-written: the queue is a promise chain and a setImmediate, less than a library's API would be.
 */

let tail: Promise<unknown> = Promise.resolve();

/** A JSON body past this many bytes is parsed in a turn of its own (about 1 ms of parsing and more). */
export const LONG_JSON_BYTES = 128 * 1024;
/** A message or answer of more values than this is decoded or written in a turn of its own (about 1 ms and more). */
export const LONG_VALUES = 16 * 1024;

/**
 * Runs `work` in a turn of the event loop of its own, after the work given before it; resolves to what it returns
 * (or rejects with what it throws). Worth it for work of a millisecond or more only: each piece waits for the next
 * turn of the loop.
 */
export function inTurn<T>(work: () => T): Promise<T> {
  const run = tail.then(
    () =>
      new Promise<T>((resolve, reject) =>
        // a callback of the loop's check phase, queued once the piece before it is over: the sockets' poll phase runs
        // between the two
        setImmediate(() => {
          try {
            resolve(work());
          } catch (e) {
            reject(e);
          }
        }),
      ),
  );
  tail = run.catch(() => undefined);
  return run;
}
