// One agent as the controller sees it (R7, R8): its connection, if it has one, the tables it holds
// and its lease. An agent that is cut off may go on doing I/O with the entries it holds until its
// lease runs out, or until it registers again (it drops every entry before it says hello). So a
// table change for a cut-off agent is not skipped: it waits for one of the two.
import type { agentRequests, ControllerRequests } from "./wire/messages.ts";
import { ConnectionClosedError, type Peer } from "./wire/peer.ts";

export type AgentPeer = Peer<ControllerRequests, typeof agentRequests>;

/** Margin for clock rates and scheduling between an agent's lease and the controller's view of it. */
export const LEASE_GRACE_MS = 500;

export class AgentLink {
  /** Disks whose table this agent holds (or, for an agent not heard from since a restart, may hold). */
  readonly disks = new Set<number>();
  /** When the controller last heard a renewal (performance.now(): monotonic). */
  renewedAt = performance.now();
  /** Resolves when this link is over: the agent was fenced or registered again. */
  readonly gone: Promise<void>;
  private endGone!: () => void;
  private ended = false;
  private leaseWatch: { cancel(): void } | undefined;

  constructor(
    readonly id: string,
    /** The agent's NBD address, as it announced it ("" until it does). */
    readonly nbd: string,
    readonly peer: AgentPeer | null,
    readonly leaseMs: number,
    /** Called once the lease has run out with no renewal; the owner then ends the link. */
    private readonly onLeaseLapsed: (link: AgentLink) => void,
  ) {
    this.gone = new Promise((resolve) => (this.endGone = resolve));
  }

  get connected(): boolean {
    return this.peer !== null && !this.peer.isClosed;
  }

  /** Ends the link: whatever waits for this agent goes on. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.leaseWatch?.cancel();
    this.peer?.close();
    this.endGone();
  }

  /** For an agent cut off: reports the lease lapsing even if no command is waiting for it. */
  watchLease(): void {
    this.leaseWatch?.cancel();
    this.leaseWatch = this.whenLapsed();
  }

  /**
   * Runs a command on the agent. If the agent is cut off, or its lease lapses before it answers,
   * waits instead until it can hold no stale entry: the link ended (fenced, or the agent
   * registered again and reloads everything through faults).
   */
  async call(command: (peer: AgentPeer) => Promise<unknown>): Promise<void> {
    const watch = this.whenLapsed();
    const over = Promise.race([watch.lapsed, this.gone]);
    try {
      if (this.connected) {
        try {
          await Promise.race([command(this.peer!), over]);
          return;
        } catch (error) {
          if (!(error instanceof ConnectionClosedError)) throw error;
        }
      }
      await over;
    } finally {
      watch.cancel();
    }
  }

  /** Resolves once the lease has run out with no renewal (renewals met on the way push it on). */
  private whenLapsed(): { lapsed: Promise<void>; cancel(): void } {
    let timer: Timer | undefined;
    const lapsed = new Promise<void>((resolve) => {
      const check = () => {
        const left = this.renewedAt + this.leaseMs + LEASE_GRACE_MS - performance.now();
        if (left > 0) {
          timer = setTimeout(check, left);
          return;
        }
        this.onLeaseLapsed(this);
        resolve();
      };
      check();
    });
    return { lapsed, cancel: () => clearTimeout(timer) };
  }
}
