// Microbenchmark part: the controller's append-only log (engine/log/append-log.ts) with a typical
// `map` record (one entry of a disk, as a fault writes it): `append` alone (encoding and buffering),
// `append` + `commit` (one write + one fdatasync per record), and group commit (GROUP_COMMIT_RECORDS
// appends, then one commit). Each case has its own log file in `dir`, which should be on a disk-backed
// file system.
import { join } from "node:path";
import { AppendLog } from "../engine/log/append-log.ts";
import type { MapRecord } from "../engine/catalog.ts";
import { mappedWord } from "../wasm/entry.ts";
import { type MicroSettings, newBench, nsPerOperation, samplesOf } from "./micro-timing.ts";

const APPENDS = 1000; // per iteration of the buffering case: one append is too short to time alone
export const GROUP_COMMIT_RECORDS = 32;
const MIB = 2 ** 20;
const DISK_ID = 7;
/** Segments of a 1 TiB disk with 1 MiB segments: the records' `first` cycles through them. */
const SEGMENTS = 2 ** 20;

export interface LogCase {
  name: string;
  recordsPerCommit: number | null;
  /** Mean cost per record. */
  nsPerRecord: number;
  /** Mean cost per commit (null for buffering only). */
  nsPerCommit: number | null;
  samples: number;
  /** fdatasync calls per commit, from the log's own counters (warmup included). */
  syncsPerCommit: number | null;
}

/** Typical records: one entry each, mapped to its own segment, segment numbers cycling. */
function recordSource(): () => MapRecord {
  let segment = 0;
  return () => {
    segment = (segment + 1) % SEGMENTS;
    return { t: "map", disk: DISK_ID, first: segment, runs: [[mappedWord(1, segment * MIB), 1]] };
  };
}

interface Case {
  name: string;
  recordsPerCommit: number | null;
  log: AppendLog;
  commits: number;
}

function openCase(dir: string, name: string, recordsPerCommit: number | null): Case {
  const { log } = AppendLog.open(join(dir, `${name.replace(/\W+/g, "-")}.log`));
  return { name, recordsPerCommit, log, commits: 0 };
}

export async function measureLog(settings: MicroSettings, dir: string): Promise<LogCase[]> {
  const next = recordSource();
  const buffering = openCase(dir, "append (buffered)", null);
  const single = openCase(dir, "append + commit", 1);
  const group = openCase(dir, `${GROUP_COMMIT_RECORDS} appends + commit`, GROUP_COMMIT_RECORDS);
  const bench = newBench(settings);
  bench.add(
    buffering.name,
    () => {
      for (let i = 0; i < APPENDS; i++) buffering.log.append(next());
    },
    // Written out between iterations, untimed, so the buffer does not grow without bound.
    { afterEach: () => buffering.log.commit() },
  );
  for (const durable of [single, group]) {
    bench.add(durable.name, async () => {
      for (let i = 0; i < durable.recordsPerCommit!; i++) durable.log.append(next());
      await durable.log.commit();
      durable.commits++;
    });
  }
  try {
    await bench.run();
  } finally {
    await Promise.all([buffering, single, group].map((c) => c.log.close()));
  }
  return [buffering, single, group].map((c) => {
    const perIteration = c.recordsPerCommit ?? APPENDS;
    const nsPerRecord = nsPerOperation(bench, c.name, perIteration);
    return {
      name: c.name,
      recordsPerCommit: c.recordsPerCommit,
      nsPerRecord,
      nsPerCommit: c.recordsPerCommit === null ? null : nsPerRecord * c.recordsPerCommit,
      samples: samplesOf(bench, c.name),
      syncsPerCommit: c.recordsPerCommit === null ? null : c.log.stats.syncs / c.commits,
    };
  });
}
