/** A small dependency-free SVG chart: throughput and p95 against concurrency (log2 axis), one line per mode. */
interface P {
  mode: string;
  concurrency: number;
  throughput: number;
  p95: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

function panel(points: P[], xs: number[], key: 'throughput' | 'p95', title: string, unit: string, ox: number): string {
  const W = 420,
    H = 300,
    L = 60,
    B = 40,
    T = 30,
    R = 20;
  const modes = [...new Set(points.map((p) => p.mode))];
  const max = Math.max(...points.map((p) => p[key])) * 1.1 || 1;
  const x = (c: number) =>
    ox + L + ((Math.log2(c) - Math.log2(xs[0])) / (Math.log2(xs[xs.length - 1]) - Math.log2(xs[0]) || 1)) * (W - L - R);
  const y = (v: number) => T + (1 - v / max) * (H - T - B);
  const out: string[] = [`<text x="${ox + W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">${title}</text>`];
  out.push(
    `<line x1="${ox + L}" y1="${y(0)}" x2="${ox + W - R}" y2="${y(0)}" stroke="#333"/><line x1="${ox + L}" y1="${T}" x2="${ox + L}" y2="${y(0)}" stroke="#333"/>`,
  );
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i;
    out.push(
      `<line x1="${ox + L}" y1="${y(v)}" x2="${ox + W - R}" y2="${y(v)}" stroke="#ddd"/><text x="${ox + L - 6}" y="${y(v) + 4}" text-anchor="end" font-size="11">${v >= 100 ? Math.round(v) : v.toFixed(1)}</text>`,
    );
  }
  for (const c of xs) out.push(`<text x="${x(c)}" y="${y(0) + 16}" text-anchor="middle" font-size="11">${c}</text>`);
  out.push(`<text x="${ox + (L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="11">concurrency</text>`);
  out.push(
    `<text x="${ox + 14}" y="${(T + H - B) / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 ${ox + 14} ${(T + H - B) / 2})">${unit}</text>`,
  );
  modes.forEach((m, i) => {
    const ps = points.filter((p) => p.mode === m).sort((a, b) => a.concurrency - b.concurrency);
    out.push(
      `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${ps.map((p) => `${x(p.concurrency)},${y(p[key])}`).join(' ')}"/>`,
    );
    for (const p of ps) out.push(`<circle cx="${x(p.concurrency)}" cy="${y(p[key])}" r="3" fill="${COLORS[i % COLORS.length]}"/>`);
  });
  return out.join('\n');
}

export function renderChart(points: P[], xs: number[]): string {
  const modes = [...new Set(points.map((p) => p.mode))];
  const legend = modes
    .map(
      (m, i) =>
        `<rect x="${80 + (i % 4) * 200}" y="${312 + Math.floor(i / 4) * 18}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/><text x="${96 + (i % 4) * 200}" y="${322 + Math.floor(i / 4) * 18}" font-size="12">${m}</text>`,
    )
    .join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="860" height="${335 + Math.floor((modes.length - 1) / 4) * 18}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${panel(points, xs, 'throughput', 'Throughput (mobilenetv2-12-int8)', 'requests / s', 0)}
${panel(points, xs, 'p95', 'p95 latency', 'ms', 430)}
${legend}
</svg>
`;
}
