// ctl's connection to the controller: one hello, then requests.
import { parseAddress } from "../engine/util/address.ts";
import { agentRequests, controllerRequests, PROTOCOL_VERSION, type ArgsOf, type ControllerRequests, type ResultOf } from "../engine/wire/messages.ts";
import { Peer, RemoteError } from "../engine/wire/peer.ts";
import type { ClientSecret } from "../engine/secret.ts";
import { connect } from "../engine/wire/transport.ts";

export class ControllerClient {
  private constructor(private readonly peer: Peer<typeof agentRequests, ControllerRequests>) {}

  static async open(address: string, secret: ClientSecret): Promise<ControllerClient> {
    let stream;
    try {
      stream = await connect(parseAddress(address));
    } catch (error) {
      throw new Error(`cannot reach the controller at ${address}: ${(error as Error).message}`);
    }
    const peer = new Peer(stream, agentRequests, controllerRequests);
    peer.serve(async (op) => {
      throw new Error(`ctl does not serve ${op}`);
    });
    try {
      await peer.request("hello", { version: PROTOCOL_VERSION, role: "ctl", secret: secret.secret });
    } catch (error) {
      peer.close();
      if (error instanceof RemoteError && error.code === "EACCES") throw new RemoteError(error.code, `${error.message} (the secret came from ${secret.origin})`);
      throw error;
    }
    return new ControllerClient(peer);
  }

  request<K extends keyof ControllerRequests & string>(op: K, args: ArgsOf<ControllerRequests, K>): Promise<ResultOf<ControllerRequests, K>> {
    return this.peer.request(op, args);
  }

  close(): void {
    this.peer.close();
  }
}
