// A FLUSH that succeeded covers every write acknowledged before it was sent (NBD's rule), whoever
// dies. 30 rounds per case: a host writes tagged 4 KiB blocks at QD 16-32 to a disk of 64 KiB
// segments (60% rewrites, the rest anywhere on the disk, so first writes and copy-on-write keep
// faulting), a FLUSH every 8-64 writes, a snapshot now and then; at a random moment one process
// is killed with SIGKILL:
//   - the controller alone, down for 50-500 ms while the host goes on over the same connection
//     (its writes and FLUSHes wait for the new controller);
//   - the agent (the host's connection ends);
//   - `ctl up` (controller and agent in one process).
// After each round: every write acknowledged before the last successful FLUSH reads back (or a
// write issued to its block after it), no request failed, every snapshot reads exactly as when it
// was taken, and `ctl check` is clean. KILL_SEED=N replays a run's choices (not its timing).
import { afterAll, expect, test } from "bun:test";
import { reapAll } from "./helpers/processes.ts";
import { Cluster, CONTROLLER } from "./helpers/cluster.ts";
import { firstDifference, FlushingWriter, imageProblems, readTags } from "./helpers/write-model.ts";
import { TAGGED_BLOCK_BYTES } from "./helpers/tagged-writer.ts";
import { randomInt, seededRandom } from "./log-helpers.ts";

const SEED = Number(process.env.KILL_SEED ?? Math.floor(Math.random() * 2 ** 31));
const ROUNDS = 30;
const AGENT = "a1";
const DISK = "d";
const BLOCKS = 4096; // a 16 MiB disk
const SEGMENT_BYTES = 64 * 1024;
const REWRITE_SHARE = 0.6;
const DEPTH_MIN = 16;
const DEPTH_MAX = 32;
const WRITES_PER_FLUSH_MIN = 8;
const WRITES_PER_FLUSH_MAX = 64;
/** The kill comes after 1..this many more acknowledged writes. */
const KILL_AFTER_WRITES_MAX = 400;
/** How long the controller stays dead when it dies alone (the outage is part of the scenario). */
const OUTAGE_MS_MIN = 50;
const OUTAGE_MS_MAX = 500;
/** After a restart the host goes on for 1..this many more acknowledged writes before it stops. */
const WRITES_AFTER_RESTART_MAX = 200;
const SNAPSHOTS_KEPT = 2;
const TEST_TIMEOUT_MS = 240_000;

afterAll(reapAll);

interface Snapshot {
  name: string;
  image: Uint8Array;
}

function readImage(cluster: Cluster, name: string): Promise<Uint8Array> {
  return cluster.readImage(AGENT, name, BLOCKS * TAGGED_BLOCK_BYTES);
}

const CASES = [
  { kind: "the controller alone", combined: false, killed: [CONTROLLER] },
  { kind: "the agent", combined: false, killed: [AGENT] },
  { kind: "ctl up", combined: true, killed: [CONTROLLER] },
] as const;

for (const { kind, combined, killed } of CASES) {
  test(`kill -9 of ${kind}, ${ROUNDS} rounds under QD${DEPTH_MIN}-${DEPTH_MAX} writes, FLUSHes and snapshots: every write acknowledged before a successful FLUSH survives`, async () => {
    const seed = SEED + killed.length + (combined ? 7 : 0) + kind.length;
    console.log(`controller-kill (${kind}) seed ${seed} (replay with KILL_SEED=${SEED})`);
    const prng = seededRandom(seed);
    const random = (low: number, high: number) => randomInt(prng, low, high + 1);
    const cluster = await Cluster.start({ agents: [AGENT], lunSize: "512M", combined });
    try {
      await cluster.createDisk(DISK, `${BLOCKS * TAGGED_BLOCK_BYTES}`, ["--segment-size", `${SEGMENT_BYTES}`]);
      const written: number[] = [];
      const writer = new FlushingWriter(BLOCKS, {
        writesPerFlush: () => random(WRITES_PER_FLUSH_MIN, WRITES_PER_FLUSH_MAX),
        pickBlock: () => {
          const block = written.length > 0 && prng() < REWRITE_SHARE ? written[random(0, written.length - 1)]! : random(0, BLOCKS - 1);
          written.push(block);
          return block;
        },
      });
      let before: { since: number; tags: Uint32Array } = { since: 0, tags: new Uint32Array(BLOCKS) };
      const snapshots: Snapshot[] = [];
      let flushesAfterOutage = 0;
      let roundsWithRestore = 0;

      for (let round = 0; round < ROUNDS; round += 1) {
        const where = { seed, round };
        await writer.start(cluster.socket(AGENT), DISK, random(DEPTH_MIN, DEPTH_MAX));
        await writer.whenAcked(writer.ackedCount + random(1, 64));
        if (round % 2 === 0) {
          // Under load; the next writes copy on write.
          const name = `s${round}`;
          const begin = performance.now();
          await cluster.ctlOk(["snapshot", "create", DISK, name]);
          const end = performance.now();
          const image = await readImage(cluster, name);
          const problems = imageProblems(image, writer, { ackedBefore: begin, issuedBefore: end, since: before.since, tags: before.tags });
          expect({ ...where, snapshot: name, problems }).toEqual({ ...where, snapshot: name, problems: [] });
          snapshots.push({ name, image });
          if (snapshots.length > SNAPSHOTS_KEPT) await cluster.ctlOk(["disk", "delete", snapshots.shift()!.name]);
        }
        await writer.whenAcked(writer.ackedCount + random(1, KILL_AFTER_WRITES_MAX));
        const marks = await cluster.kill([...killed]);
        if (kind === "the controller alone") {
          const flushesBefore = writer.flushesIssued;
          await Bun.sleep(random(OUTAGE_MS_MIN, OUTAGE_MS_MAX));
          if (writer.flushesIssued > flushesBefore) flushesAfterOutage += 1;
        }
        await cluster.startAgain([...killed], marks);
        if (kind === "the controller alone" && cluster.child(CONTROLLER).lines.some((line) => /restored [1-9]\d* mapping entries/.test(line))) roundsWithRestore += 1;
        // The host's connection survives unless its agent died; it goes on a little, then drains
        // with a last FLUSH.
        const agentDied = kind !== "the controller alone";
        if (!agentDied) await writer.whenAcked(writer.ackedCount + random(1, WRITES_AFTER_RESTART_MAX));
        const end = await writer.stop();
        expect({ ...where, end: end.kind }).toEqual({ ...where, end: agentDied ? "cut" : "drained" });

        const image = await readImage(cluster, DISK);
        const problems = imageProblems(image, writer, { ackedBefore: writer.durableBefore, issuedBefore: Infinity, since: before.since, tags: before.tags });
        expect({ ...where, problems }).toEqual({ ...where, problems: [] });
        // Nothing was lost, so no FLUSH had to fail either.
        expect({ ...where, failures: writer.failures }).toEqual({ ...where, failures: [] });
        before = { since: writer.lastIssued, tags: readTags(image, BLOCKS).tags };
        for (const snapshot of snapshots) {
          const difference = firstDifference(await readImage(cluster, snapshot.name), snapshot.image);
          expect({ ...where, snapshot: snapshot.name, difference }).toEqual({ ...where, snapshot: snapshot.name, difference: null });
        }
        const checked = JSON.parse(await cluster.ctlOk(["check", "--json"])) as { problems: string[] };
        expect({ ...where, problems: checked.problems }).toEqual({ ...where, problems: [] });
      }
      // The run did what it claims: FLUSHes succeeded, and (controller alone) some were sent while
      // the controller was dead, and the agent handed back mappings the crash had lost.
      expect(writer.durableBefore).toBeGreaterThan(0);
      if (kind === "the controller alone") {
        console.log(`controller-kill: ${flushesAfterOutage} of ${ROUNDS} outages had a FLUSH sent meanwhile; ${roundsWithRestore} restarts restored mappings`);
        expect(flushesAfterOutage).toBeGreaterThan(0);
        expect(roundsWithRestore).toBeGreaterThan(0);
      }
    } finally {
      await reapAll();
      cluster.remove();
    }
  }, TEST_TIMEOUT_MS);
}
