import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Kind, parse, validate, type OperationDefinitionNode } from 'graphql';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { schema } from '../src/protocols/graphql/schema/index.ts';
import { ROOT, startGateway, type TestGateway } from './helpers.ts';

/**
 * The README is the spec: every GraphQL and curl example in it runs, as written, against a live server on a copy of
 * the default repository (so uploads and updates do not touch models/). A GraphQL example names its uploads in
 * comments (`# $f: test/fixtures/images/dog.jpg`); a curl example runs from the project root with its URL pointed at
 * the test server, and the `"key":value` pairs of its `# {...}` answer comment must appear in what it prints.
 */
const run = promisify(execFile);

interface Block {
  lang: string;
  code: string;
  line: number;
}

function codeBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const re = /^```(\w+)\n([\s\S]*?)^```$/gm;
  let m: RegExpExecArray | null;
  while ((m = re.exec(markdown))) blocks.push({ lang: m[1], code: m[2], line: markdown.slice(0, m.index).split('\n').length });
  return blocks;
}

const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
const blocks = codeBlocks(readme);
const graphqlBlocks = blocks.filter((b) => b.lang === 'graphql');
// shell examples that talk to the server: GraphQL, KServe v2 REST, or KServe v2 gRPC on its default port
const curlBlocks = blocks.filter(
  (b) => b.lang === 'sh' && ['http://127.0.0.1:4000/graphql', 'http://127.0.0.1:4000/v2', '127.0.0.1:8001'].some((u) => b.code.includes(u)),
);

describe('README examples, run against a live server', () => {
  let gw: TestGateway;
  let repo: string;
  beforeAll(async () => {
    repo = await mkdtemp(path.join(os.tmpdir(), 'gw-readme-'));
    await cp(path.join(ROOT, 'models'), repo, { recursive: true, dereference: true });
    gw = await startGateway({ root: repo });
  });
  afterAll(async () => {
    await gw?.close();
    await rm(repo, { recursive: true, force: true });
  });

  it('has examples to run', () => {
    expect(graphqlBlocks.length).toBeGreaterThanOrEqual(4);
    expect(curlBlocks.length).toBeGreaterThanOrEqual(4);
  });

  it.each(graphqlBlocks.map((b) => [`line ${b.line}`, b] as const))('GraphQL example at README %s', async (_, block) => {
    const document = parse(block.code);
    expect(validate(schema, document)).toEqual([]);
    const files = Object.fromEntries([...block.code.matchAll(/^# \$(\w+): (\S+)$/gm)].map((m) => [m[1], path.join(ROOT, m[2])]));
    const operations = document.definitions.filter((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION);
    for (const op of operations) {
      if (op.operation === 'subscription') continue; // validated above; a subscription does not end by itself
      const r = await gw.gql(block.code, Object.fromEntries(Object.keys(files).map((k) => [k, null])), {
        files,
        operationName: op.name?.value,
      });
      expect(r.errors, JSON.stringify(r.errors)).toBeUndefined();
      expect(r.status).toBe(200);
    }
  });

  it.each(curlBlocks.map((b) => [`line ${b.line}`, b] as const))('curl example at README %s', async (_, block) => {
    const command = block.code.replaceAll('http://127.0.0.1:4000', gw.url).replaceAll('127.0.0.1:8001', `127.0.0.1:${gw.grpcPort}`);
    const { stdout } = await run('bash', ['-c', `set -o pipefail\n${command}`], { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 });
    const answer = JSON.parse(stdout);
    expect(answer.errors ?? answer.error, stdout.slice(0, 500)).toBeUndefined();
    const expected = /^# (\{.*)$/m.exec(block.code)?.[1] ?? '';
    for (const [pair] of expected.matchAll(/"\w+":("[^"]*"|-?\d+|null|true|false)/g)) expect(stdout, pair).toContain(pair);
  });
});

describe('README configuration table', () => {
  it('lists every setting with its flag and default, as src/config.ts has them', async () => {
    const { SETTINGS, shownDefault, usage } = await import('../src/config.ts');
    const rows = new Map(
      [...readme.matchAll(/^\| `([A-Z0-9_]+)` \| `(--[a-z0-9-]+)` \| ([^|]+) \|/gm)].map((m) => [
        m[1],
        { flag: m[2], fallback: m[3].trim() },
      ]),
    );
    for (const s of SETTINGS) {
      const shown = shownDefault(s);
      const plain = !(s as { shown?: string }).shown && s.fallback !== null && !(Array.isArray(s.fallback) && s.fallback.length === 0);
      expect(rows.get(s.env), s.env).toEqual({
        flag: '--' + s.env.toLowerCase().replace(/_/g, '-'),
        fallback: plain ? '`' + shown + '`' : `(${shown})`,
      });
    }
    // --help says each default once, in the same words (it said "(none by default) (default: [])")
    const help = usage();
    expect(help).not.toMatch(/default: \[\]|default: "|by default\) \(default/);
    // each setting's line ends with its default, and says no other (CORS_ORIGINS said "(default: none)" twice, and
    // DECODE_THREADS none: its "4 by default" was about the libuv pool)
    const lines = help.split('\n').slice(2);
    expect(lines).toHaveLength(SETTINGS.length);
    SETTINGS.forEach((s, i) => {
      expect(lines[i], s.env).toContain(` ${s.env} `);
      expect(lines[i].endsWith(` (default: ${shownDefault(s)})`), lines[i]).toBe(true);
      expect(lines[i].match(/default/g), lines[i]).toHaveLength(1);
    });
    expect(help).toMatch(/--image-formats +IMAGE_FORMATS .*\(default: jpeg,png,webp,gif,tiff\)/);
  });
});

describe('README error tables', () => {
  /** The rows of the table whose header line is `header`: each row's cells, the codes of its first cell apart. */
  function table(header: string): { codes: string[]; cells: string[] }[] {
    const start = readme.indexOf(`${header}\n`);
    expect(start, header).toBeGreaterThan(0);
    const rows = readme.slice(start).split('\n').slice(2);
    return rows
      .slice(
        0,
        rows.findIndex((l) => !l.startsWith('|')),
      )
      .map((l) =>
        l
          .split('|')
          .slice(1, -1)
          .map((c) => c.trim()),
      )
      .map((cells) => ({ codes: [...cells[0].matchAll(/`([A-Z_]+)`/g)].map((m) => m[1]), cells }));
  }

  it('the KServe table gives every gateway error code its HTTP and gRPC status, as src/protocols/kserve/errors.ts maps them', async () => {
    const { KSERVE_STATUS } = await import('../src/protocols/kserve/errors.ts');
    const { status } = await import('@grpc/grpc-js');
    const rows = table('| code | HTTP | gRPC |');
    for (const [code, { http, grpc }] of Object.entries(KSERVE_STATUS)) {
      const row = rows.find((r) => r.codes.includes(code));
      expect(row, `${code} in the KServe table`).toBeDefined();
      expect(Number(row!.cells[1]), code).toBe(http);
      expect(row!.cells[2], code).toMatch(new RegExp(`^\`${status[grpc]}\``));
    }
  });

  it('the Errors table names every gateway error code', async () => {
    const { ErrorCode } = await import('../src/errors.ts');
    const listed = table('| code | when |').flatMap((r) => r.codes);
    for (const code of Object.values(ErrorCode)) expect(listed, code).toContain(code);
  });
});
