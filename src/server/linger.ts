import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import { stopParsing } from '../closing-connections.ts';

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
 * each connection of this server. From then on what comes is read as raw bytes and dropped, not parsed as requests.
 * Lingering costs no more than the reading: at most `maxMs` of a client's sending (a client could keep a connection
 * as busy with requests), on a connection that still counts toward the connection limits.
 */
export function lingerOnClose(server: Server, { idleMs = 2_000, maxMs = 30_000 }: LingerOptions = {}): void {
  const linger = function (this: Socket): void {
    if (this.destroyed) return;
    if (this.writable) this.end();
    // what still comes is dropped as raw bytes, never parsed: a request or an upgrade sent after the answer would be
    // handed to the server with a socket it can no longer answer on (requests parked without bound, an upgrade
    // answered on an ended socket)
    stopParsing(this);
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
    // whatever paused it (a route that stopped reading): what comes must be read, or the client cannot finish sending.
    // Node's HTTP server stops a socket it parses by stopping its handle, behind the stream's back (the stream still
    // counts a read in progress, so resume() alone starts nothing): started again as Node itself does on 'resume'.
    this.resume();
    const handle = (this as unknown as { _handle?: { reading: boolean; readStart(): number } })._handle;
    if (handle && !handle.reading) {
      handle.reading = true;
      handle.readStart();
    }
  };
  server.on('connection', (socket: Socket) => {
    socket.destroySoon = linger;
  });
}
