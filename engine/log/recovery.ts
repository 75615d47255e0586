/**
 * Scanning a log file image at open: which records are good, where a torn tail starts, and when
 * damage in the middle of the file must stop the controller from starting.
 */
import { checkFrame, decodePayload, findValidFrame, isZero, RECORD_ALIGN_BYTES } from "./record.ts";

/** A record in the middle of the log is damaged: the log cannot be trusted and is left untouched. */
export class LogCorruptionError extends Error {
  override name = "LogCorruptionError";

  constructor(
    readonly path: string,
    /** File offset of the first bad record. */
    readonly offset: number,
    readonly reason: string,
  ) {
    super(`log ${path}: corrupt record at offset ${offset} (${reason}); refusing to start`);
  }
}

/** The unfinished last write found at open and cut off. */
export interface TornTail {
  /** Offset where the dropped bytes started (the end of the last good record). */
  offset: number;
  bytesDropped: number;
  reason: string;
}

export interface ScanResult {
  records: object[];
  /** Bytes of the file holding good records; a torn tail is cut off here, zeros after it are kept. */
  validBytes: number;
  /** Sequence number the next appended record gets. */
  nextSeq: number;
  tornTail: TornTail | null;
}

/**
 * Scans a whole log file image.
 *
 * A bad record with no valid record (both checksums good) anywhere after it, or a record cut off by
 * the end of the file, is a torn tail: the last write did not finish, nothing after it was ever
 * acknowledged, and it is dropped. A bad record followed by a valid one is damage to data that was
 * acknowledged as durable: LogCorruptionError, never a silent skip.
 *
 * Known limitation: a disk that persists the sectors of one unfinished write out of order can leave
 * a valid record after a torn one; that is reported as corruption, erring on the side of refusing to
 * start over guessing.
 */
export function scanRecords(path: string, image: Uint8Array): ScanResult {
  const records: object[] = [];
  let offset = 0;
  let nextSeq: number | undefined;
  while (offset < image.length) {
    const step = readRecordAt(image, offset, nextSeq);
    if (step.kind === "record") {
      records.push(step.payload);
      offset = step.end;
      nextSeq = step.seq + 1;
      continue;
    }
    // Zeros to the end are room the log wrote ahead of its records (or a last write whose data
    // never reached the disk: nothing of it was acknowledged either way).
    if (isZero(image, offset, image.length)) break;
    if (step.kind === "bad" && findValidFrame(image, offset + RECORD_ALIGN_BYTES) !== undefined) {
      throw new LogCorruptionError(path, offset, step.reason);
    }
    const tornTail = { offset, bytesDropped: image.length - offset, reason: step.reason };
    return { records, validBytes: offset, nextSeq: nextSeq ?? 0, tornTail };
  }
  return { records, validBytes: offset, nextSeq: nextSeq ?? 0, tornTail: null };
}

type ReadStep =
  | { kind: "record"; payload: object; seq: number; end: number }
  | { kind: "truncated" | "bad"; reason: string };

/** Reads the record at `offset`, checking framing, sequence continuity and payload decoding. */
function readRecordAt(image: Uint8Array, offset: number, expectedSeq: number | undefined): ReadStep {
  const frame = checkFrame(image, offset);
  if (frame.kind !== "ok") return frame;
  if (expectedSeq !== undefined && frame.seq !== expectedSeq) {
    return { kind: "bad", reason: `sequence gap: expected ${expectedSeq}, found ${frame.seq}` };
  }
  const payload = decodePayload(frame.payload);
  if (payload === undefined) return { kind: "bad", reason: "undecodable payload" };
  return { kind: "record", payload, seq: frame.seq, end: frame.end };
}
