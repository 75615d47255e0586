// When the controller's log is compacted: once it has grown past its compacted size by that size
// or by the slack, whichever is more (so it stays under twice its live state plus the slack, see
// README), and when it is full, if dropping what compaction drops can free space.
import type { AppendLog } from "./log/append-log.ts";

/** Compaction runs once the log has grown past its compacted size by that size or by this much,
 *  whichever is more: the log stays under twice its live state plus this (see README). */
export const COMPACT_SLACK_BYTES_DEFAULT = 4 * 2 ** 20;

export class CompactionSchedule {
  private compactedBytes: number;
  private compacting: Promise<void> | null = null;
  /** Log size when a compaction last failed: it is not tried again while refusing changes until
   *  the log has grown. */
  private failedAt = -1;

  constructor(
    private readonly log: AppendLog,
    /** The live state's records, as a compaction writes them. */
    private readonly liveRecords: () => Iterable<object>,
    private readonly slackBytes: number,
    private readonly say: (line: string) => void,
  ) {
    this.compactedBytes = log.sizeBytes;
  }

  /** A compaction in progress, if any. */
  get running(): Promise<void> | null {
    return this.compacting;
  }

  /** After a change: compacts once the log has grown enough. */
  afterChange(): void {
    if (this.log.sizeBytes >= this.compactedBytes + Math.max(this.compactedBytes, this.slackBytes)) this.compact();
  }

  /** The log's file system is full: what compaction drops from the log frees space on it. */
  whenFull(): void {
    if (this.log.sizeBytes > this.compactedBytes && this.log.sizeBytes !== this.failedAt) this.compact();
  }

  private compact(): void {
    if (this.compacting) return;
    this.compacting = this.log
      .compact(this.liveRecords())
      .then(() => {
        this.compactedBytes = this.log.sizeBytes;
      })
      .catch((error: Error) => {
        this.failedAt = this.log.sizeBytes;
        this.say(`log compaction failed: ${error.message}`);
      })
      .finally(() => {
        this.compacting = null;
      });
  }
}
