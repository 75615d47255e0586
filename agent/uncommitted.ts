// The mapping entries an agent was answered with (fault answers) that the controller has not made
// durable yet, per disk, and the controller run that answered. Writes that went to storage
// through them are only durable once the entries are: a FLUSH of such a disk first has the
// controller commit them. If that controller run ends first, the agent hands the entries back to
// the next one when it registers (engine/restore.ts), so nothing it vouches for is lost. What the
// new controller cannot take back is lost, and then every host connection that was open before
// the loss came to light (it may have had a write acknowledged through such an entry) fails each
// FLUSH until it reconnects, like a disk that lost its cache; it never sees a FLUSH succeed.
import { RemoteError } from "../engine/wire/peer.ts";
import { isWritableWord } from "../engine/restore.ts";
import type { Runs } from "../engine/wire/messages.ts";
import { RESTORE_ENTRIES_MAX } from "../engine/wire/messages.ts";
import { assert } from "../engine/util/assert.ts";

interface HeldDisk {
  /** The controller run that answered; one at a time (registration settles older ones). */
  run: number;
  /** Answers noted so far: a commit covers exactly the answers noted before it was asked for. */
  answers: number;
  /** segment -> the entry's word, the answer that gave it, and where in the run's records the
   *  disk's latest uncommitted change lay then (see engine/restore.ts). */
  entries: Map<number, { word: number; answer: number; at: number }>;
}

/** What a commit needs: the run, and how far the answers went when it was asked for. */
export interface PendingCommit {
  run: number;
  answers: number;
}

/** Sends one restore request ([segment, word, at] entries); resolves to how many were lost. */
export type RestoreSender = (disk: number, run: number, entries: [number, number, number][]) => Promise<number>;

/** How often a FLUSH tries again after its controller run ended under it (each time after the
 *  registration with the next run has settled what was held). */
const STALE_RETRIES_MAX = 3;

export class UncommittedChanges {
  private readonly byDisk = new Map<number, HeldDisk>();
  /** Per disk, after a loss: connections of an earlier registration era fail their FLUSHes. */
  private readonly lostBeforeEra = new Map<number, number>();

  /** A fault answer for `disk` in controller run `run` gave entries `runs` from `first`, not yet
   *  durable: the disk's uncommitted changes then went up to `at` in the run's records. */
  note(disk: number, run: number, first: number, runs: Runs, at: number): void {
    let held = this.byDisk.get(disk);
    if (!held) this.byDisk.set(disk, (held = { run, answers: 0, entries: new Map() }));
    assert(held.run === run, `disk ${disk}: uncommitted entries of controller runs ${held.run} and ${run} at once`);
    held.answers += 1;
    let segment = first;
    for (const [word, count] of runs) {
      for (let i = 0; i < count; i += 1) {
        if (isWritableWord(word)) held.entries.set(segment + i, { word, answer: held.answers, at });
        else held.entries.delete(segment + i);
      }
      segment += count;
    }
  }

  /** The controller runs whose entries are held (for hello). */
  runs(): number[] {
    return [...new Set([...this.byDisk.values()].map((held) => held.run))];
  }

  /** What a FLUSH of `disk` needs committed, or null for nothing. */
  pending(disk: number): PendingCommit | null {
    const held = this.byDisk.get(disk);
    return held ? { run: held.run, answers: held.answers } : null;
  }

  /** The controller committed what `seen` needed: those entries are durable. */
  committed(disk: number, seen: PendingCommit): void {
    const held = this.byDisk.get(disk);
    if (!held || held.run !== seen.run) return;
    if (held.answers === seen.answers) {
      this.byDisk.delete(disk);
      return;
    }
    for (const [segment, entry] of held.entries) if (entry.answer <= seen.answers) held.entries.delete(segment);
  }

  /**
   * Has what `disk` needs committed through `commit(run)` (false when the controller is out of
   * reach). A RemoteError ESTALE means that run ended; the registration with the next run has
   * settled the entries by then (handBack), so it looks again.
   */
  async commitDisk(disk: number, commit: (run: number) => Promise<boolean>): Promise<"done" | "unreachable"> {
    for (let attempt = 0; attempt < STALE_RETRIES_MAX; attempt += 1) {
      const pending = this.pending(disk);
      if (!pending) return "done";
      try {
        if (!(await commit(pending.run))) return "unreachable";
        this.committed(disk, pending);
        return "done";
      } catch (error) {
        if (!(error instanceof RemoteError && error.code === "ESTALE")) throw error;
      }
    }
    throw new Error(`disk ${disk}: the controller run that answered its faults keeps ending`);
  }

  /**
   * After hello to a controller of run `run`: hands back every entry of an ended run (a few
   * requests per disk). Entries the controller took back are durable now; for the disks with
   * entries it could not take, connections of an era before `era` fail their FLUSHes from now on.
   * Returns those disks (empty when nothing was lost).
   */
  async handBack(run: number, era: number, restore: RestoreSender): Promise<number[]> {
    const lost: number[] = [];
    for (const [disk, held] of [...this.byDisk]) {
      if (held.run === run) continue;
      const entries = [...held.entries].map(([segment, { word, at }]): [number, number, number] => [segment, word, at]);
      let lostCount = 0;
      for (let at = 0; at < entries.length; at += RESTORE_ENTRIES_MAX) lostCount += await restore(disk, held.run, entries.slice(at, at + RESTORE_ENTRIES_MAX));
      this.byDisk.delete(disk);
      if (lostCount > 0) {
        this.lostBeforeEra.set(disk, era);
        lost.push(disk);
      }
    }
    return lost;
  }

  /** Whether a connection of registration era `era` must fail its FLUSHes of `disk`. */
  lostFor(disk: number, era: number): boolean {
    return era < (this.lostBeforeEra.get(disk) ?? -Infinity);
  }

  /** The disk's table is gone: nothing of it is flushed any more, and its connections are gone. */
  forget(disk: number): void {
    this.byDisk.delete(disk);
    this.lostBeforeEra.delete(disk);
  }
}
