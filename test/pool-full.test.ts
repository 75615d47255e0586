// R14/R15: a full pool gives ENOSPC to the write that needs a segment, and to nobody else.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { reapAll, tempDir } from "./helpers/processes.ts";
import { startUp, type UpSystem } from "./helpers/system.ts";
import { nbdPython } from "./helpers/nbd-clients.ts";

const MIB = 2 ** 20;
const dir = tempDir("pool-full");
let system: UpSystem;

beforeAll(async () => {
  // An 8 MiB pool holds 8 segments of 1 MiB.
  system = await startUp({ dir: dir.path, lunSize: "8M" });
});

afterAll(async () => {
  await system?.stop();
  await reapAll();
  dir.remove();
});

/** Writes 4 KiB at `offset`; returns "ok" or the errno name the client got. */
function writeProbe(uri: string, offset: number, byte: number): Promise<string> {
  return nbdPython(
    uri,
    `try:\n    h.pwrite(bytes([${byte}]) * 4096, ${offset})\n    print("ok")\nexcept nbd.Error as e:\n    print(e.errnum == __import__("errno").ENOSPC and "ENOSPC" or e.string)`,
  ).then((out) => out.trim());
}

test("pool full: the write needing a segment gets ENOSPC, other disks keep working, and deleting a disk makes room", async () => {
  const hog = await system.createDisk("hog", "16M");
  const other = await system.createDisk("other", "16M");
  const spare = await system.createDisk("spare", "16M");

  // "other" gets one segment while there is room; "hog" takes the other seven.
  expect(await writeProbe(other, 0, 0x11)).toBe("ok");
  await nbdPython(hog, `h.pwrite(b"\\x22" * ${7 * MIB}, 0)\nh.flush()`);

  expect(await writeProbe(spare, 5 * MIB, 0x33)).toBe("ENOSPC");
  expect(await writeProbe(hog, 9 * MIB, 0x44)).toBe("ENOSPC");

  // Mapped segments still take writes and every disk still reads.
  expect(await writeProbe(other, 4096, 0x55)).toBe("ok");
  expect(await writeProbe(hog, 6 * MIB, 0x66)).toBe("ok");
  const reads = await nbdPython(
    other,
    `d = h.pread(8192, 0)\nprint(d[:4096] == bytes([0x11]) * 4096, d[4096:] == bytes([0x55]) * 4096, h.pread(4096, ${10 * MIB}) == bytes(4096))`,
  );
  expect(reads.trim()).toBe("True True True");
  const spareReads = await nbdPython(spare, `print(h.pread(4096, ${5 * MIB}) == bytes(4096))`);
  expect(spareReads.trim()).toBe("True");

  const deleted = await system.ctl(["disk", "delete", "hog"]);
  expect(deleted.code).toBe(0);
  expect(await writeProbe(spare, 5 * MIB, 0x77)).toBe("ok");
  const after = await nbdPython(spare, `print(h.pread(4096, ${5 * MIB}) == bytes([0x77]) * 4096)`);
  expect(after.trim()).toBe("True");

  // Six segments are free now. Ten first writes sent at once fault together (the controller
  // resolves them as a batch): six get a segment and four ENOSPC, not all ten.
  const burst = await system.createDisk("burst", "16M");
  const outcome = await nbdPython(
    burst,
    [
      "import errno",
      "buf = nbd.Buffer.from_bytearray(bytearray(b'\\x88' * 4096))",
      `pending = {h.aio_pwrite(buf, i * ${MIB}): i for i in range(10)}`,
      "results = {}",
      "while pending:",
      "    for cookie, i in list(pending.items()):",
      "        try:",
      "            if h.aio_command_completed(cookie):",
      "                results[i] = 'ok'",
      "                del pending[cookie]",
      "        except nbd.Error as e:",
      "            results[i] = 'ENOSPC' if e.errnum == errno.ENOSPC else e.string",
      "            del pending[cookie]",
      "    if pending:",
      "        h.poll(-1)",
      "oks = [i for i in range(10) if results[i] == 'ok']",
      `print(sorted(results.values()).count('ok'), sorted(results.values()).count('ENOSPC'), all(h.pread(4096, i * ${MIB}) == b'\\x88' * 4096 for i in oks))`,
    ].join("\n"),
  );
  expect(outcome.trim()).toBe("6 4 True");
});
