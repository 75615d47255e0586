// The controller's control port: every connection (agent or ctl) must say hello first, with the
// control secret and the protocol version, within a time limit and in a small frame; then agents'
// requests go to AgentRequests and ctl's to CtlRequests. The port also counts the requests in
// progress, so the controller can tell when it is idle.
import type { AgentLink, AgentPeer } from "./agent-link.ts";
import { AGENT_OPS, type AgentRequests } from "./agent-requests.ts";
import type { ControllerCore } from "./controller-core.ts";
import type { CtlRequests } from "./ctl-requests.ts";
import { secretsMatch } from "./secret.ts";
import { FRAME_BYTES_MAX } from "./wire/frame.ts";
import {
  agentRequests,
  controllerRequests,
  LEASE_MS_DEFAULT,
  LEASE_MS_MIN,
  PROTOCOL_VERSION,
  type ArgsOf,
  type ControllerRequests,
} from "./wire/messages.ts";
import { Peer, RequestError } from "./wire/peer.ts";
import type { Stream } from "./wire/transport.ts";

/** A connection that has not said hello by then is closed (it holds a socket and nothing else). */
const HELLO_TIMEOUT_MS = 10_000;
/** Until hello has proved the secret, a connection may send only small frames. */
const HELLO_FRAME_BYTES_MAX = 64 * 1024;
/** Connections beyond this are closed at once (agents and ctl together need few). */
export const CONNECTIONS_MAX = 1024;

export class ControlPort {
  private connections = 0;
  private serving = 0;

  constructor(
    private readonly core: ControllerCore,
    private readonly secret: string,
    private readonly agents: AgentRequests,
    private readonly ctl: CtlRequests,
  ) {}

  /** Requests in progress, of agents and ctl. */
  get busy(): boolean {
    return this.serving > 0;
  }

  /** A ctl request from within the controller's process. */
  async ctlRequest(op: string, args: unknown): Promise<unknown> {
    this.serving += 1;
    try {
      return await this.ctl.serve(op, args);
    } finally {
      this.serving -= 1;
    }
  }

  accept(stream: Stream): void {
    const peer: AgentPeer = new Peer(stream, controllerRequests, agentRequests);
    if (this.connections >= CONNECTIONS_MAX) {
      peer.close(new Error("too many connections"));
      return;
    }
    this.connections += 1;
    peer.onClosed(() => (this.connections -= 1));
    peer.limitFrames(HELLO_FRAME_BYTES_MAX);
    let role: "agent" | "ctl" | null = null;
    let agent: AgentLink | null = null;
    const cancelHelloTimer = this.core.env.clock.after(HELLO_TIMEOUT_MS, () => peer.close(new Error("no hello in time")));
    peer.onClosed(() => cancelHelloTimer());
    peer.serve(async (op, args) => {
      this.serving += 1;
      try {
        if (op === "hello") {
          if (role) throw new RequestError("EPROTO", "hello sent twice", true);
          cancelHelloTimer();
          const hello = args as ArgsOf<ControllerRequests, "hello">;
          this.checkHello(peer, hello);
          role = hello.role;
          if (role === "agent") agent = await this.registerAgent(peer, hello);
          return { version: PROTOCOL_VERSION, controller: "tabledisk", run: this.core.context.run };
        }
        if (!role) throw new RequestError("EPROTO", `${op} before hello`, true);
        if (!AGENT_OPS.has(op)) return await this.ctl.serve(op, args);
        if (!agent) throw new RequestError("EPROTO", `only agents send ${op}`);
        const answer = await this.agents.serve(agent, op, args);
        await this.core.env.beforeAnswer?.(op);
        return answer;
      } finally {
        this.serving -= 1;
      }
    });
  }

  /** The secret and the version; then frames of any size are accepted. */
  private checkHello(peer: AgentPeer, hello: ArgsOf<ControllerRequests, "hello">): void {
    if (!secretsMatch(hello.secret, this.secret)) throw new RequestError("EACCES", "the control secret is missing or wrong", true);
    peer.limitFrames(FRAME_BYTES_MAX);
    if (hello.version !== PROTOCOL_VERSION) {
      throw new RequestError("EVERSION", `protocol version ${hello.version} is not supported (this controller speaks ${PROTOCOL_VERSION})`, true);
    }
  }

  private registerAgent(peer: AgentPeer, hello: ArgsOf<ControllerRequests, "hello">): Promise<AgentLink> {
    if (!hello.agentId || !hello.nbd) throw new RequestError("EINVAL", "an agent must give agentId and nbd", true);
    if (hello.leaseMs !== undefined && hello.leaseMs < LEASE_MS_MIN) throw new RequestError("EINVAL", `a lease of ${hello.leaseMs} ms is shorter than ${LEASE_MS_MIN} ms`, true);
    const run = this.core.context.run;
    return this.agents.register(peer, {
      id: hello.agentId,
      instance: hello.instance ?? "",
      nbd: hello.nbd,
      leaseMs: hello.leaseMs ?? LEASE_MS_DEFAULT,
      handingBack: (hello.heldRuns ?? []).some((held) => held !== run),
    });
  }
}
