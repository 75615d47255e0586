// The control port is untrusted input: malformed frames get an error and a closed connection,
// and the controller keeps serving everyone else with its data intact.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { encode } from "@msgpack/msgpack";
import { join } from "node:path";
import { chmodSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { Child, ctl, reapAll, spawnCtl, tempDir, TEST_SECRET_FILE } from "./helpers/processes.ts";
import { readSecret, SECRET_FILE } from "../engine/secret.ts";
import { encodeFrame, FRAME_BYTES_MAX } from "../engine/wire/frame.ts";
import { PROTOCOL_VERSION } from "../engine/wire/messages.ts";

const dir = tempDir("control-wire");
const socket = join(dir.path, "control.sock");
const control = `unix:${socket}`;
let controller: Child;
let hello: Uint8Array;
/** No secret from anywhere: no file option or variable, and a working directory without data/. */
const NO_SECRET = { CTL_SECRET_FILE: "", CTL_SECRET: "" };

beforeAll(async () => {
  controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller");
  await controller.waitForLine(/^ready:/);
  hello = encodeFrame({ t: "req", id: 1, op: "hello", args: { version: PROTOCOL_VERSION, role: "ctl", secret: readSecret(TEST_SECRET_FILE) } });
  const created = await ctl(["--control", control, "disk", "create", "keep", "--size", "1G"]);
  expect(created.code).toBe(0);
});

afterAll(async () => {
  await reapAll();
  dir.remove();
});

function frameOf(body: Uint8Array): Uint8Array {
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  return frame;
}

/** Sends raw bytes and collects what comes back until the controller closes the connection or
 *  has answered with an error frame. */
async function exchange(bytes: Uint8Array[]): Promise<{ closed: boolean; received: Uint8Array }> {
  const chunks: Uint8Array[] = [];
  let closed = false;
  let onClose!: () => void;
  const done = new Promise<void>((resolve) => (onClose = resolve));
  const conn = await Bun.connect({
    unix: socket,
    socket: {
      data(_, chunk) {
        chunks.push(new Uint8Array(chunk));
        if (Buffer.concat(chunks).includes(Buffer.from("error"))) onClose();
      },
      close() {
        closed = true;
        onClose();
      },
      error() {
        closed = true;
        onClose();
      },
    },
  });
  for (const piece of bytes) conn.write(piece);
  const bound = setTimeout(() => conn.end(), 5000);
  await done;
  clearTimeout(bound);
  return { closed, received: Buffer.concat(chunks) };
}

async function stillServes(): Promise<void> {
  const listed = await ctl(["--control", control, "disk", "list", "--json"]);
  expect(listed.code).toBe(0);
  expect(JSON.parse(listed.stdout).map((disk: { name: string }) => disk.name)).toEqual(["keep"]);
}

describe("control protocol", () => {
  // Built lazily: the authenticated hello exists only once the controller has made the secret.
  const hostile: [string, () => Uint8Array[]][] = [
    ["a frame longer than the limit", () => [new Uint8Array([0xff, 0xff, 0xff, 0xff, 1, 2, 3])]],
    ["a frame that is not msgpack", () => [frameOf(new Uint8Array([0xc1, 0xc1, 0xc1]))]],
    ["a message that is not an object", () => [frameOf(encode([1, 2, 3]))]],
    ["an unknown request", () => [encodeFrame({ t: "req", id: 1, op: "format_everything", args: {} })]],
    ["a request before hello", () => [encodeFrame({ t: "req", id: 1, op: "disk.delete", args: { name: "keep" } })]],
    ["a hello with a wrong version", () => [encodeFrame({ t: "req", id: 1, op: "hello", args: { version: 99, role: "ctl", secret: readSecret(TEST_SECRET_FILE) } })]],
    ["a hello without the secret", () => [encodeFrame({ t: "req", id: 1, op: "hello", args: { version: PROTOCOL_VERSION, role: "ctl" } })]],
    ["a hello with a wrong secret", () => [encodeFrame({ t: "req", id: 1, op: "hello", args: { version: PROTOCOL_VERSION, role: "agent", agentId: "x", nbd: "unix:/x", secret: "guess" } })]],
    ["an unauthenticated frame above the small pre-hello limit", () => [frameOf(new Uint8Array(128 * 1024))]],
    ["a request with a field of the wrong type", () => [
      hello,
      encodeFrame({ t: "req", id: 2, op: "disk.create", args: { name: "x", size: "big" } }),
    ]],
    ["a disk name that is not a safe name", () => [
      hello,
      encodeFrame({ t: "req", id: 2, op: "disk.create", args: { name: "../../etc", size: 4096 } }),
    ]],
    ["a response to no request", () => [encodeFrame({ t: "res", id: 77, ok: true, result: {} })]],
    ["a fault from a ctl connection", () => [
      hello,
      encodeFrame({ t: "req", id: 2, op: "fault", args: { disk: 1, op: "write", first: 0, last: 0, state: 0, offset: 0, length: 1 } }),
    ]],
  ];

  for (const [what, bytes] of hostile) {
    test(`control: ${what} gets an error answer and the controller keeps serving`, async () => {
      const { received } = await exchange(bytes());
      expect(received.length).toBeGreaterThan(4);
      await stillServes();
    });
  }

  test("control: a flood of random frames never takes the controller down", async () => {
    let seed = 12345;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 50; round += 1) {
      const body = new Uint8Array(1 + Math.floor(random() * 200)).map(() => Math.floor(random() * 256));
      const pieces = round % 2 === 0 ? [frameOf(body)] : [body];
      await exchange(pieces);
    }
    await stillServes();
  });

  test("control: a flood of huge frames, authenticated or not, leaves the controller serving with its data intact", async () => {
    const before = await ctl(["--control", control, "disk", "info", "keep", "--json"]);
    const junk = new Uint8Array(FRAME_BYTES_MAX).map((_, i) => (i * 2654435761) >>> 24);
    const huge = frameOf(junk);
    const claimsHuge = new Uint8Array([0x00, 0xff, 0xff, 0xff, ...junk.subarray(0, 1024 * 1024)]);
    const floods: Uint8Array[][] = [];
    for (let i = 0; i < 16; i += 1) floods.push(i % 2 === 0 ? [claimsHuge] : [huge]);
    for (let i = 0; i < 3; i += 1) floods.push([hello, huge]);
    const answers = await Promise.all(floods.map((bytes) => exchange(bytes)));
    // Every one of them was answered with an error or cut off.
    for (const answer of answers) expect(answer.closed || answer.received.length > 4).toBe(true);
    await stillServes();
    const after = await ctl(["--control", control, "disk", "info", "keep", "--json"]);
    expect(after.stdout).toBe(before.stdout);
    const check = await ctl(["--control", control, "check"]);
    expect(check.code).toBe(0);
  });
});

describe("control secret", () => {
  test("ctl without the secret, or with a wrong one, is refused with a clear error", async () => {
    const none = await ctl(["--control", control, "disk", "list"], { env: NO_SECRET });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no control secret");
    const wrong = await ctl(["--control", control, "disk", "list"], { env: { ...NO_SECRET, CTL_SECRET: "not-the-secret" } });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toBe("ctl: error: the control secret is missing or wrong (the secret came from the environment variable CTL_SECRET)\n");
    const right = await ctl(["--control", control, "disk", "list"], { env: { ...NO_SECRET, CTL_SECRET: readSecret(TEST_SECRET_FILE) } });
    expect(right.code).toBe(0);
  });

  test("a wrong secret is reported with where it came from: --secret-file, CTL_SECRET_FILE or the default file", async () => {
    const own = tempDir("wrong-secret");
    try {
      const file = join(own.path, "wrong.secret");
      writeFileSync(file, "not-the-secret\n", { mode: 0o600 });
      const viaFlag = await ctl(["--control", control, "--secret-file", file, "disk", "list"], { env: NO_SECRET });
      expect(viaFlag.stderr).toBe(`ctl: error: the control secret is missing or wrong (the secret came from --secret-file ${file})\n`);
      const viaEnv = await ctl(["--control", control, "disk", "list"], { env: { ...NO_SECRET, CTL_SECRET_FILE: file } });
      expect(viaEnv.stderr).toBe(`ctl: error: the control secret is missing or wrong (the secret came from CTL_SECRET_FILE ${file})\n`);
      mkdirSync(join(own.path, "data"));
      writeFileSync(join(own.path, "data", SECRET_FILE), "also-wrong\n", { mode: 0o600 });
      const viaDefault = await ctl(["--control", control, "disk", "list"], { env: NO_SECRET, cwd: own.path });
      expect(viaDefault.stderr).toBe(`ctl: error: the control secret is missing or wrong (the secret came from the default file data/${SECRET_FILE})\n`);
    } finally {
      own.remove();
    }
  });

  test("an agent with a wrong secret is refused and exits with the reason", async () => {
    const agent = spawnCtl(["--control", control, "agent", "--id", "intruder", "--nbd", `unix:${join(dir.path, "intruder.sock")}`], "intruder", {
      ...NO_SECRET,
      CTL_SECRET: "not-the-secret",
    });
    expect(await agent.exited).toBe(1);
    expect(agent.lines.join("\n")).toContain("the controller refused agent intruder: the control secret is missing or wrong (the secret came from the environment variable CTL_SECRET)");
    const agents = await ctl(["--control", control, "agent", "list", "--json"]);
    expect(JSON.parse(agents.stdout)).toEqual([]);
  });

  test("a first start creates the secret in the data directory, owner-only, and keeps it across restarts", async () => {
    const own = tempDir("control-secret");
    try {
      const ownControl = `unix:${join(own.path, "control.sock")}`;
      const start = () => spawnCtl(["--control", ownControl, "controller", "--data", join(own.path, "data"), "--lun-size", "16M"], "own", NO_SECRET);
      let child = start();
      await child.waitForLine(/^ready:/);
      const file = join(own.path, "data", SECRET_FILE);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const secret = readSecret(file);
      expect(secret).toMatch(/^[0-9a-f]{64}$/);
      // Found by --secret-file, and by the default data/ of the working directory.
      expect((await ctl(["--control", ownControl, "--secret-file", file, "disk", "list"], { env: NO_SECRET })).code).toBe(0);
      expect((await ctl(["--control", ownControl, "disk", "list"], { env: NO_SECRET, cwd: own.path })).code).toBe(0);
      await child.kill();
      child = start();
      await child.waitForLine(/^ready:/);
      expect(readSecret(file)).toBe(secret);
      await child.kill();
    } finally {
      own.remove();
    }
  });

  test("a controller refuses a secret file that others can read", async () => {
    const own = tempDir("control-secret-mode");
    try {
      const file = join(own.path, "shared.secret");
      await Bun.write(file, "0123456789abcdef\n");
      chmodSync(file, 0o644);
      const child = spawnCtl(["--control", `unix:${join(own.path, "c.sock")}`, "--secret-file", file, "controller", "--data", join(own.path, "data")], "mode");
      expect(await child.exited).toBe(1);
      expect(child.lines.join("\n")).toContain("can be read by others (mode 0644); chmod 600 it");
    } finally {
      own.remove();
    }
  });
});
