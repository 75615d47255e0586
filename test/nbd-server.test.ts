// The server around the protocol: transports, worker threads with reusePort, shutdown (E: finish
// in-flight work, then ESHUTDOWN; A: ERR_SHUTDOWN during haggling), durability of FLUSH/FUA across
// a kill (G), limits, the handshake timeout and the log callback. The target tests run against the
// memory fixture and the real system (`ctl up`); the in-process tests at the end test the NBD
// layer's API itself.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startNbdServer } from "../agent/nbd/server.ts";
import { MemoryBackend } from "./fixtures/memory-backend.ts";
import { expectOk, openSession, pattern, roundTrip } from "./helpers/nbd-session.ts";
import {
  type AgentTarget,
  lacks,
  NBD_TARGET_KINDS,
  type NbdTarget,
  type NbdTargetKind,
  type NbdTargetOptions,
  startAgentTarget,
  startNbdTarget,
  testWith,
} from "./helpers/nbd-target.ts";
import { encodeRequest, NBD, RawNbdClient } from "./helpers/raw-nbd-client.ts";

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function start(kind: NbdTargetKind, options: NbdTargetOptions = {}): Promise<NbdTarget> {
  const target = await startNbdTarget({ kind, ...options });
  cleanups.push(() => target.stop());
  return target;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "nbd-server-test-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const MIB = 1024 * 1024;

for (const kind of NBD_TARGET_KINDS) {
  describe(`NBD server [${kind}]`, () => suite(kind));
}

function suite(kind: NbdTargetKind): void {
  test("server: listens on TCP port 0 and serves clients there", async () => {
    const target = await start(kind, { transport: "tcp" });
    // The fixture announces the default export (""); ctl up announces each disk by name.
    expect(target.uri).toMatch(kind === "fixture" ? /^nbd:\/\/127\.0\.0\.1:\d+\/$/ : /^nbd:\/\/127\.0\.0\.1:\d+\/disk$/);
    expect(target.port).toBeGreaterThan(0);
    await target.assertServes();
  });

  test("server: worker threads share one TCP port (reusePort) and one disk", async () => {
    // The agent's "disk" is 16 MiB rather than 4; nothing here depends on the size.
    const exports = lacks(kind, "exportConfig") ? {} : { exports: [{ name: "disk", sizeBytes: 4 * MIB }] };
    const target = await start(kind, { workers: 3, ...exports });
    const sessions = await Promise.all(Array.from({ length: 8 }, () => openSession(target, "disk")));
    try {
      for (const [i, s] of sessions.entries()) {
        await expectOk(s, { type: NBD.CMD_WRITE, offset: BigInt(i * 4096), data: pattern(4096, i + 1) });
        await expectOk(s, { type: NBD.CMD_FLUSH });
      }
      for (const [i, s] of sessions.entries()) {
        const j = (i + 3) % sessions.length;
        expect(await expectOk(s, { type: NBD.CMD_READ, offset: BigInt(j * 4096), length: 4096 })).toEqual(
          pattern(4096, j + 1),
        );
      }
      // CAN_MULTI_CONN (L1126-1133): write on A, FLUSH on B, then C (maybe another thread) sees it.
      expect(sessions.every((s) => s.tflags & NBD.TF_CAN_MULTI_CONN)).toBe(true);
      const [a, b, c] = [sessions[0]!, sessions[4]!, sessions[7]!];
      const data = pattern(65536, 99);
      await expectOk(a, { type: NBD.CMD_WRITE, offset: BigInt(2 * MIB), data });
      await expectOk(b, { type: NBD.CMD_FLUSH });
      expect(await expectOk(c, { type: NBD.CMD_READ, offset: BigInt(2 * MIB), length: 65536 })).toEqual(data);
    } finally {
      for (const s of sessions) s.client.close();
    }
    await target.waitIdle();
  });

  testWith(kind, "multiConnSwitch")("server: CAN_MULTI_CONN can be switched off", async () => {
    const target = await start(kind, { multiConn: false });
    const s = await openSession(target, target.exportName);
    s.client.close();
    expect(s.tflags & NBD.TF_CAN_MULTI_CONN).toBe(0);
  });

  // The agent's version: "server: SIGTERM to ctl up ..." below.
  testWith(kind, "control", "exportConfig")("server: close() finishes in-flight requests, then answers new ones with ESHUTDOWN", async () => {
    const target = await start(kind, {
      graceMs: 10_000,
      exports: [
        { name: "disk", sizeBytes: MIB },
        { name: "slow", sizeBytes: MIB, delays: [{ offset: 0, length: 4096, ms: 300 }] },
      ],
    });
    const data = pattern(4096, 5);
    const s = await openSession(target, "slow", { structured: true });
    await expectOk(s, { type: NBD.CMD_WRITE, offset: 0n, data });
    const haggler = await target.connect();
    await haggler.handshake();

    await s.client.sendRequest({ type: NBD.CMD_READ, cookie: 1n, offset: 0n, length: 4096 }); // in flight for 300 ms
    expect(await target.control("CLOSE")).toBe("CLOSING");
    const late = await roundTrip(s, { type: NBD.CMD_READ, cookie: 2n, offset: 8192n, length: 512 });
    expect(late.error).toBe(NBD.ESHUTDOWN);
    const write = await roundTrip(s, { type: NBD.CMD_WRITE, cookie: 3n, offset: 0n, data: new Uint8Array(4096) });
    expect(write.error).toBe(NBD.ESHUTDOWN);
    // The read that was in flight completes normally, with the data the refused write did not touch.
    const inFlight = await s.client.readStructuredReply();
    expect(inFlight[0]!.cookie).toBe(1n);
    expect(inFlight[0]!.type).toBe(NBD.REPLY_TYPE_OFFSET_DATA);
    expect(inFlight[0]!.data.subarray(8)).toEqual(data);

    // Haggling clients get ERR_SHUTDOWN for options, but ABORT is still acknowledged (L274-276).
    expect((await haggler.option(NBD.OPT_LIST)).map((r) => r.type)).toEqual([NBD.REP_ERR_SHUTDOWN]);
    expect((await haggler.option(NBD.OPT_GO, new Uint8Array(6))).map((r) => r.type)).toEqual([NBD.REP_ERR_SHUTDOWN]);
    expect((await haggler.option(NBD.OPT_ABORT)).map((r) => r.type)).toEqual([NBD.REP_ACK]);
    await haggler.expectClose();

    // No new connections.
    const refused = await RawNbdClient.connect(target.endpoint).then(
      (c) => c.expectClose().then(() => "closed"),
      () => "refused",
    );
    expect(["closed", "refused"]).toContain(refused);

    // The client obeys ESHUTDOWN with a soft disconnect; then close() resolves.
    await s.client.disconnect();
    expect(await target.nextLine()).toBe("CLOSED");
    expect(await target.exited).toBe(0);
  });

  // On the agent: the idle client of the SIGTERM test below.
  testWith(kind, "control")("server: after the shutdown grace period, idle connections are closed", async () => {
    const target = await start(kind, { graceMs: 200 });
    const s = await openSession(target, target.exportName);
    const haggler = await target.connect();
    await haggler.handshake();
    expect(await target.control("CLOSE")).toBe("CLOSING");
    await s.client.expectClose(5000);
    await haggler.expectClose(5000);
    expect(await target.nextLine()).toBe("CLOSED");
  });

  testWith(kind, "control", "exportConfig")("server: close() waits for requests still in flight after the grace period", async () => {
    const target = await start(kind, {
      graceMs: 50,
      exports: [{ name: "slow", sizeBytes: MIB, delays: [{ offset: 0, length: 4096, ms: 400 }] }],
    });
    const s = await openSession(target, "slow");
    await s.client.sendRequest({ type: NBD.CMD_WRITE, cookie: 8n, offset: 0n, data: pattern(4096, 8) });
    expect(await target.control("CLOSE")).toBe("CLOSING");
    // The write outlives the grace period; its reply still comes before the connection closes.
    expect(await s.client.readSimpleReply()).toMatchObject({ cookie: 8n, error: 0 });
    await s.client.expectClose();
    expect(await target.nextLine()).toBe("CLOSED");
  });

  // The agent's version: "server: kill -9 of ctl up ..." below.
  testWith(kind, "exportConfig")("server: data acknowledged by FLUSH or FUA survives a kill -9", async () => {
    const dir = tempDir();
    const exports = [{ name: "p", sizeBytes: MIB, persistPath: join(dir, "p.img") }];
    const first = await start(kind, { exports });
    const flushed = pattern(8192, 21);
    const fua = pattern(4096, 22);
    const s = await openSession(first, "p");
    await expectOk(s, { type: NBD.CMD_WRITE, offset: 0n, data: flushed });
    await expectOk(s, { type: NBD.CMD_FLUSH });
    await expectOk(s, { type: NBD.CMD_WRITE, flags: NBD.CMD_FLAG_FUA, offset: 65536n, data: fua });
    // Not flushed: may be lost, and the test does not care either way.
    await s.client.sendRequest({ type: NBD.CMD_WRITE, offset: 131072n, data: pattern(4096, 23) });
    await first.kill("SIGKILL");
    s.client.close();

    const second = await start(kind, { exports });
    const again = await openSession(second, "p");
    try {
      expect(await expectOk(again, { type: NBD.CMD_READ, offset: 0n, length: 8192 })).toEqual(flushed);
      expect(await expectOk(again, { type: NBD.CMD_READ, offset: 65536n, length: 4096 })).toEqual(fua);
    } finally {
      again.client.close();
    }
  });

  testWith(kind, "handshakeTimeout")("server: a negotiation that takes too long is closed", async () => {
    const target = await start(kind, { handshakeTimeoutMs: 300 });
    const c = await target.connect();
    await c.handshake();
    await c.expectClose(5000);
    expect(target.logs.some((l) => l.includes("timed out"))).toBe(true);
    // The timer stops once transmission starts.
    const s = await openSession(target, target.exportName);
    try {
      const deadline = Date.now() + 600;
      while (Date.now() < deadline) await expectOk(s, { type: NBD.CMD_READ, offset: 0n, length: 512 });
    } finally {
      s.client.close();
    }
  });

  // ---------------------------------------------------------------------------------------------
  // The real system only: stopping and killing `ctl up`

  // E (L451-455): finish in-flight work, then answer new requests with ESHUTDOWN; A (L274-276):
  // while shutting down, options other than ABORT get ERR_SHUTDOWN. Stopped the way a service
  // manager stops it.
  testWith(kind, "sigterm")("server: SIGTERM to ctl up answers every request (done or ESHUTDOWN), refuses options, closes idle clients, exits 0", async () => {
    const target = await startAgentTarget();
    cleanups.push(() => target.stop());
    const SEGMENT = 65536; // "disk" has 64 KiB segments, 256 of them
    const s = await openSession(target, target.exportName);
    const idle = await openSession(target, target.exportName);
    const haggler = await target.connect();
    await haggler.handshake();

    // Batches of writes to segments nothing touched yet: each waits for a fault answer from the
    // controller, so requests are in flight inside the agent when the signal lands.
    const written = new Map<bigint, { offset: bigint; data: Uint8Array }>();
    const answers = new Map<bigint, number>();
    let exiting: Promise<void> | null = null;
    let segment = 0;
    let closedEarly = "";
    while (![...answers.values()].includes(NBD.ESHUTDOWN) && closedEarly === "") {
      if (segment + 8 > 256) throw new Error(`no ESHUTDOWN after ${segment} writes`);
      const batch: Uint8Array[] = [];
      for (let i = 0; i < 8; i++, segment++) {
        const cookie = BigInt(segment + 1);
        const offset = BigInt(segment * SEGMENT + 512);
        const data = pattern(4096, segment + 1);
        written.set(cookie, { offset, data });
        batch.push(encodeRequest({ type: NBD.CMD_WRITE, cookie, offset, data }));
      }
      await s.client.send(Buffer.concat(batch));
      exiting ??= target.kill("SIGTERM"); // right behind the first batch; resolves once ctl up exited
      for (let i = 0; i < batch.length; i++) {
        try {
          const r = await s.client.readSimpleReply();
          expect(answers.has(r.cookie)).toBe(false);
          answers.set(r.cookie, r.error);
        } catch (error) {
          closedEarly = String(error);
          break;
        }
      }
    }
    // Every request the server took got exactly one answer before anything was closed.
    expect({ closedEarly, unanswered: written.size - answers.size }).toEqual({ closedEarly: "", unanswered: 0 });
    const unexpected = [...answers].filter(([, error]) => error !== 0 && error !== NBD.ESHUTDOWN);
    expect(unexpected.map(([cookie, error]) => ({ cookie, error }))).toEqual([]);

    // Haggling clients: ERR_SHUTDOWN for options, ACK for ABORT.
    expect((await haggler.option(NBD.OPT_LIST)).map((r) => r.type)).toEqual([NBD.REP_ERR_SHUTDOWN]);
    expect((await haggler.option(NBD.OPT_ABORT)).map((r) => r.type)).toEqual([NBD.REP_ACK]);
    await haggler.expectClose();
    // No new connections.
    const refused = await target.connect().then(
      (c) => c.expectClose().then(() => "closed"),
      () => "refused",
    );
    expect(["closed", "refused"]).toContain(refused);
    // The client obeys ESHUTDOWN with a soft disconnect; the idle one is closed after the grace period.
    await s.client.disconnect();
    await idle.client.expectClose(15_000);
    await exiting;
    expect(await target.exited).toBe(0);

    // A clean stop loses nothing that was acknowledged.
    await target.restart();
    const again = await openSession(target, target.exportName);
    try {
      for (const [cookie, error] of answers) {
        if (error !== 0) continue;
        const { offset, data } = written.get(cookie)!;
        expect(await expectOk(again, { type: NBD.CMD_READ, offset, length: data.length })).toEqual(data);
      }
    } finally {
      again.client.close();
    }
  }, 60_000);

  // G, last item: kill the server between a WRITE reply and a FLUSH reply; data acknowledged by
  // FLUSH (or FUA) must survive the restart. With two worker threads and CAN_MULTI_CONN, a FLUSH on
  // one connection covers writes completed on another (L1126-1133).
  testWith(kind, "restart")("server: kill -9 of ctl up between a WRITE reply and a FLUSH reply: what FLUSH or FUA acknowledged survives", async () => {
    const target: AgentTarget = await startAgentTarget({ workers: 2 });
    cleanups.push(() => target.stop());
    const a = await openSession(target, target.exportName);
    const b = await openSession(target, target.exportName);
    const flushedAt = 12_345n; // crosses segment boundaries
    const flushed = pattern(200_000, 61);
    await expectOk(a, { type: NBD.CMD_WRITE, offset: flushedAt, data: flushed });
    await expectOk(b, { type: NBD.CMD_FLUSH });
    const fuaAt = BigInt(3 * MIB + 100);
    const fua = pattern(4096, 62);
    await expectOk(a, { type: NBD.CMD_WRITE, flags: NBD.CMD_FLAG_FUA, offset: fuaAt, data: fua });
    const lastAt = BigInt(5 * MIB + 7);
    const last = pattern(65536, 63);
    await expectOk(a, { type: NBD.CMD_WRITE, offset: lastAt, data: last });
    // The WRITE was answered; now a FLUSH, and kill -9 at once.
    await a.client.sendRequest({ type: NBD.CMD_FLUSH, cookie: 77n });
    await target.kill("SIGKILL");
    let lastFlushAcked = false;
    try {
      const r = await a.client.readSimpleReply();
      lastFlushAcked = r.cookie === 77n && r.error === 0;
    } catch {
      // The server died before answering: the last write may or may not have survived.
    }
    a.client.close();
    b.client.close();

    await target.restart();
    const again = await openSession(target, target.exportName);
    try {
      expect(await expectOk(again, { type: NBD.CMD_READ, offset: flushedAt, length: flushed.length })).toEqual(flushed);
      expect(await expectOk(again, { type: NBD.CMD_READ, offset: fuaAt, length: fua.length })).toEqual(fua);
      if (lastFlushAcked) {
        expect(await expectOk(again, { type: NBD.CMD_READ, offset: lastAt, length: last.length })).toEqual(last);
      }
    } finally {
      again.client.close();
    }
  }, 60_000);
}

// ---------------------------------------------------------------------------------------------
// In-process: the API itself

test("server: in process, close() resolves once every connection is gone and every handle released", async () => {
  const dir = tempDir();
  const backend = new MemoryBackend([{ name: "d", sizeBytes: MIB, asyncAll: true }]);
  const lines: string[] = [];
  const server = await startNbdServer({
    backend,
    listen: { kind: "unix", path: join(dir, "s.sock") },
    log: (line) => lines.push(line),
    shutdownGraceMs: 100,
  });
  expect(server.uri).toBe(`nbd+unix:///?socket=${encodeURIComponent(join(dir, "s.sock"))}`);
  expect(server.unixPath).toBe(join(dir, "s.sock"));
  const c = await RawNbdClient.connect({ unixPath: join(dir, "s.sock") });
  await c.negotiate("d");
  await c.sendRequest({ type: NBD.CMD_READ, cookie: 1n, offset: 0n, length: 512 });
  expect((await c.readSimpleReply(512)).error).toBe(0);
  expect(server.connectionCount).toBe(1);
  expect(backend.openHandles).toBe(1);

  // A bad magic is reported through the log option as one line.
  const bad = await RawNbdClient.connect({ unixPath: join(dir, "s.sock") });
  await bad.handshake();
  await bad.send(new Uint8Array(16));
  await bad.expectClose();
  expect(lines.some((l) => l.includes("IHAVEOPT") && !l.includes("\n"))).toBe(true);

  const closing = server.close();
  expect(server.close()).toBe(closing); // idempotent
  await c.expectClose(5000);
  await closing;
  expect(server.connectionCount).toBe(0);
  expect(backend.openHandles).toBe(0);
});

test("server: connections beyond connectionsMax are closed at once", async () => {
  const dir = tempDir();
  const path = join(dir, "s.sock");
  const server = await startNbdServer({
    backend: new MemoryBackend([{ name: "d", sizeBytes: MIB }]),
    listen: { kind: "unix", path },
    connectionsMax: 2,
    shutdownGraceMs: 0,
  });
  cleanups.push(() => server.close());
  const a = await RawNbdClient.connect({ unixPath: path });
  const b = await RawNbdClient.connect({ unixPath: path });
  await a.readGreeting();
  await b.readGreeting();
  const c = await RawNbdClient.connect({ unixPath: path });
  expect((await c.expectClose()).length).toBe(0);
  a.close();
  b.close();
});

test("server: TCP in process reports host, port and an nbd:// URI", async () => {
  const server = await startNbdServer({
    backend: new MemoryBackend([{ name: "d", sizeBytes: MIB }]),
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    shutdownGraceMs: 0,
  });
  cleanups.push(() => server.close());
  expect(server.host).toBe("127.0.0.1");
  expect(server.port).toBeGreaterThan(0);
  expect(server.uri).toBe(`nbd://127.0.0.1:${server.port}/`);
  const c = await RawNbdClient.connect({ host: "127.0.0.1", port: server.port! });
  await c.negotiate("");
  await c.disconnect();
});

test("server: a WRITE pipelined right behind GO's option is parsed in the same read", async () => {
  const dir = tempDir();
  const path = join(dir, "s.sock");
  const server = await startNbdServer({
    backend: new MemoryBackend([{ name: "d", sizeBytes: MIB }]),
    listen: { kind: "unix", path },
    shutdownGraceMs: 0,
  });
  cleanups.push(() => server.close());
  const c = await RawNbdClient.connect({ unixPath: path });
  await c.handshake();
  // Not what a client should do (it must wait for GO's reply), but the bytes must not get lost.
  const { infoRequestData, u32, u64, concat } = await import("./helpers/raw-nbd-client.ts");
  const go = infoRequestData("d");
  await c.send(
    concat(
      u64(NBD.IHAVEOPT),
      u32(NBD.OPT_GO),
      u32(go.length),
      go,
      encodeRequest({ type: NBD.CMD_WRITE, cookie: 5n, offset: 0n, data: pattern(100, 1) }),
      encodeRequest({ type: NBD.CMD_READ, cookie: 6n, offset: 0n, length: 100 }),
    ),
  );
  const replies = await c.readOptionReplies();
  expect(replies.at(-1)!.type).toBe(NBD.REP_ACK);
  expect(await c.readSimpleReply()).toMatchObject({ cookie: 5n, error: 0 });
  expect((await c.readSimpleReply(100)).data).toEqual(pattern(100, 1));
  await c.disconnect();
});
