/** Edit distance (Levenshtein) between two short strings. */
export function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length][b.length];
}

/**
 * The candidate a mistyped word most likely meant (case aside, within a few edits), or null. Words longer than
 * `maxLength` get no suggestion: a client's text is compared with every candidate, in time of the product of lengths.
 */
export function closest(word: string, candidates: Iterable<string>, maxLength = 128): string | null {
  if (word.length > maxLength) return null;
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const c of candidates) {
    if (c.length > maxLength) continue;
    const d = c.toLowerCase() === word.toLowerCase() ? 0 : distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best !== null && bestDistance <= Math.max(2, Math.floor(word.length / 4)) ? best : null;
}
