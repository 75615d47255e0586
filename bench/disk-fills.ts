// How a disk of ours is written before it is measured: whole, its first bytes, or one 4 KiB write
// every `stride` bytes (which maps one segment per write when the stride is the segment size).
import { FILL_JOB, type FioJob } from "./fio-jobs.ts";
import { KIB, formatBytes, formatCount } from "./units.ts";

export const WRITE_BYTES = 4 * KIB;

export type Fill =
  | { kind: "head"; bytes: number }
  | { kind: "whole" }
  | { kind: "stride"; stride: number; count: number };

/** One 4 KiB write at the start of each of the first `count` segments of `segmentBytes`. */
export function everySegment(segmentBytes: number, count: number): Fill {
  return { kind: "stride", stride: segmentBytes, count };
}

export function fillJob(fill: Fill): FioJob {
  switch (fill.kind) {
    case "whole":
      return FILL_JOB;
    case "head":
      return { ...FILL_JOB, id: "fill-head", label: `fill: first ${formatBytes(fill.bytes)}`, extraArgs: [`--size=${fill.bytes}`] };
    case "stride":
      return {
        id: "map-stride",
        label: `map: 4 KiB every ${formatBytes(fill.stride)}`,
        rw: `write:${fill.stride - WRITE_BYTES}`,
        blockSize: "4k",
        iodepth: 32,
        direction: "write",
        metric: "iops",
        extraArgs: [`--number_ios=${fill.count}`],
      };
  }
}

export function describeFill(fill: Fill, segmentBytes: number): string {
  switch (fill.kind) {
    case "whole":
      return "whole disk written through NBD (1 MiB sequential writes)";
    case "head":
      return `first ${formatBytes(fill.bytes)} written through NBD`;
    case "stride": {
      const every = fill.stride === segmentBytes ? "every segment" : `every ${fill.stride / segmentBytes}th segment`;
      return `4 KiB written at the start of ${every} (one per ${formatBytes(fill.stride)}, ${formatCount(fill.count)} writes through NBD)`;
    }
  }
}
