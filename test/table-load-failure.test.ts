// A disk whose table an agent cannot load (its table memory is exhausted: the one resource that can
// still run out when a table is sent) has been created all the same: `ctl` says so with a warning
// naming the agent, the disk is listed, and the agent still registers with every other table.
// A stand-in agent refuses the tables of disks named "refused-*" as the real agent does (ENOMEM).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { ctl, reapAll, spawnCtl, tempDir, TEST_SECRET_FILE, type Child } from "./helpers/processes.ts";
import { agentRequests, controllerRequests, PROTOCOL_VERSION, type ArgsOf, type AgentRequests } from "../engine/wire/messages.ts";
import { Peer, RequestError } from "../engine/wire/peer.ts";
import { connect } from "../engine/wire/transport.ts";
import { parseAddress } from "../engine/util/address.ts";
import { secretFromFile } from "../engine/secret.ts";

const dir = tempDir("table-load-failure");
const control = `unix:${join(dir.path, "control.sock")}`;
const INSTANCE = crypto.randomUUID();
let controller: Child;

beforeAll(async () => {
  controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "data"), "--lun-size", "64M"], "controller");
  await controller.waitForLine(/^ready:/);
});

afterAll(async () => {
  await reapAll();
  dir.remove();
});

/** Registers the stand-in agent "tiny"; the names of the tables it loaded go to `loaded`. */
async function standInAgent(loaded: string[]) {
  const peer = new Peer(await connect(parseAddress(control)), agentRequests, controllerRequests);
  peer.serve(async (op, args) => {
    if (op === "new_table") {
      const { name } = args as ArgsOf<AgentRequests, "new_table">;
      if (name.startsWith("refused-")) throw new RequestError("ENOMEM", `agent tiny: cannot load the table of ${name}: out of table memory`);
      loaded.push(name);
    }
    return {};
  });
  await peer.request("hello", {
    version: PROTOCOL_VERSION,
    role: "agent",
    secret: secretFromFile(TEST_SECRET_FILE).secret,
    agentId: "tiny",
    instance: INSTANCE,
    leaseMs: 600_000,
    nbd: `unix:${join(dir.path, "nbd.sock")}`,
  });
  return peer;
}

const control_ = (args: string[]) => ctl(["--control", control, ...args]);

test("a disk or snapshot an agent cannot load is created and reported as such; the agent registers again with the rest", async () => {
  const loaded: string[] = [];
  const agent = await standInAgent(loaded);

  const plain = await control_(["disk", "create", "ok-1", "--size", "1M"]);
  expect({ code: plain.code, stderr: plain.stderr }).toEqual({ code: 0, stderr: "" });

  const notLoaded = /^ctl: warning: disk (refused-[a-z]+) was created, but agent tiny could not load its table \(agent tiny: cannot load the table of \1: out of table memory\): it is not exported there until that agent registers again\n$/;
  const disk = await control_(["disk", "create", "refused-disk", "--size", "1M"]);
  expect(disk.code).toBe(0);
  expect(disk.stdout).toStartWith("created disk refused-disk");
  expect(disk.stderr).toMatch(notLoaded);
  const snapshot = await control_(["snapshot", "create", "ok-1", "refused-snapshot", "--json"]);
  expect(snapshot.code).toBe(0);
  expect(JSON.parse(snapshot.stdout)).toMatchObject({ name: "refused-snapshot", parent: "ok-1" });
  expect(snapshot.stderr).toMatch(notLoaded);
  const group = await control_(["snapshot", "group", "ok-1=refused-group"]);
  expect(group.code).toBe(0);
  expect(group.stderr).toMatch(notLoaded);
  const snapshotOfRefused = await control_(["snapshot", "create", "refused-disk", "ok-2"]);
  expect({ code: snapshotOfRefused.code, stderr: snapshotOfRefused.stderr }).toEqual({ code: 0, stderr: "" });

  const listed = JSON.parse((await control_(["disk", "list", "--json"])).stdout) as { name: string }[];
  expect(listed.map((d) => d.name).sort()).toEqual(["ok-1", "ok-2", "refused-disk", "refused-group", "refused-snapshot"]);
  expect(loaded).toEqual(["ok-1", "ok-2"]);

  // Registering again loads every table there is room for; hello is answered all the same.
  agent.close();
  const reloaded: string[] = [];
  const again = await standInAgent(reloaded);
  expect(reloaded.sort()).toEqual(["ok-1", "ok-2"]);
  await controller.waitForLine(/^disk refused-disk is not exported on agent tiny: agent tiny could not load its table/);
  again.close();
});
