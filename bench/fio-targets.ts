// The goals for our allocated disk against the reference servers, judged on the medians of the
// fio runs: each is ours / reference for one job on one kind of socket.
import { type FioJob, JOBS } from "./fio-jobs.ts";
import { type RunRecord, formatMetric, summarize } from "./report.ts";
import type { ServerId, Transport } from "./servers.ts";
import { type TargetResult, target } from "./targets.ts";

interface ReferenceGoal {
  reference: ServerId;
  group: string;
  /** ours / reference must be at least this. */
  ratio: number;
  jobs: readonly string[];
}

const QD32_JOBS = ["randread-4k-qd32", "randwrite-4k-qd32"];

const REFERENCE_GOALS: readonly ReferenceGoal[] = [
  { reference: "nbdkit-file", group: "Allocated disk vs nbdkit file", ratio: 1.0, jobs: JOBS.map((job) => job.id) },
  { reference: "qemu-nbd", group: "Allocated disk vs qemu-nbd raw", ratio: 1.5, jobs: JOBS.map((job) => job.id) },
  { reference: "nbdkit-null", group: "Allocated disk vs nbdkit null", ratio: 0.8, jobs: QD32_JOBS },
];

const OURS: ServerId = "ours";
const TRANSPORT_NAMES: Record<Transport, string> = { unix: "unix socket", tcp: "TCP loopback" };

function targetId(goal: ReferenceGoal, transport: Transport, job: FioJob): string {
  return `allocated-vs-${goal.reference}/${transport}/${job.id}`;
}

function jobsOf(goal: ReferenceGoal): FioJob[] {
  return JOBS.filter((job) => goal.jobs.includes(job.id));
}

/** The id of every fio target for `transports`, whether or not it was measured. */
export function fioTargetIds(transports: readonly Transport[]): string[] {
  return REFERENCE_GOALS.flatMap((goal) => transports.flatMap((transport) => jobsOf(goal).map((job) => targetId(goal, transport, job))));
}

/** Every fio target for `transports` (NaN, so missed, where ours or the reference has no result). */
export function fioTargets(transports: readonly Transport[], records: RunRecord[]): TargetResult[] {
  return REFERENCE_GOALS.flatMap((goal) =>
    transports.flatMap((transport) =>
      jobsOf(goal).map((job) => {
        const of = (server: ServerId) => summarize(job, records.filter((r) => r.transport === transport && r.server === server && r.job === job.id));
        const ours = of(OURS)?.median ?? Number.NaN;
        const reference = of(goal.reference)?.median ?? Number.NaN;
        return target({
          id: targetId(goal, transport, job),
          group: goal.group,
          label: `${job.label}, ${TRANSPORT_NAMES[transport]}`,
          measured: ours / reference,
          unit: "x",
          goal: { op: ">=", value: goal.ratio },
          detail: `ours ${formatMetric(job, ours)} / ${goal.reference} ${formatMetric(job, reference)}`,
        });
      }),
    ),
  );
}
