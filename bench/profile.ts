/** Summarize a V8 .cpuprofile: self time by function and by package (npx tsx bench/profile.ts bench/profile/x.cpuprofile). */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount: number;
  children?: number[];
}
const file =
  process.argv[2] ??
  (() => {
    const dir = path.resolve('bench/profile');
    const f = readdirSync(dir)
      .filter((n) => n.endsWith('.cpuprofile'))
      .sort()
      .at(-1);
    if (!f) throw new Error('no profile in bench/profile');
    return path.join(dir, f);
  })();
const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
const total = prof.samples.length;
const byFn = new Map<string, number>();
const byPkg = new Map<string, number>();
for (const n of prof.nodes) {
  const url = n.callFrame.url;
  const pkg = !url
    ? `(${n.callFrame.functionName || 'native'})`
    : url.includes('node_modules/')
      ? url
          .split('node_modules/')
          .at(-1)!
          .split('/')
          .slice(0, url.includes('node_modules/@') ? 2 : 1)
          .join('/')
      : url.startsWith('node:')
        ? 'node:' + url.slice(5).split('/')[0]
        : url.includes('/src/')
          ? 'gateway src/' + url.split('/src/').at(-1)
          : url;
  const fn = `${n.callFrame.functionName || '(anonymous)'} ${pkg}:${n.callFrame.lineNumber + 1}`;
  byFn.set(fn, (byFn.get(fn) ?? 0) + n.hitCount);
  byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + n.hitCount);
}
const top = (m: Map<string, number>, k: number) =>
  [...m.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, k)
    .map(([name, n]) => `${((100 * n) / total).toFixed(1).padStart(5)}%  ${name}`)
    .join('\n');
console.log(`${file}: ${total} samples\n\nby package / file (self time):\n${top(byPkg, 25)}\n\nby function (self time):\n${top(byFn, 30)}`);
