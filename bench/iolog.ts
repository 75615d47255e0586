// fio replay logs (`--read_iolog`) of 4 KiB writes in which every write of a pass is the first one to
// its segment: the way the first-write benchmark makes each measured write allocate or copy.
import { writeFileSync } from "node:fs";
import { seededRandom } from "../engine/util/seeded-random.ts";
import { WRITE_BYTES } from "./disk-fills.ts";

export interface ReplayLog {
  segments: number;
  segmentBytes: number;
  /** Passes over every segment, each in its own random order. */
  passes: number;
  seed: number;
}

/**
 * Writes a fio version 2 iolog for job `jobId`: per pass, one 4 KiB write at a random 4 KiB-aligned
 * offset inside each of the first `segments` segments, in random order. Within one pass no two writes
 * share a segment, so after a snapshot (or on a fresh thin disk) every write of the first pass is the
 * first one to its segment. Returns the number of writes.
 */
export function writeReplayLog(path: string, jobId: string, log: ReplayLog): number {
  const file = `${jobId}.0.0`;
  const blocksPerSegment = log.segmentBytes / WRITE_BYTES;
  const next = seededRandom(log.seed);
  const order = Array.from({ length: log.segments }, (_, i) => i);
  const lines = ["fio version 2 iolog", `${file} add`, `${file} open`];
  for (let pass = 0; pass < log.passes; pass++) {
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (const segment of order) {
      const offset = segment * log.segmentBytes + Math.floor(next() * blocksPerSegment) * WRITE_BYTES;
      lines.push(`${file} write ${offset} ${WRITE_BYTES}`);
    }
  }
  lines.push(`${file} close`);
  writeFileSync(path, `${lines.join("\n")}\n`);
  return log.segments * log.passes;
}
