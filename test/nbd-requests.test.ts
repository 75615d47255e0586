// NBD conformance, checklist section E: request framing, validation at the edge, error values,
// limits, ordering. Raw socket client; `Lnnn` = line of nbd-proto.md.
import { describe, expect, test } from "bun:test";
import { expectOk, openSession, pattern, roundTrip, type Session, type SessionOptions, withTargetSession } from "./helpers/nbd-session.ts";
import { expectLogged, NBD_TARGET_KINDS, type NbdTarget, type NbdTargetKind, testWith, useNbdTarget } from "./helpers/nbd-target.ts";
import { encodeRequest, NBD } from "./helpers/raw-nbd-client.ts";

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD requests [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  let target!: NbdTarget;
  useNbdTarget(kind, (started) => (target = started));

  const withSession = (exportName: string, options: SessionOptions, body: (s: Session) => Promise<void>) =>
    withTargetSession(target, exportName, options, body);

  const MODES = [
    { name: "simple", options: {} },
    { name: "structured", options: { structured: true, allocation: true } },
  ] as const;

  const ALL_FLAGS = 0xffff;
  const MIB = 1024 * 1024;

  test("request: the cookie is echoed verbatim in simple replies and in every chunk", async () => {
    for (const mode of MODES) {
      await withSession(target.exportName, mode.options, async (s) => {
        for (const cookie of [0n, 1n, 0xffffffffffffffffn, 0x0123456789abcdefn, 0x8000000000000000n]) {
          // roundTrip checks the cookie of every reply message.
          expect((await roundTrip(s, { type: NBD.CMD_READ, cookie, offset: 0n, length: 100 })).error).toBe(0);
          expect((await roundTrip(s, { type: NBD.CMD_FLUSH, cookie })).error).toBe(0);
          expect((await roundTrip(s, { type: NBD.CMD_READ, cookie, offset: 1n << 62n, length: 1 })).error).toBe(
            NBD.EINVAL,
          );
        }
      });
    }
  });

  test("request: unknown command types get EINVAL, and no payload is read for them", async () => {
    for (const mode of MODES) {
      await withSession(target.exportName, mode.options, async (s) => {
        for (const type of [NBD.CMD_CACHE, NBD.CMD_RESIZE, 9, 100, 0x7fff, 0xffff]) {
          const r = await roundTrip(s, { type, offset: 0n, length: 4096 });
          expect(r.error).toBe(NBD.EINVAL);
        }
        // Framing is intact: the next request gets a normal answer.
        expect((await roundTrip(s, { type: NBD.CMD_READ, offset: 0n, length: 8 })).error).toBe(0);
      });
    }
  });

  test("request: undefined or inapplicable flags get EINVAL; FUA is accepted on every command", async () => {
    const allowed: Record<number, number> = {
      [NBD.CMD_READ]: NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_DF,
      [NBD.CMD_WRITE]: NBD.CMD_FLAG_FUA,
      [NBD.CMD_FLUSH]: NBD.CMD_FLAG_FUA,
      [NBD.CMD_TRIM]: NBD.CMD_FLAG_FUA,
      [NBD.CMD_WRITE_ZEROES]: NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_NO_HOLE,
      [NBD.CMD_BLOCK_STATUS]: NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_REQ_ONE,
    };
    await withSession(target.exportName, { allocation: true }, async (s) => {
      for (const [typeText, ok] of Object.entries(allowed)) {
        const type = Number(typeText);
        const isFlush = type === NBD.CMD_FLUSH;
        const base = { type, offset: 0n, length: isFlush ? 0 : 512 };
        const data = type === NBD.CMD_WRITE ? new Uint8Array(512) : undefined;
        for (let bit = 0; bit < 16; bit++) {
          const flags = 1 << bit;
          const r = await roundTrip(s, { ...base, flags, ...(data ? { data } : {}) });
          expect({ type, flags, error: r.error }).toEqual({ type, flags, error: ok & flags ? 0 : NBD.EINVAL });
        }
        const r = await roundTrip(s, { ...base, flags: ALL_FLAGS & ~ok, ...(data ? { data } : {}) });
        expect(r.error).toBe(NBD.EINVAL);
      }
    });
  });

  test("request: DF on READ is EINVAL without structured replies (SEND_DF not advertised)", async () => {
    await withSession(target.exportName, {}, async (s) => {
      expect((await roundTrip(s, { type: NBD.CMD_READ, flags: NBD.CMD_FLAG_DF, offset: 0n, length: 8 })).error).toBe(
        NBD.EINVAL,
      );
    });
  });

  test("request: FAST_ZERO is EINVAL because SEND_FAST_ZERO is not advertised", async () => {
    await withSession(target.exportName, {}, async (s) => {
      const r = await roundTrip(s, {
        type: NBD.CMD_WRITE_ZEROES,
        flags: NBD.CMD_FLAG_FAST_ZERO,
        offset: 0n,
        length: 4096,
      });
      expect(r.error).toBe(NBD.EINVAL);
    });
  });

  test("request: out of range READ/TRIM/BLOCK_STATUS get EINVAL, WRITE/WRITE_ZEROES get ENOSPC", async () => {
    const size = BigInt(target.sizeBytes);
    const ranges: [bigint, number][] = [
      [size, 1],
      [size - 1n, 2],
      [size + 4096n, 512],
      [(1n << 64n) - 512n, 1024], // offset + length wraps past 2^64: must not wrap around to 512
      [(1n << 64n) - 1n, 1],
      [1n << 63n, 512],
      [1n << 53n, 512],
    ];
    for (const mode of MODES) {
      await withSession(target.exportName, mode.options, async (s) => {
        const before = await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 1024 });
        for (const [offset, length] of ranges) {
          const expectations: [number, number][] = [
            [NBD.CMD_READ, NBD.EINVAL],
            [NBD.CMD_TRIM, NBD.EINVAL],
            [NBD.CMD_WRITE, NBD.ENOSPC],
            [NBD.CMD_WRITE_ZEROES, NBD.ENOSPC],
          ];
          if (s.structured) expectations.push([NBD.CMD_BLOCK_STATUS, NBD.EINVAL]);
          for (const [type, error] of expectations) {
            const data = type === NBD.CMD_WRITE ? new Uint8Array(length).fill(0x5a) : undefined;
            const r = await roundTrip(s, { type, offset, length, ...(data ? { data } : {}) });
            expect({ type, offset, error: r.error }).toEqual({ type, offset, error });
          }
        }
        // Nothing wrapped around onto the start of the export.
        expect(await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 1024 })).toEqual(before);
      });
    }
  });

  test("request: the last byte of the export is addressable; offset = size with length 0 is accepted", async () => {
    const size = BigInt(target.sizeBytes);
    await withSession(target.exportName, {}, async (s) => {
      await expectOk(s, { type: NBD.CMD_WRITE, offset: size - 1n, data: new Uint8Array([0x42]) });
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: size - 1n, length: 1 })).toEqual(new Uint8Array([0x42]));
      expect((await roundTrip(s, { type: NBD.CMD_READ, offset: size, length: 0 })).error).toBe(0);
    });
  });

  test("request: zero-length READ/WRITE/TRIM/WRITE_ZEROES succeed, BLOCK_STATUS gets EINVAL, and the connection stays", async () => {
    for (const mode of MODES) {
      await withSession(target.exportName, mode.options, async (s) => {
        for (const type of [NBD.CMD_READ, NBD.CMD_WRITE, NBD.CMD_TRIM, NBD.CMD_WRITE_ZEROES]) {
          expect((await roundTrip(s, { type, offset: 4096n, length: 0 })).error).toBe(0);
        }
        if (s.structured) {
          expect((await roundTrip(s, { type: NBD.CMD_BLOCK_STATUS, offset: 0n, length: 0 })).error).toBe(NBD.EINVAL);
        }
        await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 4 });
      });
    }
  });

  test("request: FLUSH with a non-zero offset or length gets EINVAL", async () => {
    await withSession(target.exportName, {}, async (s) => {
      expect((await roundTrip(s, { type: NBD.CMD_FLUSH, offset: 512n })).error).toBe(NBD.EINVAL);
      expect((await roundTrip(s, { type: NBD.CMD_FLUSH, length: 512 })).error).toBe(NBD.EINVAL);
    });
  });

  testWith(kind, "ro")("request: a read-only export rejects WRITE, TRIM and WRITE_ZEROES with EPERM and keeps its data", async () => {
    for (const mode of MODES) {
      await withSession(target.exportFor("ro"), mode.options, async (s) => {
        const before = await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 8192 });
        const payload = new Uint8Array(4096).fill(0x11);
        expect((await roundTrip(s, { type: NBD.CMD_WRITE, offset: 0n, data: payload })).error).toBe(NBD.EPERM);
        expect((await roundTrip(s, { type: NBD.CMD_WRITE, flags: NBD.CMD_FLAG_FUA, offset: 0n, data: payload })).error).toBe(
          NBD.EPERM,
        );
        expect((await roundTrip(s, { type: NBD.CMD_TRIM, offset: 0n, length: 4096 })).error).toBe(NBD.EPERM);
        expect((await roundTrip(s, { type: NBD.CMD_WRITE_ZEROES, offset: 0n, length: 4096 })).error).toBe(NBD.EPERM);
        expect(await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 8192 })).toEqual(before);
        // Reads and FLUSH still work.
        await expectOk(s, { type: NBD.CMD_FLUSH });
      });
    }
  });

  test("request: an oversized WRITE is refused, its payload skipped, and no data changes", async () => {
    await withSession(target.exportFor("big"), {}, async (s) => {
      const before = await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 65536 });
      const length = 32 * MIB + 1;
      const r = await roundTrip(s, { type: NBD.CMD_WRITE, offset: 0n, data: new Uint8Array(length).fill(0x77) });
      expect(r.error).toBe(NBD.EINVAL);
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 65536 })).toEqual(before);
    });
  }, 30_000);

  test("request: READ above the maximum payload gets EINVAL (EOVERFLOW with DF) and no content", async () => {
    await withSession(target.exportFor("big"), {}, async (s) => {
      expect((await roundTrip(s, { type: NBD.CMD_READ, offset: 0n, length: 32 * MIB + 1 })).error).toBe(NBD.EINVAL);
    });
    await withSession(target.exportFor("big"), { structured: true }, async (s) => {
      const r = await roundTrip(s, { type: NBD.CMD_READ, flags: NBD.CMD_FLAG_DF, offset: 0n, length: 32 * MIB + 1 });
      expect(r.error).toBe(NBD.EOVERFLOW);
      expect(r.chunks.some((c) => c.type === NBD.REPLY_TYPE_OFFSET_DATA || c.type === NBD.REPLY_TYPE_OFFSET_HOLE)).toBe(
        false,
      );
    });
  });

  test("request: a 32 MiB WRITE and READ (the maximum payload) work", async () => {
    await withSession(target.exportFor("big"), { structured: true }, async (s) => {
      const data = pattern(32 * MIB, 7);
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 4096n, data });
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: 4096n, length: 32 * MIB })).toEqual(data);
    });
  }, 30_000);

  test("request: TRIM and WRITE_ZEROES longer than the maximum payload are accepted", async () => {
    await withSession(target.exportFor("big"), {}, async (s) => {
      await expectOk(s, { type: NBD.CMD_WRITE, offset: 40n * BigInt(MIB), data: new Uint8Array(512).fill(1) });
      expect((await roundTrip(s, { type: NBD.CMD_WRITE_ZEROES, offset: 0n, length: 48 * MIB })).error).toBe(0);
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: 40n * BigInt(MIB), length: 512 })).toEqual(
        new Uint8Array(512),
      );
      expect((await roundTrip(s, { type: NBD.CMD_TRIM, offset: 0n, length: 48 * MIB })).error).toBe(0);
    });
  });

  test("request: a bad request magic ends the connection", async () => {
    const s = await openSession(target, target.exportName);
    const bytes = encodeRequest({ type: NBD.CMD_READ, offset: 0n, length: 512 });
    bytes[0] = 0xff - bytes[0]!;
    await s.client.send(bytes);
    await s.client.expectClose();
    await target.assertServes();
  });

  // Split from the test above so that a missing log line does not hide the protocol behaviour.
  test("request: a bad request magic is logged as a server diagnostic", async () => {
    const s = await openSession(target, target.exportName);
    const bytes = encodeRequest({ type: NBD.CMD_READ, offset: 0n, length: 512 });
    bytes[0] = 0xff - bytes[0]!;
    await s.client.send(bytes);
    await s.client.expectClose();
    await expectLogged(target, "NBD_REQUEST_MAGIC");
  });

  test("request: pipelined requests are all answered, each cookie once, possibly out of order", async () => {
    await withSession(target.exportFor("slow"), {}, async (s) => {
      // Offset 0 is delayed by the fixture, 65536 is not: the second read may overtake the first.
      // On the agent each first touch of a segment waits for a fault answer from the controller.
      const requests = [0n, 65536n, 0n, 131072n].map((offset, i) =>
        encodeRequest({ type: NBD.CMD_READ, cookie: BigInt(i + 1), offset, length: 4096 }),
      );
      await s.client.send(Buffer.concat(requests));
      const seen: bigint[] = [];
      for (let i = 0; i < requests.length; i++) {
        const r = await s.client.readSimpleReply(4096);
        expect(r.error).toBe(0);
        seen.push(r.cookie);
      }
      expect(seen.sort()).toEqual([1n, 2n, 3n, 4n]);
    });
  });

  testWith(kind, "faulty")("request: only the defined error values appear, and backend ENOTSUP is not passed on", async () => {
    for (const mode of MODES) {
      await withSession(target.exportFor("faulty"), mode.options, async (s) => {
        // The fixture throws ENOTSUP here; without FAST_ZERO the server must not return it (L2341-2343).
        const r = await roundTrip(s, { type: NBD.CMD_WRITE, offset: 196608n, data: new Uint8Array(512) });
        expect(r.error).toBe(NBD.EIO);
      });
    }
  });
}
