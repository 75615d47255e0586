// One `ctl up` (controller + agent, NBD on a unix socket) and an open controller connection, for the
// benchmarks that make disks and snapshots of ours: requests with a bound, disks announced over NBD,
// fills through fio, and sections whose failures are recorded while the rest goes on.
import { join } from "node:path";
import { ControllerClient } from "../ctl/client.ts";
import { secretFromFile } from "../engine/secret.ts";
import type { ArgsOf, ControllerRequests, ResultOf } from "../engine/wire/messages.ts";
import { type Fill, fillJob } from "./disk-fills.ts";
import { runFio } from "./fio-jobs.ts";
import { log } from "./harness.ts";
import { withTimeout } from "./processes.ts";
import { type OursInstance, startOursInstance } from "./servers.ts";
import { MIB, formatCount } from "./units.ts";

/** Bound on one controller request. */
const REQUEST_TIMEOUT_MS = 120_000;

export interface FillRecord {
  disk: string;
  job: string;
  seconds: number;
  mapped: number;
  bandwidthMiBs: number;
}

/** Wall time of `work` in ms. */
export async function timed(work: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await work();
  return performance.now() - start;
}

export class OursSession {
  /** Everything that failed, in order. */
  readonly errors: string[] = [];
  readonly fills: FillRecord[] = [];
  private readonly uris = new Map<string, string>();

  private constructor(
    readonly dir: string,
    readonly ours: OursInstance,
    private readonly client: ControllerClient,
  ) {}

  /** `ctl up` in `dir` with one sparse container of `lunBytes`, and a connection to its controller. */
  static async start(dir: string, lunBytes: number, verbose: boolean): Promise<OursSession> {
    const ours = await startOursInstance({ dir, transport: "unix", diskBytes: lunBytes, verbose }, lunBytes);
    try {
      const client = await withTimeout("connecting to the controller", ControllerClient.open(ours.control, secretFromFile(ours.secretFile)), REQUEST_TIMEOUT_MS);
      return new OursSession(dir, ours, client);
    } catch (error) {
      await ours.stop();
      throw error;
    }
  }

  async stop(): Promise<void> {
    this.client.close();
    await this.ours.stop();
  }

  request<K extends keyof ControllerRequests & string>(op: K, args: ArgsOf<ControllerRequests, K>): Promise<ResultOf<ControllerRequests, K>> {
    return withTimeout(`controller ${op}`, this.client.request(op, args), REQUEST_TIMEOUT_MS);
  }

  /** The NBD URI of a disk made by createDisk or announce. */
  uri(disk: string): string {
    const uri = this.uris.get(disk);
    if (!uri) throw new Error(`disk ${disk} was not created`);
    return uri;
  }

  /** Sparse containers `lun1.img` ... up to `count` in all (the first comes with `ctl up`). */
  async addContainers(count: number, lunBytes: number): Promise<void> {
    for (let i = 1; i < count; i++) await this.request("lun.add", { path: join(this.dir, `lun${i}.img`), size: lunBytes });
  }

  async createDisk(name: string, size: number, segmentSize: number, mode?: "forward" | "reverse"): Promise<void> {
    await this.announce(name, () => this.request("disk.create", { name, size, segmentSize, mode }));
  }

  /** Runs `make` (which creates disk `name`) and waits until the agent serves it. */
  async announce(name: string, make: () => Promise<unknown>): Promise<void> {
    const before = this.ours.process.lineCount;
    await make();
    this.uris.set(name, await this.ours.announced(name, before));
  }

  async deleteDisk(name: string): Promise<void> {
    await this.request("disk.delete", { name });
  }

  async mappedEntries(name: string): Promise<number> {
    const info = await this.request("disk.info", { name });
    return info.allocatedBytes / info.segmentSize;
  }

  /** Writes disk `name` as `fill` says, through NBD, and records how long it took. */
  async fill(name: string, fill: Fill): Promise<void> {
    const job = fillJob(fill);
    const start = performance.now();
    const result = await runFio(this.uri(name), job, { runtimeSec: null, rampSec: 0 }, join(this.dir, `fill-${name}.json`));
    const seconds = (performance.now() - start) / 1000;
    const mapped = await this.mappedEntries(name);
    this.fills.push({ disk: name, job: job.id, seconds, mapped, bandwidthMiBs: result.bandwidthBytes / MIB });
    log(`${name}: ${job.label}: ${seconds.toFixed(1)} s, ${formatCount(mapped)} entries mapped`);
  }

  fail(what: string, error: unknown): void {
    const message = `${what}: ${(error as Error).message}`;
    this.errors.push(message);
    log(`FAILED ${message}`);
  }

  /** Runs one part of the benchmark; a failure is recorded and the rest goes on (unless `ctl up` died). */
  async section(name: string, work: () => Promise<void>): Promise<void> {
    const start = performance.now();
    try {
      await work();
    } catch (error) {
      this.fail(name, error);
      if (!this.ours.process.running) throw new Error(`ctl up exited (${this.ours.process.exitDescription}): ${this.ours.process.tail(10)}`);
    }
    log(`bench: ${name} took ${((performance.now() - start) / 1000).toFixed(1)} s`);
  }
}
