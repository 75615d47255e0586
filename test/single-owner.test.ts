// R19: one data directory has one controller, one NBD port one agent, one agent id one process.
// A second process that would share any of them refuses to start (or to register) with one line
// naming what is taken, and the first goes on unharmed.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { CTL, ctl, reapAll, run, spawnCtl, tempDir, TEST_SECRET_FILE, type Child } from "./helpers/processes.ts";

const dir = tempDir("single-owner");

afterAll(async () => {
  await reapAll();
  dir.remove();
});

/** A TCP port on loopback that nobody listens on right now. */
function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

/** The process exits non-zero, and its last line of output is the error matching `pattern`. */
async function refusedToStart(child: Child, pattern: RegExp): Promise<void> {
  expect(await child.exited).not.toBe(0);
  const last = child.lines.filter((line) => line.trim() !== "").at(-1) ?? "";
  expect(last).toMatch(/^ctl: error: /);
  expect(last).toMatch(pattern);
}

async function ctlOk(control: string, args: string[]): Promise<string> {
  const result = await ctl(["--control", control, ...args]);
  if (result.code !== 0) throw new Error(`ctl ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

async function exportNames(uri: string): Promise<string[]> {
  const listed = await run(["nbdinfo", "--list", "--json", uri]);
  if (listed.code !== 0) throw new Error(`nbdinfo --list ${uri} failed: ${listed.stderr}`);
  return (JSON.parse(listed.stdout).exports ?? []).map((e: { "export-name": string }) => e["export-name"]).sort();
}

describe("one controller per data directory", () => {
  test("data dir: a second controller or ctl up on the same data directory is refused naming the first's pid; the first keeps every disk", async () => {
    const data = join(dir.path, "shared-data");
    const control = `unix:${join(dir.path, "first.sock")}`;
    const startFirst = async () => {
      const child = spawnCtl(["--control", control, "controller", "--data", data, "--lun-size", "64M"], "first");
      await child.waitForLine(/^ready:/);
      return child;
    };
    let first = await startFirst();
    await ctlOk(control, ["disk", "create", "before", "--size", "4M"]);

    const pid = first.proc.pid;
    const secondController = spawnCtl(["--control", `unix:${join(dir.path, "second.sock")}`, "controller", "--data", data], "second-controller");
    await refusedToStart(secondController, new RegExp(`Cannot use data directory ${data}: another controller \\(pid ${pid}\\) is using it`));
    const secondUp = spawnCtl(["--control", `unix:${join(dir.path, "third.sock")}`, "up", "--data", data, "--nbd", `unix:${join(dir.path, "third-nbd.sock")}`], "second-up");
    await refusedToStart(secondUp, new RegExp(`another controller \\(pid ${pid}\\)`));

    await ctlOk(control, ["disk", "create", "after", "--size", "4M"]);
    const names = async () => (JSON.parse(await ctlOk(control, ["disk", "list", "--json"])) as { name: string }[]).map((disk) => disk.name).sort();
    expect(await names()).toEqual(["after", "before"]);
    expect(JSON.parse(await ctlOk(control, ["check", "--json"])).problems).toEqual([]);

    // The lock dies with its holder, however it ends: a killed controller's successor starts at once.
    await first.kill("SIGKILL");
    first = await startFirst();
    expect(await names()).toEqual(["after", "before"]);
    expect(JSON.parse(await ctlOk(control, ["check", "--json"])).problems).toEqual([]);
    await first.kill();
  });
});

describe("one agent per NBD port", () => {
  test("port: a second agent or ctl up on a TCP port an agent serves is refused, and every connection still reaches the first", async () => {
    const port = freePort();
    const nbd = `127.0.0.1:${port}`;
    const control = `unix:${join(dir.path, "port-first.sock")}`;
    const first = spawnCtl(["--control", control, "up", "--data", join(dir.path, "port-first"), "--nbd", nbd, "--workers", "2", "--lun-size", "64M"], "port-first");
    await first.waitForLine(/^ready:/);
    await ctlOk(control, ["disk", "create", "first-disk", "--size", "4M"]);

    const secondAgent = spawnCtl(["--control", control, "agent", "--id", "intruder", "--nbd", nbd], "second-agent");
    await refusedToStart(secondAgent, new RegExp(`Cannot listen on 127\\.0\\.0\\.1:${port}: in use by another process`));
    const secondData = join(dir.path, "port-second");
    const secondUp = spawnCtl(["--control", `unix:${join(dir.path, "port-second.sock")}`, "up", "--data", secondData, "--nbd", nbd], "second-up");
    await refusedToStart(secondUp, new RegExp(`Cannot listen on 127\\.0\\.0\\.1:${port}: in use by another process`));
    // Refused before it touched its data directory.
    expect(await Bun.file(join(secondData, "controller.log")).exists()).toBe(false);

    for (let i = 0; i < 50; i += 1) expect(await exportNames(`nbd://${nbd}`)).toEqual(["first-disk"]);
    await first.kill();
  });

  test("port: an agent on a port another server (nbdkit) listens on is refused with the port named", async () => {
    const port = freePort();
    // nbdkit serves the port while it runs the agent (--run), and exits with the agent's status.
    const agent = [process.execPath, CTL, "--secret-file", TEST_SECRET_FILE, "--control", `unix:${join(dir.path, "nobody.sock")}`, "agent", "--id", "x", "--nbd", `127.0.0.1:${port}`];
    const nbdkit = await run(["nbdkit", "-i", "127.0.0.1", "-p", String(port), "memory", "1M", "--run", agent.join(" ")]);
    expect(nbdkit.code).not.toBe(0);
    expect(nbdkit.stderr.trim().split("\n").at(-1)).toBe(`ctl: error: Cannot listen on 127.0.0.1:${port}: in use by another process`);
  });
});

describe("one process per agent id", () => {
  test("agent id: a second agent with a registered agent's id is refused, and the first keeps its registration and its hosts", async () => {
    const control = `unix:${join(dir.path, "ids.sock")}`;
    const controller = spawnCtl(["--control", control, "controller", "--data", join(dir.path, "ids-data"), "--lun-size", "64M"], "ids-controller");
    await controller.waitForLine(/^ready:/);
    const socket = join(dir.path, "ids-a.sock");
    const startA = async (label: string) => {
      const agent = spawnCtl(["--control", control, "agent", "--id", "a", "--nbd", `unix:${socket}`], label);
      await agent.waitForLine(/registered with the controller/);
      return agent;
    };
    let first = await startA("agent-a");
    await ctlOk(control, ["disk", "create", "served", "--size", "4M"]);

    const second = spawnCtl(["--control", control, "agent", "--id", "a", "--nbd", `unix:${join(dir.path, "ids-a2.sock")}`], "agent-a-again");
    await refusedToStart(second, /the controller refused agent a: agent id "a" is in use by another agent process \(NBD unix:.*ids-a\.sock\)/);

    const agents = JSON.parse(await ctlOk(control, ["agent", "list", "--json"])) as { id: string; nbd: string; connected: boolean }[];
    expect(agents).toEqual([{ id: "a", nbd: `unix:${socket}`, connected: true, disks: ["served"] }] as never);
    expect(first.lines.some((line) => /lost the controller/.test(line))).toBe(false);
    expect(await exportNames(`nbd+unix:///?socket=${socket}`)).toEqual(["served"]);

    // Once the first process is gone, the id is free again at once.
    await first.kill("SIGKILL");
    first = await startA("agent-a-restarted");
    expect(await exportNames(`nbd+unix:///?socket=${socket}`)).toEqual(["served"]);
    await first.kill();
    await controller.kill();
  });
});

describe("an agent without its controller", () => {
  test("agent: one that cannot reach its controller says so every few seconds with the address, and is not ready", async () => {
    const nowhere = join(dir.path, "nowhere.sock");
    const agent = spawnCtl(["--control", `unix:${nowhere}`, "agent", "--id", "lonely", "--nbd", `unix:${join(dir.path, "lonely.sock")}`], "lonely");
    const said = new RegExp(`agent lonely: cannot reach the controller at unix:${nowhere} \\(.*\\); still trying`);
    await agent.waitForLine(said, 5_000);
    const seen = agent.lines.length;
    await agent.waitForLine(said, 15_000, seen);
    expect(agent.lines.some((line) => /^ready:/.test(line))).toBe(false);
    expect(await agent.kill()).toBe(0);
  });
});
