#!/usr/bin/env node
// `npx gateway <command>`: the command-line client (src/client/cli.ts). tsx's loader runs the TypeScript as it is,
// so a fresh clone needs nothing built after `npm install`.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/client/cli.ts');
process.exitCode = await main(process.argv);
