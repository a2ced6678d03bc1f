/**
 * Edit distance (Levenshtein) between two strings if it is at most `max`, else `max + 1`: only the band of cells
 * within `max` of the diagonal is computed, in one row of a typed array, and it stops once a row is past `max`. The
 * cost is at most (a.length) x (2 max + 1) cells, whatever the strings.
 */
export function distance(a: string, b: string, max = Math.max(a.length, b.length)): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  const over = max + 1;
  let prev = new Int32Array(b.length + 1);
  let row = new Int32Array(b.length + 1);
  for (let j = 0; j <= b.length; j++) prev[j] = j <= max ? j : over;
  for (let i = 1; i <= a.length; i++) {
    const from = Math.max(1, i - max);
    const to = Math.min(b.length, i + max);
    row.fill(over);
    row[0] = i <= max ? i : over;
    let best = row[0];
    for (let j = from; j <= to; j++) {
      const v = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a.charCodeAt(i - 1) === b.charCodeAt(j - 1) ? 0 : 1));
      row[j] = v > over ? over : v;
      if (row[j] < best) best = row[j];
    }
    if (best > max) return over;
    [prev, row] = [row, prev];
  }
  return Math.min(prev[b.length], over);
}

/**
 * The candidate a mistyped word most likely meant (case aside, within max(2, a quarter of its length) edits), or
 * null. A client's text is compared with every candidate: words longer than `maxLength` get no suggestion, and each
 * comparison is bounded (distance's band).
 */
export function closest(word: string, candidates: Iterable<string>, maxLength = 128): string | null {
  if (word.length > maxLength) return null;
  const w = word.toLowerCase();
  let best: string | null = null;
  let bestDistance = Math.max(2, Math.floor(word.length / 4)) + 1;
  for (const c of candidates) {
    const d = distance(w, c.toLowerCase(), bestDistance - 1);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}
