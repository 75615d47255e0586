// The performance targets as every benchmark part reports them: what was measured, the goal,
// and whether it was met. Each part's JSON result carries a `targets` array of these; `bench/run.ts`
// gathers them into one table and plot.

export type Comparison = ">=" | "<=";

export interface TargetResult {
  /** Stable identifier, e.g. "allocated-vs-nbdkit-file/unix/randread-4k-qd32". */
  id: string;
  /** The group it is shown under, e.g. "Allocated disk vs nbdkit file". */
  group: string;
  /** What was measured, for people, e.g. "4k randread QD32, unix socket". */
  label: string;
  /** The measured value the goal applies to (a ratio for "x"). */
  measured: number;
  unit: "x" | "ms" | "µs" | "ns" | "MB";
  goal: { op: Comparison; value: number };
  met: boolean;
  /** The numbers behind a ratio, e.g. "ours 153.9k IOPS / nbdkit-file 105.3k IOPS". */
  detail?: string;
}

/** A target result; `met` follows from the measured value and the goal (NaN never meets it). */
export function target(fields: Omit<TargetResult, "met">): TargetResult {
  const { op, value } = fields.goal;
  const met = Number.isFinite(fields.measured) && (op === ">=" ? fields.measured >= value : fields.measured <= value);
  return { ...fields, met };
}
