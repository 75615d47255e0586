/** Thrown when an internal invariant is broken: a bug, never bad input. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

/** Asserts an invariant. Bad input must be rejected with a proper error before reaching one. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}
