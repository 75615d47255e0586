// One NBD worker thread of the agent: it serves connections through the shared tables and asks
// the main thread only when a request faults.
import { SharedTables, type TablesHandle } from "../wasm/tables.ts";
import { InflightTracker } from "./inflight.ts";
import { QuiesceGates } from "./gates.ts";
import { Lease } from "./lease.ts";
import { RegistrationEra } from "./registration-era.ts";
import { MappedBackend } from "./mapped-backend.ts";
import { ContainerFiles } from "./storage.ts";
import { NbdError } from "./nbd/backend.ts";
import { startNbdServer, type NbdServer } from "./nbd/server.ts";
import type { FromWorker, ToWorker } from "./thread-messages.ts";
import { BatchingPort, onMessages } from "./thread-port.ts";
import { listenError } from "../engine/util/address.ts";
import { assert } from "../engine/util/assert.ts";

declare const self: Worker;

let backend: MappedBackend | null = null;
const servers: NbdServer[] = [];
const waiting = new Map<number, { resolve(): void; reject(error: Error): void }>();
let nextRequest = 1;

const toMain = new BatchingPort<FromWorker>(self);

function post(message: FromWorker): void {
  toMain.post(message);
}

/** Sends a message to the main thread and waits for its "resume" answer. */
function ask(message: Extract<FromWorker, { request: number }>): Promise<void> {
  return new Promise((resolve, reject) => {
    waiting.set(message.request, { resolve, reject });
    post(message);
  });
}

async function init(message: Extract<ToWorker, { type: "init" }>): Promise<void> {
  const tables = SharedTables.attach(message.tables as TablesHandle, message.thread);
  const inflight = InflightTracker.attach(message.inflight);
  const gates = QuiesceGates.attach(message.gates);
  const lease = Lease.attach(message.lease, message.clock);
  const files = new ContainerFiles((container, message) => post({ type: "storage-error", container, message }), lease);
  backend = new MappedBackend(
    tables,
    inflight,
    gates,
    RegistrationEra.attach(message.era),
    files,
    (fault) => {
      const request = nextRequest++;
      if (fault.gone) return ask({ type: "sync", request });
      const { gone: _, ...rest } = fault;
      return ask({ type: "fault", request, ...rest });
    },
    (disk, era) => ask({ type: "commit", request: nextRequest++, disk, era }),
    (disk, delta) => post({ type: "connections", disk, delta }),
  );
  let tcpPort: number | undefined;
  for (const listen of message.listen) {
    let server: NbdServer;
    try {
      server = await startNbdServer({ backend, listen, log: (line) => console.error(`nbd: ${line}`) });
    } catch (error) {
      throw listenError(listen.kind === "unix" ? listen : { kind: "tcp", host: listen.host, port: listen.port }, error);
    }
    servers.push(server);
    if (listen.kind === "tcp") tcpPort = server.port;
  }
  post({ type: "listening", tcpPort });
}

onMessages<ToWorker>(self, (message) => {
  switch (message.type) {
    case "init":
      init(message).catch((error: Error) => post({ type: "failed", message: error.message }));
      return;
    case "exports":
      // The main thread waits for "listening" before it sends any, so no change is missed.
      assert(backend, "export change before the worker started");
      backend.changeExports(message.set, message.removed);
      post({ type: "exports-applied", version: message.version });
      return;
    case "activate":
      backend?.activate();
      return;
    case "containers":
      backend?.files.update(message.containers);
      return;
    case "resume": {
      const waiter = waiting.get(message.request);
      waiting.delete(message.request);
      if (message.errno) waiter?.reject(new NbdError(message.errno, `the controller answered ${message.errno}`));
      else waiter?.resolve();
      return;
    }
    case "stop":
      Promise.all(servers.map((server) => server.close())).finally(() => {
        backend?.files.close();
        post({ type: "stopped" });
      });
      return;
  }
});
