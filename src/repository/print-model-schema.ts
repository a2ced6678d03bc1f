// npm run schema: writes model.schema.json (the JSON Schema of model.json) from the zod schema; a test fails when the
// committed file is stale.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { modelJsonSchema } from './model-config.ts';

export const printedModelSchema = () => JSON.stringify(modelJsonSchema(), null, 2) + '\n';
const target = fileURLToPath(new URL('../../model.schema.json', import.meta.url));
writeFileSync(target, printedModelSchema());
process.stdout.write(`wrote ${target}\n`);
