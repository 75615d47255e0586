// The blocking flag (R6) through a real agent: with a storage write stalled in flight, a blocking
// set_entry_state does not answer until that write completes; a non-blocking one answers at once,
// and so does a blocking one on another disk.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { reapAll, tempDir } from "./helpers/processes.ts";
import { startStandIn, type StandIn } from "./helpers/stand-in-controller.ts";
import { BlockClient } from "./helpers/block-client.ts";
import { mappedWord } from "../wasm/entry.ts";

const SEGMENT = 65536;
const dir = tempDir("blocking-flag");
const stallFlag = join(dir.path, "stall");
const container = join(dir.path, "container.img");
let standIn: StandIn;

beforeAll(async () => {
  writeFileSync(container, new Uint8Array(16 * SEGMENT));
  standIn = await startStandIn(dir.path, { TABLEDISK_STALL_WRITES_WHILE: stallFlag });
  await standIn.command("add_container", { id: 1, path: container });
  await standIn.command("new_table", { disk: 1, name: "b", size: 16 * SEGMENT, segmentShift: 16, readOnly: false });
  await standIn.command("set_entry", { disk: 1, first: 0, runs: [[mappedWord(1, 0), 1]], blocking: false });
  await standIn.command("new_table", { disk: 2, name: "other", size: 16 * SEGMENT, segmentShift: 16, readOnly: false });
});

afterAll(async () => {
  rmSync(stallFlag, { force: true });
  await standIn?.stop();
  await reapAll();
  dir.remove();
});

test("blocking: a blocking set_entry_state waits for a stalled write in flight; a non-blocking one does not", async () => {
  const client = await BlockClient.open(standIn.nbdSocket, "b");
  writeFileSync(stallFlag, "");
  let writeDone = false;
  const write = client.write(0, new Uint8Array(4096).fill(7)).then((errno) => {
    writeDone = true;
    return errno;
  });
  // The write is in flight once the agent says it is stuck in it; a non-blocking command answers.
  await standIn.agent.waitForLine(/storage write stalled/);
  await standIn.command("set_entry_state", { disk: 1, first: 1, count: 1, set: ["nw"], clear: [], blocking: false });
  expect(writeDone).toBe(false);

  let blockingDone = false;
  let released = false;
  const blocking = standIn
    .command("set_entry_state", { disk: 1, first: 0, count: 1, set: ["nw"], clear: [], blocking: true })
    .then(() => {
      blockingDone = true;
      // Not the client's view of the write (its reply travels on another socket): the stall.
      expect(released).toBe(true);
    });
  // A command sent after it is answered while it still waits: it is really held, not just slow.
  await standIn.command("get_status", { disk: 1, first: 0, count: 2 });
  expect(blockingDone).toBe(false);
  // Drains are per disk: a blocking command on another disk answers while this one waits.
  await standIn.command("set_entry_state", { disk: 2, first: 0, count: 1, set: ["nw"], clear: [], blocking: true });
  expect(blockingDone).toBe(false);
  expect(writeDone).toBe(false);

  released = true;
  rmSync(stallFlag);
  expect(await write).toBe(0);
  await blocking;
  expect(blockingDone).toBe(true);
  await client.close();
});
