// The targets as an SVG chart: one horizontal bar per target, how far its measured value is from the
// goal on a log scale (right of the goal line: met, left: missed), grouped as the summary table is.
import type { TargetResult } from "./targets.ts";
import { formatMeasured } from "./result-files.ts";

const WIDTH = 1200;
const LABEL_WIDTH = 560;
const PLOT_LEFT = LABEL_WIDTH + 20;
const PLOT_WIDTH = 400;
const ROW_HEIGHT = 18;
const TOP = 56;
const BOTTOM = 40;
/** The axis spans goal / 2^7 to goal × 2^7; bars beyond are cut at the edge (their value is printed). */
const MAX_LOG2 = 7;
const LABEL_CHARS = 88;
const MET_COLOR = "#2e7d32";
const MISSED_COLOR = "#c62828";
const MUTED = "#666";

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function shorten(text: string): string {
  const plain = text.replace(/`/g, "");
  return plain.length > LABEL_CHARS ? `${plain.slice(0, LABEL_CHARS - 1)}…` : plain;
}

/** How many times better than its goal a target is (> 1 met), or NaN without a number. */
export function goalFactor(t: TargetResult): number {
  if (!Number.isFinite(t.measured) || t.measured <= 0 || t.goal.value <= 0) return Number.NaN;
  return t.goal.op === ">=" ? t.measured / t.goal.value : t.goal.value / t.measured;
}

/** x of a goal factor on the log axis. */
function xOf(factor: number): number {
  const log2 = Math.max(-MAX_LOG2, Math.min(MAX_LOG2, Math.log2(factor)));
  return PLOT_LEFT + ((log2 + MAX_LOG2) / (2 * MAX_LOG2)) * PLOT_WIDTH;
}

function text(x: number, y: number, content: string, attributes = ""): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attributes}>${escapeXml(content)}</text>`;
}

function axis(height: number): string[] {
  const parts: string[] = [];
  for (let log2 = -MAX_LOG2 + 1; log2 <= MAX_LOG2 - 1; log2 += 2) {
    const x = xOf(2 ** log2);
    const label = log2 >= 0 ? `${2 ** log2}×` : `1/${2 ** -log2}`;
    parts.push(`<line x1="${x}" y1="${TOP - 8}" x2="${x}" y2="${height - BOTTOM}" stroke="#ddd"/>`);
    parts.push(text(x, height - BOTTOM + 16, label, `text-anchor="middle" fill="${MUTED}"`));
  }
  const goal = xOf(1);
  parts.push(`<line x1="${goal}" y1="${TOP - 8}" x2="${goal}" y2="${height - BOTTOM}" stroke="#000" stroke-width="1.5"/>`);
  parts.push(text(goal, TOP - 12, "goal", `text-anchor="middle"`));
  return parts;
}

/** An SVG document (a string) charting every target, grouped, in the order given. */
export function targetsPlot(targets: TargetResult[], title: string): string {
  const groups = [...new Set(targets.map((t) => t.group))];
  const rows = groups.length + targets.length;
  const height = TOP + rows * ROW_HEIGHT + BOTTOM;
  const body: string[] = [`<rect width="${WIDTH}" height="${height}" fill="#fff"/>`, text(10, 22, title, `font-size="15" font-weight="bold"`)];
  body.push(text(10, 40, "bar: measured relative to the goal (log scale); right of the goal line is met", `fill="${MUTED}"`));
  body.push(...axis(height));
  let y = TOP;
  for (const group of groups) {
    body.push(text(10, y + 13, group, `font-weight="bold"`));
    y += ROW_HEIGHT;
    for (const t of targets.filter((candidate) => candidate.group === group)) {
      body.push(text(20, y + 13, shorten(t.label)));
      const factor = goalFactor(t);
      const value = `${formatMeasured(t.measured)} ${t.unit} (goal ${t.goal.op} ${t.goal.value})`;
      if (Number.isFinite(factor)) {
        const [from, to] = [xOf(1), xOf(factor)].sort((a, b) => a - b) as [number, number];
        const color = t.met ? MET_COLOR : MISSED_COLOR;
        body.push(`<rect x="${from.toFixed(1)}" y="${y + 3}" width="${Math.max(1, to - from).toFixed(1)}" height="${ROW_HEIGHT - 6}" fill="${color}"/>`);
      }
      body.push(text(PLOT_LEFT + PLOT_WIDTH + 8, y + 13, Number.isFinite(factor) ? value : "no number", `fill="${t.met ? MET_COLOR : MISSED_COLOR}"`));
      y += ROW_HEIGHT;
    }
  }
  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    ...body,
    "</svg>",
  ];
  return `${svg.join("\n")}\n`;
}
