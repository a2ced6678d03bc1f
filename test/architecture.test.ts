import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helpers.ts';

/**
 * The layers of src/ (README, Architecture): protocols -> inference service -> repository and batcher -> engine.
 * These tests read the import statements of every source file, so a wrong-way import fails here, not in review.
 */
const SRC = path.join(ROOT, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(tsx?|mjs)$/.test(e.name) && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** file (relative to src) -> what it imports: relative imports resolved to files (relative to src), packages by name. */
function importGraph(root = SRC): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(root)) {
    const text = readFileSync(file, 'utf8');
    const specs = [
      ...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)|(?:^|\n)\s*import\s+'([^']+)'/g),
    ].map((m) => m[1] ?? m[2] ?? m[3]);
    graph.set(
      path.relative(SRC, file),
      specs.map((s) => (s.startsWith('.') ? path.relative(SRC, path.resolve(path.dirname(file), s)) : s)),
    );
  }
  return graph;
}

const graph = importGraph();
/** The page's sources (ui/src), relative to src like the rest: "../ui/src/app.tsx". */
const uiGraph = importGraph(path.join(ROOT, 'ui', 'src'));
const PROTOCOL_PACKAGES = /^(graphql|graphql-yoga|graphql-ws|graphql-scalars|@graphql-yoga\/|@pothos\/|@escape\.tech\/|@grpc\/|ws$)/;

describe('architecture', () => {
  it('reads the sources', () => {
    expect(graph.size).toBeGreaterThan(30);
    expect(graph.get('main.ts')).toContain('config.ts');
  });

  it('has no import cycles', () => {
    const state = new Map<string, 'visiting' | 'done'>();
    const cycles: string[] = [];
    const visit = (f: string, trail: string[]) => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'visiting') {
        cycles.push([...trail.slice(trail.indexOf(f)), f].join(' -> '));
        return;
      }
      state.set(f, 'visiting');
      for (const dep of graph.get(f) ?? []) if (graph.has(dep)) visit(dep, [...trail, f]);
      state.set(f, 'done');
    };
    for (const f of graph.keys()) visit(f, []);
    expect(cycles).toEqual([]);
  });

  it('nothing under inference, repository, batching, engine or vision imports a protocol (or graphql)', () => {
    const offenders: string[] = [];
    for (const [file, deps] of graph) {
      if (!/^(inference|repository|batching|engine|vision)\//.test(file)) continue;
      for (const d of deps)
        if (PROTOCOL_PACKAGES.test(d) || /^(protocols|server|cluster)\//.test(d)) offenders.push(`${file} imports ${d}`);
    }
    expect(offenders).toEqual([]);
  });

  it('dependencies point one way: engine <- batching <- repository <- vision <- inference <- protocols <- server', () => {
    const rank = (f: string) =>
      ['engine/', 'batching/', 'repository/', 'vision/', 'inference/', 'protocols/', 'server/'].findIndex((p) => f.startsWith(p));
    const upward: string[] = [];
    for (const [file, deps] of graph) {
      const r = rank(file);
      if (r < 0) continue;
      for (const d of deps) if (rank(d) > r) upward.push(`${file} -> ${d}`);
    }
    expect(upward).toEqual([]);
  });

  it('the cluster bus (src/cluster) sits beside server/: it imports no protocol or inference, and only server/ and main.ts import it', () => {
    const wrong: string[] = [];
    for (const [file, deps] of graph) {
      if (file.startsWith('cluster/'))
        for (const d of deps)
          if (PROTOCOL_PACKAGES.test(d) || /^(protocols|inference|server)\//.test(d)) wrong.push(`${file} imports ${d}`);
      if (!file.startsWith('cluster/') && !file.startsWith('server/') && file !== 'main.ts')
        for (const d of deps) if (d.startsWith('cluster/')) wrong.push(`${file} imports ${d}`);
    }
    expect(graph.has('cluster/index.ts')).toBe(true);
    expect(wrong).toEqual([]);
  });

  it('protocol adapters import nothing of each other', () => {
    const crossing: string[] = [];
    for (const [file, deps] of graph) {
      const own = /^protocols\/([^/]+)\//.exec(file)?.[1];
      if (!own) continue;
      for (const d of deps) {
        const other = /^protocols\/([^/]+)\//.exec(d)?.[1];
        if (other && other !== own) crossing.push(`${file} -> ${d}`);
      }
    }
    expect(crossing).toEqual([]);
  });

  it('the client (src/client/) imports nothing of the server: only its own files and client-side packages', () => {
    // what only a server uses (client libraries such as graphql-ws or @grpc/grpc-js are fine)
    const SERVER_PACKAGES =
      /^(graphql-yoga|@graphql-yoga\/|@pothos\/|@escape\.tech\/|graphql-scalars|@whatwg-node\/|onnxruntime-node|openvino-node|sharp|pino|prom-client|dataloader|sirv|@repeaterjs\/)/;
    const offenders: string[] = [];
    for (const [file, deps] of graph) {
      if (!file.startsWith('client/')) continue;
      for (const d of deps) {
        // the proto contract (src/protocols/kserve/proto/) is shared by both sides and imports nothing of the server
        const shared = d.startsWith('protocols/kserve/proto/');
        const otherFile = !d.startsWith('client/') && !shared && /\.(tsx?|mjs)$/.test(d);
        if (otherFile || SERVER_PACKAGES.test(d)) offenders.push(`${file} imports ${d}`);
      }
    }
    for (const [file, deps] of graph) {
      if (file.startsWith('protocols/kserve/proto/'))
        for (const d of deps) if (/\.(tsx?|mjs)$/.test(d)) offenders.push(`${file} imports ${d}`);
    }
    expect([...graph.keys()].filter((f) => f.startsWith('client/')).length).toBeGreaterThanOrEqual(3);
    expect(offenders).toEqual([]);
  });

  it('the page (ui/src/) talks to the gateway over HTTP only: it imports none of src/, and only browser packages', () => {
    const BROWSER_PACKAGES = /^(preact|preact\/hooks|graphql-ws)$/;
    const offenders: string[] = [];
    for (const [file, deps] of uiGraph) {
      for (const d of deps) {
        if (d.startsWith('../ui/src/') || BROWSER_PACKAGES.test(d)) continue;
        offenders.push(`${file} imports ${d}`);
      }
    }
    expect(uiGraph.size).toBeGreaterThanOrEqual(3);
    expect(offenders).toEqual([]);
  });
});
