import type { Server } from 'node:http';
import type { Socket } from 'node:net';

export interface LingerOptions {
  /** Close once the client has sent nothing for this long (checked at this interval: 1-2 times it). */
  idleMs?: number;
  /** Close after this long whatever the client still sends. */
  maxMs?: number;
}

/**
 * A lingering close (RFC 9112 §9.6; nginx's `lingering_close`, Apache's lingering close): when the server closes a
 * connection after an answer (a `Connection: close` answer: a request refused before its body was read, 413 or 503),
 * it closes its own side first and goes on reading, and discarding, until the client closes its side, falls silent
 * for `idleMs`, or `maxMs` have passed; only then the socket. Closed at once with the client's bytes unread, the
 * kernel resets the connection, and a client still sending its body loses the answer with it (EPIPE or ECONNRESET
 * instead of the 413 that says what to do).
 *
 * Node closes such a connection with `socket.destroySoon()` once the answer is written: that is what is replaced, on
 * each connection of this server. The body still coming goes through Node's HTTP parser to the request, which Node
 * dumps once it is answered (a route that read part of it is stopped by its own code).
 */
export function lingerOnClose(server: Server, { idleMs = 2_000, maxMs = 30_000 }: LingerOptions = {}): void {
  const linger = function (this: Socket): void {
    if (this.destroyed) return;
    if (this.writable) this.end();
    // the client has closed its side already: nothing more can come
    if (this.readableEnded) {
      if (this.writableFinished) this.destroy();
      else this.once('finish', () => this.destroy());
      return;
    }
    let seen = this.bytesRead;
    const close = () => {
      clearInterval(idle);
      clearTimeout(cap);
      this.destroy();
    };
    const idle = setInterval(() => {
      if (this.bytesRead === seen) close();
      seen = this.bytesRead;
    }, idleMs).unref();
    const cap = setTimeout(close, maxMs).unref();
    this.once('end', close);
    this.once('close', close);
    // whatever paused it (a route that stopped reading): what comes must be read, or the client cannot finish sending
    this.resume();
  };
  server.on('connection', (socket: Socket) => {
    socket.destroySoon = linger;
  });
}
