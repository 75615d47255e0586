import { afterEach, describe, expect, test } from "bun:test";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { encode } from "@msgpack/msgpack";
import { AppendLog, LogCorruptionError, RECORD_PAYLOAD_BYTES_MAX } from "../engine/log/append-log.ts";
import {
  checkFrame,
  crc32,
  crc32Table,
  framedBytes,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
  writeRecord,
} from "../engine/log/record.ts";
import { randomInt, seededRandom, TempDirs } from "./log-helpers.ts";

const temp = new TempDirs();
afterEach(() => temp.removeAll());

function makeRecord(i: number, random: () => number): Record<string, unknown> {
  return {
    i,
    name: "r".repeat(randomInt(random, 0, 120)),
    nested: { values: [i, i * 2, -i - 1], flag: i % 2 === 0 },
    bytes: new Uint8Array(randomInt(random, 0, 40)).fill(i & 0xff),
  };
}

interface WrittenLog {
  path: string;
  records: Record<string, unknown>[];
  /** File offset of each record, plus the file size at the end. */
  offsets: number[];
  image: Uint8Array;
}

/** Writes `count` records through AppendLog, committing in uneven batches. */
async function writeLog(count: number, seed: number): Promise<WrittenLog> {
  const random = seededRandom(seed);
  const path = join(temp.make(), "log");
  const { log } = AppendLog.open(path);
  const records: Record<string, unknown>[] = [];
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) {
    offsets.push(log.sizeBytes);
    const record = makeRecord(i, random);
    records.push(record);
    log.append(record);
    if (random() < 0.2) await log.commit();
  }
  await log.commit();
  offsets.push(log.sizeBytes);
  await log.close();
  return { path, records, offsets, image: new Uint8Array(readFileSync(path)) };
}

/** Builds a log file image directly, with chosen sequence numbers and raw payloads. */
function buildImage(entries: { seq: number; payload: Uint8Array }[]): { image: Uint8Array; offsets: number[] } {
  const total = entries.reduce((sum, e) => sum + framedBytes(e.payload.length), 0);
  const image = new Uint8Array(total);
  const offsets: number[] = [];
  let offset = 0;
  for (const entry of entries) {
    offsets.push(offset);
    offset = writeRecord(image, offset, entry.seq, entry.payload);
  }
  return { image, offsets };
}

function objectPayload(i: number): Uint8Array {
  return encode({ i });
}

/** Sequence numbers of every record in a file, read straight from the framing. */
function sequencesOf(path: string): number[] {
  const image = new Uint8Array(readFileSync(path));
  const seqs: number[] = [];
  for (let offset = 0; offset < image.length; ) {
    const frame = checkFrame(image, offset);
    if (frame.kind !== "ok") throw new Error(`bad frame at ${offset}`);
    seqs.push(frame.seq);
    offset = frame.end;
  }
  return seqs;
}

function expectCorruption(path: string, offset: number, reason: RegExp): void {
  let caught: unknown;
  try {
    AppendLog.open(path);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(LogCorruptionError);
  const error = caught as LogCorruptionError;
  expect(error.offset).toBe(offset);
  expect(error.message).toContain(`log ${path}: corrupt record at offset ${offset} (`);
  expect(error.message).toContain("refusing to start");
  expect(error.reason).toMatch(reason);
}

describe("record framing", () => {
  test("crc32 gives the standard check value and agrees with the table fallback", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    expect(crc32Table(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    const random = seededRandom(7);
    for (let n = 0; n < 50; n++) {
      const bytes = new Uint8Array(randomInt(random, 0, 300)).map(() => randomInt(random, 0, 256));
      expect(crc32(bytes)).toBe(crc32Table(bytes));
    }
  });

  test("records start at 8-byte aligned offsets", async () => {
    const written = await writeLog(50, 3);
    for (const offset of written.offsets) expect(offset % 8).toBe(0);
    expect(written.offsets.at(-1)).toBe(written.image.length);
  });
});

describe("AppendLog recovery", () => {
  test("a missing file is created empty", () => {
    const path = join(temp.make(), "log");
    const { log, records, recovery } = AppendLog.open(path);
    expect(records).toEqual([]);
    expect(recovery.created).toBe(true);
    expect(log.sizeBytes).toBe(0);
    expect(statSync(path).size).toBe(0);
    void log.close();
  });

  test("many records round-trip and reopen in order", async () => {
    const written = await writeLog(2000, 1);
    const { log, records, recovery } = AppendLog.open(written.path);
    expect(records).toEqual(written.records);
    expect(recovery).toMatchObject({ created: false, recordCount: 2000, truncatedBytes: 0, truncationReason: null });
    expect(recovery.validBytes).toBe(written.image.length);
    expect(log.recordCount).toBe(2000);
    expect(log.sizeBytes).toBe(written.image.length);
    await log.close();
  });

  test("sequence numbers count up by one and continue after reopen", async () => {
    const written = await writeLog(20, 2);
    const { log } = AppendLog.open(written.path);
    log.append({ after: true });
    await log.close();
    expect(sequencesOf(written.path)).toEqual(Array.from({ length: 21 }, (_, i) => i));
  });

  test("truncating the file at 200 random points recovers exactly a prefix, cuts the file and accepts appends", async () => {
    const written = await writeLog(300, 4);
    const random = seededRandom(5);
    for (let n = 0; n < 200; n++) {
      const cut = randomInt(random, 0, written.image.length + 1);
      writeFileSync(written.path, written.image.subarray(0, cut));
      const kept = written.offsets.filter((end, k) => k > 0 && end <= cut).length;
      const validBytes = written.offsets[kept]!;

      const { log, records, recovery } = AppendLog.open(written.path);
      expect(records).toEqual(written.records.slice(0, kept));
      expect(recovery.validBytes).toBe(validBytes);
      expect(recovery.truncatedAt).toBe(validBytes);
      expect(recovery.truncatedBytes).toBe(cut - validBytes);
      expect(statSync(written.path).size).toBe(validBytes);

      log.append({ appendedAfterCut: n });
      await log.close();
      const reopened = AppendLog.open(written.path);
      expect(reopened.records).toEqual([...written.records.slice(0, kept), { appendedAfterCut: n }]);
      await reopened.log.close();
    }
  });

  test("a zero-filled tail after the last record is kept as room and the next record overwrites it", async () => {
    const written = await writeLog(30, 6);
    writeFileSync(written.path, new Uint8Array([...written.image, ...new Uint8Array(4096)]));
    const { log, records, recovery } = AppendLog.open(written.path);
    expect(records).toEqual(written.records);
    expect(recovery.truncatedBytes).toBe(0);
    expect(recovery.validBytes).toBe(written.image.length);
    expect(statSync(written.path).size).toBe(written.image.length + 4096);
    log.append({ afterRoom: 1 });
    await log.close();
    expect(statSync(written.path).size).toBe(written.image.length + 4096);
    expect(AppendLog.open(written.path).records).toEqual([...written.records, { afterRoom: 1 }]);
  });

  test("a garbage tail after the last record is dropped", async () => {
    const written = await writeLog(30, 7);
    const random = seededRandom(8);
    const garbage = new Uint8Array(1000).map(() => randomInt(random, 0, 256));
    writeFileSync(written.path, new Uint8Array([...written.image, ...garbage]));
    const { log, records, recovery } = AppendLog.open(written.path);
    expect(records).toEqual(written.records);
    expect(recovery.truncatedBytes).toBe(1000);
    await log.close();
  });

  test("a torn last record (zeroed, garbage, or payload never written) is dropped; zeros are kept as room", async () => {
    const written = await writeLog(30, 9);
    const last = written.offsets.at(-2)!;
    const random = seededRandom(10);
    const variants: [string, (image: Uint8Array) => void, "cut" | "kept as room"][] = [
      ["zeroed", (image) => image.fill(0, last), "kept as room"],
      ["garbage", (image) => image.set(image.subarray(last).map(() => randomInt(random, 0, 256)), last), "cut"],
      ["payload unwritten", (image) => image.fill(0, last + RECORD_HEADER_BYTES), "cut"],
    ];
    for (const [, tear, outcome] of variants) {
      const image = written.image.slice();
      tear(image);
      writeFileSync(written.path, image);
      const { log, records, recovery } = AppendLog.open(written.path);
      expect(records).toEqual(written.records.slice(0, -1));
      expect(recovery.validBytes).toBe(last);
      expect(recovery.truncatedBytes).toBe(outcome === "cut" ? written.image.length - last : 0);
      expect(statSync(written.path).size).toBe(outcome === "cut" ? last : written.image.length);
      await log.close();
    }
  });

  test("flipping any byte of a record that is not the last throws LogCorruptionError at that record's offset and leaves the file unchanged", async () => {
    const written = await writeLog(100, 11);
    const random = seededRandom(12);
    for (let n = 0; n < 300; n++) {
      const k = randomInt(random, 0, written.records.length - 1);
      const start = written.offsets[k]!;
      const position = randomInt(random, start, written.offsets[k + 1]!);
      const image = written.image.slice();
      image[position] = image[position]! ^ randomInt(random, 1, 256);
      writeFileSync(written.path, image);

      expectCorruption(written.path, start, /./);
      expect(new Uint8Array(readFileSync(written.path))).toEqual(image);
    }
  });

  test("every kind of header and payload damage is named in the error", async () => {
    const written = await writeLog(5, 13);
    const start = written.offsets[1]!;
    const cases: [number, RegExp][] = [
      [start, /bad magic/],
      [start + 4, /header checksum mismatch/],
      [start + 8, /header checksum mismatch/],
      [start + 16, /header checksum mismatch/],
      [start + 20, /header checksum mismatch/],
      [start + RECORD_HEADER_BYTES, /payload checksum mismatch/],
    ];
    for (const [position, reason] of cases) {
      const image = written.image.slice();
      image[position] = image[position]! ^ 0x40;
      writeFileSync(written.path, image);
      expectCorruption(written.path, start, reason);
    }
  });

  test("a sequence gap before a valid record is corruption at the record after the gap", () => {
    const path = join(temp.make(), "log");
    const { image, offsets } = buildImage([0, 1, 3, 4].map((seq) => ({ seq, payload: objectPayload(seq) })));
    writeFileSync(path, image);
    expectCorruption(path, offsets[2]!, /sequence gap: expected 2, found 3/);
    expect(readFileSync(path).equals(image)).toBe(true);
  });

  test("a repeated sequence number is corruption", () => {
    const path = join(temp.make(), "log");
    const { image, offsets } = buildImage([0, 1, 1, 2].map((seq) => ({ seq, payload: objectPayload(seq) })));
    writeFileSync(path, image);
    expectCorruption(path, offsets[2]!, /sequence gap: expected 2, found 1/);
  });

  test("a sequence gap in the last record, with nothing valid after it, is dropped as a torn tail", async () => {
    const path = join(temp.make(), "log");
    const { image, offsets } = buildImage([0, 1, 2, 5].map((seq) => ({ seq, payload: objectPayload(seq) })));
    writeFileSync(path, image);
    const { log, records, recovery } = AppendLog.open(path);
    expect(records).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }]);
    expect(recovery.truncatedAt).toBe(offsets[3]!);
    expect(recovery.truncationReason).toMatch(/sequence gap/);
    await log.close();
  });

  test("the first record sets the sequence base", async () => {
    const path = join(temp.make(), "log");
    writeFileSync(path, buildImage([7, 8, 9].map((seq) => ({ seq, payload: objectPayload(seq) }))).image);
    const { log, records } = AppendLog.open(path);
    expect(records).toEqual([{ i: 7 }, { i: 8 }, { i: 9 }]);
    log.append({ i: 10 });
    await log.close();
    expect(sequencesOf(path)).toEqual([7, 8, 9, 10]);
  });

  test("a payload with good checksums that is not msgpack of an object is corruption", () => {
    const undecodable = [new Uint8Array([0xc1]), encode([1, 2, 3]), encode(42), encode({ a: 1 }).subarray(0, 3)];
    for (const payload of undecodable) {
      const path = join(temp.make(), "log");
      const { image, offsets } = buildImage([
        { seq: 0, payload: objectPayload(0) },
        { seq: 1, payload },
        { seq: 2, payload: objectPayload(2) },
      ]);
      writeFileSync(path, image);
      expectCorruption(path, offsets[1]!, /undecodable payload/);
    }
  });

  test("a header claiming a payload over the limit is never believed", () => {
    const path = join(temp.make(), "log");
    const first = buildImage([{ seq: 0, payload: objectPayload(0) }]).image;
    const header = new Uint8Array(RECORD_HEADER_BYTES);
    const view = new DataView(header.buffer);
    view.setUint32(0, RECORD_MAGIC, true);
    view.setUint32(4, RECORD_PAYLOAD_BYTES_MAX + 8, true);
    view.setBigUint64(8, 1n, true);
    view.setUint32(20, crc32(header.subarray(0, 20)), true);
    const next = buildImage([{ seq: 2, payload: objectPayload(2) }]).image;
    writeFileSync(path, new Uint8Array([...first, ...header, ...next]));
    expectCorruption(path, first.length, /over the limit/);
  });

  test("appending a payload over the size limit throws RangeError naming the file and leaves the log usable", async () => {
    const path = join(temp.make(), "log");
    const { log } = AppendLog.open(path);
    expect(() => log.append({ blob: new Uint8Array(RECORD_PAYLOAD_BYTES_MAX) })).toThrow(RangeError);
    expect(() => log.append({ blob: new Uint8Array(RECORD_PAYLOAD_BYTES_MAX) })).toThrow(path);
    expect(log.recordCount).toBe(0);
    log.append({ small: 1 });
    await log.close();
    expect(AppendLog.open(path).records).toEqual([{ small: 1 }]);
  });

  test("an unreadable location fails with an error naming the file", () => {
    const path = join(temp.make(), "missing-dir", "log");
    expect(() => AppendLog.open(path)).toThrow(`log ${path}: cannot open`);
  });
});
