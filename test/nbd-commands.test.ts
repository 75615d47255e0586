// NBD conformance, checklist section F: the commands and their replies (READ simple and
// structured, DF, holes, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS, error chunks).
// Raw socket client; `Lnnn` = line of nbd-proto.md.
import { describe, expect, test } from "bun:test";
import { expectOk, openSession, pattern, roundTrip, type Session, type SessionOptions, withTargetSession } from "./helpers/nbd-session.ts";
import { NBD_TARGET_KINDS, type NbdTarget, type NbdTargetKind, startNbdTarget, useNbdTarget, testWith } from "./helpers/nbd-target.ts";
import { assembleRead, encodeRequest, NBD, parseBlockStatus, view } from "./helpers/raw-nbd-client.ts";

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD commands [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  let target!: NbdTarget;
  useNbdTarget(kind, (started) => (target = started));

  const withSession = (exportName: string, options: SessionOptions, body: (s: Session) => Promise<void>) =>
    withTargetSession(target, exportName, options, body);

  /** Block status of [offset, offset + length) as (length, flags) pairs; checks the chunk's shape. */
  async function blockStatus(s: Session, offset: bigint, length: number, flags = 0) {
    const r = await roundTrip(s, { type: NBD.CMD_BLOCK_STATUS, flags, offset, length });
    expect(r.error).toBe(0);
    // Exactly one BLOCK_STATUS chunk for the one selected context (L2243-2249), nothing else but NONE.
    const status = r.chunks.filter((c) => c.type === NBD.REPLY_TYPE_BLOCK_STATUS);
    expect(status.length).toBe(1);
    expect(r.chunks.every((c) => c.type === NBD.REPLY_TYPE_BLOCK_STATUS || c.type === NBD.REPLY_TYPE_NONE)).toBe(true);
    const chunk = status[0]!;
    expect(chunk.data.length >= 12 && (chunk.data.length - 4) % 8 === 0).toBe(true); // 4 + 8k, k >= 1
    const { extents } = parseBlockStatus(chunk.data);
    let sum = 0;
    for (const [i, e] of extents.entries()) {
      expect(e.length).toBeGreaterThan(0);
      expect(e.flags & ~(NBD.STATE_HOLE | NBD.STATE_ZERO)).toBe(0);
      if (i < extents.length - 1) sum += e.length;
    }
    expect(sum).toBeLessThan(length); // the first N-1 extents sum to less than the request (L1857-1860)
    if (flags & NBD.CMD_FLAG_REQ_ONE) {
      expect(extents.length).toBe(1);
      expect(extents[0]!.length).toBeLessThanOrEqual(length);
    }
    return extents;
  }

  // ---------------------------------------------------------------------------------------------
  // READ (L1954-2054)

  test("READ simple: the reply carries exactly length bytes of the right data", async () => {
    await withSession(target.exportName, {}, async (s) => {
      const data = pattern(100_000, 1);
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 12345n, data });
      for (const [offset, length] of [
        [12345, 100_000],
        [12345 + 7, 13],
        [12345 + 99_999, 1],
      ] as const) {
        const got = await expectOk(s, { type: NBD.CMD_READ, offset: BigInt(offset), length });
        expect(got).toEqual(data.subarray(offset - 12345, offset - 12345 + length));
      }
      // The next reply starts right after the data: framing is exact.
      await expectOk(s, { type: NBD.CMD_FLUSH });
    });
  });

  testWith(kind, "faulty")("READ simple: a backend error gives an error header and no payload", async () => {
    await withSession(target.exportFor("faulty"), {}, async (s) => {
      const r = await roundTrip(s, { type: NBD.CMD_READ, offset: 65536n - 512n, length: 4096 });
      expect(r.error).toBe(NBD.EIO);
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 512 })).toEqual(new Uint8Array(512));
    });
  });

  test("READ structured: one OFFSET_DATA chunk (>= 9 bytes, inside the range), DONE on the last chunk", async () => {
    await withSession(target.exportName, { structured: true }, async (s) => {
      const data = pattern(8192, 2);
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 65536n, data });
      const r = await roundTrip(s, { type: NBD.CMD_READ, offset: 65536n, length: 8192 });
      expect(r.error).toBe(0);
      for (const [i, c] of r.chunks.entries()) {
        expect(!!(c.flags & NBD.REPLY_FLAG_DONE)).toBe(i === r.chunks.length - 1);
      }
      const assembled = assembleRead(r.chunks, 65536n, 8192);
      expect(assembled.covered).toBe(8192);
      expect(assembled.data).toEqual(data);
    });
  });

  test("READ structured: a sparse read uses hole chunks that cover the range without overlap", async () => {
    await withSession(target.exportFor("sparse"), { structured: true }, async (s) => {
      const data = pattern(4096, 3);
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 8192n, data });
      // 256 KiB: on the agent the write allocates a whole 64 KiB segment; the next three stay holes.
      const length = 262144;
      const r = await roundTrip(s, { type: NBD.CMD_READ, offset: 0n, length });
      expect(r.error).toBe(0);
      const holes = r.chunks.filter((c) => c.type === NBD.REPLY_TYPE_OFFSET_HOLE);
      expect(holes.length).toBeGreaterThan(0);
      for (const h of holes) {
        expect(h.data.length).toBe(12);
        expect(view(h.data).getUint32(8)).toBeGreaterThan(0);
      }
      const assembled = assembleRead(r.chunks, 0n, length); // throws on overlap or out-of-range chunks
      expect(assembled.covered).toBe(length);
      const expected = new Uint8Array(length);
      expected.set(data, 8192);
      // The fixture leaves garbage in hole ranges: it must never reach the client.
      expect(assembled.data).toEqual(expected);
    });
  });

  test("READ structured with DF: at most one content chunk, holes sent as explicit zeroes", async () => {
    await withSession(target.exportFor("sparse"), { structured: true }, async (s) => {
      const data = pattern(512, 4);
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 300_000n, data });
      // DF reads up to 65536 bytes MUST work (L2052-2054).
      const r = await roundTrip(s, { type: NBD.CMD_READ, flags: NBD.CMD_FLAG_DF, offset: 270_000n, length: 65536 });
      expect(r.error).toBe(0);
      const content = r.chunks.filter((c) => c.type === NBD.REPLY_TYPE_OFFSET_DATA || c.type === NBD.REPLY_TYPE_OFFSET_HOLE);
      expect(content.length).toBe(1);
      expect(content[0]!.type).toBe(NBD.REPLY_TYPE_OFFSET_DATA);
      const expected = new Uint8Array(65536);
      expected.set(data, 30_000);
      expect(assembleRead(r.chunks, 270_000n, 65536).data).toEqual(expected);
    });
  });

  test("READ simple on a sparse export: holes arrive as zeroes", async () => {
    await withSession(target.exportFor("sparse"), {}, async (s) => {
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: 500_000n, length: 20_000 })).toEqual(new Uint8Array(20_000));
    });
  });

  testWith(kind, "faulty")("READ structured: a backend error gives an error chunk (length >= 6, message) and no simple reply", async () => {
    await withSession(target.exportFor("faulty"), { structured: true }, async (s) => {
      const r = await roundTrip(s, { type: NBD.CMD_READ, offset: 60000n, length: 10000 });
      expect(r.error).toBe(NBD.EIO);
      expect(r.message.length).toBeGreaterThan(0);
      expect(r.chunks.at(-1)!.flags & NBD.REPLY_FLAG_DONE).toBe(NBD.REPLY_FLAG_DONE);
      // Early validation errors also come as chunks for READ (L394-397); roundTrip asserts it.
      expect((await roundTrip(s, { type: NBD.CMD_READ, flags: 0x100, offset: 0n, length: 1 })).error).toBe(NBD.EINVAL);
    });
  });

  test("READ: asynchronous backend completions deliver the same data", async () => {
    for (const [i, options] of [{}, { structured: true }].entries()) {
      await withSession(target.exportFor("slow"), options, async (s) => {
        // On the agent the write and the read of untouched segments (64 KiB each) fault first.
        const offset = BigInt(i * 262144 + 1000); // segments 0-1, then 4-5
        const data = pattern(70_000, 5 + i);
        await expectOk(s, { type: NBD.CMD_WRITE, offset, data });
        const untouched = offset + 131072n; // segments 2-3, then 6-7
        expect(await expectOk(s, { type: NBD.CMD_READ, offset: untouched, length: 70_000 })).toEqual(new Uint8Array(70_000));
        expect(await expectOk(s, { type: NBD.CMD_READ, offset, length: 70_000 })).toEqual(data);
      });
    }
  });

  // ---------------------------------------------------------------------------------------------
  // WRITE (L2056-2070), FLUSH (L2084-2095), TRIM (L2097-2113), WRITE_ZEROES (L2150-2223)

  test("WRITE: the reply comes after the write is applied, with or without FUA", async () => {
    await withSession(target.exportName, {}, async (s) => {
      for (const flags of [0, NBD.CMD_FLAG_FUA]) {
        const data = pattern(5000, 10 + flags);
        await expectOk(s, { type: NBD.CMD_WRITE, flags, offset: 777n, data });
        expect(await expectOk(s, { type: NBD.CMD_READ, offset: 777n, length: 5000 })).toEqual(data);
      }
    });
  });

  testWith(kind, "faulty")("WRITE: backend ENOSPC is reported, and the connection keeps working", async () => {
    for (const options of [{}, { structured: true }]) {
      await withSession(target.exportFor("faulty"), options, async (s) => {
        const r = await roundTrip(s, { type: NBD.CMD_WRITE, offset: 131072n, data: new Uint8Array(4096).fill(9) });
        expect(r.error).toBe(NBD.ENOSPC);
        expect((await roundTrip(s, { type: NBD.CMD_WRITE_ZEROES, offset: 131072n, length: 100 })).error).toBe(NBD.ENOSPC);
        await expectOk(s, { type: NBD.CMD_WRITE, offset: 0n, data: new Uint8Array(16).fill(1) });
      });
    }
  });

  testWith(kind, "poolLimit")("WRITE on a full pool: ENOSPC only where HOLE is set, and the connection keeps working", async () => {
    // A 1 MiB pool holds 16 segments of 64 KiB: exactly the first MiB of "disk".
    const small = await startNbdTarget({ kind, lunSize: "1M" });
    try {
      const MIB = 1024 * 1024;
      const structured = await openSession(small, small.exportName, { allocation: true });
      const simple = await openSession(small, small.exportName);
      const filled = pattern(MIB, 31);
      await expectOk(simple, { type: NBD.CMD_WRITE, offset: 0n, data: filled });
      const extents = await blockStatus(structured, 0n, 2 * MIB);
      expect(extents[0]).toEqual({ length: MIB, flags: 0 });
      expect(extents[1]!.flags & NBD.STATE_HOLE).toBe(NBD.STATE_HOLE);
      for (const s of [simple, structured]) {
        // Into a hole: a segment is needed and there is none. The payload is consumed either way.
        const write = await roundTrip(s, { type: NBD.CMD_WRITE, offset: BigInt(MIB + 4096), data: pattern(4096, 32) });
        expect(write.error).toBe(NBD.ENOSPC);
        const zero = await roundTrip(s, {
          type: NBD.CMD_WRITE_ZEROES,
          flags: NBD.CMD_FLAG_NO_HOLE,
          offset: BigInt(2 * MIB),
          length: 4096,
        });
        expect(zero.error).toBe(NBD.ENOSPC);
        // Where HOLE is clear a write MUST NOT fail with ENOSPC (L1027-1030).
        await expectOk(s, { type: NBD.CMD_WRITE, offset: 8192n, data: filled.subarray(8192, 12288) });
        await expectOk(s, { type: NBD.CMD_WRITE_ZEROES, flags: NBD.CMD_FLAG_NO_HOLE, offset: BigInt(MIB - 4096), length: 4096 });
        filled.fill(0, MIB - 4096);
      }
      // The refused requests changed nothing; the accepted ones landed.
      expect(await expectOk(simple, { type: NBD.CMD_READ, offset: 0n, length: MIB })).toEqual(filled);
      expect(await expectOk(structured, { type: NBD.CMD_READ, offset: BigInt(MIB), length: MIB })).toEqual(new Uint8Array(MIB));
      await expectOk(structured, { type: NBD.CMD_FLUSH });
      simple.client.close();
      structured.client.close();
      await small.waitIdle();
      await small.assertServes();
    } finally {
      await small.stop();
    }
  });

  // On the agent, FLUSH durability is shown by the kill -9 test in nbd-server.test.ts instead.
  testWith(kind, "control")("FLUSH: answered after the backend flushed", async () => {
    await withSession(target.exportName, {}, async (s) => {
      const before = JSON.parse((await target.control(`STATS ${target.exportName}`)).slice(6)).flushes as number;
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 0n, data: new Uint8Array(10).fill(3) });
      await expectOk(s, { type: NBD.CMD_FLUSH });
      await expectOk(s, { type: NBD.CMD_FLUSH, flags: NBD.CMD_FLAG_FUA });
      const after = JSON.parse((await target.control(`STATS ${target.exportName}`)).slice(6)).flushes as number;
      expect(after - before).toBe(2);
    });
  });

  test("TRIM: succeeds (FUA too); trimmed blocks read back as zeroes here and report HOLE", async () => {
    await withSession(target.exportName, { allocation: true }, async (s) => {
      const base = 2n * 1024n * 1024n;
      await expectOk(s, { type: NBD.CMD_WRITE, offset: base, data: pattern(65536, 6) });
      await expectOk(s, { type: NBD.CMD_TRIM, offset: base, length: 32768 });
      await expectOk(s, { type: NBD.CMD_TRIM, flags: NBD.CMD_FLAG_FUA, offset: base + 32768n, length: 100 });
      // Contents after TRIM are undefined in general (L2107-2109); the fixture punches holes, the
      // agent's TRIM does nothing (its blocks stay allocated data), so only the fixture is checked.
      if (kind !== "fixture") return;
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: base, length: 32768 })).toEqual(new Uint8Array(32768));
      const [first] = await blockStatus(s, base, 65536);
      expect(first).toEqual({ length: 32768, flags: NBD.STATE_HOLE | NBD.STATE_ZERO });
    });
  });

  test("WRITE_ZEROES: the range reads back as zeroes; NO_HOLE keeps it allocated", async () => {
    await withSession(target.exportName, { allocation: true }, async (s) => {
      const base = 3n * 1024n * 1024n;
      for (const flags of [0, NBD.CMD_FLAG_NO_HOLE, NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_NO_HOLE]) {
        await expectOk(s, { type: NBD.CMD_WRITE, offset: base, data: pattern(16384, 7) });
        await expectOk(s, { type: NBD.CMD_WRITE_ZEROES, flags, offset: base + 100n, length: 12000 });
        const got = await expectOk(s, { type: NBD.CMD_READ, offset: base, length: 16384 });
        const expected = pattern(16384, 7);
        expected.fill(0, 100, 12100);
        expect(got).toEqual(expected);
        if (flags & NBD.CMD_FLAG_NO_HOLE) {
          // NO_HOLE means fully provisioned: no HOLE anywhere in the zeroed range.
          const extents = await blockStatus(s, base + 100n, 12000);
          expect(extents.every((e) => (e.flags & NBD.STATE_HOLE) === 0)).toBe(true);
        }
      }
    });
  });

  // ---------------------------------------------------------------------------------------------
  // BLOCK_STATUS (L2225-2290) and base:allocation (L1002-1038)

  test("BLOCK_STATUS: extents describe allocation in order, HOLE|ZERO for unwritten ranges", async () => {
    await withSession(target.exportName, { allocation: true }, async (s) => {
      const base = 4n * 1024n * 1024n;
      await expectOk(s, { type: NBD.CMD_WRITE_ZEROES, offset: base, length: 65536 }); // may punch holes
      await expectOk(s, { type: NBD.CMD_WRITE, offset: base + 8192n, data: pattern(8192, 8) });
      const extents = await blockStatus(s, base, 65536);
      // Whatever the server reports as ZERO must read as zeroes, and written data must not be a hole.
      let pos = 0;
      const contents = await expectOk(s, { type: NBD.CMD_READ, offset: base, length: 65536 });
      for (const e of extents) {
        const end = Math.min(pos + e.length, 65536);
        if (e.flags & NBD.STATE_ZERO) expect(contents.subarray(pos, end).every((b) => b === 0)).toBe(true);
        if (pos < 16384 && end > 8192) expect(e.flags & NBD.STATE_HOLE).toBe(0);
        pos = end;
      }
      if (kind === "fixture") {
        expect(extents).toEqual([
          { length: 8192, flags: NBD.STATE_HOLE | NBD.STATE_ZERO },
          { length: 8192, flags: 0 },
          { length: 65536 - 16384, flags: NBD.STATE_HOLE | NBD.STATE_ZERO },
        ]);
      } else {
        // The agent maps whole segments (64 KiB for "disk"): the write allocated this one.
        expect(extents).toEqual([{ length: 65536, flags: 0 }]);
      }
      // A range nothing ever wrote to (no test here touches "disk" above 15 MiB) is HOLE|ZERO.
      expect(await blockStatus(s, 15n * 1024n * 1024n, 131072)).toEqual([
        { length: 131072, flags: NBD.STATE_HOLE | NBD.STATE_ZERO },
      ]);
    });
  });

  test("BLOCK_STATUS REQ_ONE: exactly one extent, no longer than the request", async () => {
    await withSession(target.exportName, { allocation: true }, async (s) => {
      const base = 5n * 1024n * 1024n;
      await expectOk(s, { type: NBD.CMD_WRITE, offset: base, data: pattern(4096, 9) });
      const one = await blockStatus(s, base, 1000, NBD.CMD_FLAG_REQ_ONE);
      expect(one.length).toBe(1);
      expect(one[0]!.length).toBeLessThanOrEqual(1000);
      const later = await blockStatus(s, base + 4096n, 1 << 20, NBD.CMD_FLAG_REQ_ONE);
      expect(later.length).toBe(1);
    });
  });

  test("BLOCK_STATUS: a request covering the whole export works, and FUA is accepted", async () => {
    await withSession(target.exportName, { allocation: true }, async (s) => {
      const extents = await blockStatus(s, 0n, target.sizeBytes, NBD.CMD_FLAG_FUA);
      expect(extents.reduce((n, e) => n + e.length, 0)).toBeLessThanOrEqual(target.sizeBytes);
    });
  });

  testWith(kind, "extents")("BLOCK_STATUS: at most 2^20 extents in one chunk", async () => {
    // The "extents" export reports alternating 1-byte extents: 2^20 + 8 of them over the whole export.
    await withSession(target.exportFor("extents"), { allocation: true }, async (s) => {
      const extents = await blockStatus(s, 0n, (1 << 20) + 8);
      expect(extents.length).toBe(1 << 20);
      expect(extents[0]).toEqual({ length: 1, flags: NBD.STATE_HOLE | NBD.STATE_ZERO });
      expect(extents[1]).toEqual({ length: 1, flags: 0 });
    });
  }, 30_000);

  testWith(kind, "faulty")("BLOCK_STATUS: a backend error gives an error chunk", async () => {
    await withSession(target.exportFor("faulty"), { allocation: true }, async (s) => {
      expect((await roundTrip(s, { type: NBD.CMD_BLOCK_STATUS, offset: 65536n, length: 512 })).error).toBe(NBD.EIO);
      await blockStatus(s, 0n, 4096);
    });
  });

  test("BLOCK_STATUS: without structured replies it gets EINVAL in a simple reply", async () => {
    await withSession(target.exportName, {}, async (s) => {
      expect((await roundTrip(s, { type: NBD.CMD_BLOCK_STATUS, offset: 0n, length: 4096 })).error).toBe(NBD.EINVAL);
    });
  });

  test("BLOCK_STATUS: a write where HOLE was clear does not fail with ENOSPC", async () => {
    await withSession(target.exportName, { allocation: true }, async (s) => {
      const base = 6n * 1024n * 1024n;
      await expectOk(s, { type: NBD.CMD_WRITE, offset: base, data: pattern(8192, 11) });
      const [e] = await blockStatus(s, base, 8192);
      expect(e!.flags & NBD.STATE_HOLE).toBe(0);
      await expectOk(s, { type: NBD.CMD_WRITE, offset: base, data: pattern(8192, 12) });
    });
  });

  // ---------------------------------------------------------------------------------------------
  // DISC (L2072-2082)

  test("DISC: a WRITE pipelined with DISC is applied before the server closes", async () => {
    const exportName = target.exportFor("slow"); // "slow" completes writes asynchronously
    // The fixture delays [0, 64 KiB); on the agent, segment 8 is untouched so the write faults first.
    const offset = kind === "fixture" ? 0n : 8n * 65536n;
    const data = pattern(4096, 13);
    const s = await openSession(target, exportName);
    await s.client.send(
      Buffer.concat([
        encodeRequest({ type: NBD.CMD_WRITE, cookie: 1n, offset, data }),
        encodeRequest({ type: NBD.CMD_DISC, cookie: 2n }),
      ]),
    );
    // The write's reply still arrives, then the connection closes; nothing answers the DISC.
    const r = await s.client.readSimpleReply();
    expect(r).toMatchObject({ error: 0, cookie: 1n });
    expect((await s.client.expectClose()).length).toBe(0);
    await withSession(exportName, {}, async (fresh) => {
      expect(await expectOk(fresh, { type: NBD.CMD_READ, offset, length: 4096 })).toEqual(data);
    });
  });

  test("DISC: reads in flight are answered before the close; bytes after DISC are ignored", async () => {
    const exportName = target.exportFor("slow");
    // The fixture delays [0, 64 KiB); on the agent, segments 10-12 are untouched so the reads fault first.
    const base = kind === "fixture" ? 0n : 10n * 65536n;
    const s = await openSession(target, exportName, { structured: true });
    const reads = [1n, 2n, 3n].map((cookie) =>
      encodeRequest({ type: NBD.CMD_READ, cookie, offset: base + (cookie - 1n) * (kind === "fixture" ? 4096n : 65536n), length: 4096 }),
    );
    const after = encodeRequest({ type: NBD.CMD_READ, cookie: 99n, offset: 0n, length: 4096 });
    await s.client.send(Buffer.concat([...reads, encodeRequest({ type: NBD.CMD_DISC, cookie: 4n }), after]));
    const cookies: bigint[] = [];
    for (let i = 0; i < 3; i++) {
      const chunks = await s.client.readStructuredReply();
      cookies.push(chunks[0]!.cookie);
    }
    expect(cookies.sort()).toEqual([1n, 2n, 3n]);
    expect((await s.client.expectClose()).length).toBe(0);
    await target.waitIdle();
  });
}
