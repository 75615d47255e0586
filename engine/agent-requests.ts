// What agents ask of the controller once registered: lease renewals, faults (R5), commits of the
// mapping changes their writes relied on, the hand-back of what a restart lost, storage errors.
// And their registration: the agent's link, then every container and every table it presents,
// loaded before hello is answered.
import type { AgentLink, AgentPeer } from "./agent-link.ts";
import { presentedTo } from "./agent-fleet.ts";
import type { Containers } from "./containers.ts";
import type { ControllerCore } from "./controller-core.ts";
import { FaultQueue } from "./fault-queue.ts";
import { FaultResolver, type FaultAnswer } from "./faults.ts";
import { restoreEntries } from "./restore.ts";
import { AGENTS_MAX, type ArgsOf, type ControllerRequests } from "./wire/messages.ts";
import { RequestError } from "./wire/peer.ts";

type Args<Op extends keyof ControllerRequests> = ArgsOf<ControllerRequests, Op>;

export interface Registration {
  id: string;
  instance: string;
  nbd: string;
  leaseMs: number;
  /** The agent holds mapping changes of an earlier controller run to hand back. */
  handingBack: boolean;
}

export class AgentRequests {
  private readonly faults: FaultResolver;
  private readonly faultQueue: FaultQueue;

  constructor(
    private readonly core: ControllerCore,
    private readonly containers: Containers,
  ) {
    this.faults = new FaultResolver(core.context);
    this.faultQueue = new FaultQueue(core.familyLocks, this.faults);
  }

  /** Registers an agent and loads it (containers, then a table per disk) before hello is answered. */
  async register(peer: AgentPeer, { id, instance, nbd, leaseMs, handingBack }: Registration): Promise<AgentLink> {
    const { core } = this;
    if (!core.catalog.agents.has(id) && core.catalog.agents.size >= AGENTS_MAX) {
      throw new RequestError("ENOSPC", `the limit of ${AGENTS_MAX} agents is reached`, true);
    }
    const agent = await core.agents.register(id, instance, nbd, leaseMs, peer, handingBack);
    await core.catalogLock.run("catalog", async () => {
      for (const lun of core.catalog.luns.values()) await peer.request("add_container", { id: lun.id, path: lun.path });
      // A table the agent cannot load (out of memory) leaves that disk out, not the others.
      for (const disk of core.catalog.disks.values()) {
        if (!presentedTo(disk, id)) continue;
        const failure = await core.agents.loadTable(agent, disk);
        if (failure) core.say(`disk ${disk.name} is not exported on agent ${id}: ${failure}`);
      }
    });
    core.say(`agent ${id} registered (nbd ${nbd})`);
    return agent;
  }

  /** One request of a registered agent (an op of AGENT_OPS). */
  async serve(agent: AgentLink, op: string, args: unknown): Promise<unknown> {
    const { core } = this;
    switch (op) {
      case "renew":
        agent.renewedAt = core.env.clock.now();
        return {};
      case "fault":
        return this.fault(agent, args as Args<"fault">);
      case "commit":
        await this.faults.commit((args as Args<"commit">).run);
        return {};
      case "restore":
        return restoreEntries({ ...core.context, agents: core.agents, say: (line) => core.say(line) }, agent, args as Args<"restore">);
      case "restored":
        core.agents.restored(agent);
        return {};
      case "storage_error": {
        const { container, message } = args as Args<"storage_error">;
        await this.containers.fail(container, `agent ${agent.id}: ${message}`);
        return {};
      }
      default:
        throw new RequestError("EINVAL", `unknown request ${op}`);
    }
  }

  private async fault(agent: AgentLink, args: Args<"fault">): Promise<FaultAnswer> {
    const disk = this.core.catalog.disks.get(args.disk);
    if (!disk) return { action: "error", errno: "EIO" };
    // The agents serve a protected disk read-only; this holds even for one that has not heard yet.
    if (disk.protected && args.op !== "read" && args.op !== "status") return { action: "error", errno: "EPERM" };
    if (args.first > args.last || args.last >= disk.table.entryCount || args.offset + args.length > disk.size) {
      throw new RequestError("EINVAL", `fault on disk ${disk.name}: segments ${args.first}..${args.last} or range outside the disk`);
    }
    return this.faultQueue.submit(disk, args, agent);
  }
}

/** The requests only a registered agent may send. */
export const AGENT_OPS = new Set(["renew", "fault", "commit", "restore", "restored", "storage_error"]);
