// The background commit: records that faults leave uncommitted (their FLUSH commits them when it
// comes) are committed at the latest BACKGROUND_COMMIT_MS after the first of them, so a host that
// never flushes loses little when the controller dies.
import type { LeaseClock } from "./agent-link.ts";
import { BACKGROUND_COMMIT_MS } from "./wire/messages.ts";

export class CommitTimer {
  private cancelTimer: (() => void) | null = null;

  constructor(
    private readonly clock: LeaseClock,
    private readonly commit: () => Promise<void>,
    private readonly say: (line: string) => void,
  ) {}

  /** Records were appended: a commit comes within BACKGROUND_COMMIT_MS. */
  arm(): void {
    this.cancelTimer ??= this.clock.after(BACKGROUND_COMMIT_MS, () => {
      this.cancelTimer = null;
      this.commit().catch((error: Error) => this.say(`background commit failed: ${error.message}`));
    });
  }

  cancel(): void {
    this.cancelTimer?.();
    this.cancelTimer = null;
  }
}
