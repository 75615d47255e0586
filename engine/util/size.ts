// Sizes on the command line: plain bytes or a binary suffix (K, M, G, T, P; an optional "iB"/"B").

const SUFFIX_SHIFT: Record<string, number> = { "": 0, K: 10, M: 20, G: 30, T: 40, P: 50 };

export function parseSize(text: string): number {
  const match = /^(\d+)\s*([KMGTP]?)(i?B)?$/i.exec(text.trim());
  if (!match) throw new TypeError(`Invalid size "${text}": expected bytes or a number with K, M, G, T or P`);
  const value = Number(match[1]) * 2 ** SUFFIX_SHIFT[match[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(value)) throw new RangeError(`Invalid size "${text}": too large`);
  return value;
}

export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text} ${units[unit]}`;
}
