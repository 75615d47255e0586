// Every message between controller, agents and ctl: the one place their shapes live.
// A connection starts with "hello" from the connecting side; after that either side may send
// requests, and every request gets exactly one response.
import { SECRET_LENGTH_MAX } from "../secret.ts";
import { array, bool, num, object, oneOf, optional, str, tuple, uint, type Infer, type Schema } from "./schema.ts";

/** 2: table changes carry their change number. */
export const PROTOCOL_VERSION = 2;

export const NAME_LENGTH_MAX = 128;
/** Disk names double as NBD export names and file-system-safe identifiers. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
/** NAME_PATTERN in words, for error messages. */
export const NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit";
export const PATH_LENGTH_MAX = 4096;
export const RUNS_PER_MESSAGE_MAX = 65536;
export const ENTRIES_PER_QUERY_MAX = 65536;
export const DISKS_MAX = 16384;
export const CONTAINERS_MAX = 4095;
export const DIFF_RANGES_MAX = 1 << 20;
export const GROUP_DISKS_MAX = 256;
export const AGENTS_MAX = 1024;
export const LEASE_MS_MIN = 100;
export const LEASE_MS_MAX = 600_000;
export const LEASE_MS_DEFAULT = 10_000;
export const INSTANCE_LENGTH_MAX = 64;
export const WARNING_LENGTH_MAX = 1024;
/** Mapping entries an agent hands back in one restore request (it sends as many as it needs). */
export const RESTORE_ENTRIES_MAX = 65536;
/** Controller runs an agent can hold uncommitted mapping changes of at once (in practice one or two). */
export const HELD_RUNS_MAX = 64;

const name = str(NAME_LENGTH_MAX, NAME_PATTERN, NAME_RULE);
const word = uint();
const segment = uint(2 ** 32 - 1);
const diskId = uint(2 ** 32 - 1);
const count = uint(2 ** 32);
/** Entries as runs of equal words: [word, count] covering consecutive segments. */
const runs = array(tuple<[number, number]>(word, uint(2 ** 32)), RUNS_PER_MESSAGE_MAX);
export type Runs = Infer<typeof runs>;
/**
 * The number of a change to a disk's entries (a command that sets entries, or a fault's answer):
 * per disk, increasing in the order the controller reads the entries it sends. An agent never
 * applies a change older than one it has applied to any of the same entries (agent/table-edits.ts),
 * whatever the order they arrive in: a fault's answer can arrive after a later command.
 */
const change = uint();

export const SETTABLE_STATES = ["invalid", "nw", "zero", "error"] as const;
export type SettableState = (typeof SETTABLE_STATES)[number];

/** Mapping changes left uncommitted by faults are committed about this long after they were made
 *  (by the controller, and by the agent that relies on them), for hosts that flush rarely. */
export const BACKGROUND_COMMIT_MS = 1_000;

export const ERRNO_NAMES = ["EIO", "ENOSPC", "EPERM", "EINVAL"] as const;
export type Errno = (typeof ERRNO_NAMES)[number];

export const helloArgs = object({
  version: uint(),
  role: oneOf("agent", "ctl"),
  /** The control secret (see engine/secret.ts); the controller refuses a hello without it. */
  secret: optional(str(SECRET_LENGTH_MAX)),
  agentId: optional(name),
  /** Names one agent process (random at its start): a reconnection of the same process is told
   *  apart from a second process that claims the same agentId. */
  instance: optional(str(INSTANCE_LENGTH_MAX)),
  nbd: optional(str(PATH_LENGTH_MAX)),
  /** An agent's lease (R8): it stops I/O when it has not renewed it for this long. */
  leaseMs: optional(uint(LEASE_MS_MAX)),
  /** The controller runs whose uncommitted mapping changes the agent holds (from fault answers).
   *  Changes of an ended run are handed back with "restore", then "restored". */
  heldRuns: optional(array(uint(), HELD_RUNS_MAX)),
});

export const DISK_MODES = ["forward", "reverse"] as const;
const mode = oneOf(...DISK_MODES);

const diskSummaryFields = {
  id: diskId,
  name,
  size: uint(),
  segmentSize: uint(),
  mode,
  /** The disk it was snapshotted from (its name when it was deleted: then parentDeleted is set). */
  parent: optional(name),
  parentDeleted: optional(bool),
  /** A protected disk cannot be deleted, rolled back over or written (its exports are read-only). */
  protected: bool,
  /** The agents it is presented to; absent: every agent. */
  exports: optional(array(name, AGENTS_MAX)),
  /** allocatedBytes = exclusiveBytes + sharedBytes; shared segments are also used by other disks. */
  allocatedBytes: uint(),
  exclusiveBytes: uint(),
  sharedBytes: uint(),
};
const diskSummary = object(diskSummaryFields);
/** A disk just created, with a warning when not everything went as asked: a disk larger than the
 *  pool's free space (thin: accepted), or an agent that could not load its table. */
const createdDisk = object({ ...diskSummaryFields, warning: optional(str(WARNING_LENGTH_MAX)) });
export type DiskSummary = Infer<typeof diskSummary>;

const agentSummary = object({ id: name, nbd: str(PATH_LENGTH_MAX), connected: bool, disks: array(name, DISKS_MAX) });
export type AgentSummary = Infer<typeof agentSummary>;

/** Longest reason kept for a failed container. */
export const LUN_FAILURE_LENGTH_MAX = 1024;
const lunFailure = str(LUN_FAILURE_LENGTH_MAX);

const lunSummary = object({
  id: uint(),
  path: str(PATH_LENGTH_MAX),
  size: uint(),
  usedBytes: uint(),
  freeBytes: uint(),
  /** R14: why the container is out of service; absent when healthy. */
  failed: optional(lunFailure),
  /** Entries (over all disks) in the error state because they lie on this container. */
  errorEntries: uint(),
});
export type LunSummary = Infer<typeof lunSummary>;

/** `change`: the table starts at this change number; a change numbered below it is older than the table. */
const tableArgs = object({ disk: diskId, name, size: uint(), segmentShift: uint(63), readOnly: bool, change });
export type TableArgs = Infer<typeof tableArgs>;

/** What the agent could not do alone: an I/O stopped by an entry's state, or "trim": unmap the
 *  whole segments first..last of the disk (they become Z). */
const faultOp = oneOf("read", "write", "zero", "status", "trim");
export type FaultOp = Infer<typeof faultOp>;

/** Requests the controller serves: from ctl, and faults from agents. */
export const controllerRequests = {
  /** `run` names this controller run (as fault answers and commit do). */
  hello: { args: helloArgs, result: object({ version: uint(), controller: str(NAME_LENGTH_MAX), run: optional(uint()) }) },
  "disk.create": {
    args: object({ name, size: uint(), segmentSize: optional(uint()), mode: optional(mode) }),
    result: createdDisk,
  },
  "snapshot.create": {
    args: object({ source: name, name, mode: optional(mode), invalidate: optional(bool), protect: optional(bool) }),
    result: createdDisk,
  },
  /** Protects a disk (on) or lifts the protection. */
  "disk.protect": { args: object({ name, on: bool }), result: diskSummary },
  "snapshot.group": {
    args: object({
      pairs: array(object({ source: name, name }), GROUP_DISKS_MAX),
      timeoutMs: optional(uint(3_600_000)),
    }),
    result: array(createdDisk, GROUP_DISKS_MAX),
  },
  /** `force`: even while a host has the disk open. */
  "disk.rollback": { args: object({ name, snapshot: name, force: optional(bool) }), result: diskSummary },
  "disk.diff": {
    args: object({ a: name, b: name }),
    result: object({ segmentSize: uint(), ranges: array(object({ offset: uint(), length: uint() }), DIFF_RANGES_MAX) }),
  },
  "disk.list": { args: object({}), result: array(diskSummary, DISKS_MAX) },
  "disk.info": { args: object({ name }), result: diskSummary },
  /** `force`: even with snapshots or clones taken from it, or while a host has it open. */
  "disk.delete": { args: object({ name, force: optional(bool) }), result: object({ freedBytes: uint() }) },
  check: {
    args: object({}),
    result: object({ disks: uint(), segments: uint(), usedBytes: uint(), problems: array(str(4096), 100) }),
  },
  /** `path` is absolute (ctl resolves it in its own working directory); its directory must exist. */
  "lun.add": { args: object({ path: str(PATH_LENGTH_MAX), size: uint() }), result: lunSummary },
  "lun.list": { args: object({}), result: array(lunSummary, CONTAINERS_MAX) },
  /** Puts a failed container back in service once it passes a check again (R14). */
  "lun.repair": { args: object({ id: uint(CONTAINERS_MAX) }), result: lunSummary },
  "agent.list": { args: object({}), result: array(agentSummary, AGENTS_MAX) },
  /** Presents a disk to one more agent (R7); the first export makes the disk's list explicit. */
  /** `force`: for an agent that has not registered yet (a typo would hide the disk from every host). */
  "disk.export": { args: object({ name, agent: name, force: optional(bool) }), result: diskSummary },
  "disk.unexport": { args: object({ name, agent: name, force: optional(bool) }), result: diskSummary },
  status: {
    args: object({}),
    result: object({
      controller: object({ disks: uint(), logBytes: uint() }),
      agents: array(agentSummary, AGENTS_MAX),
      /** provisionedBytes: the sizes of every disk together; overcommit: that over sizeBytes. */
      pool: object({ sizeBytes: uint(), usedBytes: uint(), freeBytes: uint(), containers: uint(), provisionedBytes: uint(), overcommit: num() }),
      disks: array(diskSummary, DISKS_MAX),
    }),
  },
  /** An agent renews its lease (R8). */
  renew: { args: object({}), result: object({}) },
  /** An agent's I/O to a container failed: the controller takes the container out of service. */
  storage_error: { args: object({ container: uint(CONTAINERS_MAX), message: lunFailure }), result: object({}) },
  fault: {
    args: object({
      disk: diskId,
      op: faultOp,
      first: segment,
      last: segment,
      state: uint(15),
      offset: uint(),
      length: uint(2 ** 32),
    }),
    result: object({
      action: oneOf("retry", "error"),
      first: optional(segment),
      runs: optional(runs),
      errno: optional(oneOf(...ERRNO_NAMES)),
      /** With runs: their change number. */
      change: optional(change),
      /** Set while mapping changes of the disk (this answer's or an earlier one's) are not durable
       *  yet: they become durable at the next commit of this controller run, and are lost if the
       *  run ends first. */
      run: optional(uint()),
      /** With run: the position of the disk's latest uncommitted record in that run's count (see
       *  restore). */
      at: optional(uint()),
    }),
  },
  /** An agent's FLUSH needs the mapping changes its faults were answered with (in controller run
   *  `run`) to be durable; fails with ESTALE when that run has ended (those changes are lost). */
  commit: { args: object({ run: uint() }), result: object({}) },
  /**
   * After hello, an agent hands back the mapping entries of `disk` it was answered with in an ended
   * controller run `run` and has not seen committed ([segment, word, at]: `at` as in the answer
   * that gave it): the controller makes durable those the run had not, and counts as `lost` those
   * that no longer fit its tables.
   */
  restore: {
    args: object({ disk: diskId, run: uint(), entries: array(tuple<[number, number, number]>(segment, word, uint()), RESTORE_ENTRIES_MAX) }),
    result: object({ restored: uint(), lost: uint() }),
  },
  /** The agent has handed back everything it held (see restore). */
  restored: { args: object({}), result: object({}) },
} satisfies Record<string, { args: Schema<unknown>; result: Schema<unknown> }>;

/** Commands the controller sends to agents (R6). */
export const agentRequests = {
  /** Also sent again for a container already known: the agent then reopens it (after a repair). */
  add_container: { args: object({ id: uint(), path: str(PATH_LENGTH_MAX) }), result: object({}) },
  new_table: { args: tableArgs, result: object({}) },
  delete_table: { args: object({ disk: diskId, blocking: bool }), result: object({}) },
  get_entry: {
    args: object({ disk: diskId, first: segment, count: uint(ENTRIES_PER_QUERY_MAX) }),
    result: object({ words: array(word, ENTRIES_PER_QUERY_MAX) }),
  },
  get_status: {
    args: object({ disk: diskId, first: segment, count: uint(ENTRIES_PER_QUERY_MAX) }),
    result: object({ states: array(uint(15), ENTRIES_PER_QUERY_MAX) }),
  },
  /** Holds new host I/O to these disks before it is mapped and answers once the I/O in progress
   *  has finished, or fails when that takes longer than timeoutMs (the gates open again then). */
  quiesce: { args: object({ disks: array(diskId, DISKS_MAX), timeoutMs: uint(3_600_000) }), result: object({}) },
  /** Releases the I/O held by quiesce. */
  activate: { args: object({ disks: array(diskId, DISKS_MAX) }), result: object({}) },
  set_entry: { args: object({ disk: diskId, first: segment, runs, blocking: bool, change }), result: object({}) },
  /** How many host connections have the disk open on this agent. */
  get_connections: { args: object({ disk: diskId }), result: object({ count: uint() }) },
  /** Sets states on a range. Only Nw can be cleared: Invalid, Z and E void the location, so
   *  leaving them takes a whole new entry (set_entry). */
  set_entry_state: {
    args: object({
      disk: diskId,
      first: segment,
      count,
      set: array(oneOf(...SETTABLE_STATES), SETTABLE_STATES.length),
      clear: array(oneOf("nw"), 1),
      blocking: bool,
      change,
    }),
    result: object({}),
  },
} satisfies Record<string, { args: Schema<unknown>; result: Schema<unknown> }>;

export type RequestTable = Record<string, { args: Schema<unknown>; result: Schema<unknown> }>;
export type ControllerRequests = typeof controllerRequests;
export type AgentRequests = typeof agentRequests;
export type ArgsOf<T extends RequestTable, K extends keyof T> = Infer<T[K]["args"]>;
export type ResultOf<T extends RequestTable, K extends keyof T> = Infer<T[K]["result"]>;

/** Every message on the wire is one of these envelopes. */
export const envelope = object({
  t: oneOf("req", "res"),
  id: uint(2 ** 32),
  op: optional(str(64)),
  args: optional((value: unknown) => value),
  ok: optional(bool),
  result: optional((value: unknown) => value),
  error: optional(object({ code: str(64), message: str(4096) })),
});
