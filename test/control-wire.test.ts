// The control port is untrusted input: malformed frames get an error and a closed connection,
// and the controller keeps serving everyone else with its data intact.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { encode } from "@msgpack/msgpack";
import { join } from "node:path";
import { Child, ctl, reapAll, spawnCtl, tempDir } from "./helpers/processes.ts";
import { encodeFrame } from "../engine/wire/frame.ts";
import { PROTOCOL_VERSION } from "../engine/wire/messages.ts";

const dir = tempDir("control-wire");
const socket = join(dir.path, "control.sock");
const control = `unix:${socket}`;
let controller: Child;

beforeAll(async () => {
  controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller");
  await controller.waitForLine(/^ready:/);
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
  const hostile: [string, Uint8Array[]][] = [
    ["a frame longer than the limit", [new Uint8Array([0xff, 0xff, 0xff, 0xff, 1, 2, 3])]],
    ["a frame that is not msgpack", [frameOf(new Uint8Array([0xc1, 0xc1, 0xc1]))]],
    ["a message that is not an object", [frameOf(encode([1, 2, 3]))]],
    ["an unknown request", [encodeFrame({ t: "req", id: 1, op: "format_everything", args: {} })]],
    ["a request before hello", [encodeFrame({ t: "req", id: 1, op: "disk.delete", args: { name: "keep" } })]],
    ["a hello with a wrong version", [encodeFrame({ t: "req", id: 1, op: "hello", args: { version: 99, role: "ctl" } })]],
    ["a request with a field of the wrong type", [
      encodeFrame({ t: "req", id: 1, op: "hello", args: { version: PROTOCOL_VERSION, role: "ctl" } }),
      encodeFrame({ t: "req", id: 2, op: "disk.create", args: { name: "x", size: "big" } }),
    ]],
    ["a disk name that is not a safe name", [
      encodeFrame({ t: "req", id: 1, op: "hello", args: { version: PROTOCOL_VERSION, role: "ctl" } }),
      encodeFrame({ t: "req", id: 2, op: "disk.create", args: { name: "../../etc", size: 4096 } }),
    ]],
    ["a response to no request", [encodeFrame({ t: "res", id: 77, ok: true, result: {} })]],
    ["a fault from a ctl connection", [
      encodeFrame({ t: "req", id: 1, op: "hello", args: { version: PROTOCOL_VERSION, role: "ctl" } }),
      encodeFrame({ t: "req", id: 2, op: "fault", args: { disk: 1, op: "write", first: 0, last: 0, state: 0, offset: 0, length: 1 } }),
    ]],
  ];

  for (const [what, bytes] of hostile) {
    test(`control: ${what} gets an error answer and the controller keeps serving`, async () => {
      const { received } = await exchange(bytes);
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
});
