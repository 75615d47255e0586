// Kill -9 under write load, 50 rounds: the controller, one agent, both agents, or all three die
// at a random moment while a tagged writer per disk writes and FLUSHes through its agent, and
// snapshots are taken under that load now and then, some of them cut short by the kill. After
// each restart: every write acknowledged before the last acknowledged FLUSH reads back on every
// disk (or a write to its block not yet acknowledged when it was sent), every snapshot reads
// exactly the image recorded when it was taken, and `ctl check` is clean. The moments and the
// agents chosen come from a seeded PRNG: KILL_LOOP_SEED=N replays a run's choices (not its timing).
import { afterAll, expect, test } from "bun:test";
import { reapAll } from "./helpers/processes.ts";
import { Cluster, CONTROLLER } from "./helpers/cluster.ts";
import { firstDifference, FlushingWriter, imageProblems, readTags } from "./helpers/write-model.ts";
import { TAGGED_BLOCK_BYTES } from "./helpers/tagged-writer.ts";
import { randomInt, seededRandom } from "./log-helpers.ts";

const SEED = Number(process.env.KILL_LOOP_SEED ?? Math.floor(Math.random() * 2 ** 31));
const ROUNDS = 50;
const AGENTS = ["a1", "a2"];
const BLOCKS = 512; // 2 MiB disks of 64 KiB segments
const SEGMENTS = 32;
/**
 * What a round does before its kill, cycling (3 phases against 4 kinds of kill: every pairing
 * comes up): nothing more, a snapshot of each disk, or a snapshot still being made at the kill.
 */
const PHASES = ["writes", "snapshots", "snapshot-interrupted"] as const;
const SNAPSHOTS_KEPT = 3;
/** The kill comes after 1..this many more acknowledged writes of one writer (at several thousand
 *  a second, that spans the ~50 ms a `ctl snapshot create` takes from start to end). */
const KILL_AFTER_WRITES_MAX = 600;
/** After a snapshot, the first writes to each segment copy on write (consecutive writes go to
 *  different segments): a kill within this many writes lands among those faults. */
const KILL_AFTER_SNAPSHOT_WRITES_MAX = 2 * SEGMENTS;
/** The budget of the whole run (it takes well under a minute on a 2-core machine). */
const TEST_TIMEOUT_MS = 180_000;

/** Who dies, cycling: the controller, one agent, both agents, everything. */
const KINDS: ((pick: () => string) => string[])[] = [
  () => [CONTROLLER],
  (pick) => [pick()],
  () => [...AGENTS],
  () => [CONTROLLER, ...AGENTS],
];

interface Snapshot {
  name: string;
  image: Uint8Array;
}

interface Disk {
  name: string;
  mode: "forward" | "reverse";
  /** The agent its writer goes through; reads go through either. */
  agent: string;
  writer: FlushingWriter;
  /** What every block held when the writer last stopped (writes up to `since`). */
  before: { since: number; tags: Uint32Array };
  snapshots: Snapshot[];
}

let cluster: Cluster | undefined;
afterAll(async () => {
  await reapAll();
  cluster?.remove();
});

function readDisk(agent: string, name: string): Promise<Uint8Array> {
  return cluster!.readImage(agent, name, BLOCKS * TAGGED_BLOCK_BYTES);
}

test(`kill loop: ${ROUNDS} rounds of kill -9 (controller, one agent, both agents, all) under write load lose no flushed write and change no snapshot`, async () => {
  console.log(`kill-loop seed ${SEED} (replay with KILL_LOOP_SEED=${SEED})`);
  const prng = seededRandom(SEED);
  const random = (below: number) => randomInt(prng, 0, below);
  cluster = await Cluster.start({ agents: AGENTS, lunSize: "256M" });
  const newDisk = (name: string, mode: Disk["mode"], agent: string): Disk => ({
    name,
    mode,
    agent,
    writer: new FlushingWriter(BLOCKS),
    before: { since: 0, tags: new Uint32Array(BLOCKS) },
    snapshots: [],
  });
  const disks = [newDisk("kf", "forward", "a1"), newDisk("kr", "reverse", "a2")];
  for (const disk of disks) {
    await cluster.createDisk(disk.name, `${BLOCKS * TAGGED_BLOCK_BYTES}`, ["--segment-size", `${(BLOCKS * TAGGED_BLOCK_BYTES) / SEGMENTS}`, "--mode", disk.mode]);
  }
  const counts = { snapshots: 0, interrupted: 0, interruptedKept: 0 };

  /** Checks a new snapshot of `disk` taken between `begin` and `end` and keeps its image. */
  const keepSnapshot = async (disk: Disk, name: string, begin: number, end: number, where: object) => {
    const image = await readDisk(AGENTS[random(AGENTS.length)]!, name);
    const rule = { ackedBefore: begin, issuedBefore: end, since: disk.before.since, tags: disk.before.tags };
    expect({ ...where, snapshot: name, problems: imageProblems(image, disk.writer, rule) }).toEqual({ ...where, snapshot: name, problems: [] });
    disk.snapshots.push({ name, image });
    if (disk.snapshots.length > SNAPSHOTS_KEPT) await cluster!.ctlOk(["disk", "delete", disk.snapshots.shift()!.name]);
  };

  for (let round = 0; round < ROUNDS; round += 1) {
    const killed = KINDS[round % KINDS.length]!(() => AGENTS[random(AGENTS.length)]!);
    const phase = PHASES[round % PHASES.length]!;
    const where = { seed: SEED, round, killed, phase };
    for (const disk of disks) await disk.writer.start(cluster.socket(disk.agent), disk.name);

    if (phase === "snapshots") {
      for (const disk of disks) {
        // Under load: each writer has had a few writes acknowledged in this round first.
        await Promise.all(disks.map(({ writer }) => writer.whenAcked(writer.ackedCount + 16)));
        const name = `${disk.name}-${round}`;
        const begin = performance.now();
        await cluster.ctlOk(["snapshot", "create", disk.name, name]);
        await keepSnapshot(disk, name, begin, performance.now(), where);
        counts.snapshots += 1;
      }
    }
    let interrupted: { disk: Disk; name: string; begin: number; result: Promise<{ code: number; end: number }> } | null = null;
    if (phase === "snapshot-interrupted") {
      const disk = disks[random(disks.length)]!;
      const name = `${disk.name}-${round}`;
      const begin = performance.now();
      const result = cluster.ctl(["snapshot", "create", disk.name, name]).then(({ code }) => ({ code, end: performance.now() }));
      interrupted = { disk, name, begin, result };
    }

    // The random moment: after some more acknowledged writes of one of the writers.
    const writer = disks[random(disks.length)]!.writer;
    await writer.whenAcked(writer.ackedCount + 1 + random(phase === "snapshots" ? KILL_AFTER_SNAPSHOT_WRITES_MAX : KILL_AFTER_WRITES_MAX));
    await cluster.restart(killed);

    if (interrupted) {
      // The snapshot may have been made or not (a killed controller answers nothing); if made, it
      // is one point in time within the command, and it is kept and checked like the others.
      const { code, end } = await interrupted.result;
      const names = (JSON.parse(await cluster.ctlOk(["disk", "list", "--json"])) as { name: string }[]).map((disk) => disk.name);
      if (code === 0) expect({ ...where, made: names.includes(interrupted.name) }).toEqual({ ...where, made: true });
      counts.interrupted += 1;
      if (names.includes(interrupted.name)) {
        await keepSnapshot(interrupted.disk, interrupted.name, interrupted.begin, end, where);
        counts.interruptedKept += 1;
      }
    }

    // A writer keeps its connection unless its agent died; writes held while the controller was
    // away complete now that it is back.
    const ends: Record<string, string> = {};
    const expectedEnds: Record<string, string> = {};
    for (const disk of disks) {
      const end = await disk.writer.stop();
      const agentDied = killed.includes(disk.agent);
      ends[disk.name] = end.kind === "drained" ? "drained" : agentDied ? "cut" : `cut: ${end.reason}`;
      expectedEnds[disk.name] = agentDied ? "cut" : "drained";
    }
    expect({ ...where, ends }).toEqual({ ...where, ends: expectedEnds });

    for (const disk of disks) {
      expect({ ...where, disk: disk.name, failures: disk.writer.failures }).toEqual({ ...where, disk: disk.name, failures: [] });
      const image = await readDisk(AGENTS[random(AGENTS.length)]!, disk.name);
      const rule = { ackedBefore: disk.writer.durableBefore, issuedBefore: Infinity };
      expect({ ...where, disk: disk.name, problems: imageProblems(image, disk.writer, rule) }).toEqual({ ...where, disk: disk.name, problems: [] });
      disk.before = { since: disk.writer.lastIssued, tags: readTags(image, BLOCKS).tags };
      for (const snapshot of disk.snapshots) {
        const now = await readDisk(AGENTS[random(AGENTS.length)]!, snapshot.name);
        expect({ ...where, snapshot: snapshot.name, difference: firstDifference(now, snapshot.image) }).toEqual({ ...where, snapshot: snapshot.name, difference: null });
      }
    }
    const checked = JSON.parse(await cluster.ctlOk(["check", "--json"])) as { problems: string[] };
    expect({ ...where, problems: checked.problems }).toEqual({ ...where, problems: [] });
  }

  // The run did what it claims: writes were flushed on both disks and snapshots were made.
  console.log(`kill-loop: ${counts.snapshots} snapshots before a kill; ${counts.interruptedKept} of ${counts.interrupted} interrupted by one were made`);
  for (const disk of disks) expect(disk.writer.durableBefore).toBeGreaterThan(0);
  expect(counts.snapshots).toBe(disks.length * Math.ceil((ROUNDS - 1) / PHASES.length));
}, TEST_TIMEOUT_MS);
