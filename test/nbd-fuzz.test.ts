// NBD conformance, checklist section G: hostile and broken clients. Pass = no crash, no hang, no
// data change, and either framing kept or a clean disconnect; after each case a fresh client must
// still be served, and no connection or export handle may be left behind.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { expectOk, openSession, pattern, roundTrip, type Session } from "./helpers/nbd-session.ts";
import { NBD_TARGET_KINDS, type NbdTarget, type NbdTargetKind, startNbdTarget } from "./helpers/nbd-target.ts";
import {
  concat,
  DEFINED_ERRORS,
  encodeRequest,
  infoRequestData,
  metaContextData,
  NBD,
  type RawNbdClient,
  u16,
  u32,
  u64,
  utf8,
} from "./helpers/raw-nbd-client.ts";

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD fuzz [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  let target: NbdTarget;
  // A well-behaved client that stays connected through every hostile case, on an export no case
  // touches ("big"): after each case its data is intact and it is still served.
  let bystander: Session | undefined;
  let bystanderData = pattern(65536, 1000);
  let round = 0;

  beforeAll(async () => {
    target = await startNbdTarget({ kind });
    bystander = await openSession(target, target.exportFor("big"), { structured: true });
    await expectOk(bystander, { type: NBD.CMD_WRITE, offset: 0n, data: bystanderData });
  });

  afterAll(async () => {
    bystander?.client.close();
    await target?.stop();
  });

  afterEach(async () => {
    // Every hostile case must leave the server serving, the other client served, and nothing
    // leaked but the bystander's connection (on the agent: NBD sockets seen in /proc/net).
    await target.assertServes();
    expect(await expectOk(bystander!, { type: NBD.CMD_READ, offset: 0n, length: 65536 })).toEqual(bystanderData);
    bystanderData = pattern(65536, 1001 + round++);
    await expectOk(bystander!, { type: NBD.CMD_WRITE, offset: 0n, data: bystanderData });
    await target.waitIdle({ remaining: 1 });
  });

  /** xorshift32: reproducible "random" input; the seed is in the test name. */
  function rng(seed: number): () => number {
    let x = seed >>> 0 || 1;
    return () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    };
  }

  async function negotiated(exportName: string, options: { structured?: boolean; allocation?: boolean } = {}) {
    return openSession(target, exportName, options);
  }

  // ---------------------------------------------------------------------------------------------
  // Handshake

  test("fuzz: option length 0xFFFFFFFF on any option ends the connection", async () => {
    for (const option of [NBD.OPT_INFO, NBD.OPT_GO, NBD.OPT_LIST, NBD.OPT_SET_META_CONTEXT, NBD.OPT_EXPORT_NAME, 99]) {
      const c = await target.connect();
      await c.handshake();
      await c.sendOption(option, utf8("disk"), 0xffffffff);
      await c.expectClose();
    }
  });

  test("fuzz: a name length beyond the option length gets ERR_INVALID for INFO, GO and META_CONTEXT", async () => {
    const c = await target.connect();
    try {
      await c.handshake();
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      const name = utf8("disk");
      const bad = [
        [NBD.OPT_INFO, concat(u32(0xffffffff), name, u16(0))],
        [NBD.OPT_GO, concat(u32(name.length + 1), name, u16(0))],
        [NBD.OPT_LIST_META_CONTEXT, concat(u32(0x7fffffff), name, u32(0))],
        [NBD.OPT_SET_META_CONTEXT, concat(u32(name.length + 4), name, u32(0))],
      ] as const;
      for (const [option, data] of bad) {
        expect((await c.option(option, data)).map((r) => r.type)).toEqual([NBD.REP_ERR_INVALID]);
      }
    } finally {
      c.close();
    }
  });

  test("fuzz: GO with an info list overrunning the option gets ERR_INVALID", async () => {
    const c = await target.connect();
    try {
      await c.handshake();
      const data = concat(u32(0), u16(0xffff), u16(NBD.INFO_BLOCK_SIZE));
      expect((await c.option(NBD.OPT_GO, data)).map((r) => r.type)).toEqual([NBD.REP_ERR_INVALID]);
    } finally {
      c.close();
    }
  });

  test("fuzz: STARTTLS, LIST and STRUCTURED_REPLY carrying data get ERR_INVALID", async () => {
    const c = await target.connect();
    try {
      await c.handshake();
      for (const option of [NBD.OPT_STARTTLS, NBD.OPT_LIST, NBD.OPT_STRUCTURED_REPLY]) {
        expect((await c.option(option, new Uint8Array(100))).map((r) => r.type)).toEqual([NBD.REP_ERR_INVALID]);
      }
    } finally {
      c.close();
    }
  });

  test("fuzz: random option messages (seed 1234) get well-formed replies or a clean disconnect", async () => {
    const random = rng(1234);
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)]!;
    const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
    let c: RawNbdClient | null = null;
    for (let i = 0; i < 300; i++) {
      if (c === null || !c.isOpen) {
        c?.close();
        c = await target.connect();
        await c.handshake();
      }
      const option = pick([0, 2, 3, 5, 6, 6, 7, 8, 9, 9, 10, 10, 11, 12, 0x80000000, Math.floor(random() * 2 ** 32)]);
      const name = pick(["", "disk", "ro", "nope", "x".repeat(300)]);
      const data = pick([
        () => bytes(Math.floor(random() * 64)),
        () => infoRequestData(name, Array.from({ length: Math.floor(random() * 5) }, () => Math.floor(random() * 6))),
        () => metaContextData(name, pick([[], ["base:allocation"], ["base:"], ["x:y", "base:allocation"]])),
        () => {
          const d = metaContextData(name, ["base:allocation"]);
          const at = Math.floor(random() * d.length);
          d[at] = d[at]! ^ (1 << Math.floor(random() * 8));
          return d;
        },
        () => {
          const d = infoRequestData(name, [1, 2, 3]);
          return d.subarray(0, Math.floor(random() * d.length));
        },
      ])();
      if (option === NBD.OPT_EXPORT_NAME) continue; // success or failure both end haggling; covered elsewhere
      try {
        await c.sendOption(option, data);
        for (;;) {
          const r = await c.readOptionReply(); // throws on a bad magic
          expect(r.option).toBe(option);
          if (r.type === NBD.REP_ACK || r.type >= 2 ** 31) {
            if ((option === NBD.OPT_GO && r.type === NBD.REP_ACK) || option === NBD.OPT_ABORT) {
              c.close(); // in transmission (or aborted): start over
            }
            break;
          }
        }
      } catch (error) {
        // Only a closed connection is acceptable here, never garbage.
        expect(String(error)).toContain("closed");
        expect(c.isOpen).toBe(false);
      }
    }
    c?.close();
  }, 30_000);

  // ---------------------------------------------------------------------------------------------
  // Transmission

  test("fuzz: requests with a bad magic end the connection", async () => {
    for (const magic of [0, 0x25609512, 0x67446698, 0x668e33ef, 0x49484156, 0xffffffff]) {
      const s = await negotiated(target.exportName);
      const bytes = encodeRequest({ type: NBD.CMD_READ, offset: 0n, length: 512 });
      new DataView(bytes.buffer).setUint32(0, magic);
      await s.client.send(bytes);
      await s.client.expectClose();
    }
  });

  test("fuzz: every unknown command type 8..65535 gets EINVAL and framing holds", async () => {
    const s = await negotiated(target.exportName);
    try {
      const batch = 4096;
      for (let start = 8; start <= 0xffff; start += batch) {
        const types: number[] = [];
        for (let t = start; t < Math.min(start + batch, 0x10000); t++) types.push(t);
        await s.client.send(
          Buffer.concat(types.map((type) => encodeRequest({ type, cookie: BigInt(type), offset: 0n, length: 512 }))),
        );
        // Replies may come in any order (L289-291): collect them by cookie.
        const answered = new Set<bigint>();
        for (let i = 0; i < types.length; i++) {
          const r = await s.client.readSimpleReply();
          expect(r.error).toBe(NBD.EINVAL);
          answered.add(r.cookie);
        }
        expect(answered.size).toBe(types.length);
        expect(answered.has(BigInt(start))).toBe(true);
      }
      await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 512 });
    } finally {
      s.client.close();
    }
  }, 30_000);

  test("fuzz: random flags, offsets and lengths (seed 99) match the validation model", async () => {
    const random = rng(99);
    const size = BigInt(target.sizeBytes);
    const offsets = [0n, 1n, size - 1n, size, size + 1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 512n];
    const lengths = [0, 1, 512, 65536, target.sizeBytes, 0xffffffff];
    const allowed: Record<number, number> = {
      [NBD.CMD_READ]: NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_DF,
      [NBD.CMD_TRIM]: NBD.CMD_FLAG_FUA,
      [NBD.CMD_WRITE_ZEROES]: NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_NO_HOLE,
      [NBD.CMD_BLOCK_STATUS]: NBD.CMD_FLAG_FUA | NBD.CMD_FLAG_REQ_ONE,
    };
    const s = await negotiated(target.exportName, { allocation: true });
    try {
      for (let i = 0; i < 400; i++) {
        const type = [NBD.CMD_READ, NBD.CMD_TRIM, NBD.CMD_WRITE_ZEROES, NBD.CMD_BLOCK_STATUS][Math.floor(random() * 4)]!;
        const flags = random() < 0.5 ? 0 : 1 << Math.floor(random() * 16);
        const offset = random() < 0.7 ? offsets[Math.floor(random() * offsets.length)]! : BigInt(Math.floor(random() * 2 ** 30));
        const length = random() < 0.7 ? lengths[Math.floor(random() * lengths.length)]! : Math.floor(random() * 2 ** 26);
        const inRange = offset <= size && BigInt(length) <= size - offset;
        // Every error that applies is acceptable: the spec does not order the checks.
        const acceptable = new Set<number>();
        if (flags & ~allowed[type]!) acceptable.add(NBD.EINVAL);
        if (type === NBD.CMD_BLOCK_STATUS && length === 0) acceptable.add(NBD.EINVAL);
        if (!inRange) acceptable.add(type === NBD.CMD_WRITE_ZEROES ? NBD.ENOSPC : NBD.EINVAL);
        if (type === NBD.CMD_READ && length > 32 * 1024 * 1024) {
          acceptable.add(flags & NBD.CMD_FLAG_DF ? NBD.EOVERFLOW : NBD.EINVAL);
        }
        if (acceptable.size === 0) acceptable.add(0);
        const r = await roundTrip(s, { type, flags, offset, length, cookie: BigInt(i) });
        expect({ i, type, flags, offset, length, ok: acceptable.has(r.error) }).toEqual({ i, type, flags, offset, length, ok: true });
      }
    } finally {
      s.client.close();
    }
  }, 30_000);

  test("fuzz: 1000 pipelined requests with the same cookie are all answered", async () => {
    const base = 8n * 1024n * 1024n;
    for (const exportName of [target.exportName, target.exportFor("slow")]) {
      const s = await negotiated(exportName);
      try {
        const region = exportName === target.exportName ? base : 0n;
        await expectOk(s, { type: NBD.CMD_WRITE_ZEROES, offset: region, length: 65536 });
        const requests: Uint8Array[] = [];
        let reads = 0;
        for (let i = 0; i < 1000; i++) {
          const offset = region + BigInt((i % 64) * 1024);
          // Fill bytes stay below 0x60, so read data can never start with a reply magic (0x67...).
          if (i % 3 === 0) {
            requests.push(encodeRequest({ type: NBD.CMD_WRITE, cookie: 42n, offset, data: new Uint8Array(1024).fill(i % 0x60) }));
          } else if (i % 3 === 1) {
            requests.push(encodeRequest({ type: NBD.CMD_READ, cookie: 42n, offset, length: 1024 }));
            reads++;
          } else requests.push(encodeRequest({ type: NBD.CMD_FLUSH, cookie: 42n }));
        }
        await s.client.send(Buffer.concat(requests));
        // With one cookie for all, a header cannot say which request it answers; read headers in
        // turn and skip 1024 data bytes when what follows a header is not another header.
        const all = await s.client.read(1000 * 16 + reads * 1024, 20_000);
        let replies = 0;
        let dataReplies = 0;
        for (let p = 0; p < all.length; ) {
          const v = new DataView(all.buffer, all.byteOffset + p);
          expect(v.getUint32(0)).toBe(NBD.SIMPLE_REPLY_MAGIC);
          expect(v.getUint32(4)).toBe(0);
          expect(v.getBigUint64(8)).toBe(42n);
          p += 16;
          replies++;
          if (p < all.length && new DataView(all.buffer, all.byteOffset + p).getUint32(0) !== NBD.SIMPLE_REPLY_MAGIC) {
            p += 1024;
            dataReplies++;
          }
        }
        expect(replies).toBe(1000);
        expect(dataReplies).toBeLessThanOrEqual(reads);
        await expectOk(s, { type: NBD.CMD_READ, offset: region, length: 16 });
        expect(s.client.pendingBytes).toBe(0);
      } finally {
        s.client.close();
      }
    }
  }, 30_000);

  test("fuzz: a client pipelining far more reads than it reads back gets every reply (backpressure)", async () => {
    const s = await negotiated(target.exportName);
    try {
      const count = 3000;
      const length = 65536; // ~190 MiB of replies: far beyond what the server may buffer
      const requests = Buffer.concat(
        Array.from({ length: count }, (_, i) =>
          encodeRequest({ type: NBD.CMD_READ, cookie: BigInt(i), offset: BigInt((i % 200) * length), length }),
        ),
      );
      // Send and receive at the same time: the server stops reading while its replies pile up.
      const sending = s.client.send(requests);
      const seen = new Set<bigint>();
      for (let i = 0; i < count; i++) {
        const r = await s.client.readSimpleReply(length);
        expect(r.error).toBe(0);
        seen.add(r.cookie);
      }
      await sending;
      expect(seen.size).toBe(count);
    } finally {
      s.client.close();
    }
  }, 30_000);

  test("fuzz: a client vanishing with writes in flight leaves no state behind", async () => {
    for (let round = 0; round < 3; round++) {
      const s = await negotiated(target.exportFor("slow"));
      // On the agent each round writes to segments nothing touched yet, so the writes wait for
      // fault answers from the controller when the client vanishes.
      const writes = Array.from({ length: 50 }, (_, i) =>
        encodeRequest({
          type: NBD.CMD_WRITE,
          cookie: BigInt(i),
          offset: BigInt(131072 + round * 262144 + i * 4096),
          data: pattern(1024, i),
        }),
      );
      await s.client.send(Buffer.concat(writes));
      s.client.abort();
    }
    await target.waitIdle({ remaining: 1 }); // the bystander
  });

  test("fuzz: a client vanishing in the middle of a WRITE payload or a header", async () => {
    let before: Uint8Array = new Uint8Array(0);
    await withFresh(async (s) => {
      before = await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 4096 });
    });
    const cuts = [1, 27, 28, 28 + 100];
    for (const cut of cuts) {
      const s = await negotiated(target.exportName);
      const bytes = encodeRequest({ type: NBD.CMD_WRITE, offset: 0n, data: new Uint8Array(4096).fill(0xcc) });
      await s.client.send(bytes.subarray(0, cut));
      s.client.close();
    }
    await withFresh(async (s) => {
      // The partial writes never happened.
      expect(await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 4096 })).toEqual(before);
    });
  });

  test("fuzz: one byte at a time through the whole session", async () => {
    const c = await target.connect();
    try {
      const sendSlowly = async (bytes: Uint8Array) => {
        for (let i = 0; i < bytes.length; i++) await c.send(bytes.subarray(i, i + 1));
      };
      await c.readGreeting();
      await sendSlowly(u32(NBD.FLAG_C_FIXED_NEWSTYLE | NBD.FLAG_C_NO_ZEROES));
      const option = (code: number, data: Uint8Array) => concat(u64(NBD.IHAVEOPT), u32(code), u32(data.length), data);
      await sendSlowly(option(NBD.OPT_STRUCTURED_REPLY, new Uint8Array(0)));
      expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD.REP_ACK);
      await sendSlowly(option(NBD.OPT_SET_META_CONTEXT, metaContextData(target.exportName, ["base:allocation"])));
      expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD.REP_ACK);
      await sendSlowly(option(NBD.OPT_GO, infoRequestData(target.exportName)));
      expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD.REP_ACK);
      const data = pattern(300, 77);
      await sendSlowly(encodeRequest({ type: NBD.CMD_WRITE, cookie: 1n, offset: 9000n, data }));
      expect((await c.readReply()).cookie).toBe(1n);
      await sendSlowly(encodeRequest({ type: NBD.CMD_READ, cookie: 2n, offset: 9000n, length: 300 }));
      const chunks = await c.readStructuredReply();
      expect(chunks[0]!.data.subarray(8)).toEqual(data);
      await sendSlowly(encodeRequest({ type: NBD.CMD_BLOCK_STATUS, cookie: 3n, offset: 0n, length: 4096 }));
      expect((await c.readStructuredReply())[0]!.type).toBe(NBD.REPLY_TYPE_BLOCK_STATUS);
      await sendSlowly(encodeRequest({ type: NBD.CMD_DISC, cookie: 4n }));
      await c.expectClose();
    } finally {
      c.close();
    }
  }, 30_000);

  test("fuzz: random request headers (seed 7) get well-formed answers or a clean disconnect", async () => {
    const random = rng(7);
    const s = await negotiated(target.exportName, { allocation: true });
    try {
      for (let i = 0; i < 500; i++) {
        const type = Math.floor(random() * 10);
        const flags = Math.floor(random() * 0x40);
        const offset = random() < 0.5 ? BigInt(Math.floor(random() * target.sizeBytes)) : BigInt(Math.floor(random() * 2 ** 53));
        const length = Math.floor(random() * 70_000);
        const request = type === NBD.CMD_WRITE ? { type, flags, offset, data: pattern(length, i) } : { type, flags, offset, length };
        if (type === NBD.CMD_DISC) continue;
        const r = await roundTrip(s, { ...request, cookie: BigInt(i) });
        expect(r.error === 0 || DEFINED_ERRORS.has(r.error)).toBe(true);
      }
    } finally {
      s.client.close();
    }
  }, 30_000);

  test("fuzz: random garbage after GO is survived", async () => {
    const random = rng(31337);
    for (let round = 0; round < 10; round++) {
      const s = await negotiated(target.exportName);
      const garbage = Uint8Array.from({ length: 1 + Math.floor(random() * 5000) }, () => Math.floor(random() * 256));
      await s.client.send(garbage);
      // Garbage almost surely has a bad magic: the server hangs up; if it happens to parse, close ourselves.
      await Promise.race([s.client.closed, new Promise((resolve) => setTimeout(resolve, 200))]);
      s.client.close();
    }
  });

  async function withFresh(body: (s: Session) => Promise<void>): Promise<void> {
    const s = await negotiated(target.exportName);
    try {
      await body(s);
    } finally {
      s.client.close();
    }
  }
}
