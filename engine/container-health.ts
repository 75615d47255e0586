// R14: is a storage container still the file it was, and can it be read? The controller asks now
// and then, and whenever an agent reports an I/O error on the container.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

/** How often the controller checks every container in service. */
export const HEALTH_CHECK_INTERVAL_MS = 1_000;

interface FileIdentity {
  dev: number;
  ino: number;
}

export class ContainerHealth {
  private readonly identities = new Map<number, FileIdentity>();
  private readonly probe = new Uint8Array(1);

  /**
   * Why container `id` at `path` cannot be used, or null when it can. The first good check
   * remembers which file it is, so a container removed and replaced by another file fails too
   * (the agents' open descriptors would still reach the old one).
   */
  problem(id: number, path: string): string | null {
    let fd: number | undefined;
    try {
      fd = openSync(path, "r+");
      const stat = fstatSync(fd);
      if (!stat.isFile() && !stat.isBlockDevice()) return `${path} is not a file or block device`;
      const known = this.identities.get(id);
      if (known && (known.dev !== stat.dev || known.ino !== stat.ino)) return `${path} is no longer the container's file (removed and replaced)`;
      readSync(fd, this.probe, 0, 1, 0);
      this.identities.set(id, { dev: stat.dev, ino: stat.ino });
      return null;
    } catch (error) {
      return (error as Error).message;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  /** After a repair, whatever file is at the path now is the container. */
  forget(id: number): void {
    this.identities.delete(id);
  }
}
