// The entry of one NBD worker thread of the agent (a Bun Worker): it binds the thread's logic
// (worker-thread.ts) to this thread's messages, real files and NBD servers.
import { monotonicClock } from "../engine/agent-link.ts";
import { listenError } from "../engine/util/address.ts";
import type { WorkerEnvironment } from "./environment.ts";
import { POOL_TRANSFER_BYTES_MIN, type MappedBackend } from "./mapped-backend.ts";
import { startNbdServer, type NbdServer } from "./nbd/server.ts";
import { nodeFiles } from "./storage.ts";
import type { FromWorker, NbdListen, ToWorker } from "./thread-messages.ts";
import { BatchingPort, onMessages } from "./thread-port.ts";
import { WorkerThread } from "./worker-thread.ts";

declare const self: Worker;

/** Starts an NBD server on each of `listen`; the ones started are closed again if one fails. */
async function serveNbd(backend: MappedBackend, listen: NbdListen[]): Promise<{ tcpPort?: number; close(): Promise<void> }> {
  const servers: NbdServer[] = [];
  const close = async () => {
    await Promise.all(servers.map((server) => server.close()));
  };
  let tcpPort: number | undefined;
  for (const where of listen) {
    try {
      servers.push(await startNbdServer({ backend, listen: where, log: (line) => console.error(`nbd: ${line}`) }));
    } catch (error) {
      await close();
      throw listenError(where.kind === "unix" ? where : { kind: "tcp", host: where.host, port: where.port }, error);
    }
    if (where.kind === "tcp") tcpPort = servers[servers.length - 1]!.port;
  }
  return { tcpPort, close };
}

const production: WorkerEnvironment = { clock: monotonicClock, files: nodeFiles, poolTransferBytesMin: POOL_TRANSFER_BYTES_MIN, serve: serveNbd };
const toMain = new BatchingPort<FromWorker>(self);
const thread = new WorkerThread(production, (message) => toMain.post(message));
onMessages<ToWorker>(self, (message) => thread.handle(message));
