// The parts of a controller that its services share: the tables and their log, the pool, the
// agents, and the locks that order changes. The controller makes one and hands it to each service
// (control port, ctl requests, disk operations, containers).
import type { AgentFleet } from "./agent-fleet.ts";
import type { Catalog, Disk, Freed, LogRecord } from "./catalog.ts";
import type { ControllerEnv } from "./controller-env.ts";
import type { Pool } from "./pool.ts";
import type { SnapshotContext } from "./snapshots.ts";
import type { TablesLog } from "./tables-log.ts";
import type { KeyedMutex } from "./util/mutex.ts";
import { RequestError } from "./wire/peer.ts";

export interface ControllerCore {
  readonly env: ControllerEnv;
  readonly catalog: Catalog;
  readonly pool: Pool;
  readonly agents: AgentFleet;
  readonly tables: TablesLog;
  /** Disks of one family may share segments, so their table changes are serialised together. */
  readonly familyLocks: KeyedMutex<number>;
  /** Changes to the set of disks and containers, one at a time. */
  readonly catalogLock: KeyedMutex<"catalog">;
  /** What faults and snapshots change tables through. */
  readonly context: SnapshotContext;
  /** Applies and commits records; resolves to the segments they freed. */
  persist(records: LogRecord[]): Promise<Freed[]>;
  /** Gives freed segments back to the pool. */
  release(freed: Freed[]): void;
  say(line: string): void;
}

export function diskNamed(core: ControllerCore, name: string): Disk {
  const disk = core.catalog.diskByName(name);
  if (!disk) throw new RequestError("NOT_FOUND", `no disk named "${name}"`);
  return disk;
}

/** Runs `work` holding the locks of several families, taken in one order (no deadlock). */
export function withFamilies<T>(core: ControllerCore, families: number[], work: () => Promise<T>): Promise<T> {
  const [first, ...rest] = families;
  if (first === undefined) return work();
  return core.familyLocks.run(first, () => withFamilies(core, rest, work));
}
