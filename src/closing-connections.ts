import type { Socket } from 'node:net';

/**
 * Connections whose closing answer has begun (Connection: close, then the lingering close of server/linger.ts): what
 * still comes on them is not run as a request, nor upgraded to a WebSocket. Shared by the HTTP server, which marks
 * them, and the protocols that take connections from it (the WebSocket upgrade).
 */
const closing = new WeakSet<Socket>();

/** The answer now given on this connection closes it: requests parsed after it are not run. */
export function markClosing(socket: Socket): void {
  closing.add(socket);
}

/** Has a closing answer begun on this connection, or has the server ended its side? Then what comes is not run. */
export function isClosing(socket: Socket): boolean {
  return closing.has(socket) || !socket.writable;
}
