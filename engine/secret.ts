// The control port's shared secret: created by the controller at its first start (a file only its
// owner can read), presented by every agent and ctl in hello. Anyone who can reach the port but
// cannot read the file is refused.
import { closeSync, existsSync, fsyncSync, linkSync, openSync, readFileSync, rmSync, statSync, unlinkSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { fsyncDirSync } from "./log/log-io.ts";

export const SECRET_FILE = "control.secret";
export const SECRET_LENGTH_MAX = 256;
const SECRET_BYTES = 32;
const OWNER_ONLY = 0o600;

/** A secret that cannot be used, with what to do about it. */
export class SecretError extends Error {
  override name = "SecretError";
}

/** The controller's secret: read from `path`, or created there (mode 0600) when absent. */
export function ensureSecret(path: string): string {
  if (!existsSync(path)) createSecretFile(path);
  const mode = statSync(path).mode & 0o777;
  if (mode & 0o077) {
    throw new SecretError(`secret file ${path} can be read by others (mode 0${mode.toString(8)}); chmod 600 it`);
  }
  return readSecret(path);
}

export function readSecret(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8").trim();
  } catch (error) {
    throw new SecretError(`cannot read the control secret ${path}: ${(error as Error).message}`);
  }
  return checkSecret(text, `secret file ${path}`);
}

export function checkSecret(text: string, origin: string): string {
  if (text.length === 0) throw new SecretError(`${origin} is empty`);
  if (text.length > SECRET_LENGTH_MAX) throw new SecretError(`${origin} is longer than ${SECRET_LENGTH_MAX} characters`);
  return text;
}

/** Compares in constant time: hashes first, so lengths do not leak either, then looks at every
 *  byte of the two digests. (Bun's hasher and Web Crypto rather than node:crypto, whose loading
 *  alone would cost every ctl command about 13 ms.) */
export function secretsMatch(given: string | undefined, expected: string): boolean {
  if (given === undefined) return false;
  const digest = (text: string) => new Bun.CryptoHasher("sha256").update(text).digest();
  const a = digest(given);
  const b = digest(expected);
  let difference = 0;
  for (let i = 0; i < a.length; i += 1) difference |= a[i]! ^ b[i]!;
  return difference === 0;
}

/** Where a client (ctl, an agent) finds the secret, in order of precedence. */
export interface SecretSources {
  /** --secret-file or CTL_SECRET_FILE, and which of the two gave it */
  file?: { path: string; from: "--secret-file" | "CTL_SECRET_FILE" };
  /** CTL_SECRET: the secret itself */
  value?: string;
  /** Tried last, if it exists: the default data directory's secret file. */
  fallbackFile: string;
}

/** A client's secret and where it came from, said in the error when the controller refuses it. */
export interface ClientSecret {
  secret: string;
  origin: string;
}

export function clientSecret(sources: SecretSources): ClientSecret {
  if (sources.file) return secretFromFile(sources.file.path, `${sources.file.from} ${sources.file.path}`);
  if (sources.value) return { secret: checkSecret(sources.value, "CTL_SECRET"), origin: "the environment variable CTL_SECRET" };
  if (existsSync(sources.fallbackFile)) return secretFromFile(sources.fallbackFile, `the default file ${sources.fallbackFile}`);
  throw new SecretError(
    `no control secret: give --secret-file, CTL_SECRET_FILE or CTL_SECRET (the controller keeps it in its data directory as ${SECRET_FILE})`,
  );
}

export function secretFromFile(path: string, origin = `the file ${path}`): ClientSecret {
  return { secret: readSecret(path), origin };
}

/** Writes a fresh secret to a private temporary file, then links it into place: a crash leaves
 *  either no secret file or a whole one, and two first starts racing agree on one secret. */
function createSecretFile(path: string): void {
  const temporary = join(dirname(path), `.${SECRET_FILE}.${process.pid}.tmp`);
  rmSync(temporary, { force: true });
  const fd = openSync(temporary, "wx", OWNER_ONLY);
  try {
    writeSync(fd, `${Buffer.from(crypto.getRandomValues(new Uint8Array(SECRET_BYTES))).toString("hex")}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(temporary, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  } finally {
    unlinkSync(temporary);
  }
  fsyncDirSync(path);
}
