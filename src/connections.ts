import type { Server } from 'node:net';
import type { Logger } from './log.ts';
import type { ClientAddresses } from './client-address.ts';

/**
 * Open connections of a listener, in all and per client address: past them a new connection is closed at once. The
 * HTTP port and the gRPC port each have their own count. A trusted proxy's connections (TRUSTED_PROXIES) count in all
 * only: they carry many clients, whom the limits kept per request tell apart (client-address.ts).
 */
export function capConnections(
  server: Server,
  {
    maxConnections,
    maxPerClient,
    logger,
    port,
    clients,
  }: { maxConnections: number; maxPerClient: number; logger: Logger; port: string; clients: ClientAddresses },
): void {
  server.maxConnections = maxConnections;
  const perClient = new Map<string, number>();
  server.on('connection', (socket) => {
    if (clients.isProxy(socket.remoteAddress)) return;
    const addr = clients.key(socket.remoteAddress ?? 'unknown');
    const n = (perClient.get(addr) ?? 0) + 1;
    if (n > maxPerClient) {
      logger.warn({ client: addr, limit: maxPerClient, port }, 'too many connections from one client; closing the new one');
      socket.destroy();
      return;
    }
    perClient.set(addr, n);
    socket.once('close', () => {
      const left = (perClient.get(addr) ?? 1) - 1;
      if (left <= 0) perClient.delete(addr);
      else perClient.set(addr, left);
    });
  });
}
