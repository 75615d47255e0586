// The agent's storage path (agent/storage.ts): transfers on the calling thread and on the I/O
// thread pool give the same bytes, report failures the same way, and a container whose file
// changes keeps its old descriptor open until the pool transfers on it are done; once the lease has
// run out nothing is read or written.
import { afterAll, expect, test } from "bun:test";
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ContainerFiles } from "../agent/storage.ts";
import { NbdError } from "../agent/nbd/backend.ts";
import { tempDir } from "./helpers/processes.ts";

const MIB = 2 ** 20;
const LEASE_LIVE = { valid: () => true };
const dir = tempDir("container-files");
afterAll(() => dir.remove());

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i += 1) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}

/** Paths of this process's open descriptors. */
function openPaths(): string[] {
  return readdirSync("/proc/self/fd").flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/self/fd/${fd}`)];
    } catch {
      return []; // closed between the listing and the look
    }
  });
}

test("pool and thread transfers write and read the same bytes; past the end reads as zeros", async () => {
  const path = join(dir.path, "a.img");
  writeFileSync(path, new Uint8Array(2 * MIB));
  const files = new ContainerFiles(() => {}, LEASE_LIVE);
  files.update([{ id: 1, path, epoch: 1 }]);
  const data = pattern(MIB, 7);
  await files.writeOnPool(1, data, 0, MIB, MIB);
  files.write(1, data, 0, 4096, 0);
  expect(readFileSync(path).subarray(MIB)).toEqual(Buffer.from(data));

  const back = new Uint8Array(MIB);
  await files.readOnPool(1, back, 0, MIB, MIB);
  expect(Buffer.from(back)).toEqual(Buffer.from(data));
  const start = new Uint8Array(4096);
  files.read(1, start, 0, 4096, 0);
  expect(Buffer.from(start)).toEqual(Buffer.from(data.subarray(0, 4096)));

  // The file is 2 MiB: a read that runs past its end gets zeros for the rest (sparse containers).
  const tail = new Uint8Array(MIB).fill(0xee);
  await files.readOnPool(1, tail, 0, MIB, MIB + MIB / 2);
  expect(Buffer.from(tail.subarray(0, MIB / 2))).toEqual(Buffer.from(data.subarray(MIB / 2)));
  expect(tail.subarray(MIB / 2).every((byte) => byte === 0)).toBe(true);
  files.close();
});

test("a failing pool transfer is an EIO NbdError and is reported, like a failing thread transfer", async () => {
  const reported: string[] = [];
  const files = new ContainerFiles((container, message) => reported.push(`${container}: ${message}`), LEASE_LIVE);
  files.update([{ id: 3, path: "/dev/full", epoch: 1 }]); // every write fails with ENOSPC
  const data = pattern(MIB, 1);
  const failure = await files.writeOnPool(3, data, 0, MIB, 0).catch((error: unknown) => error);
  expect(failure).toBeInstanceOf(NbdError);
  expect((failure as NbdError).errno).toBe("EIO");
  expect(() => files.write(3, data, 0, 4096, 0)).toThrow(NbdError);
  expect(reported).toHaveLength(2);
  expect(reported.every((line) => line.startsWith("3: "))).toBe(true);

  const unknown = await files.readOnPool(9, new Uint8Array(MIB), 0, MIB, 0).catch((error: unknown) => error);
  expect((unknown as NbdError).errno).toBe("EIO");
  files.close();
});

test("a container moved while pool transfers run keeps its old descriptor until they are done", async () => {
  const before = join(dir.path, "before.img");
  const after = join(dir.path, "after.img");
  writeFileSync(before, new Uint8Array(8 * MIB));
  writeFileSync(after, new Uint8Array(8 * MIB));
  const files = new ContainerFiles(() => {}, LEASE_LIVE);
  files.update([{ id: 1, path: before, epoch: 1 }]);
  const data = pattern(MIB, 3);
  const transfers = [0, 1, 2, 3].map((i) => files.writeOnPool(1, data, 0, MIB, i * MIB));
  files.update([{ id: 1, path: after, epoch: 2 }]);
  expect(openPaths()).toContain(before); // still in use by the transfers in flight
  await Promise.all(transfers);
  expect(openPaths()).not.toContain(before);
  const written = readFileSync(before);
  for (let i = 0; i < 4; i += 1) expect(written.subarray(i * MIB, (i + 1) * MIB)).toEqual(Buffer.from(data));

  // New transfers go to the new file.
  await files.writeOnPool(1, data, 0, MIB, 0);
  expect(readFileSync(after).subarray(0, MIB)).toEqual(Buffer.from(data));
  files.close();
  expect(openPaths()).not.toContain(after);
});

test("once the lease has run out, no transfer is made or handed to the pool: EIO, and the container is not blamed", async () => {
  const path = join(dir.path, "lease.img");
  writeFileSync(path, pattern(2 * MIB, 5));
  const reported: string[] = [];
  let live = true;
  const files = new ContainerFiles((container, message) => reported.push(`${container}: ${message}`), { valid: () => live });
  files.update([{ id: 1, path, epoch: 1 }]);
  const data = new Uint8Array(MIB).fill(0xaa);
  files.write(1, data, 0, 4096, 0);
  live = false;
  for (const attempt of [
    () => files.write(1, data, 0, 4096, 4096),
    () => files.writeOnPool(1, data, 0, MIB, MIB),
    () => files.read(1, new Uint8Array(4096), 0, 4096, 0),
    () => files.readOnPool(1, new Uint8Array(MIB), 0, MIB, 0),
  ]) {
    const failure = await Promise.resolve().then(attempt).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(NbdError);
    expect((failure as NbdError).errno).toBe("EIO");
    expect((failure as Error).message).toContain("lease has expired");
  }
  const on = readFileSync(path);
  expect(on.subarray(0, 4096).every((byte) => byte === 0xaa)).toBe(true);
  expect(on.subarray(4096)).toEqual(Buffer.from(pattern(2 * MIB, 5).subarray(4096)));
  expect(reported).toEqual([]);
  files.close();
});
