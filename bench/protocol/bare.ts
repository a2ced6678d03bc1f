/**
 * Baseline for `npm run bench:protocol`, not the product: the floor of HTTP on loopback. A node:http handler that
 * reads the body and answers the same JSON the others answer, parsing nothing.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const answer = JSON.stringify({ data: { __typename: 'Mutation' } });
const server = createServer((req, res) => {
  req.resume();
  req.on('end', () => res.writeHead(200, { 'content-type': 'application/json', 'content-length': answer.length }).end(answer));
}).listen(Number(process.argv[2]), '127.0.0.1', () => console.log(`ready ${(server.address() as AddressInfo).port}`));
process.once('SIGTERM', () => server.close(() => process.exit(0)));
