// One worker thread of the agent, whatever runs it (worker.ts binds it to a Bun Worker): it
// handles the main thread's messages, serves hosts through the shared tables with a MappedBackend,
// and asks the main thread only when a request faults or a FLUSH needs a commit.
import { SharedTables, type TablesHandle } from "../wasm/tables.ts";
import { InflightTracker } from "./inflight.ts";
import { QuiesceGates } from "./gates.ts";
import { Lease } from "./lease.ts";
import { RegistrationEra } from "./registration-era.ts";
import { MappedBackend, type CommitSender } from "./mapped-backend.ts";
import { ContainerFiles } from "./storage.ts";
import { NbdError } from "./nbd/backend.ts";
import type { FromWorker, ToWorker } from "./thread-messages.ts";
import type { WorkerEnvironment } from "./environment.ts";
import { assert } from "../engine/util/assert.ts";

export class WorkerThread {
  /** Set once the init message is handled. */
  backend: MappedBackend | null = null;
  private serving: { close(): Promise<void> } | null = null;
  private readonly waiting = new Map<number, { resolve(): void; reject(error: Error): void }>();
  private nextRequest = 1;

  constructor(
    private readonly env: WorkerEnvironment,
    private readonly post: (message: FromWorker) => void,
  ) {}

  handle(message: ToWorker): void {
    switch (message.type) {
      case "init":
        this.init(message).catch((error: Error) => this.post({ type: "failed", message: error.message }));
        return;
      case "exports":
        // The main thread waits for "listening" before it sends any, so no change is missed.
        assert(this.backend, "export change before the worker started");
        this.backend.changeExports(message.set, message.removed);
        this.post({ type: "exports-applied", version: message.version });
        return;
      case "activate":
        this.backend?.activate();
        return;
      case "containers":
        this.backend?.files.update(message.containers);
        return;
      case "resume": {
        const waiter = this.waiting.get(message.request);
        this.waiting.delete(message.request);
        if (message.errno) waiter?.reject(new NbdError(message.errno, `the controller answered ${message.errno}`));
        else waiter?.resolve();
        return;
      }
      case "stop":
        (this.serving?.close() ?? Promise.resolve()).finally(() => {
          this.backend?.files.close();
          this.post({ type: "stopped" });
        });
        return;
    }
  }

  /** Sends a message to the main thread and waits for its "resume" answer. */
  private ask(message: Extract<FromWorker, { request: number }>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.set(message.request, { resolve, reject });
      this.post(message);
    });
  }

  private async init(message: Extract<ToWorker, { type: "init" }>): Promise<void> {
    const { env } = this;
    const tables = SharedTables.attach(message.tables as TablesHandle, message.thread);
    const lease = Lease.attach(message.lease, message.clock, env.clock);
    const files = new ContainerFiles((container, message) => this.post({ type: "storage-error", container, message }), lease, env.files);
    const commit: CommitSender = (disk, era) => this.ask({ type: "commit", request: this.nextRequest++, disk, era });
    const commitFor = (by: "flush" | "fua") => env.adjustCommit?.(commit, by) ?? commit;
    const backend = new MappedBackend(
      tables,
      InflightTracker.attach(message.inflight),
      QuiesceGates.attach(message.gates),
      RegistrationEra.attach(message.era),
      files,
      (fault) => {
        const request = this.nextRequest++;
        if (fault.gone) return this.ask({ type: "sync", request });
        const { gone: _, ...rest } = fault;
        return this.ask({ type: "fault", request, ...rest });
      },
      { flush: commitFor("flush"), fua: commitFor("fua") },
      (disk, delta) => this.post({ type: "connections", disk, delta }),
      { poolTransferBytesMin: env.poolTransferBytesMin },
    );
    this.backend = backend;
    const { tcpPort, close } = await env.serve(backend, message.listen);
    this.serving = { close };
    this.post({ type: "listening", tcpPort });
  }
}
