// ctl's requests to the controller, each handed to the service whose job it is.
import type { Containers } from "./containers.ts";
import type { ControllerCore } from "./controller-core.ts";
import { diskNamed } from "./controller-core.ts";
import { checkConsistency } from "./check.ts";
import type { DiskOperations } from "./disk-operations.ts";
import { agentSummaries, diskSummary, lunSummary, statusOf } from "./summaries.ts";
import type { ArgsOf, ControllerRequests } from "./wire/messages.ts";
import { RequestError } from "./wire/peer.ts";
import { isAbsolute, resolve as resolvePath } from "node:path";

/** ctl requests that change existing tables. */
const TABLE_CHANGES = new Set(["disk.delete", "disk.protect", "snapshot.create", "snapshot.group", "disk.rollback", "disk.export", "disk.unexport"]);

type Args<Op extends keyof ControllerRequests> = ArgsOf<ControllerRequests, Op>;

export class CtlRequests {
  constructor(
    private readonly core: ControllerCore,
    private readonly disks: DiskOperations,
    private readonly containers: Containers,
  ) {}

  async serve(op: string, args: unknown): Promise<unknown> {
    const { core, disks, containers } = this;
    // After a restart, agents hand back mapping changes the old run had not committed against the
    // tables as they were recovered (restore.ts): nothing changes them before that is done.
    if (TABLE_CHANGES.has(op)) await core.agents.knownAgentsSettled();
    switch (op) {
      case "disk.create":
        return disks.create(args as Args<"disk.create">);
      case "disk.list":
        return [...core.catalog.disks.values()].map((disk) => diskSummary(core, disk));
      case "disk.info":
        return diskSummary(core, diskNamed(core, (args as Args<"disk.info">).name));
      case "disk.delete":
        return disks.delete(args as Args<"disk.delete">);
      case "disk.protect":
        return disks.protect(args as Args<"disk.protect">);
      case "snapshot.create":
        return disks.snapshot(args as Args<"snapshot.create">);
      case "snapshot.group":
        return disks.group(args as Args<"snapshot.group">);
      case "disk.rollback":
        return disks.rollback(args as Args<"disk.rollback">);
      case "disk.diff":
        return disks.diff(args as Args<"disk.diff">);
      case "disk.export":
      case "disk.unexport":
        return disks.present(args as Args<"disk.export">, op === "disk.export");
      case "lun.add": {
        const { path, size } = args as Args<"lun.add">;
        // ctl resolves a relative path in its own working directory; the controller's means nothing to the user.
        if (!isAbsolute(path)) throw new RequestError("EINVAL", `Cannot add ${path}: the path must be absolute`);
        return core.catalogLock.run("catalog", () => containers.add(resolvePath(path), size));
      }
      case "lun.list":
        return [...core.catalog.luns.values()].map((lun) => lunSummary(core, lun.id));
      case "lun.repair":
        return containers.repair((args as Args<"lun.repair">).id);
      case "check":
        return checkConsistency(core.catalog, core.pool);
      case "agent.list":
        return agentSummaries(core);
      case "status":
        return statusOf(core);
      default:
        throw new RequestError("EINVAL", `unknown request ${op}`);
    }
  }
}
