// The server around the protocol: transports, worker threads with reusePort, shutdown (E: finish
// in-flight work, then ESHUTDOWN; A: ERR_SHUTDOWN during haggling), durability of FLUSH/FUA across
// a kill (G), limits, the handshake timeout and the log callback.
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startNbdServer } from "../agent/nbd/server.ts";
import { MemoryBackend } from "./fixtures/memory-backend.ts";
import { expectOk, openSession, pattern, roundTrip } from "./helpers/nbd-session.ts";
import { type NbdTarget, type NbdTargetOptions, startNbdTarget } from "./helpers/nbd-target.ts";
import { encodeRequest, NBD, RawNbdClient } from "./helpers/raw-nbd-client.ts";

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function start(options: NbdTargetOptions = {}): Promise<NbdTarget> {
  const target = await startNbdTarget(options);
  cleanups.push(() => target.stop());
  return target;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "nbd-server-test-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const MIB = 1024 * 1024;

test("server: listens on TCP port 0 and serves clients there", async () => {
  const target = await start({ transport: "tcp" });
  expect(target.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/);
  expect(target.port).toBeGreaterThan(0);
  await target.assertServes();
});

test("server: worker threads share one TCP port (reusePort) and one disk", async () => {
  const target = await start({ workers: 3, exports: [{ name: "disk", sizeBytes: 4 * MIB }] });
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
  } finally {
    for (const s of sessions) s.client.close();
  }
  await target.waitIdle();
});

test("server: CAN_MULTI_CONN can be switched off", async () => {
  const target = await start({ multiConn: false });
  const s = await openSession(target, target.exportName);
  s.client.close();
  expect(s.tflags & NBD.TF_CAN_MULTI_CONN).toBe(0);
});

test("server: close() finishes in-flight requests, then answers new ones with ESHUTDOWN", async () => {
  const target = await start({
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

test("server: after the shutdown grace period, idle connections are closed", async () => {
  const target = await start({ graceMs: 200 });
  const s = await openSession(target, target.exportName);
  const haggler = await target.connect();
  await haggler.handshake();
  expect(await target.control("CLOSE")).toBe("CLOSING");
  await s.client.expectClose(5000);
  await haggler.expectClose(5000);
  expect(await target.nextLine()).toBe("CLOSED");
});

test("server: close() waits for requests still in flight after the grace period", async () => {
  const target = await start({
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

test("server: data acknowledged by FLUSH or FUA survives a kill -9", async () => {
  const dir = tempDir();
  const exports = [{ name: "p", sizeBytes: MIB, persistPath: join(dir, "p.img") }];
  const first = await start({ exports });
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

  const second = await start({ exports });
  const again = await openSession(second, "p");
  try {
    expect(await expectOk(again, { type: NBD.CMD_READ, offset: 0n, length: 8192 })).toEqual(flushed);
    expect(await expectOk(again, { type: NBD.CMD_READ, offset: 65536n, length: 4096 })).toEqual(fua);
  } finally {
    again.client.close();
  }
});

test("server: a negotiation that takes too long is closed", async () => {
  const target = await start({ handshakeTimeoutMs: 300 });
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
