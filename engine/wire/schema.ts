// A small validator for decoded messages: the network is untrusted input, so every field of every
// message is checked against a schema before any code uses it. A failure is a WireError naming
// the field; the connection that sent it is answered with an error and closed.

export class WireError extends Error {
  override name = "WireError";
}

export type Schema<T> = (value: unknown, path: string) => T;
export type Infer<S> = S extends Schema<infer T> ? T : never;

function fail(path: string, expected: string, value: unknown): never {
  const shown = typeof value === "string" ? JSON.stringify(value.slice(0, 40)) : typeof value;
  throw new WireError(`${path}: expected ${expected}, got ${shown}`);
}

/** A non-negative integer no larger than `max` (at most 2^53 - 1). */
export function uint(max = Number.MAX_SAFE_INTEGER): Schema<number> {
  return (value, path) => {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0 || value > max) {
      return fail(path, `an integer from 0 to ${max}`, value);
    }
    return value;
  };
}

/** A non-negative finite number. */
export function num(): Schema<number> {
  return (value, path) => (typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : fail(path, "a non-negative number", value));
}

/** A string of at most `maxLength` characters; with a `pattern`, `rule` says in words what it takes. */
export function str(maxLength: number, pattern?: RegExp, rule?: string): Schema<string> {
  return (value, path) => {
    if (typeof value !== "string" || value.length > maxLength) return fail(path, `a string of at most ${maxLength} characters`, value);
    if (pattern && !pattern.test(value)) {
      throw new WireError(rule ? `${path} ${JSON.stringify(value.slice(0, 40))}: ${rule}` : `${path}: expected a string matching ${pattern}, got ${JSON.stringify(value.slice(0, 40))}`);
    }
    return value;
  };
}

export const bool: Schema<boolean> = (value, path) => (typeof value === "boolean" ? value : fail(path, "a boolean", value));

export function oneOf<const T extends readonly string[]>(...choices: T): Schema<T[number]> {
  return (value, path) => {
    if (typeof value !== "string" || !choices.includes(value)) return fail(path, `one of ${choices.join(", ")}`, value);
    return value as T[number];
  };
}

export function optional<T>(schema: Schema<T>): Schema<T | undefined> {
  return (value, path) => (value === undefined || value === null ? undefined : schema(value, path));
}

export function array<T>(item: Schema<T>, maxLength: number): Schema<T[]> {
  return (value, path) => {
    if (!Array.isArray(value) || value.length > maxLength) return fail(path, `an array of at most ${maxLength} items`, value);
    return value.map((element, index) => item(element, `${path}[${index}]`));
  };
}

export function tuple<T extends unknown[]>(...items: { [K in keyof T]: Schema<T[K]> }): Schema<T> {
  return (value, path) => {
    if (!Array.isArray(value) || value.length !== items.length) return fail(path, `an array of ${items.length} items`, value);
    return items.map((item, index) => item(value[index], `${path}[${index}]`)) as T;
  };
}

type Shape = Record<string, Schema<unknown>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
/** Fields whose schema admits undefined become optional properties. */
type ObjectOf<S extends Shape> = Simplify<
  { [K in keyof S as undefined extends Infer<S[K]> ? never : K]: Infer<S[K]> } & {
    [K in keyof S as undefined extends Infer<S[K]> ? K : never]?: Infer<S[K]>;
  }
>;

export function object<S extends Shape>(fields: S): Schema<ObjectOf<S>> {
  return (value, path) => {
    if (typeof value !== "object" || value === null || Array.isArray(value)) return fail(path, "an object", value);
    const record = value as Record<string, unknown>;
    const result: Record<string, unknown> = {};
    for (const key of Object.keys(fields)) {
      const checked = fields[key]!(record[key], `${path}.${key}`);
      if (checked !== undefined) result[key] = checked;
    }
    return result as ObjectOf<S>;
  };
}

/** Anything: for results whose shape the receiving code checks itself. */
export const any: Schema<unknown> = (value) => value;
