// R8: an agent suspended past its lease is fenced: the controller goes on without it (a snapshot
// completes), and when the agent resumes its held writes are refused, never landing in any disk;
// it registers again and serves correctly.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { Child, ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";
import { BlockClient, filled } from "./helpers/block-client.ts";
import { NBD, RawNbdClient } from "./helpers/raw-nbd-client.ts";

const KIB = 1024;
const LEASE_MS = 1500;
const dir = tempDir("lease");
const control = `unix:${join(dir.path, "control.sock")}`;
const sockets = { a: join(dir.path, "nbd-a.sock"), b: join(dir.path, "nbd-b.sock") };
const agents: Record<string, Child> = {};

beforeAll(async () => {
  const controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller");
  await controller.waitForLine(/^ready:/);
  for (const [id, socket] of Object.entries(sockets)) {
    agents[id] = spawnCtl(["--control", control, "agent", "--id", id, "--nbd", `unix:${socket}`, "--lease", String(LEASE_MS)], `agent-${id}`);
    await agents[id]!.waitForLine(/registered with the controller/);
  }
});

afterAll(async () => {
  agents.a?.proc.kill("SIGCONT");
  await reapAll();
  dir.remove();
});

/** Resolves once the process is really stopped (state T in /proc), with a bound. */
async function untilStopped(pid: number): Promise<void> {
  for (let tries = 0; tries < 1000; tries += 1) {
    const stat = await Bun.file(`/proc/${pid}/stat`).text();
    if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("T")) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`process ${pid} did not stop`);
}

test("lease: a stopped agent is fenced, the snapshot completes without it, and its held write never lands", async () => {
  expect((await ctl(["--control", control, "disk", "create", "d", "--size", "1M", "--segment-size", "64K"])).code).toBe(0);
  const onA = await BlockClient.open(sockets.a, "d");
  const onB = await BlockClient.open(sockets.b, "d");
  expect(await onA.write(0, filled(0x11, 64 * KIB))).toBe(0);
  expect(await onB.write(64 * KIB, filled(0x22, 64 * KIB))).toBe(0);

  // A raw connection to agent A with a write sent while A is stopped: it is held in the socket.
  const held = await RawNbdClient.connect({ unixPath: sockets.a });
  await held.negotiate("d");
  const seen = agents.a!.lines.length;
  agents.a!.proc.kill("SIGSTOP");
  await untilStopped(agents.a!.proc.pid);
  await held.sendRequest({ type: NBD.CMD_WRITE, cookie: 9n, offset: 4 * KIB, data: filled(0xee, 4 * KIB) });

  // B keeps writing, and a snapshot completes once A's lease has run out (it cannot answer).
  expect(await onB.write(128 * KIB, filled(0x33, 4 * KIB))).toBe(0);
  const snapshot = await ctl(["--control", control, "snapshot", "create", "d", "s"]);
  expect(snapshot.stderr).toBe("");
  expect(snapshot.code).toBe(0);
  expect(await onB.write(0, filled(0x44, 4 * KIB))).toBe(0);

  agents.a!.proc.kill("SIGCONT");
  // The held write is never applied on A's stale mapping. Either A refuses it (EIO: its lease ran
  // out), or A first registers again, dropping every entry, and serves it through faults on the
  // current mapping: then it is an ordinary write issued after the snapshot, in the origin only.
  const reply = await held.readSimpleReply();
  expect(reply.cookie).toBe(9n);
  expect([0, 5]).toContain(reply.error);
  const landed = reply.error === 0;
  held.close();
  await agents.a!.waitForLine(/registered with the controller/, undefined, seen);

  // The snapshot never has the held write; each disk has exactly what was acknowledged.
  const s = await BlockClient.open(sockets.b, "s");
  const snapshotData = await s.read(0, 192 * KIB);
  expect(snapshotData.subarray(0, 64 * KIB).every((byte) => byte === 0x11)).toBe(true);
  expect(snapshotData.subarray(64 * KIB, 128 * KIB).every((byte) => byte === 0x22)).toBe(true);
  expect(snapshotData.subarray(128 * KIB, 132 * KIB).every((byte) => byte === 0x33)).toBe(true);
  const origin = await onB.read(0, 64 * KIB);
  expect(origin.subarray(0, 4 * KIB).every((byte) => byte === 0x44)).toBe(true);
  expect(origin.subarray(4 * KIB, 8 * KIB).every((byte) => byte === (landed ? 0xee : 0x11))).toBe(true);
  expect(origin.subarray(8 * KIB).every((byte) => byte === 0x11)).toBe(true);

  // A serves again after registering, with the current mappings.
  const again = await BlockClient.open(sockets.a, "d");
  expect((await again.read(0, 4 * KIB)).every((byte) => byte === 0x44)).toBe(true);
  expect(await again.write(8 * KIB, filled(0x55, 4 * KIB))).toBe(0);
  expect((await s.read(8 * KIB, 4 * KIB)).every((byte) => byte === 0x11)).toBe(true);
  for (const client of [again, s, onB]) await client.close();
  onA.close().catch(() => undefined);
  const checked = await ctl(["--control", control, "check", "--json"]);
  expect(JSON.parse(checked.stdout).problems).toEqual([]);
});
