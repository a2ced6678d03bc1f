// npm run schema: writes schema.graphql from the code-first schema (a test fails when the committed file is stale).
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { printSchema } from 'graphql';
import { schema } from './index.ts';

export const printedSchema = () => printSchema(schema) + '\n';
const target = fileURLToPath(new URL('../../../../schema.graphql', import.meta.url));
writeFileSync(target, printedSchema());
process.stdout.write(`wrote ${target}\n`);
