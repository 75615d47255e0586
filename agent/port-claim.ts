// Only the threads of one agent may serve an NBD TCP port (R19). The worker threads bind it with
// SO_REUSEPORT so that the kernel spreads connections over them, but the kernel would just as well
// let a second process of the same user join and take a share of the new connections: a host
// would then reach an agent that does not present its disk. So before its workers bind, an agent
// claims the port:
//  - it binds the port once without SO_REUSEPORT and lets go at once: that fails while anyone
//    listens there (another agent's workers, or any other server);
//  - and for its whole life it holds a lock named after the address in the abstract unix socket
//    namespace, which like port numbers is per network namespace and is dropped by the kernel when
//    the process dies: two agents starting at the same moment cannot both pass the first check.
import type { UnixSocketListener } from "bun";
import { listenError, type Address } from "../engine/util/address.ts";

export class PortClaim {
  private constructor(private readonly lock: UnixSocketListener<undefined>) {}

  /** Claims host:port for this process, or throws `Cannot listen on HOST:PORT: in use by another process`. */
  static take(address: Extract<Address, { kind: "tcp" }>): PortClaim {
    const socket = { data() {} };
    let lock: UnixSocketListener<undefined>;
    try {
      lock = Bun.listen<undefined>({ unix: `\0tabledisk-nbd-${address.host}:${address.port}`, socket });
    } catch (error) {
      throw listenError(address, error);
    }
    try {
      Bun.listen<undefined>({ hostname: address.host, port: address.port, socket }).stop(true);
    } catch (error) {
      lock.stop(true);
      throw listenError(address, error);
    }
    return new PortClaim(lock);
  }

  release(): void {
    this.lock.stop(true);
  }
}
