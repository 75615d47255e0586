// Two agents as separate processes serve one disk; fio (randwrite, verify=crc32c) runs through
// both at once, each on its own half, while snapshots are taken. fio finds no verify error, and
// each snapshot is one point in time across both agents: a tagged writer per agent (beside fio in
// its half) shows every write acknowledged before the snapshot began and none issued after it
// returned, and the whole snapshot reads the same after all the writing as right after it was
// taken. For forward and reverse delta.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { reapAll, spawn, type Child } from "./helpers/processes.ts";
import { Cluster } from "./helpers/cluster.ts";
import { BlockClient } from "./helpers/block-client.ts";
import { TAGGED_BLOCK_BYTES, TaggedWriter } from "./helpers/tagged-writer.ts";
import { imageProblems } from "./helpers/write-model.ts";

const MIB = 2 ** 20;
const DISK_BYTES = 64 * MIB;
const HALF_BYTES = DISK_BYTES / 2;
/** Each half: fio's region, then a tagged writer's region. */
const FIO_BYTES = 24 * MIB;
const TAGGED_BLOCKS = (HALF_BYTES - FIO_BYTES) / TAGGED_BLOCK_BYTES;
const AGENTS = ["a1", "a2"];
const FIO_RUNTIME_S = 6;
const SNAPSHOTS_MAX = 5;
/** Snapshots that must be taken while both fio jobs run, or the test proves nothing. */
const SNAPSHOTS_UNDER_FIO_MIN = 3;
/** Snapshot images are remembered as one hash per segment. */
const SEGMENT_BYTES = 256 * 1024;
const READ_BYTES_MAX = 32 * MIB;

let cluster: Cluster | undefined;
beforeAll(async () => {
  cluster = await Cluster.start({ agents: AGENTS, lunSize: "1G" });
});
afterAll(async () => {
  await reapAll();
  cluster?.remove();
});

/** fio writes its JSON report here; its stdout and stderr keep only messages (errors). */
function fioReport(agent: string): string {
  return join(cluster!.dir, `fio-${agent}.json`);
}

function startFio(agent: string, disk: string, offset: number): Child {
  return spawn(
    [
      "fio",
      `--name=${agent}`,
      "--ioengine=nbd",
      `--uri=${cluster!.uri(agent, disk)}`,
      "--rw=randwrite",
      "--bs=4k",
      "--iodepth=16",
      `--offset=${offset}`,
      `--size=${FIO_BYTES}`,
      "--time_based",
      `--runtime=${FIO_RUNTIME_S}`,
      "--verify=crc32c",
      // Verify as it goes (every 256 writes), so reads check data while snapshots are taken too.
      "--verify_backlog=256",
      "--verify_fatal=1",
      "--verify_state_save=0",
      "--output-format=json",
      `--output=${fioReport(agent)}`,
    ],
    `fio-${agent}`,
  );
}

interface FioJob {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

async function fioResult(agent: string, fio: Child): Promise<{ code: number; job: FioJob | null; messages: string }> {
  const code = await fio.exited;
  const report = (await Bun.file(fioReport(agent)).exists()) ? await Bun.file(fioReport(agent)).text() : "";
  // No report when fio failed before running (its messages say why).
  const job = report.includes("{") ? (JSON.parse(report.slice(report.indexOf("{"))).jobs[0] as FioJob) : null;
  return { code, job, messages: fio.lines.join("\n") };
}

async function readImage(agent: string, disk: string): Promise<Uint8Array> {
  const client = await BlockClient.open(cluster!.socket(agent), disk);
  try {
    const image = new Uint8Array(DISK_BYTES);
    for (let at = 0; at < DISK_BYTES; at += READ_BYTES_MAX) image.set(await client.read(at, READ_BYTES_MAX), at);
    return image;
  } finally {
    await client.close();
  }
}

function hashes(image: Uint8Array): bigint[] {
  const out: bigint[] = [];
  for (let at = 0; at < image.length; at += SEGMENT_BYTES) out.push(BigInt(Bun.hash(image.subarray(at, at + SEGMENT_BYTES))));
  return out;
}

for (const mode of ["forward", "reverse"] as const) {
  describe(`two agents under fio (${mode})`, () => {
    test(`${mode}: fio verify=crc32c through 2 agent processes at once finds no error while snapshots are taken; each is one point in time across both`, async () => {
      const disk = `fio-${mode}`;
      await cluster!.createDisk(disk, `${DISK_BYTES}`, ["--segment-size", `${SEGMENT_BYTES}`, "--mode", mode]);
      // Agent i writes half i: fio at its start, the tagged writer after fio's region.
      const writers = await Promise.all(
        AGENTS.map((agent, i) => TaggedWriter.open(cluster!.socket(agent), disk, (i * HALF_BYTES + FIO_BYTES) / TAGGED_BLOCK_BYTES, TAGGED_BLOCKS)),
      );
      for (const writer of writers) writer.start();
      const fio = AGENTS.map((agent, i) => startFio(agent, disk, i * HALF_BYTES));
      const fioRunning = () => fio.every((job) => job.proc.exitCode === null);

      const snapshots: { name: string; hashes: bigint[] }[] = [];
      let underFio = 0;
      for (let round = 0; round < SNAPSHOTS_MAX && fioRunning(); round += 1) {
        // Both tagged writers get writes acknowledged between snapshots (the test's time limit bounds it).
        await Promise.all(writers.map((writer) => writer.whenAcked(writer.ackedCount + 200)));
        const name = `${disk}-s${round}`;
        const begin = performance.now();
        const taken = await cluster!.ctl(["snapshot", "create", disk, name]);
        const end = performance.now();
        expect(taken.stderr).toBe("");
        expect(taken.code).toBe(0);
        if (fioRunning()) underFio += 1;
        const image = await readImage(AGENTS[round % AGENTS.length]!, name);
        for (const [i, writer] of writers.entries()) {
          const region = image.subarray(i * HALF_BYTES + FIO_BYTES, (i + 1) * HALF_BYTES);
          expect({ snapshot: name, agent: AGENTS[i], problems: imageProblems(region, writer, { ackedBefore: begin, issuedBefore: end }) }).toEqual({
            snapshot: name,
            agent: AGENTS[i],
            problems: [],
          });
        }
        snapshots.push({ name, hashes: hashes(image) });
      }

      for (const [i, agent] of AGENTS.entries()) {
        const { code, job, messages } = await fioResult(agent, fio[i]!);
        // A verify error would be in fio's messages (and make it exit 1 under verify_fatal).
        expect({ agent, code, error: job?.error, messages }).toEqual({ agent, code: 0, error: 0, messages: "" });
        // fio wrote, and read back to verify, through this agent.
        expect(job!.write.io_bytes).toBeGreaterThan(FIO_BYTES / 4);
        expect(job!.read.io_bytes).toBeGreaterThan(0);
      }
      for (const writer of writers) await writer.stop();
      expect(underFio).toBeGreaterThanOrEqual(SNAPSHOTS_UNDER_FIO_MIN);

      // Nothing written after a snapshot was taken changed it, fio's regions included.
      for (const [i, snapshot] of snapshots.entries()) {
        const now = hashes(await readImage(AGENTS[(i + 1) % AGENTS.length]!, snapshot.name));
        const changed = now.flatMap((hash, chunk) => (hash === snapshot.hashes[chunk] ? [] : [`bytes ${chunk * SEGMENT_BYTES}+${SEGMENT_BYTES}`]));
        expect({ snapshot: snapshot.name, changed }).toEqual({ snapshot: snapshot.name, changed: [] });
      }
      const checked = JSON.parse(await cluster!.ctlOk(["check", "--json"])) as { problems: string[] };
      expect(checked.problems).toEqual([]);
    }, 120_000);
  });
}
