// One agent as the controller sees it (R7, R8): its connection, if it has one, the tables it holds
// and its lease. An agent that is cut off may go on doing I/O with the entries it holds until its
// lease runs out, or until it registers again (it drops every entry before it says hello). So a
// table change for a cut-off agent is not skipped: it waits for one of the two.
import type { agentRequests, ControllerRequests } from "./wire/messages.ts";
import { ConnectionClosedError, type Peer } from "./wire/peer.ts";

export type AgentPeer = Peer<ControllerRequests, typeof agentRequests>;

/** Margin for clock rates and scheduling between an agent's lease and the controller's view of it. */
export const LEASE_GRACE_MS = 500;

/** The time leases are counted in: monotonic, with timers. A simulator gives its own. */
export interface LeaseClock {
  now(): number;
  /** Runs `run` after `ms`; returns what cancels it. */
  after(ms: number, run: () => void): () => void;
}

export const monotonicClock: LeaseClock = {
  now: () => performance.now(),
  after: (ms, run) => {
    const timer = setTimeout(run, ms);
    return () => clearTimeout(timer);
  },
};

export class AgentLink {
  /** Disks whose table this agent holds (or, for an agent not heard from since a restart, may hold). */
  readonly disks = new Set<number>();
  /** When the controller last heard a renewal (on the lease clock). */
  renewedAt: number;
  /** Resolves when this link is over: the agent was fenced or registered again. */
  readonly gone: Promise<void>;
  /**
   * While the agent hands back mapping changes a controller restart lost (restore.ts): its link
   * from before the restart, kept open so that no table changes and no block is handed out
   * before they are back.
   */
  restoringFrom: AgentLink | null = null;
  private endGone!: () => void;
  private ended = false;
  private leaseWatch: { cancel(): void } | undefined;

  constructor(
    readonly id: string,
    /** The agent process's own name for itself ("" for one known only from before a restart). */
    readonly instance: string,
    /** The agent's NBD address, as it announced it ("" until it does). */
    readonly nbd: string,
    readonly peer: AgentPeer | null,
    readonly leaseMs: number,
    /** Called once the lease has run out with no renewal; the owner then ends the link. */
    private readonly onLeaseLapsed: (link: AgentLink) => void,
    private readonly clock: LeaseClock = monotonicClock,
  ) {
    this.renewedAt = clock.now();
    this.gone = new Promise((resolve) => (this.endGone = resolve));
  }

  get over(): boolean {
    return this.ended;
  }

  get connected(): boolean {
    return this.peer !== null && !this.peer.isClosed;
  }

  /** Whether the lease has not run out yet (renewals counted). */
  leaseLive(): boolean {
    return this.renewedAt + this.leaseMs + LEASE_GRACE_MS > this.clock.now();
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
    let cancelTimer: (() => void) | undefined;
    const lapsed = new Promise<void>((resolve) => {
      const check = () => {
        const left = this.renewedAt + this.leaseMs + LEASE_GRACE_MS - this.clock.now();
        if (left > 0) {
          cancelTimer = this.clock.after(left, check);
          return;
        }
        this.onLeaseLapsed(this);
        resolve();
      };
      check();
    });
    return { lapsed, cancel: () => cancelTimer?.() };
  }
}
