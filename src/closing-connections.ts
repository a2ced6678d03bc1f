import type { Socket } from 'node:net';

/**
 * Connections whose closing answer has begun (Connection: close, then the lingering close of server/linger.ts): what
 * still comes on them is not run as a request, nor upgraded to a WebSocket. Shared by the HTTP server, which marks
 * them, and the protocols that take connections from it (the WebSocket upgrade).
 */
const closing = new WeakSet<Socket>();
/** Connections taken from Node's HTTP parser: what comes on them is bytes, dropped, never requests. */
const detached = new WeakSet<Socket>();

/**
 * The answer now given on this connection closes it: requests parsed after it are not run, and from the next turn of
 * the event loop nothing more is parsed on it at all, nor read, until that answer is out and the lingering close
 * reads on (it may wait behind a long answer, a subscription: requests that are skipped answer nothing, so Node would
 * otherwise go on parsing and keeping them without bound). Not at once: this may be called from inside the parser.
 */
export function markClosing(socket: Socket): void {
  if (closing.has(socket)) return;
  closing.add(socket);
  setImmediate(() => {
    if (socket.destroyed || detached.has(socket)) return; // lingering already (it reads on)
    stopParsing(socket);
    socket.pause(); // a paused stream stops reading its socket once its buffer is full
  });
}

/** Has a closing answer begun on this connection, or has the server ended its side? Then what comes is not run. */
export function isClosing(socket: Socket): boolean {
  return closing.has(socket) || !socket.writable;
}

/**
 * Take the connection from Node's HTTP parser: listening for 'data' makes Node's HTTP server stop parsing the socket
 * itself (it reads it directly until someone listens), and its own listener is removed first; what comes is dropped.
 */
export function stopParsing(socket: Socket): void {
  closing.add(socket);
  if (detached.has(socket)) return;
  detached.add(socket);
  socket.removeAllListeners('data');
  socket.on('data', drop);
}

const drop = () => undefined;
