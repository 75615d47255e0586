// The simulated network between the controller and the agents: connections carry the real wire
// frames (engine/wire: msgpack, schemas, the real Peer on both ends) with simulated latency.
// As over TCP, each direction of a connection delivers in order; messages on different
// connections, and answers against later requests, interleave freely.
//
// Faults: a lost message resets its connection (both ends see it close, what was in flight is
// gone); a partition holds a host's traffic until it heals (delivered late, in order); a slow link
// adds latency. A crashed process's connections are reset by its kernel; a crashed host's are not:
// the other end hears nothing until the host is back and answers with a reset.
import { ConnectionClosedError } from "../../engine/wire/peer.ts";
import { Stream } from "../../engine/wire/transport.ts";
import type { CrashKind } from "./log-disk.ts";
import type { Random } from "./random.ts";
import type { Life, Scheduler } from "./scheduler.ts";
import type { Trace } from "./trace.ts";

/** How long a connect to an unreachable host takes to fail. */
const CONNECT_TIMEOUT_MS = 1_000;
/** After a crashed host is back, how long until a peer's next packet draws the reset. */
const RESET_AFTER_RESTART_MS_MAX = 1_000;

type SocketLike = ConstructorParameters<typeof Stream>[0];

interface End {
  stream: Stream;
  life: Life;
  lastDelivery: number;
  closed: boolean;
}

class Link {
  broken = false;
  /** Traffic held by a partition, in send order. */
  readonly held: { to: End; data: Uint8Array | null }[] = [];
  agent!: End;
  controller!: End;

  constructor(readonly host: string) {}

  other(end: End): End {
    return end === this.agent ? this.controller : this.agent;
  }
}

export class SimNetwork {
  /** Probability that one message is lost (its connection resets). */
  lossProbability = 0;
  private server: { life: Life; accept: (stream: Stream) => void } | null = null;
  /** Before its first start the controller's host is up and refuses connections. */
  private controllerState: "up" | CrashKind = "process";
  private readonly downHosts = new Map<string, CrashKind>();
  private readonly partitioned = new Set<string>();
  private readonly slow = new Set<string>();
  private readonly links = new Set<Link>();

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: Random,
    private readonly trace: Trace,
  ) {}

  /** The controller (incarnation `life`) accepts connections from now on. */
  listen(life: Life, accept: (stream: Stream) => void): void {
    this.server = { life, accept };
    this.controllerState = "up";
    // Peers of the crashed host hear of it now, when their next packet draws a reset.
    for (const link of this.links) if (!link.controller.life.isAlive) this.resetLater(link, link.agent);
  }

  /** An agent (incarnation `life` on `host`) connects to the controller. */
  connect(host: string, life: Life): Promise<Stream> {
    return new Promise((resolve, reject) => {
      const refuse = (why: string) => reject(new ConnectionClosedError(`connect: ${why}`));
      const unreachable = () => this.partitioned.has(host) || this.controllerState === "host";
      if (unreachable()) {
        this.scheduler.after(CONNECT_TIMEOUT_MS, life, () => refuse("timed out"));
        return;
      }
      this.scheduler.after(this.latency(host), life, () => {
        const server = this.server;
        if (unreachable()) {
          this.scheduler.after(CONNECT_TIMEOUT_MS, life, () => refuse("timed out"));
          return;
        }
        if (!server) {
          this.scheduler.after(this.latency(host), life, () => refuse("connection refused"));
          return;
        }
        const link = new Link(host);
        link.agent = { stream: this.stream(link, () => link.agent), life, lastDelivery: 0, closed: false };
        link.controller = { stream: this.stream(link, () => link.controller), life: server.life, lastDelivery: 0, closed: false };
        this.links.add(link);
        server.accept(link.controller.stream);
        // The far end may have gone while the handshake finished.
        this.scheduler.after(this.latency(host), life, () => (link.agent.closed ? refuse("connection reset") : resolve(link.agent.stream)));
      });
    });
  }

  controllerDown(kind: CrashKind): void {
    this.server = null;
    this.controllerState = kind;
    if (kind === "process") for (const link of this.links) if (!link.broken) this.resetLater(link, link.agent);
  }

  agentDown(host: string, kind: CrashKind): void {
    this.downHosts.set(host, kind);
    if (kind === "process") for (const link of this.linksOf(host)) this.resetLater(link, link.controller);
  }

  agentUp(host: string): void {
    this.downHosts.delete(host);
    for (const link of this.linksOf(host)) if (!link.agent.life.isAlive) this.resetLater(link, link.controller);
  }

  partition(host: string): void {
    this.partitioned.add(host);
  }

  heal(host: string): void {
    this.partitioned.delete(host);
    for (const link of this.linksOf(host)) {
      for (const { to, data } of link.held.splice(0)) this.deliver(link, to, data);
    }
  }

  setSlow(host: string, slow: boolean): void {
    if (slow) this.slow.add(host);
    else this.slow.delete(host);
  }

  private linksOf(host: string): Link[] {
    return [...this.links].filter((link) => link.host === host);
  }

  private latency(host: string): number {
    if (this.slow.has(host)) return this.random.between(20, 200);
    return this.random.chance(0.02) ? this.random.between(2, 20) : this.random.between(0.05, 0.5);
  }

  private stream(link: Link, self: () => End): Stream {
    const socket = {
      write: (data: Uint8Array) => {
        this.send(link, self(), data);
        return data.length;
      },
      end: () => {
        self().closed = true;
        this.send(link, self(), null);
      },
    };
    return new Stream(socket as unknown as SocketLike);
  }

  /** Sends data (or, as null, the end of the stream) from one end to the other. */
  private send(link: Link, from: End, data: Uint8Array | null): void {
    // A crashed process sends nothing, whatever its leftover code still runs.
    if (link.broken || !from.life.isAlive) return;
    const to = link.other(from);
    if (data && this.lossProbability > 0 && this.random.chance(this.lossProbability)) {
      this.trace.note(`net ${link.host}: a message is lost, the connection resets`);
      this.trace.count("message lost");
      this.reset(link);
      return;
    }
    if (this.partitioned.has(link.host)) link.held.push({ to, data });
    else this.deliver(link, to, data);
  }

  private deliver(link: Link, to: End, data: Uint8Array | null): void {
    if (!to.life.isAlive || this.downHosts.get(link.host) === "host") return; // into the void
    const time = Math.max(this.scheduler.now + this.latency(link.host), to.lastDelivery);
    to.lastDelivery = time;
    this.scheduler.at(time, to.life, () => {
      if (link.broken || to.closed) return;
      if (data) to.stream.handlers?.data(data);
      else this.closeEnd(to, new ConnectionClosedError("connection closed by the peer"));
    });
  }

  /** Both ends see the connection reset; nothing more goes through. */
  private reset(link: Link): void {
    link.broken = true;
    link.held.length = 0;
    for (const end of [link.agent, link.controller]) {
      this.scheduler.after(this.latency(link.host), end.life, () => this.closeEnd(end, new ConnectionClosedError("connection reset")));
    }
    this.links.delete(link);
  }

  /** `end` learns (after a little while) that its connection is gone. */
  private resetLater(link: Link, end: End): void {
    link.broken = true;
    link.held.length = 0;
    this.links.delete(link);
    this.scheduler.after(this.random.between(10, RESET_AFTER_RESTART_MS_MAX), end.life, () =>
      this.closeEnd(end, new ConnectionClosedError("connection reset")),
    );
  }

  private closeEnd(end: End, error: Error): void {
    if (end.closed && end.stream.isClosed) return;
    end.closed = true;
    end.stream.markClosed();
    end.stream.handlers?.close(error);
  }
}
