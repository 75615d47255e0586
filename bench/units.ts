// Sizes, and how the snapshot and first-write reports print bytes, counts, milliseconds and spreads.
import { formatIops, median } from "./report.ts";

export const KIB = 2 ** 10;
export const MIB = 2 ** 20;
export const GIB = 2 ** 30;
export const TIB = 2 ** 40;

/** The largest unit that divides `bytes` exactly, e.g. `64 KiB`, `15 TiB`. */
export function formatBytes(bytes: number): string {
  for (const [unit, size] of [["TiB", TIB], ["GiB", GIB], ["MiB", MIB], ["KiB", KIB]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} B`;
}

export function formatCount(value: number): string {
  return value.toLocaleString("en-US");
}

export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return "—";
  if (ms < 10) return ms.toFixed(2);
  if (ms < 100) return ms.toFixed(1);
  return ms.toFixed(0);
}

/** `**median** (min–max)` of samples, each printed by `format`, or a dash when there are none. */
export function spreadCell(samples: number[], format: (value: number) => string): string {
  if (samples.length === 0) return "—";
  const cell = `**${format(median(samples))}**`;
  return samples.length > 1 ? `${cell} (${format(Math.min(...samples))}–${format(Math.max(...samples))})` : cell;
}

export function msCell(samples: number[]): string {
  return spreadCell(samples, formatMs);
}

export function iopsCell(samples: number[]): string {
  return spreadCell(samples, formatIops);
}
