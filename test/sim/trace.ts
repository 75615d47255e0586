// What happened in a run, line by line with simulated times. The hash of all lines shows two runs
// of a seed were the same; the last lines go into a failure report; `echo` prints them as they come
// (for replaying a seed). Counts of kinds of events show what a run exercised.
import { createHash } from "node:crypto";

const TAIL_LINES_MAX = 400;

export class Trace {
  private readonly hasher = createHash("sha256");
  private readonly tail: string[] = [];
  private lines = 0;
  /** How often each kind of thing happened (for coverage). */
  readonly counts = new Map<string, number>();

  constructor(
    private readonly clock: { readonly now: number },
    private readonly echo: ((line: string) => void) | null,
    /** A run's temporary directory: replaced in every line, so equal runs trace alike anywhere. */
    private readonly scrub: string,
  ) {}

  note(line: string): void {
    const stamped = `${this.clock.now.toFixed(3).padStart(10)} ${line.replaceAll(this.scrub, "<dir>")}`;
    this.hasher.update(stamped).update("\n");
    this.lines += 1;
    this.tail.push(stamped);
    if (this.tail.length > TAIL_LINES_MAX) this.tail.shift();
    this.echo?.(stamped);
  }

  count(kind: string): void {
    this.counts.set(kind, (this.counts.get(kind) ?? 0) + 1);
  }

  get lineCount(): number {
    return this.lines;
  }

  /** The hash of every line so far (call once, at the end). */
  digest(): string {
    return this.hasher.digest("hex");
  }

  lastLines(): string[] {
    return [...this.tail];
  }
}
