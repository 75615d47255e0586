// Which disks have mapping changes (from fault answers) that the controller has not made durable
// yet, and in which controller run. Writes that went to storage through those changes are only
// durable once the changes are: a FLUSH of such a disk first has the controller commit them. If
// the controller run that answered has ended, its uncommitted changes are gone, and so are the
// writes that relied on them: that FLUSH must fail.
import { RemoteError } from "../engine/wire/peer.ts";

export interface PendingCommit {
  /** The controller run whose commit is needed. */
  run: number;
  /** Answers noted so far; a commit covers exactly the answers noted before it was asked for. */
  answers: number;
  /** Changes of an earlier run were lost (the controller restarted before committing them). */
  lost: boolean;
}

export class UncommittedChanges {
  private readonly byDisk = new Map<number, PendingCommit>();

  /** A fault answer for `disk` left its changes uncommitted in controller run `run`. */
  note(disk: number, run: number): void {
    const pending = this.byDisk.get(disk);
    if (!pending) {
      this.byDisk.set(disk, { run, answers: 1, lost: false });
      return;
    }
    if (pending.run !== run) {
      pending.lost = true;
      pending.run = run;
    }
    pending.answers += 1;
  }

  /** What a FLUSH of `disk` needs (a copy, to hand back below), or null for nothing. */
  pending(disk: number): PendingCommit | null {
    const pending = this.byDisk.get(disk);
    return pending ? { ...pending } : null;
  }

  /** The controller committed what `seen` needed: forgotten, unless answers came after it. */
  committed(disk: number, seen: PendingCommit): void {
    if (this.byDisk.get(disk)?.answers === seen.answers) this.byDisk.delete(disk);
  }

  /** The controller run `seen` needed has ended: its changes are lost (the next FLUSH says so). */
  runEnded(disk: number, seen: PendingCommit): void {
    const pending = this.byDisk.get(disk);
    if (pending?.run === seen.run) pending.lost = true;
  }

  /** A FLUSH reported that the changes `seen` needed were lost: reported once, not again. */
  lossReported(disk: number, seen: PendingCommit): void {
    const pending = this.byDisk.get(disk);
    if (!pending) return;
    if (pending.answers === seen.answers) this.byDisk.delete(disk);
    else pending.lost = false;
  }

  /**
   * Has what `disk` needs committed through `commit(run)` (false when the controller is out of
   * reach; a RemoteError ESTALE when that run has ended). "lost" only for a FLUSH (`flushing`),
   * which reports the loss once; in the background a loss is only remembered for the next FLUSH.
   */
  async commitDisk(disk: number, flushing: boolean, commit: (run: number) => Promise<boolean>): Promise<"done" | "unreachable" | "lost"> {
    const pending = this.pending(disk);
    if (!pending) return "done";
    if (!pending.lost) {
      try {
        if (!(await commit(pending.run))) return "unreachable";
        this.committed(disk, pending);
        return "done";
      } catch (error) {
        if (!(error instanceof RemoteError && error.code === "ESTALE")) throw error;
        this.runEnded(disk, pending);
      }
    }
    if (!flushing) return "done";
    this.lossReported(disk, pending);
    return "lost";
  }

  /** The disk's table is gone: nothing of it is flushed any more. */
  forget(disk: number): void {
    this.byDisk.delete(disk);
  }
}
