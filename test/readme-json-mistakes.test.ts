import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modelJsonOf } from '../src/repository/model-config.ts';
import { ROOT, startGateway, type TestGateway } from './helpers.ts';

/**
 * The README quotes what the server says of JSON that does not parse. Its two quotes of a trailing comma (a request
 * body, a model.json) are the messages the server gives for them, as written.
 */
const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');

describe("the README's quotes of JSON mistakes", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({});
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('a request body with a trailing comma (the Errors table) is answered as the README quotes it', async () => {
    const res = await fetch(`${gw.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"query": "{ models { name } }",}',
    });
    const message: string = (await res.json()).errors[0].message;
    expect(res.status).toBe(400);
    // the README: `the request body is not valid JSON at position ... (line 1, column ...): <reason>`
    const quoted = /`(the request body is not valid JSON at position [^`]*)`/.exec(readme)?.[1];
    expect(quoted).toBe(message);
  });

  it('a model.json with a comma before a closing bracket is refused as the README quotes it', () => {
    const text = '{\n  "task": "classification",\n  "preprocessing": { "mean": [0.485, 0.456, 0.406,] }\n}';
    let message = '';
    try {
      modelJsonOf(text);
    } catch (e) {
      message = (e as Error).message;
    }
    // the README: (`model.json: not valid JSON at line 3, column ... (...)`: a comma before a closing bracket)
    const quoted = /`(model\.json: not valid JSON at line 3, [^`]*)`: a comma before a closing bracket/.exec(readme)?.[1];
    expect(quoted).toBe(message);
  });
});
