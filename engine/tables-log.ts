// The controller's tables and their log together. A change is admitted first (the log has room for
// it and, beyond, for a compaction), then applied, then appended: a record that does not apply is
// never appended, and a change the log cannot take changes nothing. Also here: commits, and what
// happens when the log cannot go on. When to commit in the background and when to compact are
// commit-timer.ts and compaction-schedule.ts.
//
// - Full (the file system has no space for the log's room): the controller is read-only for
//   changes. Each is refused with ENOSPC and one line saying what is full and how much is needed;
//   reads and I/O through mapped entries go on; the first change admitted once space is back ends
//   it, without a restart.
// - Failed (a write or fdatasync of the log failed, or a record did not apply): what the
//   controller holds in memory may be more than a restart recovers, so it stops: `onFatal` is
//   called once and every later change, commit and compaction is refused.
import { AppendLog, LogFullError, type RecoveryReport } from "./log/append-log.ts";
import type { LogIo } from "./log/log-io.ts";
import type { LeaseClock } from "./agent-link.ts";
import { appendAndApply, ChangeNotAppliedError, parseRecord, type Catalog, type Freed, type LogRecord } from "./catalog.ts";
import { compactionBytesBound, growthBytesBound } from "./compaction-bound.ts";
import { assert } from "./util/assert.ts";
import { RequestError } from "./wire/peer.ts";
import { CommitTimer } from "./commit-timer.ts";
import { CompactionSchedule, COMPACT_SLACK_BYTES_DEFAULT } from "./compaction-schedule.ts";
/** The log file is kept written this far ahead of its records and reserve when space allows. */
export const LOG_ROOM_CHUNK_BYTES = 2 ** 20;

export interface TablesLogOptions {
  /** The file I/O of commits and compactions. */
  io: LogIo;
  /** The background commit's timer. */
  clock: LeaseClock;
  compactSlackBytes?: number;
  say(line: string): void;
  /** The log failed: the controller must stop. Called once. */
  onFatal(error: Error): void;
}

export class TablesLog {
  private readonly compaction: CompactionSchedule;
  private readonly commitTimer: CommitTimer;
  /** Records appended and not yet committed by the persist that appended them. */
  private persisting = 0;
  private full = false;
  private stopped: RequestError | null = null;

  private constructor(
    private readonly log: AppendLog,
    private readonly catalog: Catalog,
    private readonly options: TablesLogOptions,
  ) {
    const say = (line: string) => options.say(line);
    this.compaction = new CompactionSchedule(log, () => catalog.snapshot(), options.compactSlackBytes ?? COMPACT_SLACK_BYTES_DEFAULT, say);
    this.commitTimer = new CommitTimer(options.clock, () => this.commit(), say);
  }

  /** Opens the log at `path` and replays it into `catalog` (which must be empty). */
  static open(path: string, catalog: Catalog, options: TablesLogOptions): { tables: TablesLog; recovery: RecoveryReport } {
    let tables: TablesLog | undefined;
    const { log, records, recovery } = AppendLog.open(path, {
      io: options.io,
      roomChunkBytes: LOG_ROOM_CHUNK_BYTES,
      onFailure: (error) => tables?.fail(error),
    });
    try {
      for (const [index, raw] of records.entries()) {
        let record: LogRecord;
        try {
          record = parseRecord(raw);
        } catch (error) {
          throw new Error(`log ${path}: record ${index} is not valid: ${(error as Error).message}`);
        }
        catalog.apply(record);
      }
    } catch (error) {
      void log.close();
      throw error;
    }
    tables = new TablesLog(log, catalog, options);
    return { tables, recovery };
  }

  /** Bytes of records in the log. */
  get sizeBytes(): number {
    return this.log.sizeBytes;
  }

  /** Every change applied is durable and no persist is still on its way. */
  get settled(): boolean {
    return this.persisting === 0 && this.log.uncommittedRecords === 0;
  }

  /** Applies and commits `records`; returns the segments they left unreferenced, free for others
   *  once no agent can still be using them. */
  async persist(records: LogRecord[]): Promise<Freed[]> {
    if (records.length === 0) return [];
    const freed = this.change(records);
    this.persisting += 1;
    try {
      await this.commit();
    } finally {
      this.persisting -= 1;
    }
    this.compactIfDue();
    return freed;
  }

  /** Applies records that free nothing, durable at the next commit; returns their position. */
  record(records: LogRecord[]): number {
    const freed = this.change(records);
    assert(freed.length === 0, "uncommitted records must not free segments");
    this.commitTimer.arm();
    this.compactIfDue();
    return this.log.appendedRecords;
  }

  /** Makes every record appended so far durable. */
  async commit(): Promise<void> {
    if (this.stopped) throw this.stopped;
    try {
      await this.log.commit();
    } catch (error) {
      throw this.stopped ?? error;
    }
  }

  isDurable(position: number): boolean {
    return this.log.durableRecords >= position;
  }

  /** The controller is going away at once (its process died): no change, commit or compaction is
   *  made from now on, whatever of its code still runs. */
  halt(why: string): void {
    this.stopped ??= new RequestError("EIO", why);
    this.commitTimer.cancel();
  }

  async close(): Promise<void> {
    this.commitTimer.cancel();
    await this.compaction.running;
    await this.log.close();
  }

  /** Admits, applies, then appends one change (see the file comment). */
  private change(records: LogRecord[]): Freed[] {
    if (this.stopped) throw this.stopped;
    const reserve = compactionBytesBound(this.catalog) + growthBytesBound(this.catalog, records);
    let freed: Freed[];
    try {
      freed = appendAndApply(this.log, this.catalog, records, reserve);
    } catch (error) {
      if (error instanceof LogFullError) this.refuse(error);
      if (error instanceof ChangeNotAppliedError) this.fail(error);
      throw this.stopped ?? error;
    }
    if (this.full) {
      this.full = false;
      this.options.say("log: space is back, changes are accepted again");
    }
    return freed;
  }

  /** The read-only state: said once, and every change refused with what is full. */
  private refuse(error: LogFullError): never {
    if (!this.full) {
      this.full = true;
      this.options.say(`log: read-only for changes: ${error.message}`);
    }
    if (!this.stopped) this.compaction.whenFull();
    throw new RequestError("ENOSPC", `the controller is read-only for changes: ${error.message}`);
  }

  private compactIfDue(): void {
    if (!this.stopped) this.compaction.afterChange();
  }

  private fail(error: Error): void {
    if (this.stopped) return;
    this.stopped = new RequestError("EIO", `the controller has stopped: ${error.message}; a restart recovers what was committed`);
    this.commitTimer.cancel();
    // The requests that failed with it are answered first (their answers go out on the next
    // turns of the event loop), so agents and ctl hear why rather than see a connection drop.
    const stopped = this.stopped;
    setImmediate(() => setImmediate(() => this.options.onFatal(stopped)));
  }
}
