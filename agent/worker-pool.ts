// The agent's worker threads in production: Bun Workers running worker.ts, each serving NBD on the
// agent's address, their messages batched both ways (thread-port.ts).
import type { Address } from "../engine/util/address.ts";
import { removeStaleSocket } from "../engine/wire/transport.ts";
import { PortClaim } from "./port-claim.ts";
import type { FromWorker, NbdListen, ToWorker } from "./thread-messages.ts";
import { BatchingPort, onMessages } from "./thread-port.ts";
import type { ThreadChannel, WorkerThreads } from "./worker-threads.ts";

export const WORKERS_MAX = 16;

export class WorkerPool {
  private readonly workers: { worker: Worker; channel: ThreadChannel }[] = [];
  private portClaim: PortClaim | null = null;
  /** The NBD address actually served (the TCP port is filled in when 0 was asked for). */
  address: Address;

  constructor(
    private readonly threads: WorkerThreads,
    nbd: Address,
  ) {
    this.address = nbd;
  }

  /** Starts `count` workers, one after the other, serving NBD at the address. */
  async start(count: number): Promise<void> {
    const workers = Math.min(WORKERS_MAX, count);
    const nbd = this.address;
    if (nbd.kind === "unix") await removeStaleSocket(nbd.path);
    // Port 0 is a port nobody serves yet; the first worker picks it and the others join it.
    else if (nbd.port !== 0) this.portClaim = PortClaim.take(nbd);
    for (let index = 0; index < workers; index += 1) {
      const listen: NbdListen[] = [];
      if (nbd.kind === "unix") {
        // A unix socket path can be bound once, so one worker accepts every unix connection.
        if (index === 0) listen.push({ kind: "unix", path: nbd.path });
      } else {
        const port = this.address.kind === "tcp" ? this.address.port : nbd.port;
        listen.push({ kind: "tcp", host: nbd.host, port, reusePort: workers > 1 });
      }
      const worker = new Worker(new URL("./worker.ts", import.meta.url).href);
      const port = new BatchingPort<ToWorker>(worker);
      const channel: ThreadChannel = { post: (message) => port.post(message), onMessage: (handle) => onMessages<FromWorker>(worker, handle) };
      this.workers.push({ worker, channel });
      const tcpPort = await new Promise<number | undefined>((resolve, reject) => {
        worker.addEventListener("error", (event) => reject(new Error(`NBD worker failed: ${(event as ErrorEvent).message}`)));
        this.threads.start(channel, listen).then(resolve, reject);
      });
      if (tcpPort !== undefined && this.address.kind === "tcp") this.address = { ...this.address, port: tcpPort };
    }
  }

  /** The NBD servers finish their in-flight requests, then the workers end. */
  async stop(): Promise<void> {
    await Promise.all(
      this.workers.map(
        ({ worker, channel }) =>
          new Promise<void>((resolve) => {
            channel.onMessage((message) => {
              if (message.type === "stopped") resolve();
            });
            worker.addEventListener("close", () => resolve());
            channel.post({ type: "stop" });
          }),
      ),
    );
    for (const { worker } of this.workers) worker.terminate();
    this.portClaim?.release();
  }
}
