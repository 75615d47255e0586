// The agent's link to the controller: it connects (again after a loss, backing off), registers
// with hello, hands back the mapping changes an ended controller run had not committed, serves
// the controller's commands, renews the lease (R8) and drops every entry when it runs out, and
// runs the agent's own requests on whichever connection is up.
import { formatAddress } from "../engine/util/address.ts";
import {
  agentRequests,
  controllerRequests,
  LEASE_MS_DEFAULT,
  PROTOCOL_VERSION,
  type AgentRequests,
} from "../engine/wire/messages.ts";
import { ConnectionClosedError, Peer, RemoteError } from "../engine/wire/peer.ts";
import type { Stream } from "../engine/wire/transport.ts";
import type { Address } from "../engine/util/address.ts";
import type { AgentEnvironment } from "./environment.ts";
import type { ControllerAccess } from "./fault-forwarder.ts";
import type { TableApplier } from "./table-applier.ts";
import type { UncommittedChanges } from "./uncommitted.ts";
import type { AgentMemory } from "./worker-threads.ts";

/** How long a fault waits for the controller to be reachable before the host gets EIO. */
export const FAULT_WAIT_MS = 30_000;
const RECONNECT_DELAY_MIN_MS = 50;
const RECONNECT_DELAY_MAX_MS = 2_000;
/** Renewals per lease term: a few lost or late ones do not end the lease. */
const LEASE_RENEWALS_PER_TERM = 4;
/** Answers to hello that trying again cannot change (EBUSY: another process has this agent id). */
const REFUSALS_FOR_GOOD = new Set(["EACCES", "EVERSION", "EBUSY"]);
/** While the controller cannot be reached, the agent says so this often. */
const UNREACHABLE_REPORT_MS = 5_000;

export type ControllerPeer = Peer<AgentRequests, typeof controllerRequests>;

export interface LinkOptions {
  id: string;
  control: Address;
  /** The controller's control secret (engine/secret.ts). */
  secret: string;
  /** Where the secret came from, for the error when the controller refuses it. */
  secretOrigin?: string;
  /** R8: without a renewed lease for this long the agent stops I/O (default LEASE_MS_DEFAULT). */
  leaseMs?: number;
}

export class ControllerLink implements ControllerAccess {
  private controller: ControllerPeer | null = null;
  private connectedWaiters: (() => void)[] = [];
  private readonly refusalListeners: ((error: RemoteError) => void)[] = [];
  private stopping = false;
  private cancelLeaseTimer: (() => void) | undefined;

  constructor(
    private readonly options: LinkOptions,
    private readonly env: AgentEnvironment,
    private readonly memory: AgentMemory,
    private readonly tables: TableApplier,
    private readonly uncommitted: UncommittedChanges,
    /** The NBD address the agent serves, as hello announces it. */
    private readonly nbd: () => Address,
    private readonly say: (line: string) => void,
  ) {}

  get current(): ControllerPeer | null {
    return this.controller;
  }

  /** Calls `listener` if the controller refuses this agent for good; the link then stops trying. */
  onRefused(listener: (error: RemoteError) => void): void {
    this.refusalListeners.push(listener);
  }

  /** Resolves once the agent is registered with the controller. */
  whenConnected(): Promise<void> {
    if (this.controller) return Promise.resolve();
    return new Promise((resolve) => this.connectedWaiters.push(resolve));
  }

  start(): void {
    void this.connectLoop();
  }

  stop(): void {
    this.stopping = true;
    this.cancelLeaseTimer?.();
    this.controller?.close();
  }

  /** Runs `call` on the controller connection, again after a lost connection once the agent is
   *  registered again; null when the controller stays out of reach for FAULT_WAIT_MS. */
  async withController<T>(call: (controller: ControllerPeer) => Promise<T>): Promise<T | null> {
    const deadline = this.env.clock.now() + FAULT_WAIT_MS;
    for (;;) {
      const controller = await this.controllerBefore(deadline);
      if (!controller) return null;
      try {
        return await call(controller);
      } catch (error) {
        if (!(error instanceof ConnectionClosedError)) throw error;
      }
    }
  }

  private async controllerBefore(deadline: number): Promise<ControllerPeer | null> {
    const { clock } = this.env;
    while (!this.controller || this.controller.isClosed) {
      const left = deadline - clock.now();
      if (left <= 0 || this.stopping) return null;
      let cancel: (() => void) | undefined;
      await Promise.race([this.whenConnected(), new Promise((resolve) => (cancel = clock.after(left, () => resolve(undefined))))]);
      cancel?.();
    }
    return this.controller;
  }

  private async connectLoop(): Promise<void> {
    const { clock } = this.env;
    let delay = RECONNECT_DELAY_MIN_MS;
    let unreachableSaidAt = -Infinity;
    while (!this.stopping) {
      const stream = await this.env.connect(this.options.control).catch((error: Error) => {
        // Said at once, then every few seconds: an agent that only waits looks like one that works.
        if (clock.now() - unreachableSaidAt >= UNREACHABLE_REPORT_MS) {
          unreachableSaidAt = clock.now();
          this.say(`agent ${this.options.id}: cannot reach the controller at ${formatAddress(this.options.control)} (${error.message}); still trying`);
        }
        return null;
      });
      if (stream) {
        unreachableSaidAt = -Infinity;
        const outcome = await this.registerAndServe(stream);
        if (outcome === "refused") return;
        if (outcome === "served") delay = RECONNECT_DELAY_MIN_MS;
      }
      if (this.stopping) return;
      // Unref'd: a stopping agent does not wait for its next attempt.
      await clock.sleep(delay);
      delay = Math.min(RECONNECT_DELAY_MAX_MS, delay * 2);
    }
  }

  /** Registers over a new connection and serves the controller's commands until it closes:
   *  "served" then; "refused" when the controller refused this agent for good. */
  private async registerAndServe(stream: Stream): Promise<"served" | "refused" | "failed"> {
    try {
      const peer: ControllerPeer = new Peer(stream, agentRequests, controllerRequests);
      peer.serve((op, args) => this.tables.serve(op, args));
      const closed = new Promise<Error>((resolve) => peer.onClosed(resolve));
      const era = this.memory.era.advance();
      await this.tables.forgetEntries();
      const asked = this.memory.lease.now();
      const heldRuns = this.uncommitted.runs();
      const nbd = this.nbd();
      const hello = await peer.request("hello", {
        version: PROTOCOL_VERSION,
        role: "agent",
        secret: this.options.secret,
        agentId: this.options.id,
        instance: this.env.instance,
        leaseMs: this.leaseMs,
        nbd: nbd.kind === "unix" ? `unix:${nbd.path}` : `${nbd.host}:${nbd.port}`,
        heldRuns,
      });
      await this.handBack(peer, hello.run ?? 0, era, heldRuns);
      await this.tables.dropTablesNotReloaded();
      this.renewed(asked);
      this.controller = peer;
      void this.renewLoop(peer);
      for (const waiter of this.connectedWaiters.splice(0)) waiter();
      this.say(`agent ${this.options.id}: registered with the controller`);
      this.env.observe?.("registered");
      const error = await closed;
      this.controller = null;
      if (!this.stopping) this.say(`agent ${this.options.id}: lost the controller (${error.message}); reconnecting`);
      return "served";
    } catch (error) {
      if (!(error instanceof RemoteError)) return "failed";
      const origin = error.code === "EACCES" && this.options.secretOrigin ? ` (the secret came from ${this.options.secretOrigin})` : "";
      this.say(`agent ${this.options.id}: controller refused: ${error.message}${origin}`);
      if (!REFUSALS_FOR_GOOD.has(error.code)) return "failed";
      const refusal = new RemoteError(error.code, `${error.message}${origin}`);
      for (const listener of this.refusalListeners) listener(refusal);
      return "refused";
    }
  }

  /** Hands back the mapping changes of ended controller runs it holds (uncommitted.ts). */
  private async handBack(peer: ControllerPeer, run: number, era: number, heldRuns: number[]): Promise<void> {
    if (heldRuns.every((held) => held === run)) return;
    const lost = await this.uncommitted.handBack(run, era, async (disk, ended, entries) => (await peer.request("restore", { disk, run: ended, entries })).lost);
    await peer.request("restored", {});
    if (lost.length > 0) this.env.observe?.("mapping changes lost");
    for (const disk of lost) {
      const name = this.tables.find(disk)?.name ?? `${disk}`;
      this.say(
        `agent ${this.options.id}: disk ${name}: the controller restarted and could not take back every mapping change it had not committed; ` +
          "writes acknowledged through them may be lost, so every FLUSH of a connection opened before now fails (reconnect to go on)",
      );
    }
  }

  // ---- Lease (R8) ----

  private get leaseMs(): number {
    return this.options.leaseMs ?? LEASE_MS_DEFAULT;
  }

  /** A renewal asked for at `asked` was answered: the lease runs from when it was asked. */
  private renewed(asked: number): void {
    const { lease } = this.memory;
    lease.extend(asked + this.leaseMs);
    this.cancelLeaseTimer?.();
    this.cancelLeaseTimer = this.env.clock.afterUnref(Math.max(0, lease.until - lease.now()), () => this.checkLease());
  }

  private async renewLoop(peer: ControllerPeer): Promise<void> {
    while (!peer.isClosed && !this.stopping) {
      // Unref'd: a pending renewal must not keep a stopping process alive.
      await this.env.clock.sleep(this.leaseMs / LEASE_RENEWALS_PER_TERM);
      const asked = this.memory.lease.now();
      try {
        await peer.request("renew", {});
        this.renewed(asked);
      } catch {
        return; // the connection is gone; the next registration renews
      }
    }
  }

  /**
   * The lease ran out (the controller is unreachable, or this process was stopped): every entry
   * reverts to Invalid, so no I/O goes to storage on old mappings; workers also check the lease
   * right before each storage I/O. The controller has fenced this agent and goes on without it.
   */
  private checkLease(): void {
    if (this.memory.lease.valid() || this.stopping) return;
    this.say(`agent ${this.options.id}: lease expired; I/O stops until the controller is reached again`);
    this.env.observe?.("lease expired");
    this.tables.invalidateAll();
  }
}
