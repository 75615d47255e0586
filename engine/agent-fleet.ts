// The agents a controller serves (R6, R7, R8): who holds which table, what each gets when a table
// changes, and how a cut-off or silent agent is waited for or fenced. One place for this logic,
// so the controller and the simulator's controller treat agents alike.
import { AgentLink, monotonicClock, type AgentPeer, type LeaseClock } from "./agent-link.ts";
import type { Catalog, Disk, Freed, LogRecord } from "./catalog.ts";
import type { SettableState } from "./wire/messages.ts";
import { RequestError } from "./wire/peer.ts";

/** How long past its own time limit an agent may take to answer quiesce, or to answer activate. */
export const QUIESCE_ANSWER_GRACE_MS = 1_000;
/** How long an agent may take to say how many hosts have a disk open. */
export const CONNECTIONS_ANSWER_MS = 2_000;

export interface FleetContext {
  readonly catalog: Catalog;
  persist(records: LogRecord[]): Promise<Freed[]>;
  say(line: string): void;
  /** An agent's lease ran out and it was dropped. */
  fenced(agent: AgentLink): void;
}

export function presentedTo(disk: Disk, agentId: string): boolean {
  return disk.exports === null || disk.exports.includes(agentId);
}

export class AgentFleet {
  private readonly links = new Map<string, AgentLink>();
  /** The links made for agents known from before a restart. */
  private readonly fromBefore: AgentLink[] = [];
  /** Resolves once every link from before is over (see knownAgentsSettled); made once, as every
   *  write fault and table change after a restart asks for it. */
  private settled: Promise<unknown> = Promise.resolve();
  /** Per disk, the number of the last change to its entries sent to agents (see `change` in
   *  wire/messages.ts). Agents hold no entries from an earlier controller run, so it starts at 0. */
  private readonly changes = new WeakMap<Disk, number>();

  constructor(
    private readonly ctx: FleetContext,
    private readonly clock: LeaseClock = monotonicClock,
  ) {}

  all(): AgentLink[] {
    return [...this.links.values()];
  }

  ids(): string[] {
    return [...this.links.keys()];
  }

  /** The agents that hold (or may hold) the table of `diskId`, connected or not. */
  agentsOf(diskId: number, except?: AgentLink): AgentLink[] {
    return this.all().filter((agent) => agent !== except && agent.disks.has(diskId));
  }

  /** After a restart every agent known from the log may still serve the tables it had: until it
   *  registers again or its lease runs out, changes to them wait for it (R8). */
  expectKnownAgents(): void {
    for (const [id, leaseMs] of this.ctx.catalog.agents) {
      const agent = this.newLink(id, "", null, leaseMs);
      for (const disk of this.ctx.catalog.disks.values()) if (presentedTo(disk, id)) agent.disks.add(disk.id);
      this.links.set(id, agent);
      this.fromBefore.push(agent);
      agent.watchLease();
    }
    this.settled = Promise.all(this.fromBefore.map((agent) => agent.gone));
  }

  /** Resolves once every agent known from before a restart has registered again or been fenced:
   *  none of them can still use an entry this controller does not know about. */
  async knownAgentsSettled(): Promise<void> {
    await this.settled;
  }

  /** Whether `agent` is the only agent holding the table of `disk`. */
  onlyHolder(disk: Disk, agent: object): boolean {
    return this.agentsOf(disk.id, agent as AgentLink).length === 0;
  }

  /**
   * A new link for an agent saying hello (its tables are then loaded by the caller). The agent
   * dropped every entry it held before it said hello, so a link it had before (cut off, or known
   * from before a restart) ends now; a link still connected ends only with its lease.
   */
  async register(id: string, instance: string, nbd: string, leaseMs: number, peer: AgentPeer, handingBack = false): Promise<AgentLink> {
    const before = this.links.get(id);
    // Two processes with one id would take the registration from each other in turn, each
    // dropping the other's tables: while the one registered holds a live lease, another is refused.
    if (before?.connected && before.instance !== instance && before.leaseLive()) {
      throw new RequestError(
        "EBUSY",
        `agent id "${id}" is in use by another agent process (NBD ${before.nbd}); give this one another --id, or stop the other`,
        true,
      );
    }
    const agent = this.newLink(id, nbd, peer, leaseMs, instance);
    this.links.set(id, agent);
    // An agent handing back what a restart lost keeps its link from before the restart until it is
    // done (also over a second registration, should the first connection end meanwhile).
    const guard = handingBack ? this.restoreGuard(before) : null;
    agent.restoringFrom = guard;
    if (before?.restoringFrom && before.restoringFrom !== guard) before.restoringFrom.end();
    if (before?.connected) {
      before.peer!.close();
      before.watchLease();
    } else if (before !== guard) {
      before?.end();
    }
    peer.onClosed(() => agent.watchLease());
    if (this.ctx.catalog.agents.get(id) !== leaseMs) await this.ctx.persist([{ t: "agent", id, leaseMs }]);
    return agent;
  }

  /** The link from before a restart that stays open while the agent hands back, or null. */
  private restoreGuard(before: AgentLink | undefined): AgentLink | null {
    if (!before) return null;
    if (before.restoringFrom && !before.restoringFrom.over) return before.restoringFrom;
    return this.fromBefore.includes(before) && !before.over ? before : null;
  }

  /** Whether `agent` may still hand back lost mapping changes (nothing was changed since). */
  mayRestore(agent: AgentLink): boolean {
    return agent.restoringFrom !== null && !agent.restoringFrom.over;
  }

  /** The agent has handed back everything: changes held back for it go ahead. */
  restored(agent: AgentLink): void {
    agent.restoringFrom?.end();
    agent.restoringFrom = null;
  }

  /** Restored entries moved (see moveEntries): the disk's other agents that may have loaded the
   *  old ones since the restart drop them (one known only from before has loaded nothing yet). */
  dropRestored(disk: Disk, segments: number[], except: AgentLink): Promise<void> {
    const loaded = this.agentsOf(disk.id, except).filter((agent) => !this.fromBefore.includes(agent));
    return this.invalidate(loaded, disk, segments, false);
  }

  /** Numbers a change to the entries of `disk` about to be sent: taken as the entries are read, so
   *  that the numbers follow the table's own order. */
  nextChange(disk: Disk): number {
    const change = (this.changes.get(disk) ?? 0) + 1;
    this.changes.set(disk, change);
    return change;
  }

  async sendTable(agent: AgentLink, disk: Disk): Promise<void> {
    await agent.call((peer) =>
      peer.request("new_table", {
        disk: disk.id,
        name: disk.name,
        size: disk.size,
        segmentShift: disk.segmentShift,
        readOnly: disk.protected,
        change: this.nextChange(disk),
      }),
    );
    agent.disks.add(disk.id);
  }

  /** The agent drops the table, once its I/O to the disk has finished. */
  async dropTable(agent: AgentLink, disk: Disk): Promise<void> {
    await agent.call((peer) => peer.request("delete_table", { disk: disk.id, blocking: true }));
    agent.disks.delete(disk.id);
  }

  /** Sends a disk's table to an agent; what went wrong if the agent could not load it (its
   *  memory is exhausted, say): the disk stays, just not exported there. */
  async loadTable(agent: AgentLink, disk: Disk): Promise<string | null> {
    try {
      await this.sendTable(agent, disk);
      return null;
    } catch (error) {
      return `agent ${agent.id} could not load its table (${(error as Error).message})`;
    }
  }

  /** Sends a new disk's table to every agent it is presented to; says which could not load it. */
  async exportDisk(disk: Disk): Promise<string[]> {
    const failures = await Promise.all(this.all().filter((agent) => presentedTo(disk, agent.id)).map((agent) => this.loadTable(agent, disk)));
    return failures.filter((failure) => failure !== null);
  }

  /** Sends the entries `segments` of `disk` to its agents (but `except`), as runs over contiguous
   *  segments, and waits for them. */
  pushEntries(disk: Disk, segments: number[], options: { blocking: boolean; except?: object }): Promise<void> {
    return this.pushEntriesTo(this.agentsOf(disk.id, options.except as AgentLink | undefined), disk, segments, options.blocking);
  }

  private async pushEntriesTo(agents: AgentLink[], disk: Disk, segments: number[], blocking: boolean): Promise<void> {
    const ranges = adjacentRuns(segments);
    await Promise.all(
      agents.flatMap((agent) =>
        ranges.map(([first, count]) =>
          agent.call((peer) =>
            peer.request("set_entry", { disk: disk.id, first, runs: this.ctx.catalog.agentRuns(disk, first, count), blocking, change: this.nextChange(disk) }),
          ),
        ),
      ),
    );
  }

  async pushStates(disk: Disk, set: SettableState[], blocking: boolean): Promise<void> {
    const count = disk.table.entryCount;
    await Promise.all(
      this.agentsOf(disk.id).map((agent) =>
        agent.call((peer) => peer.request("set_entry_state", { disk: disk.id, first: 0, count, set, clear: [], blocking, change: this.nextChange(disk) })),
      ),
    );
  }

  /**
   * Entries of `disk` moved to other locations (a new segment, a copy): the agent holding the
   * table gets them (but `except`: a faulting agent gets them with its answer). When several
   * hold it, new entries would reach them at different moments, and one could read through an old
   * location while another already writes through the new one: so each of them, `except` too,
   * drops the entries instead (Invalid) and gets them again through a fault. Waits until they
   * have (with `blocking`, until their I/O in progress has drained too).
   */
  async moveEntries(disk: Disk, segments: number[], options: { blocking: boolean; except?: object }): Promise<void> {
    const holders = this.agentsOf(disk.id);
    if (holders.length > 1) await this.invalidate(holders, disk, segments, options.blocking);
    else await this.pushEntries(disk, segments, options);
  }

  /** Sets the entries `segments` of `disk` Invalid at `agents` (those of them holding the table),
   *  as runs over contiguous segments, and waits until they have. */
  async invalidate(agents: AgentLink[], disk: Disk, segments: number[], blocking: boolean): Promise<void> {
    const ranges = adjacentRuns(segments);
    await Promise.all(
      agents
        .filter((agent) => agent.disks.has(disk.id))
        .flatMap((agent) =>
          ranges.map(([first, count]) =>
            agent.call((peer) => peer.request("set_entry_state", { disk: disk.id, first, count, set: ["invalid"], clear: [], blocking, change: this.nextChange(disk) })),
          ),
        ),
    );
  }

  /** Quiesces every agent of these disks; on a failure releases those already quiesced. */
  async quiesceAll(disks: Disk[], timeoutMs: number): Promise<AgentLink[]> {
    const agents = [...new Set(disks.flatMap((disk) => this.agentsOf(disk.id)))];
    // An agent that does not answer at all (stopped, cut off) fails the group too, a little after
    // the time it was given.
    const results = await Promise.allSettled(
      agents.map((agent) =>
        this.withDeadline(
          agent.call((peer) => peer.request("quiesce", { disks: disksOf(agent, disks), timeoutMs })),
          timeoutMs + QUIESCE_ANSWER_GRACE_MS,
          `no answer to quiesce within ${timeoutMs + QUIESCE_ANSWER_GRACE_MS} ms`,
        ),
      ),
    );
    const failed = results.flatMap((result, i) => (result.status === "rejected" ? [`agent ${agents[i]!.id}: ${(result.reason as Error).message}`] : []));
    if (failed.length > 0) {
      await this.activateAll(agents, disks);
      throw new RequestError("EAGAIN", `group snapshot abandoned, no snapshot made: ${failed.join("; ")}`);
    }
    return agents;
  }

  /** Releases held I/O everywhere. An agent that does not answer gets the activate after its
   *  quiesce once it runs again (one connection keeps them in order), so nobody waits for it. */
  async activateAll(agents: AgentLink[], disks: Disk[]): Promise<void> {
    await Promise.all(
      agents.map((agent) =>
        this.withDeadline(
          agent.call((peer) => peer.request("activate", { disks: disksOf(agent, disks) })),
          QUIESCE_ANSWER_GRACE_MS,
          "no answer",
        ).catch((error: Error) => this.ctx.say(`agent ${agent.id}: activate: ${error.message}`)),
      ),
    );
  }

  /** The connected agents on which hosts have `disk` open, with how many connections (null: the
   *  agent did not answer in time). An agent cut off is not asked: its lease fences it. */
  async connectionsTo(disk: Disk): Promise<{ agent: string; count: number | null }[]> {
    const asked = this.agentsOf(disk.id).filter((agent) => agent.connected);
    const counts = await Promise.all(
      asked.map((agent) =>
        this.withDeadline(agent.peer!.request("get_connections", { disk: disk.id }), CONNECTIONS_ANSWER_MS, "no answer").then(
          (answer) => answer.count,
          () => null,
        ),
      ),
    );
    return asked.flatMap((agent, i) => (counts[i] === 0 ? [] : [{ agent: agent.id, count: counts[i]! }]));
  }

  /** Ends every link (the controller stops). */
  endAll(): void {
    for (const agent of this.links.values()) agent.end();
  }

  private newLink(id: string, nbd: string, peer: AgentPeer | null, leaseMs: number, instance = ""): AgentLink {
    return new AgentLink(id, instance, nbd, peer, leaseMs, (link) => this.fence(link), this.clock);
  }

  /**
   * Drops an agent whose lease ran out without a renewal (R8). It has stopped its I/O by then: it
   * counts its lease from before it asked for the renewal, the controller from after it heard it,
   * plus a grace. When it comes back it registers again and reloads everything through faults.
   */
  private fence(agent: AgentLink): void {
    if (this.links.get(agent.id) === agent) {
      this.links.delete(agent.id);
      this.ctx.fenced(agent);
      this.ctx.persist([{ t: "agentgone", id: agent.id }]).catch((error: Error) => this.ctx.say(`agent ${agent.id}: ${error.message}`));
    }
    agent.end();
  }

  /** The promise's outcome, or a rejection once `ms` have passed (on the lease clock). */
  private async withDeadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
    let cancel: (() => void) | undefined;
    const late = new Promise<never>((_, reject) => (cancel = this.clock.after(ms, () => reject(new Error(message)))));
    try {
      return await Promise.race([promise, late]);
    } finally {
      cancel?.();
    }
  }
}

function disksOf(agent: AgentLink, disks: Disk[]): number[] {
  return disks.filter((disk) => agent.disks.has(disk.id)).map((disk) => disk.id);
}

/** The segments (in any order, each once) as runs of adjacent ones, in ascending order. */
export function adjacentRuns(segments: number[]): [first: number, count: number][] {
  const runs: [first: number, count: number][] = [];
  for (const segment of [...segments].sort((a, b) => a - b)) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === segment) last[1] += 1;
    else runs.push([segment, 1]);
  }
  return runs;
}
