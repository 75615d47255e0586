// NBD conformance, checklist section B (INFO, GO, STRUCTURED_REPLY, LIST/SET_META_CONTEXT) and
// section D (transmission flags). Raw socket client; `Lnnn` = line of nbd-proto.md.
import { describe, expect, test } from "bun:test";
import { lacks, NBD_TARGET_KINDS, type NbdTarget, type NbdTargetKind, testWith, useNbdTarget } from "./helpers/nbd-target.ts";
import {
  concat,
  fromUtf8,
  infoRequestData,
  metaContextData,
  NBD,
  type OptionReply,
  parseErrorChunk,
  parseMetaContext,
  type RawNbdClient,
  u16,
  u32,
  utf8,
  view,
} from "./helpers/raw-nbd-client.ts";

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD options [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  let target!: NbdTarget;
  useNbdTarget(kind, (started) => (target = started));

  async function withClient(body: (c: RawNbdClient) => Promise<void>): Promise<void> {
    const client = await target.connect();
    try {
      await client.handshake();
      await body(client);
    } finally {
      client.close();
    }
  }

  const types = (replies: OptionReply[]) => replies.map((r) => r.type);

  function infoOf(replies: OptionReply[], type: number): Uint8Array | undefined {
    return replies.find((r) => r.type === NBD.REP_INFO && view(r.data).getUint16(0) === type)?.data;
  }

  const isPowerOfTwo = (n: number) => n > 0 && (n & (n - 1)) === 0;

  // ---------------------------------------------------------------------------------------------
  // NBD_OPT_INFO / NBD_OPT_GO (L1245-1358)

  test("INFO: replies NBD_INFO_EXPORT (length 12) then ACK, and haggling continues", async () => {
    await withClient(async (c) => {
      const replies = await c.option(NBD.OPT_INFO, infoRequestData(target.exportName));
      expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
      const info = infoOf(replies, NBD.INFO_EXPORT)!;
      expect(info.length).toBe(12);
      expect(view(info).getBigUint64(2)).toBe(BigInt(target.sizeBytes));
      expect(view(info).getUint16(10) & NBD.TF_HAS_FLAGS).toBe(NBD.TF_HAS_FLAGS);
      // Still haggling: another option is answered.
      expect(types(await c.option(NBD.OPT_LIST)).at(-1)).toBe(NBD.REP_ACK);
    });
  });

  test("INFO: unknown info codes are ignored", async () => {
    await withClient(async (c) => {
      const replies = await c.option(NBD.OPT_INFO, infoRequestData("", [77, 0xffff, 4]));
      expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
      expect(replies.slice(0, -1).every((r) => r.type === NBD.REP_INFO)).toBe(true);
      expect(infoOf(replies, NBD.INFO_EXPORT)).toBeDefined();
      expect(infoOf(replies, 77)).toBeUndefined();
    });
  });

  test("INFO: NAME, DESCRIPTION and BLOCK_SIZE are answered when requested", async () => {
    await withClient(async (c) => {
      const replies = await c.option(
        NBD.OPT_INFO,
        infoRequestData("", [NBD.INFO_NAME, NBD.INFO_DESCRIPTION, NBD.INFO_BLOCK_SIZE]),
      );
      expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
      // The canonical name of the default export.
      expect(fromUtf8(infoOf(replies, NBD.INFO_NAME)!.subarray(2))).toBe(target.exportName);
      // Only the fixture has descriptions: lacks(kind, "descriptions") says why.
      if (!lacks(kind, "descriptions")) {
        expect(fromUtf8(infoOf(replies, NBD.INFO_DESCRIPTION)!.subarray(2))).toBe("scratch disk");
      }
      const bs = infoOf(replies, NBD.INFO_BLOCK_SIZE)!;
      expect(bs.length).toBe(14);
      const v = view(bs);
      const [min, preferred, max] = [v.getUint32(2), v.getUint32(6), v.getUint32(10)];
      // §Size constraints L814-845.
      expect(isPowerOfTwo(min) && min <= 65536).toBe(true);
      expect(isPowerOfTwo(preferred) && preferred >= Math.max(min, 512)).toBe(true);
      expect(max).toBeGreaterThanOrEqual(preferred);
      expect([min, preferred, max]).toEqual([1, 4096, 32 * 1024 * 1024]);
    });
  });

  test("INFO: BLOCK_SIZE is not sent unless requested", async () => {
    await withClient(async (c) => {
      const replies = await c.option(NBD.OPT_INFO, infoRequestData(""));
      expect(infoOf(replies, NBD.INFO_BLOCK_SIZE)).toBeUndefined();
    });
  });

  test("INFO: an unknown export gets ERR_UNKNOWN and no INFO replies", async () => {
    await withClient(async (c) => {
      const replies = await c.option(NBD.OPT_INFO, infoRequestData("no-such-export", [NBD.INFO_BLOCK_SIZE]));
      expect(types(replies)).toEqual([NBD.REP_ERR_UNKNOWN]);
    });
  });

  test("INFO: a name length larger than the option length - 6 gets ERR_INVALID", async () => {
    await withClient(async (c) => {
      const name = utf8("disk");
      for (const claimed of [5, 100, 0xffffffff]) {
        const data = concat(u32(claimed), name, u16(0));
        expect(types(await c.option(NBD.OPT_INFO, data))).toEqual([NBD.REP_ERR_INVALID]);
      }
      expect(types(await c.option(NBD.OPT_INFO, new Uint8Array(5)))).toEqual([NBD.REP_ERR_INVALID]);
    });
  });

  test("INFO/GO: an info list that overruns or underruns the option gets ERR_INVALID", async () => {
    await withClient(async (c) => {
      const name = utf8("disk");
      const overrun = concat(u32(name.length), name, u16(5), u16(NBD.INFO_NAME)); // claims 5 codes, has 1
      expect(types(await c.option(NBD.OPT_GO, overrun))).toEqual([NBD.REP_ERR_INVALID]);
      const trailing = concat(infoRequestData("disk", [NBD.INFO_NAME]), new Uint8Array(3));
      expect(types(await c.option(NBD.OPT_INFO, trailing))).toEqual([NBD.REP_ERR_INVALID]);
      // Haggling continues after the failed GO.
      expect(types(await c.option(NBD.OPT_GO, infoRequestData(""))).at(-1)).toBe(NBD.REP_ACK);
    });
  });

  test("INFO: export names over 4096 bytes, with NUL, or not UTF-8 get ERR_INVALID", async () => {
    await withClient(async (c) => {
      const long = utf8("x".repeat(4097));
      for (const name of [long, utf8("di\0sk"), new Uint8Array([0xc3, 0x28])]) {
        const data = concat(u32(name.length), name, u16(0));
        expect(types(await c.option(NBD.OPT_INFO, data))).toEqual([NBD.REP_ERR_INVALID]);
      }
    });
  });

  test("INFO then GO with the same request report identical information, including flags", async () => {
    for (const structured of [false, true]) {
      await withClient(async (c) => {
        if (structured) await c.option(NBD.OPT_STRUCTURED_REPLY);
        const request = infoRequestData("", [NBD.INFO_NAME, NBD.INFO_BLOCK_SIZE, NBD.INFO_DESCRIPTION]);
        const info = await c.option(NBD.OPT_INFO, request);
        const go = await c.option(NBD.OPT_GO, request);
        const payloads = (rs: OptionReply[]) =>
          rs
            .filter((r) => r.type === NBD.REP_INFO)
            .map((r) => Buffer.from(r.data).toString("hex"))
            .sort();
        expect(go.at(-1)!.type).toBe(NBD.REP_ACK);
        expect(payloads(go)).toEqual(payloads(info));
      });
    }
  });

  test("GO: ACK enters transmission at once, with no padding even without NO_ZEROES", async () => {
    const c = await target.connect();
    try {
      await c.handshake(NBD.FLAG_C_FIXED_NEWSTYLE); // no C_NO_ZEROES
      const replies = await c.option(NBD.OPT_GO, infoRequestData(""));
      expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
      expect(replies.at(-1)!.data.length).toBe(0);
      await c.sendRequest({ type: NBD.CMD_READ, cookie: 3n, offset: 0n, length: 16 });
      const r = await c.readSimpleReply(16); // padding bytes would break this reply's magic
      expect(r.error).toBe(0);
      expect(r.cookie).toBe(3n);
    } finally {
      c.close();
    }
  });

  test("GO: a failed GO leaves the server in option haggling", async () => {
    await withClient(async (c) => {
      expect(types(await c.option(NBD.OPT_GO, infoRequestData("no-such-export")))).toEqual([NBD.REP_ERR_UNKNOWN]);
      expect(types(await c.option(NBD.OPT_LIST)).at(-1)).toBe(NBD.REP_ACK);
      const go = await c.option(NBD.OPT_GO, infoRequestData(target.exportName));
      expect(go.at(-1)!.type).toBe(NBD.REP_ACK);
      await c.sendRequest({ type: NBD.CMD_READ, cookie: 1n, offset: 0n, length: 1 });
      expect((await c.readSimpleReply(1)).error).toBe(0);
    });
  });

  test("GO: never ERR_BLOCK_SIZE_REQD, with or without an NBD_INFO_BLOCK_SIZE request", async () => {
    for (const infos of [[], [NBD.INFO_BLOCK_SIZE]]) {
      await withClient(async (c) => {
        const go = await c.option(NBD.OPT_GO, infoRequestData("", infos));
        expect(types(go)).not.toContain(NBD.REP_ERR_BLOCK_SIZE_REQD);
        expect(go.at(-1)!.type).toBe(NBD.REP_ACK);
      });
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Transmission flags (§Transmission flags L1091-1157)

  async function flagsOf(exportName: string, structured: boolean): Promise<number> {
    let flags = 0;
    await withClient(async (c) => {
      if (structured) await c.option(NBD.OPT_STRUCTURED_REPLY);
      const replies = await c.option(NBD.OPT_INFO, infoRequestData(exportName));
      flags = view(infoOf(replies, NBD.INFO_EXPORT)!).getUint16(10);
    });
    return flags;
  }

  test("flags: HAS_FLAGS, FLUSH, FUA, TRIM, WRITE_ZEROES and MULTI_CONN on a writable export", async () => {
    const flags = await flagsOf(target.exportName, false);
    for (const bit of [NBD.TF_HAS_FLAGS, NBD.TF_SEND_FLUSH, NBD.TF_SEND_FUA, NBD.TF_SEND_TRIM, NBD.TF_SEND_WRITE_ZEROES]) {
      expect(flags & bit).toBe(bit);
    }
    expect(flags & NBD.TF_READ_ONLY).toBe(0);
    expect(flags & NBD.TF_CAN_MULTI_CONN).toBe(NBD.TF_CAN_MULTI_CONN);
  });

  test("flags: SEND_DF only once structured replies are negotiated", async () => {
    expect((await flagsOf("", false)) & NBD.TF_SEND_DF).toBe(0);
    expect((await flagsOf("", true)) & NBD.TF_SEND_DF).toBe(NBD.TF_SEND_DF);
  });

  test("flags: never RESIZE, CACHE, FAST_ZERO, BLOCK_STATUS_PAYLOAD, ROTATIONAL or undefined bits", async () => {
    for (const structured of [false, true]) {
      const flags = await flagsOf("", structured);
      const never =
        NBD.TF_SEND_RESIZE | NBD.TF_SEND_CACHE | NBD.TF_SEND_FAST_ZERO | NBD.TF_BLOCK_STATUS_PAYLOAD | NBD.TF_ROTATIONAL;
      expect(flags & never).toBe(0);
      expect(flags & ~0x1fff).toBe(0);
    }
  });

  testWith(kind, "ro")("flags: a read-only export sets READ_ONLY and does not offer TRIM or WRITE_ZEROES", async () => {
    const flags = await flagsOf(target.exportFor("ro"), false);
    expect(flags & NBD.TF_READ_ONLY).toBe(NBD.TF_READ_ONLY);
    expect(flags & (NBD.TF_SEND_TRIM | NBD.TF_SEND_WRITE_ZEROES)).toBe(0);
    expect(flags & NBD.TF_HAS_FLAGS).toBe(NBD.TF_HAS_FLAGS);
  });

  // ---------------------------------------------------------------------------------------------
  // NBD_OPT_STRUCTURED_REPLY (L1362-1389)

  test("STRUCTURED_REPLY: data in the option gets ERR_INVALID and nothing is negotiated", async () => {
    await withClient(async (c) => {
      expect(types(await c.option(NBD.OPT_STRUCTURED_REPLY, utf8("x")))).toEqual([NBD.REP_ERR_INVALID]);
      const info = await c.option(NBD.OPT_INFO, infoRequestData(""));
      expect(view(infoOf(info, NBD.INFO_EXPORT)!).getUint16(10) & NBD.TF_SEND_DF).toBe(0);
    });
  });

  test("STRUCTURED_REPLY: a repeat gets ERR_INVALID and structured replies stay negotiated", async () => {
    await withClient(async (c) => {
      expect(types(await c.option(NBD.OPT_STRUCTURED_REPLY))).toEqual([NBD.REP_ACK]);
      expect(types(await c.option(NBD.OPT_STRUCTURED_REPLY))).toEqual([NBD.REP_ERR_INVALID]);
      expect(types(await c.option(NBD.OPT_GO, infoRequestData(""))).at(-1)).toBe(NBD.REP_ACK);
      await c.sendRequest({ type: NBD.CMD_READ, cookie: 2n, offset: 0n, length: 10 });
      const chunks = await c.readStructuredReply();
      expect(chunks[0]!.type).toBe(NBD.REPLY_TYPE_OFFSET_DATA);
    });
  });

  // ---------------------------------------------------------------------------------------------
  // NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT (L1391-1512)

  test("META_CONTEXT: LIST and SET before structured replies get ERR_INVALID", async () => {
    await withClient(async (c) => {
      const data = metaContextData("", ["base:allocation"]);
      expect(types(await c.option(NBD.OPT_SET_META_CONTEXT, data))).toEqual([NBD.REP_ERR_INVALID]);
      expect(types(await c.option(NBD.OPT_LIST_META_CONTEXT, data))).toEqual([NBD.REP_ERR_INVALID]);
    });
  });

  test("META_CONTEXT: a query length that overruns the option gets ERR_INVALID (trailing bytes too, our policy)", async () => {
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      const name = utf8("disk");
      const query = utf8("base:allocation");
      const cases = [
        concat(u32(name.length), name, u32(1), u32(query.length + 1), query), // query too long
        concat(u32(name.length), name, u32(3), u32(query.length), query), // more queries than data
        concat(u32(name.length + 10), name, u32(0)), // name overruns
        concat(u32(name.length), name), // no query count
        // Not an overrun, so not a MUST; we refuse it too (nbdkit accepts it).
        concat(u32(name.length), name, u32(1), u32(query.length), query, new Uint8Array(2)), // trailing bytes
      ];
      for (const option of [NBD.OPT_LIST_META_CONTEXT, NBD.OPT_SET_META_CONTEXT]) {
        for (const data of cases) {
          // Context replies may precede the error; the client disregards them (L1431-1434).
          const replies = types(await c.option(option, data));
          expect(replies.at(-1)).toBe(NBD.REP_ERR_INVALID);
          expect(replies.slice(0, -1).every((t) => t === NBD.REP_META_CONTEXT)).toBe(true);
        }
      }
    });
  });

  test("META_CONTEXT: LIST with no queries lists base:allocation with id 0", async () => {
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      const replies = await c.option(NBD.OPT_LIST_META_CONTEXT, metaContextData("", []));
      expect(types(replies)).toEqual([NBD.REP_META_CONTEXT, NBD.REP_ACK]);
      expect(parseMetaContext(replies[0]!.data)).toEqual({ id: 0, name: "base:allocation" });
    });
  });

  test("META_CONTEXT: LIST with the base: wildcard or the exact name returns base:allocation", async () => {
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      for (const query of ["base:", "base:allocation"]) {
        const replies = await c.option(NBD.OPT_LIST_META_CONTEXT, metaContextData("disk", [query]));
        expect(types(replies)).toEqual([NBD.REP_META_CONTEXT, NBD.REP_ACK]);
        expect(parseMetaContext(replies[0]!.data).name).toBe("base:allocation");
      }
    });
  });

  test("META_CONTEXT: unknown namespaces and unknown base: leaves are ignored, not errors", async () => {
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      const queries = ["x-foo:bar", "qemu:dirty-bitmap:b", "base:nope", "nocolon"];
      for (const option of [NBD.OPT_LIST_META_CONTEXT, NBD.OPT_SET_META_CONTEXT]) {
        expect(types(await c.option(option, metaContextData("disk", queries)))).toEqual([NBD.REP_ACK]);
      }
    });
  });

  test("META_CONTEXT: SET base:allocation returns one context with its id, then ACK", async () => {
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      const replies = await c.option(
        NBD.OPT_SET_META_CONTEXT,
        metaContextData("disk", ["base:allocation", "x-other:thing", "base:allocation"]),
      );
      expect(types(replies)).toEqual([NBD.REP_META_CONTEXT, NBD.REP_ACK]);
      expect(parseMetaContext(replies[0]!.data).name).toBe("base:allocation");
    });
  });

  test("META_CONTEXT: SET for an unknown export gets ERR_UNKNOWN", async () => {
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      const replies = await c.option(NBD.OPT_SET_META_CONTEXT, metaContextData("no-such-export", ["base:allocation"]));
      expect(types(replies)).toEqual([NBD.REP_ERR_UNKNOWN]);
    });
  });

  /** Negotiates structured replies, runs `setup`, enters `exportName` and sends BLOCK_STATUS. */
  async function blockStatusAfter(
    exportName: string,
    setup: (c: RawNbdClient) => Promise<void>,
  ): Promise<{ error: number; contextId?: number }> {
    let result: { error: number; contextId?: number } = { error: -1 };
    await withClient(async (c) => {
      await c.option(NBD.OPT_STRUCTURED_REPLY);
      await setup(c);
      expect(types(await c.option(NBD.OPT_GO, infoRequestData(exportName))).at(-1)).toBe(NBD.REP_ACK);
      await c.sendRequest({ type: NBD.CMD_BLOCK_STATUS, cookie: 4n, offset: 0n, length: 4096 });
      const chunks = await c.readStructuredReply();
      const chunk = chunks[0]!;
      if (chunk.type === NBD.REPLY_TYPE_BLOCK_STATUS) result = { error: 0, contextId: view(chunk.data).getUint32(0) };
      else result = { error: parseErrorChunk(chunk.data).error };
    });
    return result;
  }

  test("META_CONTEXT: BLOCK_STATUS uses the id SET returned", async () => {
    let id = -1;
    const r = await blockStatusAfter("disk", async (c) => {
      const replies = await c.option(NBD.OPT_SET_META_CONTEXT, metaContextData("disk", ["base:allocation"]));
      id = parseMetaContext(replies[0]!.data).id;
    });
    expect(r).toEqual({ error: 0, contextId: id });
  });

  test("META_CONTEXT: SET with zero queries (or only base:) selects nothing, so BLOCK_STATUS gets EINVAL", async () => {
    for (const queries of [[], ["base:"]]) {
      const r = await blockStatusAfter("disk", async (c) => {
        expect(types(await c.option(NBD.OPT_SET_META_CONTEXT, metaContextData("disk", queries)))).toEqual([NBD.REP_ACK]);
      });
      expect(r.error).toBe(NBD.EINVAL);
    }
  });

  test("META_CONTEXT: SET replaces the previous selection even when it fails", async () => {
    const r = await blockStatusAfter("disk", async (c) => {
      await c.option(NBD.OPT_SET_META_CONTEXT, metaContextData("disk", ["base:allocation"]));
      expect(types(await c.option(NBD.OPT_SET_META_CONTEXT, concat(u32(4), utf8("disk"))))).toEqual([
        NBD.REP_ERR_INVALID,
      ]);
    });
    expect(r.error).toBe(NBD.EINVAL);
  });

  test("META_CONTEXT: BLOCK_STATUS is only valid if the last SET named the export entered", async () => {
    const second = target.exportFor("sparse"); // any export other than "disk"
    const other = await blockStatusAfter("disk", async (c) => {
      await c.option(NBD.OPT_SET_META_CONTEXT, metaContextData(second, ["base:allocation"]));
    });
    expect(other.error).toBe(NBD.EINVAL);
    const same = await blockStatusAfter(second, async (c) => {
      await c.option(NBD.OPT_SET_META_CONTEXT, metaContextData(second, ["base:allocation"]));
    });
    expect(same.error).toBe(0);
  });
}
