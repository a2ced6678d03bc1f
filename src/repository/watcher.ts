/**
 * The repository watcher: it polls, as OpenVINO Model Server does (recursive fs.watch is unreliable on Linux in
 * Node 20, and polling also works on network file systems). Each tick runs one scan; a scan still running is not
 * started twice.
 */
export class Watcher {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;

  constructor(
    private readonly scan: () => Promise<void>,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
  }

  /** Run a scan now (or join the one running). */
  tick(): Promise<void> {
    this.running ??= this.scan().finally(() => (this.running = null));
    return this.running;
  }

  /** Stop polling and wait for a scan in progress. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }
}
