// A thin disk through `ctl up`, checked with real NBD clients (acceptance of the foundation).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { reapAll, run, tempDir } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { nbdMap, nbdPython } from "./helpers/nbd-clients.ts";

const TIB = 2 ** 40;
const MIB = 2 ** 20;
const dir = tempDir("disk-export");
let system: UpSystem;

beforeAll(async () => {
  system = await startUp({ dir: dir.path, lunSize: "2G" });
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

describe("thin disks over NBD", () => {
  test("nbdinfo --list shows every export with its size", async () => {
    await system.createDisk("list-a", "1G");
    await system.createDisk("list-b", "3M", ["--segment-size", "64K"]);
    const listed = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${system.nbdSocket}`]);
    expect(listed.code).toBe(0);
    const exports = JSON.parse(listed.stdout).exports as { "export-name": string; "export-size": number }[];
    const sizes = Object.fromEntries(exports.map((e) => [e["export-name"], e["export-size"]]));
    expect(sizes["list-a"]).toBe(2 ** 30);
    expect(sizes["list-b"]).toBe(3 * MIB);
  });

  test("a new 1 TiB disk maps as one hole+zero extent; a 4 KiB write makes exactly its segment data", async () => {
    const uri = await system.createDisk("tera", "1T");
    expect(await nbdMap(uri)).toEqual([{ offset: 0, length: TIB, type: 3, description: "hole,zero" }]);

    const at = 700 * 2 ** 30 + 12 * 1024;
    await nbdPython(uri, `h.pwrite(b"\\x5a" * 4096, ${at})\nh.flush()`);
    const segmentStart = Math.floor(at / MIB) * MIB;
    expect(await nbdMap(uri)).toEqual([
      { offset: 0, length: segmentStart, type: 3, description: "hole,zero" },
      { offset: segmentStart, length: MIB, type: 0, description: "data" },
      { offset: segmentStart + MIB, length: TIB - segmentStart - MIB, type: 3, description: "hole,zero" },
    ]);
    const info = await system.ctl(["disk", "info", "tera", "--json"]);
    expect(JSON.parse(info.stdout).allocatedBytes).toBe(MIB);
    // The rest of the written segment reads as zeros; the written part reads back.
    const check = await nbdPython(uri, `print(h.pread(${MIB}, ${segmentStart}).count(0x5a), h.pread(${MIB}, ${segmentStart}).count(0))`);
    expect(check.trim()).toBe(`4096 ${MIB - 4096}`);
  });

  test("a 64 TiB disk costs kilobytes: instant creation, one extent, a small log", async () => {
    const logBefore = Bun.file(join(system.data, "controller.log")).size;
    const uri = await system.createDisk("huge", "64T");
    const size = 64 * TIB;
    expect(await nbdMap(uri)).toEqual([{ offset: 0, length: size, type: 3, description: "hole,zero" }]);
    await nbdPython(uri, `h.pwrite(b"\\x01" * 4096, ${size - 4096})\nh.flush()`);
    const map = await nbdMap(uri);
    expect(map.at(-1)).toEqual({ offset: size - MIB, length: MIB, type: 0, description: "data" });
    expect(Bun.file(join(system.data, "controller.log")).size - logBefore).toBeLessThan(4096);
    expect((await nbdPython(uri, `print(h.pread(4096, ${size - 4096}) == b"\\x01" * 4096)`)).trim()).toBe("True");
  });

  test("nbdcopy of a 256 MiB random file onto a disk and back is byte-identical; qemu-img compare agrees", async () => {
    const uri = await system.createDisk("copy", "256M");
    const source = join(dir.path, "source.bin");
    const back = join(dir.path, "back.bin");
    writeFileSync(source, randomBytes(256 * MIB));
    const copied = await run(["nbdcopy", source, uri]);
    expect(copied.stderr).toBe("");
    expect(copied.code).toBe(0);
    const fetched = await run(["nbdcopy", uri, back]);
    expect(fetched.code).toBe(0);
    expect(Buffer.compare(readFileSync(source), readFileSync(back))).toBe(0);
    const compared = await run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, uri]);
    expect(compared.stdout).toContain("Images are identical");
    expect(compared.code).toBe(0);
  });

  test("fio randwrite with crc32c verify at QD32 on two connections finds no error", async () => {
    const uri = await system.createDisk("fio", "512M");
    const result = await run([
      "fio",
      "--name=verify",
      "--ioengine=nbd",
      `--uri=${uri}`,
      "--rw=randwrite",
      "--bs=4k",
      "--iodepth=32",
      "--numjobs=2",
      "--size=128M",
      "--offset_increment=256M",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--do_verify=1",
      "--verify_state_save=0",
      "--output-format=json",
    ]);
    expect(result.code).toBe(0);
    const jobs = JSON.parse(result.stdout.slice(result.stdout.indexOf("{"))).jobs as { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[];
    expect(jobs).toHaveLength(2);
    for (const job of jobs) {
      expect(job.error).toBe(0);
      expect(job.write.io_bytes).toBe(128 * MIB);
      expect(job.read.io_bytes).toBe(128 * MIB);
    }
  });

  test("ctl disk list --json reports name, size, segment size and allocated bytes", async () => {
    const uri = await system.createDisk("acct", "8M", ["--segment-size", "64K"]);
    await nbdPython(uri, `h.pwrite(b"\\x01" * 131072, 65536)\nh.flush()`);
    const listed = await system.ctl(["disk", "list", "--json"]);
    expect(listed.code).toBe(0);
    const disk = (JSON.parse(listed.stdout) as { name: string }[]).find((d) => d.name === "acct");
    expect(disk).toMatchObject({ name: "acct", size: 8 * MIB, segmentSize: 65536, allocatedBytes: 131072 });
  });

  test("a first write costs only what it writes: never-used segments are not zeroed, reused ones are", async () => {
    const lunPath = join(system.data, "lun0.img");
    const uri = await system.createDisk("sparse-first", "64M");
    const before = statSync(lunPath).blocks * 512;
    const writes = Array.from({ length: 8 }, (_, i) => `h.pwrite(b"\\x07" * 4096, ${i * 4 * MIB + 8192})`).join("\n");
    await nbdPython(uri, `${writes}\nh.flush()`);
    // Eight 1 MiB segments were allocated, but the container grew by about the 32 KiB written.
    expect(statSync(lunPath).blocks * 512 - before).toBeLessThan(MIB);
    // Segments freed by a delete hold old data: a new disk getting them reads zeros around its write.
    await system.ctl(["disk", "delete", "sparse-first"]);
    const reuse = await system.createDisk("reuse", "64M");
    await nbdPython(reuse, `h.pwrite(b"\\x08" * 4096, 0)\nh.flush()`);
    const check = await nbdPython(reuse, `d = h.pread(${MIB}, 0)\nprint(d.count(8), d.count(0))`);
    expect(check.trim()).toBe(`4096 ${MIB - 4096}`);
  });

  test("disk delete removes the export and returns its storage to the pool", async () => {
    const uri = await system.createDisk("doomed", "4M");
    await nbdPython(uri, `h.pwrite(b"\\x02" * ${4 * MIB}, 0)\nh.flush()`);
    const before = JSON.parse((await system.ctl(["lun", "list", "--json"])).stdout)[0].usedBytes;
    const deleted = await system.ctl(["disk", "delete", "doomed"]);
    expect(deleted.code).toBe(0);
    const after = JSON.parse((await system.ctl(["lun", "list", "--json"])).stdout)[0].usedBytes;
    expect(before - after).toBe(4 * MIB);
    const listed = await run(["nbdinfo", "--list", "--json", `nbd+unix:///?socket=${system.nbdSocket}`]);
    expect(JSON.parse(listed.stdout).exports.map((e: { "export-name": string }) => e["export-name"])).not.toContain("doomed");
  });
});
