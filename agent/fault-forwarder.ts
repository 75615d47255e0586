// What the workers need from the controller, forwarded by the main thread: faults (their answers
// go into the tables), commits of the mapping changes writes relied on (at FLUSH, and soon after
// a fault in the background), and reports of failed storage containers (R14).
import type { AgentRequests, controllerRequests } from "../engine/wire/messages.ts";
import { BACKGROUND_COMMIT_MS, LUN_FAILURE_LENGTH_MAX } from "../engine/wire/messages.ts";
import type { Peer } from "../engine/wire/peer.ts";
import type { AgentEnvironment } from "./environment.ts";
import { writeChange } from "./table-edits.ts";
import type { TableApplier } from "./table-applier.ts";
import type { FromWorker, ToWorker } from "./thread-messages.ts";
import type { UncommittedChanges } from "./uncommitted.ts";
import type { AgentMemory } from "./worker-threads.ts";

/** The errors a host can get for a request the main thread handled. */
export type HostErrno = NonNullable<Extract<ToWorker, { type: "resume" }>["errno"]>;

type ControllerPeer = Peer<AgentRequests, typeof controllerRequests>;

/** What the forwarder needs of the controller connection (controller-link.ts). */
export interface ControllerAccess {
  /** The connection while registered, else null. */
  readonly current: ControllerPeer | null;
  /** Runs `call` on the connection, again after a loss; null when the controller stays out of reach. */
  withController<T>(call: (controller: ControllerPeer) => Promise<T>): Promise<T | null>;
}

export class FaultForwarder {
  private readonly storageErrorsReporting = new Set<number>();
  private readonly commitTimers = new Map<number, () => void>();
  private readonly writeFaultAnswer: typeof writeChange;

  constructor(
    private readonly id: string,
    private readonly env: AgentEnvironment,
    private readonly memory: AgentMemory,
    private readonly link: ControllerAccess,
    private readonly tables: TableApplier,
    private readonly uncommitted: UncommittedChanges,
    private readonly say: (line: string) => void,
  ) {
    this.writeFaultAnswer = env.writeFaultAnswer ?? writeChange;
  }

  stop(): void {
    for (const cancel of this.commitTimers.values()) cancel();
  }

  /** Tells the controller a container failed (R14), once per container until it answers. */
  reportStorageError(container: number, message: string): void {
    this.say(`agent ${this.id}: storage container ${container} failed: ${message}`);
    const controller = this.link.current;
    if (!controller || this.storageErrorsReporting.has(container)) return;
    this.storageErrorsReporting.add(container);
    controller
      .request("storage_error", { container, message: message.slice(0, LUN_FAILURE_LENGTH_MAX) })
      .catch((error: Error) => this.say(`agent ${this.id}: could not report the failure of container ${container}: ${error.message}`))
      .finally(() => this.storageErrorsReporting.delete(container));
  }

  /** Sends a fault to the controller and applies its answer; returns the errno for the host, if any. */
  async forwardFault(fault: Extract<FromWorker, { type: "fault" }>): Promise<HostErrno | undefined> {
    const { request: _, type: __, ...args } = fault;
    const answer = await this.link.withController((controller) =>
      // The entries go in as the answer is read, unless a later change to them (say a snapshot's
      // No-write) arrived first: then the request faults again.
      controller.request("fault", args, (arrived) => {
        const table = this.tables.find(fault.disk);
        // No table: it went away while the fault was answered, and the request will see GONE.
        if (table && arrived.action === "retry" && arrived.runs && arrived.first !== undefined && arrived.change !== undefined) {
          this.writeFaultAnswer(this.memory.tables, table, arrived.first, arrived.runs, arrived.change);
        }
      }),
    );
    if (!answer) return "EIO";
    if (answer.action === "error") return answer.errno ?? "EIO";
    if (answer.run !== undefined && answer.at !== undefined && answer.runs && answer.first !== undefined) {
      this.uncommitted.note(fault.disk, answer.run, answer.first, answer.runs, answer.at);
      this.commitSoon(fault.disk);
    }
    return undefined;
  }

  /** Has the controller commit the mapping changes writes to `disk` relied on: for a FLUSH from a
   *  connection of registration era `era`, or in the background (null). A FLUSH fails if changes
   *  its connection may have relied on were lost, also if that came to light while it waited. */
  async commitFor(disk: number, era: number | null): Promise<HostErrno | undefined> {
    const lost = () => era !== null && this.uncommitted.lostFor(disk, era);
    if (lost()) return "EIO";
    const outcome = await this.uncommitted.commitDisk(disk, async (run) => (await this.link.withController((controller) => controller.request("commit", { run }))) !== null);
    return outcome === "unreachable" || lost() ? "EIO" : undefined;
  }

  /** Commits a fault's changes soon without waiting for a FLUSH: then a controller crash after
   *  that does not fail the FLUSH (the agent cannot tell whether another commit saved them). */
  private commitSoon(disk: number): void {
    if (this.commitTimers.has(disk)) return;
    const cancel = this.env.clock.after(BACKGROUND_COMMIT_MS, () => {
      this.commitTimers.delete(disk);
      this.commitFor(disk, null).catch((error: Error) => this.say(`agent ${this.id}: background commit of disk ${disk}: ${error.message}`));
    });
    this.commitTimers.set(disk, cancel);
  }
}
