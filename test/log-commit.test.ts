import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { AppendLog, RECORD_PAYLOAD_BYTES_MAX } from "../engine/log/append-log.ts";
import { ProbeIo, randomInt, seededRandom, TempDirs } from "./log-helpers.ts";

const temp = new TempDirs();
afterEach(() => temp.removeAll());

function newLogPath(): string {
  return join(temp.make(), "log");
}

/** Starts `count` committers, each appending one record and waiting for its commit. */
function commitConcurrently(log: AppendLog, count: number, from = 0): Promise<void[]> {
  return Promise.all(
    Array.from({ length: count }, async (_, k) => {
      log.append({ i: from + k });
      await log.commit();
    }),
  );
}

function range(from: number, to: number): { i: number }[] {
  return Array.from({ length: to - from }, (_, k) => ({ i: from + k }));
}

describe("group commit", () => {
  test("100 concurrent append+commit calls in one tick share one write and one fdatasync", async () => {
    const io = new ProbeIo();
    const { log } = AppendLog.open(newLogPath(), { io });
    await commitConcurrently(log, 100);
    expect(io.syncs).toBe(1);
    expect(io.writes).toBe(1);
    expect(log.stats).toEqual({ commitBatches: 1, syncs: 1 });
    await log.close();
  });

  test("commits arriving while a fdatasync is in flight are all covered by the next one", async () => {
    const io = new ProbeIo();
    const path = newLogPath();
    const { log } = AppendLog.open(path, { io });
    const hold = io.holdNextSync();
    const first = commitConcurrently(log, 1);
    await hold.started;
    const rest = commitConcurrently(log, 99, 1);
    hold.release();
    await Promise.all([first, rest]);
    expect(io.syncs).toBe(2);
    expect(io.writes).toBe(2);
    await log.close();
    expect(AppendLog.open(path).records).toEqual(range(0, 100));
  });

  test("records appended while a commit is in flight, with no commit waiting for them, stay buffered until one does", async () => {
    const io = new ProbeIo();
    const path = newLogPath();
    const { log } = AppendLog.open(path, { io });
    const hold = io.holdNextSync();
    log.append({ i: 0 });
    const first = log.commit();
    await hold.started;
    log.append({ i: 1 }); // nobody commits it yet
    hold.release();
    await first;
    await new Promise((resolve) => setImmediate(resolve)); // a flush the finished one would start begins on a microtask
    expect(io.writes).toBe(1);
    expect(log.durableRecords).toBe(1);
    await log.commit();
    expect(io.writes).toBe(2);
    expect(log.durableRecords).toBe(2);
    await log.close();
    expect(AppendLog.open(path).records).toEqual(range(0, 2));
  });

  test("commit resolves only after fdatasync completes, and another AppendLog then sees the data", async () => {
    const io = new ProbeIo();
    const path = newLogPath();
    const { log } = AppendLog.open(path, { io });
    const hold = io.holdNextSync();
    log.append({ i: 0 });
    let committed = false;
    const commit = log.commit().then(() => {
      committed = true;
    });
    await hold.started;
    expect(committed).toBe(false);
    hold.release();
    await commit;
    expect(committed).toBe(true);
    const other = AppendLog.open(path);
    expect(other.records).toEqual([{ i: 0 }]);
    await other.log.close();
    await log.close();
  });

  test("commit with nothing new appended resolves without touching the disk", async () => {
    const io = new ProbeIo();
    const { log } = AppendLog.open(newLogPath(), { io });
    await log.commit();
    log.append({ i: 0 });
    await log.commit();
    await log.commit();
    expect(io.syncs).toBe(1);
    await log.close();
  });

  test("sizeBytes and recordCount include appends not yet committed", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    log.append({ i: 0 });
    log.append({ i: 1 });
    expect(log.recordCount).toBe(2);
    const size = log.sizeBytes;
    expect(size).toBeGreaterThan(0);
    expect(statSync(path).size).toBe(0);
    await log.commit();
    expect(log.sizeBytes).toBe(size);
    expect(statSync(path).size).toBe(size);
    await log.close();
  });

  test("a failed fdatasync fails the waiting commit and every later one, naming the file; reopen recovers", async () => {
    const io = new ProbeIo();
    const path = newLogPath();
    const { log } = AppendLog.open(path, { io });
    log.append({ i: 0 });
    await log.commit();
    io.failNextSync(new Error("EIO: injected"));
    log.append({ i: 1 });
    const failing = log.commit();
    await expect(failing).rejects.toThrow(`log ${path}: commit failed`);
    await expect(failing).rejects.toThrow("EIO: injected");
    await expect(log.commit()).rejects.toThrow(`log ${path}: commit failed`);
    expect(() => log.append({ i: 2 })).toThrow(`log ${path}`);
    await expect(log.close()).rejects.toThrow("not durable");
    const reopened = AppendLog.open(path);
    expect(reopened.records.slice(0, 1)).toEqual([{ i: 0 }]);
    await reopened.log.close();
  });

  test("close commits what was appended", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    log.append({ i: 0 });
    await log.close();
    expect(AppendLog.open(path).records).toEqual([{ i: 0 }]);
  });
});

describe("compaction", () => {
  test("keeps exactly the given records, shrinks the file, and appends after it survive reopen", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    for (let i = 0; i < 1000; i++) log.append({ i, filler: "x".repeat(100) });
    await log.commit();
    const before = statSync(path).size;
    const live = range(0, 10);
    await log.compact(live);
    expect(statSync(path).size).toBeLessThan(before / 10);
    expect(log.sizeBytes).toBe(statSync(path).size);
    expect(log.recordCount).toBe(10);
    expect(existsSync(`${path}.compact`)).toBe(false);
    log.append({ i: 10 });
    await log.commit();
    await log.close();
    const reopened = AppendLog.open(path);
    expect(reopened.records).toEqual(range(0, 11));
    await reopened.log.close();
  });

  test("appends made during compaction are kept after the snapshot", async () => {
    const io = new ProbeIo();
    const path = newLogPath();
    const { log } = AppendLog.open(path, { io });
    for (let i = 0; i < 100; i++) log.append({ i });
    await log.commit();
    const hold = io.holdNextSync(); // the .compact file's fdatasync
    const compaction = log.compact(range(50, 100));
    await hold.started;
    const during = commitConcurrently(log, 5, 100);
    hold.release();
    await Promise.all([compaction, during]);
    await log.close();
    expect(AppendLog.open(path).records).toEqual(range(50, 105));
  });

  test("appends made before compaction and not yet committed are committed first", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    log.append({ i: 0 });
    const commit = log.commit();
    const compaction = log.compact([{ i: 0 }]);
    await Promise.all([commit, compaction]);
    await log.close();
    expect(AppendLog.open(path).records).toEqual([{ i: 0 }]);
  });

  test("a leftover .compact file from a crash is deleted at open and the log is intact", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    log.append({ i: 0 });
    await log.close();
    writeFileSync(`${path}.compact`, "half-written compaction");
    const reopened = AppendLog.open(path);
    expect(reopened.records).toEqual([{ i: 0 }]);
    expect(reopened.recovery.removedCompactFile).toBe(true);
    expect(existsSync(`${path}.compact`)).toBe(false);
    await reopened.log.close();
  });

  test("a failed compaction leaves the log unchanged and usable", async () => {
    const io = new ProbeIo();
    const path = newLogPath();
    const { log } = AppendLog.open(path, { io });
    log.append({ i: 0 });
    await log.commit();
    io.failNextSync(new Error("ENOSPC: injected"));
    await expect(log.compact([])).rejects.toThrow(`log ${path}: compaction failed, log unchanged`);
    expect(existsSync(`${path}.compact`)).toBe(false);
    log.append({ i: 1 });
    await log.close();
    expect(AppendLog.open(path).records).toEqual(range(0, 2));
  });

  test("a snapshot record over the size limit rejects the compaction before touching the files", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    log.append({ i: 0 });
    await log.commit();
    const huge = { blob: new Uint8Array(RECORD_PAYLOAD_BYTES_MAX) };
    await expect(log.compact([{ i: 0 }, huge])).rejects.toThrow(RangeError);
    expect(existsSync(`${path}.compact`)).toBe(false);
    await log.close();
    expect(AppendLog.open(path).records).toEqual([{ i: 0 }]);
  });

  test("sequence numbers continue across compaction", async () => {
    const path = newLogPath();
    const { log } = AppendLog.open(path);
    for (let i = 0; i < 5; i++) log.append({ i });
    await log.compact([{ i: 4 }]);
    log.append({ i: 5 });
    await log.close();
    const image = new Uint8Array(readFileSync(path));
    // The compacted file's first record takes the next number after the old file's last (4).
    expect(new DataView(image.buffer).getBigUint64(8, true)).toBe(5n);
    expect(AppendLog.open(path).records).toEqual([{ i: 4 }, { i: 5 }]);
  });
});

const CHILD_SCRIPT = `
import { AppendLog } from ${JSON.stringify(resolve(import.meta.dir, "../engine/log/append-log.ts"))};

const WORKERS = 8;
const COMPACT_EVERY = 200;
const { log, records } = AppendLog.open(process.argv[2]);
const live = [...records];
let next = live.reduce((max, r) => Math.max(max, r.i + 1), 0);
let commits = 0;

async function worker() {
  for (;;) {
    const record = { i: next++, filler: "f".repeat(next % 300) };
    live.push(record);
    log.append(record);
    await log.commit();
    process.stdout.write(record.i + "\\n");
    if (++commits % COMPACT_EVERY === 0) await log.compact(live.slice());
  }
}
await Promise.all(Array.from({ length: WORKERS }, worker));
`;

/** Reads complete lines from a child's stdout until `enough` lines arrived or the stream ended. */
async function readLines(stream: ReadableStream<Uint8Array>, enough: number, lines: string[]): Promise<void> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let partial = "";
  try {
    while (lines.length < enough) {
      const { value, done } = await reader.read();
      if (done) return;
      const parts = (partial + decoder.decode(value, { stream: true })).split("\n");
      partial = parts.pop()!; // only lines ending in \n are complete reports
      lines.push(...parts);
    }
  } finally {
    reader.releaseLock();
  }
}

describe("crash safety", () => {
  test("after kill -9 of a committing process at an arbitrary moment, every reported commit is present", async () => {
    const dir = temp.make();
    const script = join(dir, "committer.ts");
    const path = join(dir, "log");
    writeFileSync(script, CHILD_SCRIPT);
    const random = seededRandom(42);
    const reported = new Set<number>();

    for (let round = 0; round < 4; round++) {
      const child = Bun.spawn([process.execPath, script, path], { stdout: "pipe", stderr: "pipe" });
      const lines: string[] = [];
      try {
        await readLines(child.stdout, randomInt(random, 50, 1500), lines);
        child.kill("SIGKILL");
      } finally {
        child.kill("SIGKILL");
        await child.exited;
      }
      const stderr = await new Response(child.stderr).text();
      expect(stderr).toBe("");
      expect(child.signalCode).toBe("SIGKILL");
      for (const line of lines) reported.add(Number(line));

      const { log, records } = AppendLog.open(path);
      await log.close();
      const present = records.map((record) => (record as { i: number }).i);
      expect(new Set(present).size).toBe(present.length);
      const missing = [...reported].filter((i) => !present.includes(i));
      expect(missing).toEqual([]);
    }
    expect(reported.size).toBeGreaterThan(200);
  });
});
