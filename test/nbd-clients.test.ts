// Positive paths with real NBD clients: libnbd (Python `nbd`, as used by nbdsh), nbdsh, nbdinfo,
// nbdcopy, qemu-img, qemu-io and fio. Each test is skipped when its tool is not installed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasLibnbdPython, hasTool, libnbd, run, runOk } from "./helpers/nbd-tools.ts";
import { pattern } from "./helpers/nbd-session.ts";
import {
  lacks,
  NBD_TARGET_KINDS,
  type NbdTarget,
  type NbdTargetKind,
  startNbdTarget,
  type TargetFeature,
  testWith,
} from "./helpers/nbd-target.ts";

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD clients [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  let target: NbdTarget;
  let dir: string;

  beforeAll(async () => {
    target = await startNbdTarget({ kind });
    dir = mkdtempSync(join(tmpdir(), "nbd-clients-"));
  });

  afterAll(async () => {
    await target?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const MIB = 1024 * 1024;

  /** `test` when the tool is installed and the target has `features` (else skipped, reason in the name). */
  const needs = (installed: boolean, ...features: TargetFeature[]) => (installed ? testWith(kind, ...features) : test.skip);

  test.skipIf(!hasTool("nbdinfo"))("nbdinfo: --list shows every export with its description", async () => {
    const out = JSON.parse(await runOk(["nbdinfo", "--list", "--json", target.uri])) as {
      protocol: string;
      exports: { "export-name": string; description?: string; "export-size": number }[];
    };
    expect(out.protocol).toBe("newstyle-fixed");
    const first = out.exports[0]!;
    expect(first["export-name"]).toBe(target.exportName);
    expect(first["export-size"]).toBe(target.sizeBytes);
    expect(out.exports.map((e) => e["export-name"])).toEqual(target.exportNames);
    // Only the fixture has descriptions: lacks(kind, "descriptions") says why.
    if (!lacks(kind, "descriptions")) expect(first.description).toBe("scratch disk");
  });

  test.skipIf(!hasTool("nbdinfo"))("nbdinfo: reports size, flags, block sizes and base:allocation", async () => {
    const out = JSON.parse(await runOk(["nbdinfo", "--json", target.uri])) as {
      structured: boolean;
      exports: Record<string, unknown>[];
    };
    expect(out.structured).toBe(true);
    const e = out.exports[0]!;
    expect(e).toMatchObject({
      "export-size": target.sizeBytes,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_df: true,
      can_multi_conn: true,
      can_cache: false,
      can_fast_zero: false,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MIB,
      contexts: ["base:allocation"],
    });
  });

  needs(hasTool("nbdinfo"), "ro")("nbdinfo: a read-only export reports is_read_only and no trim or zero", async () => {
    const ro = JSON.parse(await runOk(["nbdinfo", "--json", target.uriFor(target.exportFor("ro"))])) as {
      exports: Record<string, unknown>[];
    };
    expect(ro.exports[0]).toMatchObject({ is_read_only: true, can_trim: false, can_zero: false });
  });

  test.skipIf(!hasTool("nbdsh"))("nbdsh: -u URI -c writes, flushes and reads back", async () => {
    const out = await runOk([
      "nbdsh",
      "-u",
      target.uri,
      "-c",
      "h.pwrite(b'hello nbdsh', 5 * 1024 * 1024, nbd.CMD_FLAG_FUA)",
      "-c",
      "h.flush()",
      "-c",
      "print(h.pread(11, 5 * 1024 * 1024).decode())",
    ]);
    expect(out.trim()).toBe("hello nbdsh");
  });

  test.skipIf(!hasLibnbdPython)("libnbd: read, write, FUA, flush, trim, zero and block status", async () => {
    const result = await libnbd<{ readBack: boolean; zeroes: boolean; extents: number[]; trimmed: boolean; sr: boolean }>(
      `
      h = nbd.NBD()
      h.add_meta_context("base:allocation")
      h.connect_uri(URI)
      base = 7 * 1024 * 1024
      data = bytes(range(256)) * 256
      h.pwrite(data, base, nbd.CMD_FLAG_FUA)
      h.flush()
      read_back = h.pread(len(data), base) == data
      h.zero(8192, base + 4096)
      zeroes = h.pread(8192, base + 4096) == bytes(8192)
      h.zero(4096, base + 16384, nbd.CMD_FLAG_NO_HOLE)
      h.trim(65536, base + 65536)
      trimmed = True
      entries = []
      def cb(metacontext, offset, e, err):
          assert metacontext == "base:allocation"
          entries.extend(e)
          return 0
      h.block_status(128 * 1024, base, cb)
      h.shutdown()
      print(json.dumps({"readBack": read_back, "zeroes": zeroes, "extents": entries, "trimmed": trimmed,
                        "sr": True}))
      `,
      { URI: target.uri },
    );
    expect(result.readBack).toBe(true);
    expect(result.zeroes).toBe(true);
    expect(result.extents.length % 2).toBe(0);
    expect(result.extents.length).toBeGreaterThan(0);
    // The written 64 KiB is allocated data (flags 0 or at least not HOLE) at the start.
    expect(result.extents[1]! & 1).toBe(0);
  });

  test.skipIf(!hasLibnbdPython)("libnbd: structured replies, DF reads and hole chunks", async () => {
    const result = await libnbd<{ negotiated: boolean; statuses: number[]; df: number; same: boolean }>(
      `
      h = nbd.NBD()
      h.connect_uri(URI)
      negotiated = h.get_structured_replies_negotiated()
      h.pwrite(b"x" * 4096, 8192)
      statuses = []
      def chunk(buf, offset, status, error):
          statuses.append(status)
          return 0
      # 256 KiB: on the agent the write allocates one 64 KiB segment and the rest stays holes.
      buf = h.pread_structured(262144, 0, chunk)
      same = buf == bytes(8192) + b"x" * 4096 + bytes(262144 - 12288)
      df = []
      def chunk_df(buf, offset, status, error):
          df.append(status)
          return 0
      h.pread_structured(65536, 0, chunk_df, nbd.CMD_FLAG_DF)
      h.shutdown()
      print(json.dumps({"negotiated": negotiated, "statuses": statuses, "df": len(df), "same": same}))
      `,
      { URI: target.uriFor(target.exportFor("sparse")) },
    );
    expect(result.negotiated).toBe(true);
    expect(result.same).toBe(true);
    expect(result.df).toBe(1);
    const READ_DATA = 1;
    const READ_HOLE = 2;
    expect(result.statuses).toContain(READ_HOLE);
    expect(result.statuses).toContain(READ_DATA);
  });

  test.skipIf(!hasLibnbdPython)("libnbd: option mode lists exports and metadata contexts, then GO", async () => {
    const result = await libnbd<{ exports: string[]; contexts: string[]; size: number }>(
      `
      h = nbd.NBD()
      h.set_opt_mode(True)
      h.connect_uri(URI)
      exports = []
      h.opt_list(lambda name, description: exports.append(name) or 0)
      contexts = []
      h.opt_list_meta_context(lambda name: contexts.append(name) or 0)
      h.opt_go()
      size = h.get_size()
      h.shutdown()
      print(json.dumps({"exports": exports, "contexts": contexts, "size": size}))
      `,
      { URI: target.uri },
    );
    expect(result.exports[0]).toBe(target.exportName);
    expect(result.contexts).toEqual(["base:allocation"]);
    expect(result.size).toBe(target.sizeBytes);
  });

  test.skipIf(!hasLibnbdPython)("libnbd: multi-conn — write on A, flush on B, read on C sees the data", async () => {
    const result = await libnbd<{ multi: boolean; seen: boolean }>(
      `
      hs = []
      for i in range(3):
          h = nbd.NBD()
          h.connect_uri(URI)
          hs.append(h)
      a, b, c = hs
      data = os.urandom(65536)
      a.pwrite(data, 9 * 1024 * 1024)
      b.flush()
      seen = c.pread(65536, 9 * 1024 * 1024) == data
      multi = all(h.can_multi_conn() for h in hs)
      for h in hs:
          h.shutdown()
      print(json.dumps({"multi": multi, "seen": seen}))
      `,
      { URI: target.uri },
    );
    expect(result).toEqual({ multi: true, seen: true });
  });

  test.skipIf(!hasLibnbdPython)("libnbd: many commands in flight on one handle (aio)", async () => {
    const result = await libnbd<{ ok: boolean; count: number }>(
      `
      h = nbd.NBD()
      h.connect_uri(URI)
      base = 10 * 1024 * 1024
      bufs = []
      for i in range(64):
          data = bytes([i]) * 4096
          h.aio_pwrite(data, base + i * 4096)
      while h.aio_in_flight() > 0:
          h.poll(-1)
      reads = []
      for i in range(64):
          b = nbd.Buffer(4096)
          h.aio_pread(b, base + i * 4096)
          reads.append(b)
      while h.aio_in_flight() > 0:
          h.poll(-1)
      ok = all(b.to_bytearray() == bytes([i]) * 4096 for i, b in enumerate(reads))
      h.shutdown()
      print(json.dumps({"ok": ok, "count": len(reads)}))
      `,
      { URI: target.uri },
    );
    expect(result).toEqual({ ok: true, count: 64 });
  });

  needs(hasLibnbdPython, "ro")("libnbd: a read-only export refuses writes", async () => {
    const result = await libnbd<{ ro: boolean; errno: string }>(
      `
      h = nbd.NBD()
      h.set_strict_mode(0)  # let the write reach the server
      h.connect_uri(URI)
      ro = h.is_read_only()
      try:
          h.pwrite(b"nope", 0)
          errno = "none"
      except nbd.Error as e:
          errno = e.errnum and __import__("errno").errorcode[e.errnum]
      h.shutdown()
      print(json.dumps({"ro": ro, "errno": errno}))
      `,
      { URI: target.uriFor(target.exportFor("ro")) },
    );
    expect(result).toEqual({ ro: true, errno: "EPERM" });
  });

  test.skipIf(!hasTool("nbdcopy"))("nbdcopy: a 4 MiB image goes in and comes back identical", async () => {
    const source = join(dir, "source.img");
    const back = join(dir, "back.img");
    const data = pattern(4 * MIB, 99);
    writeFileSync(source, data);
    const uri = target.uriFor(target.exportFor("big"));
    await runOk(["nbdcopy", source, uri]);
    await runOk(["nbdcopy", uri, back]);
    const copied = new Uint8Array(await Bun.file(back).arrayBuffer());
    expect(copied.subarray(0, data.length)).toEqual(data);
  }, 30_000);

  test.skipIf(!hasTool("qemu-img"))("qemu-img: info, convert onto the export, compare and map", async () => {
    const image = join(dir, "qemu.img");
    const data = new Uint8Array(target.sizeBytes);
    data.set(pattern(MIB, 5), 2 * MIB);
    writeFileSync(image, data);
    const info = JSON.parse(await runOk(["qemu-img", "info", "--output=json", "-f", "raw", target.uri])) as {
      "virtual-size": number;
    };
    expect(info["virtual-size"]).toBe(target.sizeBytes);
    await runOk(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", image, target.uri]);
    const compare = await run(["qemu-img", "compare", "-f", "raw", "-F", "raw", image, target.uri]);
    expect(compare.code).toBe(0);
    const map = JSON.parse(await runOk(["qemu-img", "map", "--output=json", "-f", "raw", target.uri])) as {
      start: number;
      length: number;
      data: boolean;
    }[];
    expect(map.reduce((n, e) => n + e.length, 0)).toBe(target.sizeBytes);
    const dataAt = (offset: number) => map.find((e) => e.start <= offset && offset < e.start + e.length)!.data;
    expect(dataAt(2 * MIB)).toBe(true);
  }, 30_000);

  test.skipIf(!hasTool("qemu-io"))("qemu-io: pattern write/read, write zeroes, discard, flush", async () => {
    const out = await runOk([
      "qemu-io",
      "-f",
      "raw",
      "-c",
      "write -P 0xab 12M 1M",
      "-c",
      "read -P 0xab 12M 1M",
      "-c",
      "write -z 12M 64k",
      "-c",
      "read -P 0 12M 64k",
      "-c",
      "discard 13M 64k",
      "-c",
      "write -P 0xcd -f 12M 4k",
      "-c",
      "read -P 0xcd 12M 4k",
      "-c",
      "flush",
      target.uri,
    ]);
    expect(out).not.toContain("Pattern verification failed");
    expect(out).not.toContain("failed");
  });

  test.skipIf(!hasTool("fio"))("fio: random writes with verification through the nbd engine", async () => {
    const out = await runOk(
      [
        "fio",
        "--name=verify",
        "--ioengine=nbd",
        `--uri=${target.uri}`,
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=4M",
        "--offset=8M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_state_save=0",
        "--output-format=json",
      ],
      { timeoutMs: 60_000 },
    );
    const report = JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number }[] };
    expect(report.jobs[0]!.error).toBe(0);
  }, 60_000);
}
