// Our system as two processes, `ctl controller` and `ctl agent` (unlike `ctl up`), so that each one's
// CPU time and memory can be read from /proc on its own. Both listen on unix sockets in a fresh directory.
import { join } from "node:path";
import { type Endpoint, ManagedProcess, delay, waitForEndpoint } from "./processes.ts";
import { CTL, REPO, ctl, nbdUri } from "./servers.ts";
import type { AgentSummary } from "../engine/wire/messages.ts";

/** Bound on a process's start, and on the agent registering or getting a disk. */
const READY_TIMEOUT_MS = 30_000;
const POLL_INTERVAL_MS = 50;
const AGENT_ID = "bench";

export interface SplitInstance {
  /** ctl's global options that reach this controller. */
  controlArgs: string[];
  controller: ManagedProcess;
  agent: ManagedProcess;
  /** The NBD URI of export `name` on the agent. */
  uri(name: string): string;
  /** Resolves once the controller lists disk `name` as served by the agent. */
  agentServes(name: string): Promise<void>;
  stop(): Promise<void>;
}

async function startCtl(label: string, args: string[], verbose: boolean): Promise<ManagedProcess> {
  const child = ManagedProcess.start(label, [process.execPath, CTL, ...args], { cwd: REPO, verbose });
  try {
    await child.waitForLine(/^ready:/, READY_TIMEOUT_MS);
  } catch (error) {
    await child.stop();
    throw error;
  }
  return child;
}

/** Polls `ctl agent list` until `accept` holds for our agent; fails after the bound or when a process exits. */
async function pollAgent(instance: Pick<SplitInstance, "controlArgs" | "controller" | "agent">, what: string, accept: (agent: AgentSummary) => boolean): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    for (const child of [instance.controller, instance.agent]) {
      if (!child.running) throw new Error(`${child.label} exited (${child.exitDescription}) while waiting for ${what}; last output:\n${child.tail()}`);
    }
    const agents = JSON.parse(await ctl(instance, ["agent", "list", "--json"])) as AgentSummary[];
    const agent = agents.find((candidate) => candidate.id === AGENT_ID);
    if (agent && accept(agent)) return;
    if (Date.now() >= deadline) throw new Error(`no ${what} within ${READY_TIMEOUT_MS} ms`);
    await delay(POLL_INTERVAL_MS);
  }
}

/** `ctl controller` (its default container `lunBytes`, sparse) and one registered `ctl agent`. */
export async function startSplit(options: { dir: string; lunBytes: number; verbose: boolean }): Promise<SplitInstance> {
  const controlArgs = ["--control", `unix:${join(options.dir, "control.sock")}`, "--secret-file", join(options.dir, "control.secret")];
  const nbd: Endpoint = { kind: "unix", path: join(options.dir, "nbd.sock") };
  const controllerArgs = [...controlArgs, "controller", "--data", join(options.dir, "data"), "--lun-size", String(options.lunBytes)];
  const controller = await startCtl("controller", controllerArgs, options.verbose);
  let agent: ManagedProcess | undefined;
  try {
    agent = await startCtl("agent", [...controlArgs, "agent", "--id", AGENT_ID, "--nbd", `unix:${nbd.path}`], options.verbose);
    const parts = { controlArgs, controller, agent };
    await pollAgent(parts, "registration of the agent", (a) => a.connected);
    await waitForEndpoint(nbd, agent, READY_TIMEOUT_MS);
    return {
      ...parts,
      uri: (name) => nbdUri(nbd, name),
      // The controller counts a disk as the agent's once the agent has answered new_table, which it
      // does after its worker threads have the export.
      agentServes: (name) => pollAgent(parts, `disk ${name} on the agent`, (a) => a.connected && a.disks.includes(name)),
      stop: async () => {
        await agent!.stop();
        await controller.stop();
      },
    };
  } catch (error) {
    await agent?.stop();
    await controller.stop();
    throw error;
  }
}
