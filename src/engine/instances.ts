import type { PixelInput, RunOptions, Session, Tensor } from './types.ts';

/**
 * Several instances of one model as one Session (Triton's instance_group count, OpenVINO Model Server's parallel infer
 * requests): each instance runs one call at a time, and a call goes to the instance with the fewest calls in hand, so
 * batches compute side by side instead of one after another. The first instance is the one loading decided on (batch
 * dimension, notes, the session for lone calls); the others are copies of it. What happens to one happens to all:
 * preprocessing fused into each, loaded() on each, one failure reported once, close() closes all.
 */
export class SessionInstances implements Session {
  private readonly inHand: number[];
  /** Calls each instance has run (for tests and curious operators). */
  readonly calls: number[];
  private failed = false;
  private readonly dead: boolean[];
  private readonly listeners: ((error: Error) => void)[] = [];

  constructor(private readonly members: readonly Session[]) {
    if (members.length === 0) throw new Error('bug: no instances');
    this.inHand = members.map(() => 0);
    this.calls = members.map(() => 0);
    this.dead = members.map(() => false);
    // an instance that died takes no more calls (the others finish theirs while the version unloads), and its death
    // is reported once for all
    members.forEach((s, k) =>
      s.onFailure?.((e) => {
        this.dead[k] = true;
        if (this.failed) return;
        this.failed = true;
        for (const l of this.listeners) l(e);
      }),
    );
  }

  get inputs() {
    return this.members[0].inputs;
  }
  get outputs() {
    return this.members[0].outputs;
  }
  get batchable() {
    return this.members[0].batchable;
  }
  get notes() {
    return { ...this.members[0].notes, instances: this.members.length };
  }
  get instances(): number {
    return this.members.length;
  }

  async run(feeds: Record<string, Tensor>, options: RunOptions = {}): Promise<Record<string, Tensor>> {
    // a lone call goes to the first instance, which holds the session for lone calls
    let k = 0;
    if (!options.alone || this.dead[0])
      for (let i = 1; i < this.inHand.length; i++) if (this.dead[k] || (!this.dead[i] && this.inHand[i] < this.inHand[k])) k = i;
    this.inHand[k]++;
    this.calls[k]++;
    try {
      return await this.members[k].run(feeds, options);
    } finally {
      this.inHand[k]--;
    }
  }

  async fusePixels(spec: PixelInput): Promise<string | null> {
    const names = await Promise.all(this.members.map((s) => (s.fusePixels ? s.fusePixels(spec) : Promise.resolve(null))));
    // all or none: calls go to any instance
    return names.every((n) => n === names[0]) ? names[0] : null;
  }

  async loaded(): Promise<void> {
    await Promise.all(this.members.map((s) => s.loaded?.()));
  }

  async close(): Promise<void> {
    await Promise.all(this.members.map((s) => s.close()));
  }

  onFailure(listener: (error: Error) => void): void {
    this.listeners.push(listener);
  }
}
