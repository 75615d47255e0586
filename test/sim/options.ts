// What a simulation run is given: its seed, how long the workload runs, how often each fault is
// injected, and optionally a canary (a deliberate break in the simulator's wiring, to show the
// checks catch it).

export interface FaultRates {
  /** Expected crashes per run (a process crash or a power loss of its host, half each). */
  agentCrashes: number;
  controllerCrashes: number;
  /** Probability that a failpoint of the engine (between the steps of processes 300/400/500)
   *  crashes the controller right there. */
  failpointCrash: number;
  /** Expected partitions per run: a host's traffic with the controller is held, then delivered. */
  partitions: number;
  /** Expected slow-link windows per run. */
  slowLinks: number;
  /** Expected windows per run in which a storage container fails I/O. */
  containerFailures: number;
  /** Expected windows per run in which messages get lost (each one resetting its connection). */
  lossWindows: number;
  /** Probability that one message is lost during such a window. */
  lossProbability: number;
}

export const DEFAULT_FAULTS: FaultRates = {
  agentCrashes: 1.5,
  controllerCrashes: 1,
  failpointCrash: 0.03,
  partitions: 1,
  slowLinks: 1,
  containerFailures: 0.7,
  lossWindows: 0.7,
  lossProbability: 0.05,
};

export const NO_FAULTS: FaultRates = {
  agentCrashes: 0,
  controllerCrashes: 0,
  failpointCrash: 0,
  partitions: 0,
  slowLinks: 0,
  containerFailures: 0,
  lossWindows: 0,
  lossProbability: 0,
};

/**
 * Deliberate breaks, never in product code: "skip-copy" gives the controller's pool container I/O
 * whose copy does nothing (copy-on-write loses the old contents); "ack-unwritten" makes agents
 * acknowledge writes without storing them; "push-over-old-entries" sends a fault's new entries
 * to agents that still hold the old ones (an agent that has not got them yet reads through the
 * old ones while another writes through the new); "ignore-change-order" makes agents apply a
 * fault's answer even when a newer change to the same entries arrived first; "fua-before-commit"
 * makes agents answer FUA writes without waiting for the commit of the mapping changes they
 * relied on; "flush-misses-loss" answers every FLUSH as if its connection had opened after the
 * latest loss of mapping changes (a loss reported to the wrong FLUSH).
 */
export const CANARIES = ["skip-copy", "ack-unwritten", "push-over-old-entries", "ignore-change-order", "fua-before-commit", "flush-misses-loss"] as const;
export type Canary = (typeof CANARIES)[number];

export interface SimOptions {
  seed: number;
  /** Simulated milliseconds of workload (faults are injected within it). */
  durationMs?: number;
  faults?: Partial<FaultRates>;
  canary?: Canary;
  /** Every host writes to every disk at the same time (by default a disk has one writer host at
   *  a time, moving now and then, and any host reads). */
  sharedWriters?: boolean;
  /** Receives every trace line as it happens (for replaying a seed). */
  echo?: (line: string) => void;
}

export const DURATION_MS_DEFAULT = 3_000;
