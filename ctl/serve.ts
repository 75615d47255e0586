// The long-running commands: `ctl up`, `ctl controller`, `ctl agent`. Each runs in the foreground
// until SIGINT or SIGTERM, then stops its parts in order and exits.
import { Agent } from "../agent/agent.ts";
import { PortClaim } from "../agent/port-claim.ts";
import { Controller } from "../engine/controller.ts";
import { formatAddress, nbdUri, parseAddress } from "../engine/util/address.ts";

interface Stoppable {
  stop(): Promise<void>;
}

/** Resolves on the first SIGINT/SIGTERM, after stopping `parts` (last started, first stopped). */
function runUntilSignal(parts: Stoppable[]): Promise<void> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) return;
      stopping = true;
      (async () => {
        for (const part of [...parts].reverse()) await part.stop().catch((error: Error) => console.error(`ctl: ${error.message}`));
        resolve();
      })();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}

interface ControllerFlags {
  data: string;
  control: string;
  secretFile?: string;
  lunSize?: number;
  logCompactSlack?: number;
}

function startController(options: ControllerFlags): Promise<Controller> {
  return Controller.start({
    dataDir: options.data,
    control: parseAddress(options.control),
    secretFile: options.secretFile,
    defaultLunBytes: options.lunSize,
    compactSlackBytes: options.logCompactSlack,
    // As PostgreSQL after a failed fsync: what the controller holds may be more than its log, so it
    // acknowledges nothing more and exits; a restart recovers what was committed.
    onFatal: (error) => {
      process.stderr.write(`ctl: fatal: ${error.message}\n`);
      process.exit(1);
    },
  });
}

export async function runUp(options: ControllerFlags & { nbd: string; workers?: number; lease?: number }): Promise<void> {
  // A busy NBD port is found before the controller touches the data directory (the agent claims
  // the port for good when it starts).
  const nbd = parseAddress(options.nbd);
  if (nbd.kind === "tcp" && nbd.port !== 0) PortClaim.take(nbd).release();
  const controller = await startController(options);
  const agent = await Agent.start({
    id: "local",
    control: controller.address,
    secret: controller.secret,
    nbd,
    workers: options.workers,
    leaseMs: options.lease,
  });
  // Handlers first: a signal after "ready:" always stops the parts in order.
  const stopped = runUntilSignal([controller, agent]);
  // Registration loads every table, so once connected the agent knows all current exports.
  await agent.whenConnected();
  for (const name of agent.exportNames()) console.log(nbdUri(agent.address, name));
  agent.onExport((_, uri) => console.log(uri));
  console.error(`ready: controller ${formatAddress(controller.address)}, NBD ${formatAddress(agent.address)}`);
  await stopped;
}

export async function runController(options: ControllerFlags): Promise<void> {
  const controller = await startController(options);
  const stopped = runUntilSignal([controller]);
  console.error(`ready: controller ${formatAddress(controller.address)}`);
  await stopped;
}

export async function runAgent(options: {
  id: string;
  nbd: string;
  control: string;
  secret: string;
  secretOrigin: string;
  workers?: number;
  lease?: number;
}): Promise<void> {
  const agent = await Agent.start({
    id: options.id,
    control: parseAddress(options.control),
    secret: options.secret,
    secretOrigin: options.secretOrigin,
    nbd: parseAddress(options.nbd),
    workers: options.workers,
    leaseMs: options.lease,
  });
  const refused = new Promise<never>((_, reject) => agent.onRefused(reject));
  const stopped = runUntilSignal([agent]);
  // Ready once registered; until then the agent says every few seconds that it cannot reach the controller.
  agent.whenConnected().then(() => console.error(`ready: agent ${options.id}, NBD ${formatAddress(agent.address)}`));
  try {
    await Promise.race([stopped, refused]);
  } catch (error) {
    await agent.stop();
    throw new Error(`the controller refused agent ${options.id}: ${(error as Error).message}`);
  }
}
