// The agent's side of R2, R5 and R6, through its real interfaces: a real `ctl agent` process, a
// stand-in controller on the control socket that sends commands and answers faults as the test
// says, and a real NBD client doing the I/O.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { openSync, readSync, closeSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { reapAll, run, tempDir } from "./helpers/processes.ts";
import { nbdPython } from "./helpers/nbd-clients.ts";
import { startStandIn, type Fault, type StandIn } from "./helpers/stand-in-controller.ts";
import { RemoteError } from "../engine/wire/peer.ts";
import { ENTRY_NO_WRITE, ENTRY_VALID, ENTRY_ZERO, ERROR_WORD, ZERO_WORD, mappedWord } from "../wasm/entry.ts";

const SEGMENT = 65536;
const CONTAINER = 3;
const DISK = 7;
const dir = tempDir("agent-commands");
const containerPath = join(dir.path, "container.img");

let standIn: StandIn;
const faults = (): Fault[] => standIn.faults;

/** Container block i (64 KiB) is filled with byte i + 1. */
function blockByte(block: number): number {
  return (block + 1) % 256;
}

function containerBytes(offset: number, length: number): Buffer {
  const fd = openSync(containerPath, "r");
  const buffer = Buffer.alloc(length);
  readSync(fd, buffer, 0, length, offset);
  closeSync(fd);
  return buffer;
}

const command: StandIn["command"] = (op, args) => standIn.command(op, args);

beforeAll(async () => {
  const blocks = 64;
  const image = Buffer.alloc(blocks * SEGMENT);
  for (let block = 0; block < blocks; block += 1) image.fill(blockByte(block), block * SEGMENT, (block + 1) * SEGMENT);
  writeFileSync(containerPath, image);
  standIn = await startStandIn(dir.path);
  await command("add_container", { id: CONTAINER, path: containerPath });
  await command("new_table", { disk: DISK, name: "t", size: 64 * SEGMENT, segmentShift: 16, readOnly: false });
});

afterAll(async () => {
  await standIn?.stop();
  await reapAll();
  dir.remove();
});

async function read(offset: number, length: number): Promise<string> {
  return (
    await nbdPython(
      `nbd+unix:///t?socket=${standIn.nbdSocket}`,
      `try:\n    d = h.pread(${length}, ${offset})\n    print("ok", d[0], d[-1], len(set(d)))\nexcept nbd.Error as e:\n    print(__import__("errno").errorcode.get(e.errnum, e.string))`,
    )
  ).trim();
}

async function write(offset: number, byte: number, length = 4096): Promise<string> {
  return (
    await nbdPython(
      `nbd+unix:///t?socket=${standIn.nbdSocket}`,
      `try:\n    h.pwrite(bytes([${byte}]) * ${length}, ${offset})\n    print("ok")\nexcept nbd.Error as e:\n    print(__import__("errno").errorcode.get(e.errnum, e.string))`,
    )
  ).trim();
}

describe("agent commands and faults", () => {
  test("new_table exports the disk under its name, all Invalid", async () => {
    const listed = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${standIn.nbdSocket}`]);
    expect(JSON.parse(listed.stdout).exports).toMatchObject([{ "export-name": "t", "export-size": 64 * SEGMENT }]);
    const words = await command("get_entry", { disk: DISK, first: 0, count: 4 });
    expect(words.words).toEqual([0, 0, 0, 0]);
  });

  test("a read through an Invalid entry faults naming op, disk, segment and state; the answer's entry is used", async () => {
    faults().length = 0;
    standIn.answerFault = (fault) => ({ action: "retry", first: fault.first, runs: [[mappedWord(CONTAINER, 5 * SEGMENT), 1]] });
    expect(await read(100, 1000)).toBe(`ok ${blockByte(5)} ${blockByte(5)} 1`);
    expect(faults()).toEqual([{ disk: DISK, op: "read", first: 0, last: 0, state: 0, offset: 100, length: 1000 }]);
    expect((await command("get_entry", { disk: DISK, first: 0, count: 1 })).words).toEqual([mappedWord(CONTAINER, 5 * SEGMENT)]);
    faults().length = 0;
    expect(await read(0, SEGMENT)).toBe(`ok ${blockByte(5)} ${blockByte(5)} 1`);
    expect(faults()).toEqual([]);
  });

  test("a request spanning several Invalid segments faults once, naming the first and last", async () => {
    faults().length = 0;
    standIn.answerFault = (fault) => ({
      action: "retry",
      first: fault.first,
      runs: Array.from({ length: fault.last - fault.first + 1 }, (_, i) => [mappedWord(CONTAINER, (10 + i) * SEGMENT), 1] as [number, number]),
    });
    expect(await read(4 * SEGMENT + 10, 2 * SEGMENT)).toBe(`ok ${blockByte(10)} ${blockByte(12)} 3`);
    expect(faults()).toHaveLength(1);
    expect(faults()[0]).toMatchObject({ op: "read", first: 4, last: 6, state: 0 });
  });

  test("Z: reads are zeros without a fault; a write faults and the controller's error reaches the host", async () => {
    await command("set_entry", { disk: DISK, first: 20, runs: [[ZERO_WORD, 2]], blocking: false });
    faults().length = 0;
    expect(await read(20 * SEGMENT, 2 * SEGMENT)).toBe("ok 0 0 1");
    expect(faults()).toEqual([]);
    standIn.answerFault = () => ({ action: "error", errno: "ENOSPC" });
    expect(await write(21 * SEGMENT + 4096, 0xee)).toBe("ENOSPC");
    expect(faults()).toEqual([{ disk: DISK, op: "write", first: 21, last: 21, state: ENTRY_VALID | ENTRY_ZERO, offset: 21 * SEGMENT + 4096, length: 4096 }]);
    expect(await read(21 * SEGMENT, SEGMENT)).toBe("ok 0 0 1");
  });

  test("E: every I/O gets EIO with no fault, and set_entry replaces it", async () => {
    await command("set_entry", { disk: DISK, first: 30, runs: [[mappedWord(CONTAINER, 30 * SEGMENT), 1]], blocking: false });
    await command("set_entry_state", { disk: DISK, first: 30, count: 1, set: ["error"], clear: [], blocking: true });
    expect((await command("get_status", { disk: DISK, first: 30, count: 1 })).states).toEqual([ERROR_WORD]);
    faults().length = 0;
    expect(await read(30 * SEGMENT, 512)).toBe("EIO");
    expect(await write(30 * SEGMENT, 1)).toBe("EIO");
    expect(faults()).toEqual([]);
    await command("set_entry", { disk: DISK, first: 30, runs: [[mappedWord(CONTAINER, 30 * SEGMENT), 1]], blocking: true });
    expect(await read(30 * SEGMENT, 512)).toBe(`ok ${blockByte(30)} ${blockByte(30)} 1`);
  });

  test("a storage I/O that fails gets EIO and is reported to the controller (R14)", async () => {
    const missing = 9;
    await command("add_container", { id: missing, path: join(dir.path, "no-such-container.img") });
    await command("set_entry", { disk: DISK, first: 40, runs: [[mappedWord(missing, 0), 1]], blocking: false });
    const reported = new Promise((resolve) => (standIn.onStorageError = resolve));
    expect(await read(40 * SEGMENT, 512)).toBe("EIO");
    expect(await reported).toEqual({ container: missing, message: expect.stringContaining("no-such-container.img") });
    // Other segments are unaffected.
    expect(await read(0, 512)).toBe(`ok ${blockByte(5)} ${blockByte(5)} 1`);
  });

  test("Nw: reads go to storage, a write faults and lands only after the controller clears Nw", async () => {
    const location = 40 * SEGMENT;
    await command("set_entry", { disk: DISK, first: 40, runs: [[mappedWord(CONTAINER, location, true), 1]], blocking: false });
    faults().length = 0;
    expect(await read(40 * SEGMENT, SEGMENT)).toBe(`ok ${blockByte(40)} ${blockByte(40)} 1`);
    expect(faults()).toEqual([]);
    let containerDuringFault: Buffer | null = null;
    standIn.answerFault = (fault) => {
      containerDuringFault = containerBytes(location, 4096);
      return { action: "retry", first: fault.first, runs: [[mappedWord(CONTAINER, location), 1]] };
    };
    expect(await write(40 * SEGMENT, 0x77)).toBe("ok");
    expect(faults()).toMatchObject([{ op: "write", first: 40, last: 40, state: ENTRY_VALID | ENTRY_NO_WRITE }]);
    // The agent did not write while the entry said Nw; it wrote after the retry.
    expect(containerDuringFault!.every((byte) => byte === blockByte(40))).toBe(true);
    expect(containerBytes(location, 4096).every((byte) => byte === 0x77)).toBe(true);
  });

  test("set_entry_state sets and clears Nw over a range in one command", async () => {
    await command("set_entry", { disk: DISK, first: 50, runs: [[mappedWord(CONTAINER, 50 * SEGMENT), 1], [mappedWord(CONTAINER, 51 * SEGMENT), 1]], blocking: false });
    await command("set_entry_state", { disk: DISK, first: 50, count: 2, set: ["nw"], clear: [], blocking: true });
    expect((await command("get_status", { disk: DISK, first: 50, count: 2 })).states).toEqual([ENTRY_VALID | ENTRY_NO_WRITE, ENTRY_VALID | ENTRY_NO_WRITE]);
    await command("set_entry_state", { disk: DISK, first: 50, count: 2, set: [], clear: ["nw"], blocking: false });
    expect((await command("get_status", { disk: DISK, first: 50, count: 2 })).states).toEqual([ENTRY_VALID, ENTRY_VALID]);
  });

  test("a fault's answer that arrives after a newer change to its entry is not applied: the write faults again", async () => {
    await command("set_entry", { disk: DISK, first: 44, runs: [[ZERO_WORD, 1]], blocking: false });
    faults().length = 0;
    const answered = mappedWord(CONTAINER, 44 * SEGMENT);
    const snapshotted = mappedWord(CONTAINER, 45 * SEGMENT, true);
    const final = mappedWord(CONTAINER, 46 * SEGMENT);
    standIn.answerFault = (fault) => {
      if (faults().length > 1) return { action: "retry", first: fault.first, runs: [[final, 1]] };
      // The answer is numbered first; a newer change to the entry (a snapshot's No-write) is sent
      // before the answer leaves, so it arrives first.
      const answer = { action: "retry" as const, first: fault.first, runs: [[answered, 1]] as [number, number][], change: standIn.nextChange() };
      void command("set_entry", { disk: DISK, first: 44, runs: [[snapshotted, 1]], blocking: false });
      return answer;
    };
    expect(await write(44 * SEGMENT, 0x5a)).toBe("ok");
    expect(faults()).toMatchObject([
      { op: "write", first: 44, last: 44, state: ENTRY_VALID | ENTRY_ZERO },
      { op: "write", first: 44, last: 44, state: ENTRY_VALID | ENTRY_NO_WRITE },
    ]);
    // Nothing went through the older answer's entry.
    expect(containerBytes(44 * SEGMENT, 4096).every((byte) => byte === blockByte(44))).toBe(true);
    expect(containerBytes(46 * SEGMENT, 4096).every((byte) => byte === 0x5a)).toBe(true);
    expect((await command("get_entry", { disk: DISK, first: 44, count: 1 })).words).toEqual([final]);
  });

  test("a fault's answer older than a change to other entries is applied", async () => {
    await command("set_entry", { disk: DISK, first: 47, runs: [[ZERO_WORD, 2]], blocking: false });
    faults().length = 0;
    standIn.answerFault = (fault) => {
      const answer = { action: "retry" as const, first: fault.first, runs: [[mappedWord(CONTAINER, 47 * SEGMENT), 1]] as [number, number][], change: standIn.nextChange() };
      void command("set_entry", { disk: DISK, first: 48, runs: [[mappedWord(CONTAINER, 48 * SEGMENT, true), 1]], blocking: false });
      return answer;
    };
    expect(await write(47 * SEGMENT, 0x5b)).toBe("ok");
    expect(faults()).toHaveLength(1);
    expect(containerBytes(47 * SEGMENT, 4096).every((byte) => byte === 0x5b)).toBe(true);
  });

  test("a command older than one applied to the same entries is refused; to other entries it applies", async () => {
    const older = standIn.nextChange();
    await command("set_entry", { disk: DISK, first: 49, runs: [[ZERO_WORD, 1]], blocking: false });
    const error = await command("set_entry_state", { disk: DISK, first: 49, count: 1, set: ["invalid"], clear: [], blocking: false, change: older }).then(
      () => null,
      (e: Error) => e,
    );
    expect(error).toBeInstanceOf(RemoteError);
    expect((error as RemoteError).code).toBe("ESTALE");
    expect((await command("get_entry", { disk: DISK, first: 49, count: 1 })).words).toEqual([ZERO_WORD]);
    await command("set_entry", { disk: DISK, first: 52, runs: [[ZERO_WORD, 1]], blocking: false, change: older });
    expect((await command("get_entry", { disk: DISK, first: 52, count: 1 })).words).toEqual([ZERO_WORD]);
  });

  test("set_entry_state invalid makes the next I/O fault again (the Invalid alternative of step 325)", async () => {
    await command("set_entry_state", { disk: DISK, first: 0, count: 64, set: ["invalid"], clear: [], blocking: true });
    faults().length = 0;
    standIn.answerFault = (fault) => ({ action: "retry", first: fault.first, runs: [[mappedWord(CONTAINER, 7 * SEGMENT), 1]] });
    expect(await read(0, 512)).toBe(`ok ${blockByte(7)} ${blockByte(7)} 1`);
    expect(faults()).toMatchObject([{ op: "read", first: 0, last: 0, state: 0 }]);
  });

  test("bad commands get an error answer and the agent keeps serving", async () => {
    const refused = async (promise: Promise<unknown>, code: string) => {
      const error = await promise.then(() => null, (e: Error) => e);
      expect(error).toBeInstanceOf(RemoteError);
      expect((error as RemoteError).code).toBe(code);
    };
    await refused(command("set_entry", { disk: DISK, first: 63, runs: [[ZERO_WORD, 2]], blocking: false }), "EINVAL");
    await refused(command("get_entry", { disk: 99, first: 0, count: 1 }), "NOT_FOUND");
    await refused(command("set_entry_state", { disk: DISK, first: 60, count: 10, set: ["nw"], clear: [], blocking: false }), "EINVAL");
    await refused(command("new_table", { disk: 8, name: "bad", size: 0, segmentShift: 16, readOnly: false }), "EINVAL");
    expect(await read(0, 512)).toMatch(/^ok /);
  });

  test("delete_table removes the export", async () => {
    await command("delete_table", { disk: DISK, blocking: true });
    const listed = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${standIn.nbdSocket}`]);
    expect(JSON.parse(listed.stdout).exports ?? []).toEqual([]);
  });
});
