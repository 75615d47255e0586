// NBD conformance, checklist section A (fixed newstyle handshake) and the simple options of B:
// EXPORT_NAME, ABORT, LIST, STARTTLS. Raw socket client; `Lnnn` = line of nbd-proto.md.
import { describe, expect, test } from "bun:test";
import { expectLogged, lacks, NBD_TARGET_KINDS, type NbdTarget, type NbdTargetKind, useNbdTarget } from "./helpers/nbd-target.ts";
import {
  concat,
  fromUtf8,
  infoRequestData,
  NBD,
  type RawNbdClient,
  u32,
  u64,
  utf8,
  view,
} from "./helpers/raw-nbd-client.ts";

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD handshake [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  let target!: NbdTarget;
  useNbdTarget(kind, (started) => (target = started));

  async function withClient(body: (c: RawNbdClient) => Promise<void>): Promise<void> {
    const client = await target.connect();
    try {
      await body(client);
    } finally {
      client.close();
    }
  }

  /** A read of 512 bytes at 0 works in transmission (simple replies). */
  async function expectReadWorks(c: RawNbdClient, cookie = 5n): Promise<void> {
    await c.sendRequest({ type: NBD.CMD_READ, cookie, offset: 0n, length: 512 });
    const r = await c.readSimpleReply(512);
    expect(r.error).toBe(0);
    expect(r.cookie).toBe(cookie);
  }

  test("handshake: greeting is NBDMAGIC, IHAVEOPT, then only FIXED_NEWSTYLE and NO_ZEROES flags", async () => {
    await withClient(async (c) => {
      const g = await c.read(18);
      const v = view(g);
      expect(v.getBigUint64(0)).toBe(0x4e42444d41474943n);
      expect(v.getBigUint64(8)).toBe(0x49484156454f5054n);
      const flags = v.getUint16(16);
      expect(flags & NBD.FLAG_FIXED_NEWSTYLE).toBe(NBD.FLAG_FIXED_NEWSTYLE);
      expect(flags & ~(NBD.FLAG_FIXED_NEWSTYLE | NBD.FLAG_NO_ZEROES)).toBe(0);
      // Nothing else arrives before the client speaks (no oldstyle data on this port).
      expect(c.pendingBytes).toBe(0);
    });
  });

  test("handshake: client flags with an unknown bit drop the connection", async () => {
    for (const flags of [1 | 4, 0x80000000, 0xffffffff]) {
      await withClient(async (c) => {
        await c.readGreeting();
        await c.send(u32(flags));
        expect((await c.expectClose()).length).toBe(0);
      });
    }
    await target.assertServes();
  });

  test("handshake: a client without C_FIXED_NEWSTYLE can still negotiate", async () => {
    await withClient(async (c) => {
      await c.handshake(0);
      const replies = await c.option(NBD.OPT_GO, infoRequestData(""));
      expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
      await expectReadWorks(c);
    });
  });

  test("handshake: an option header with a bad IHAVEOPT magic drops the connection", async () => {
    await withClient(async (c) => {
      await c.handshake();
      await c.send(concat(u64(0x1122334455667788n), u32(NBD.OPT_LIST), u32(0)));
      expect((await c.expectClose()).length).toBe(0);
    });
    await target.assertServes();
  });

  // Split from the test above so that a missing log line does not hide the protocol behaviour.
  test("handshake: a bad IHAVEOPT magic is logged as a server diagnostic", async () => {
    await withClient(async (c) => {
      await c.handshake();
      await c.send(concat(u64(0x1122334455667788n), u32(NBD.OPT_LIST), u32(0)));
      await c.expectClose();
    });
    await expectLogged(target, "IHAVEOPT");
  });

  test("handshake: option replies carry the reply magic and echo the option code", async () => {
    await withClient(async (c) => {
      await c.handshake();
      for (const option of [NBD.OPT_LIST, NBD.OPT_STRUCTURED_REPLY, 0x7fff_1234]) {
        const replies = await c.option(option); // readOptionReply checks the magic
        for (const r of replies) expect(r.option).toBe(option);
      }
    });
  });

  test("handshake: unknown option gets ERR_UNSUP and haggling continues", async () => {
    await withClient(async (c) => {
      await c.handshake();
      // 4 = PEEK_EXPORT (withdrawn), 11 = EXTENDED_HEADERS (experimental, not supported), others unassigned.
      for (const option of [0, NBD.OPT_PEEK_EXPORT, NBD.OPT_EXTENDED_HEADERS, 12, 4096, 0xffffffff]) {
        const replies = await c.option(option, utf8("some payload to skip"));
        expect(replies.length).toBe(1);
        expect(replies[0]!.type).toBe(NBD.REP_ERR_UNSUP);
      }
      const go = await c.option(NBD.OPT_GO, infoRequestData(""));
      expect(go.at(-1)!.type).toBe(NBD.REP_ACK);
      await expectReadWorks(c);
    });
  });

  test("handshake: STARTTLS gets ERR_POLICY without TLS, and ERR_INVALID with data; haggling continues", async () => {
    await withClient(async (c) => {
      await c.handshake();
      const plain = await c.option(NBD.OPT_STARTTLS);
      expect(plain.map((r) => r.type)).toEqual([NBD.REP_ERR_POLICY]);
      const withData = await c.option(NBD.OPT_STARTTLS, utf8("x"));
      expect(withData.map((r) => r.type)).toEqual([NBD.REP_ERR_INVALID]);
      // Never TLS_REQD in NOTLS mode (L558-565): a LIST works.
      const list = await c.option(NBD.OPT_LIST);
      expect(list.at(-1)!.type).toBe(NBD.REP_ACK);
    });
  });

  test("handshake: error replies may carry a printable message", async () => {
    await withClient(async (c) => {
      await c.handshake();
      const [r] = await c.option(NBD.OPT_GO, infoRequestData("no-such-export"));
      expect(r!.type).toBe(NBD.REP_ERR_UNKNOWN);
      expect(fromUtf8(r!.data)).toContain("no-such-export");
    });
  });

  test("handshake: an option longer than the cap ends the connection (denial of service)", async () => {
    await withClient(async (c) => {
      await c.handshake();
      await c.sendOption(NBD.OPT_LIST, new Uint8Array(0), 0xffffffff);
      expect((await c.expectClose()).length).toBe(0);
    });
    await withClient(async (c) => {
      await c.handshake();
      await c.sendOption(0x1234, new Uint8Array(0), 16 * 1024 * 1024);
      await c.expectClose();
    });
    await target.assertServes();
  });

  test("handshake: a client closing in the middle of an option leaves no state behind", async () => {
    for (const cut of [1, 10, 17, 22]) {
      const c = await target.connect();
      await c.handshake();
      const option = concat(u64(NBD.IHAVEOPT), u32(NBD.OPT_GO), u32(10), infoRequestData("disk"));
      await c.send(option.subarray(0, cut));
      c.close();
    }
    await target.waitIdle();
    await target.assertServes();
  });

  test("handshake: more options than the per-connection limit end the connection", async () => {
    await withClient(async (c) => {
      await c.handshake();
      // Pipelined on purpose (a client MUST NOT, L207-209): the server must cope either way.
      const one = concat(u64(NBD.IHAVEOPT), u32(0x4242), u32(0));
      const many = new Uint8Array(one.length * 1100);
      for (let i = 0; i < 1100; i++) many.set(one, i * one.length);
      await c.send(many);
      let answered = 0;
      for (;;) {
        try {
          const r = await c.readOptionReply();
          expect(r.type).toBe(NBD.REP_ERR_UNSUP);
          answered++;
        } catch {
          break;
        }
      }
      // A hard disconnect may drop replies still queued, so only the upper bound is certain.
      expect(answered).toBeLessThan(1100);
      await c.expectClose();
    });
    await target.assertServes();
  });

  test("handshake: once a client has listed the exports it may ask about each (a few options per export), not more", async () => {
    const OPTION_COUNT_MAX = 1024;
    const PER_LISTED_EXPORT = 4;
    await withClient(async (c) => {
      await c.handshake();
      const listed = (await c.option(NBD.OPT_LIST)).filter((reply) => reply.type === NBD.REP_SERVER).length;
      expect(listed).toBeGreaterThan(0);
      const allowed = OPTION_COUNT_MAX - 1 + PER_LISTED_EXPORT * listed;
      await c.send(concat(...Array.from({ length: allowed }, () => concat(u64(NBD.IHAVEOPT), u32(0x4242), u32(0)))));
      for (let i = 0; i < allowed; i += 1) expect((await c.readOptionReply()).type).toBe(NBD.REP_ERR_UNSUP);
      // Listing again adds nothing: this option is one too many.
      await c.sendOption(NBD.OPT_LIST);
      await c.expectClose();
    });
    await target.assertServes();
  });

  // ---------------------------------------------------------------------------------------------
  // NBD_OPT_EXPORT_NAME (L1161-1190)

  test("EXPORT_NAME: success sends size, flags and 124 zero bytes when NO_ZEROES is not negotiated", async () => {
    await withClient(async (c) => {
      await c.handshake(NBD.FLAG_C_FIXED_NEWSTYLE);
      await c.sendOption(NBD.OPT_EXPORT_NAME, utf8(target.exportName));
      const reply = await c.read(8 + 2 + 124);
      const v = view(reply);
      expect(v.getBigUint64(0)).toBe(BigInt(target.sizeBytes));
      expect(v.getUint16(8) & NBD.TF_HAS_FLAGS).toBe(NBD.TF_HAS_FLAGS);
      expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
      await expectReadWorks(c);
    });
  });

  test("EXPORT_NAME: NO_ZEROES omits the padding", async () => {
    await withClient(async (c) => {
      await c.handshake(NBD.FLAG_C_FIXED_NEWSTYLE | NBD.FLAG_C_NO_ZEROES);
      await c.sendOption(NBD.OPT_EXPORT_NAME, utf8(target.exportName));
      const reply = await c.read(10);
      expect(view(reply).getBigUint64(0)).toBe(BigInt(target.sizeBytes));
      await expectReadWorks(c); // a padding byte would corrupt this reply's magic
    });
  });

  test("EXPORT_NAME: the empty name selects the default export", async () => {
    await withClient(async (c) => {
      await c.handshake();
      await c.sendOption(NBD.OPT_EXPORT_NAME, new Uint8Array(0));
      expect(view(await c.read(10)).getBigUint64(0)).toBe(BigInt(target.sizeBytes));
      await expectReadWorks(c);
    });
  });

  test("EXPORT_NAME: an unknown export terminates the session", async () => {
    await withClient(async (c) => {
      await c.handshake();
      await c.sendOption(NBD.OPT_EXPORT_NAME, utf8("no-such-export"));
      expect((await c.expectClose()).length).toBe(0);
    });
    await target.assertServes();
  });

  test("EXPORT_NAME: a name over 4096 bytes terminates the session", async () => {
    await withClient(async (c) => {
      await c.handshake();
      await c.sendOption(NBD.OPT_EXPORT_NAME, utf8("n".repeat(4097)));
      await c.expectClose();
    });
  });

  test("EXPORT_NAME: after STRUCTURED_REPLY the flags advertise DF and reads use structured replies", async () => {
    await withClient(async (c) => {
      await c.handshake();
      expect((await c.option(NBD.OPT_STRUCTURED_REPLY)).at(-1)!.type).toBe(NBD.REP_ACK);
      await c.sendOption(NBD.OPT_EXPORT_NAME, utf8(target.exportName));
      const flags = view(await c.read(10)).getUint16(8);
      expect(flags & NBD.TF_SEND_DF).toBe(NBD.TF_SEND_DF);
      await c.sendRequest({ type: NBD.CMD_READ, cookie: 9n, offset: 0n, length: 100 });
      const chunks = await c.readStructuredReply();
      expect(chunks.every((ch) => ch.cookie === 9n)).toBe(true);
    });
  });

  // ---------------------------------------------------------------------------------------------
  // NBD_OPT_ABORT (L1192-1207)

  test("ABORT: the server answers ACK and closes, ignoring any payload", async () => {
    for (const payload of [new Uint8Array(0), utf8("ignored payload")]) {
      await withClient(async (c) => {
        await c.handshake();
        const replies = await c.option(NBD.OPT_ABORT, payload);
        expect(replies.map((r) => r.type)).toEqual([NBD.REP_ACK]);
        expect(replies[0]!.data.length).toBe(0);
        await c.expectClose();
      });
    }
  });

  test("ABORT: a client closing before reading the ACK is tolerated", async () => {
    for (let i = 0; i < 5; i++) {
      const c = await target.connect();
      await c.handshake();
      await c.sendOption(NBD.OPT_ABORT);
      c.abort();
    }
    await target.waitIdle();
    await target.assertServes();
  });

  // ---------------------------------------------------------------------------------------------
  // NBD_OPT_LIST (L1209-1219, NBD_REP_SERVER L1535)

  test("LIST: one SERVER reply per export with name and description, then ACK", async () => {
    await withClient(async (c) => {
      await c.handshake();
      const replies = await c.option(NBD.OPT_LIST);
      expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
      const servers = replies.slice(0, -1);
      expect(servers.length).toBeGreaterThanOrEqual(1);
      const names: string[] = [];
      for (const r of servers) {
        expect(r.type).toBe(NBD.REP_SERVER);
        const length = view(r.data).getUint32(0);
        expect(length).toBeLessThanOrEqual(r.data.length - 4);
        names.push(fromUtf8(r.data.subarray(4, 4 + length)));
        // Only the fixture has descriptions: lacks(kind, "descriptions") says why.
        if (names.at(-1) === "disk" && !lacks(kind, "descriptions")) {
          expect(fromUtf8(r.data.subarray(4 + length))).toBe("scratch disk");
        }
      }
      expect(names[0]).toBe(target.exportName);
      expect(names).toEqual(target.exportNames);
    });
  });

  test("LIST: data in the option gets ERR_INVALID and haggling continues", async () => {
    await withClient(async (c) => {
      await c.handshake();
      expect((await c.option(NBD.OPT_LIST, utf8("x"))).map((r) => r.type)).toEqual([NBD.REP_ERR_INVALID]);
      expect((await c.option(NBD.OPT_LIST)).at(-1)!.type).toBe(NBD.REP_ACK);
    });
  });
}
