/**
 * Small helpers over RawNbdClient for transmission-phase tests: open a negotiated session and
 * read the outcome of one request (simple or structured) in one call.
 */
import { expect } from "bun:test";
import type { NbdTarget } from "./nbd-target.ts";
import {
  type Chunk,
  DEFINED_ERRORS,
  NBD,
  parseErrorChunk,
  type RawNbdClient,
  type Request,
} from "./raw-nbd-client.ts";

export interface Session {
  client: RawNbdClient;
  size: bigint;
  tflags: number;
  structured: boolean;
}

export interface SessionOptions {
  structured?: boolean;
  allocation?: boolean;
}

export async function openSession(target: NbdTarget, exportName: string, options: SessionOptions = {}): Promise<Session> {
  const client = await target.connect();
  try {
    const { size, tflags } = await client.negotiate(exportName, options);
    return { client, size, tflags, structured: !!(options.structured || options.allocation) };
  } catch (error) {
    client.close();
    throw error;
  }
}

/** Runs `body` with a negotiated session, closing it afterwards. */
export async function withTargetSession(
  target: NbdTarget,
  exportName: string,
  options: SessionOptions,
  body: (s: Session) => Promise<void>,
): Promise<void> {
  const s = await openSession(target, exportName, options);
  try {
    await body(s);
  } finally {
    s.client.close();
  }
}

/**
 * Sends a request and returns its error (0 on success) and, for reads, the data; checks the
 * cookie, that error values are defined ones, and that structured error chunks are well formed.
 */
export async function roundTrip(
  s: Session,
  request: Request,
): Promise<{ error: number; data: Uint8Array; chunks: Chunk[]; message: string }> {
  const cookie = request.cookie ?? 0x0102030405060708n;
  await s.client.sendRequest({ ...request, cookie });
  const isRead = request.type === NBD.CMD_READ;
  const length = request.length ?? request.data?.length ?? 0;
  const first = await s.client.readReply();
  expect(first.cookie).toBe(cookie);
  if (first.kind === "simple") {
    // Structured replies forbid a simple reply to READ, even for an early error (L394-397).
    if (s.structured) expect(isRead).toBe(false);
    expect(first.error === 0 || DEFINED_ERRORS.has(first.error)).toBe(true);
    const data = first.error === 0 && isRead && length > 0 ? await s.client.read(length) : new Uint8Array(0);
    return { error: first.error, data, chunks: [], message: "" };
  }
  expect(s.structured).toBe(true);
  const chunks: Chunk[] = [first];
  while (!(chunks.at(-1)!.flags & NBD.REPLY_FLAG_DONE)) {
    const next = await s.client.readReply();
    if (next.kind !== "chunk") throw new Error("simple reply in the middle of a structured reply");
    expect(next.cookie).toBe(cookie);
    chunks.push(next);
  }
  let error = 0;
  let message = "";
  for (const c of chunks) {
    expect(c.flags & ~NBD.REPLY_FLAG_DONE).toBe(0);
    if (c.type === NBD.REPLY_TYPE_ERROR || c.type === NBD.REPLY_TYPE_ERROR_OFFSET) {
      expect(c.data.length).toBeGreaterThanOrEqual(c.type === NBD.REPLY_TYPE_ERROR ? 6 : 14);
      const e = parseErrorChunk(c.data);
      expect(e.error).not.toBe(0);
      expect(DEFINED_ERRORS.has(e.error)).toBe(true);
      expect(new TextEncoder().encode(e.message).length).toBeLessThanOrEqual(4096);
      error = e.error;
      message = e.message;
    }
    if (c.type === NBD.REPLY_TYPE_NONE) expect(c.data.length).toBe(0);
  }
  return { error, data: new Uint8Array(0), chunks, message };
}

/** Sends a request expected to succeed; returns the read data for READ (simple or structured). */
export async function expectOk(s: Session, request: Request): Promise<Uint8Array> {
  const r = await roundTrip(s, request);
  if (r.error !== 0) throw new Error(`request type ${request.type} failed with ${r.error}: ${r.message}`);
  if (request.type !== NBD.CMD_READ || !s.structured) return r.data;
  const { assembleRead } = await import("./raw-nbd-client.ts");
  const offset = BigInt(request.offset ?? 0);
  const assembled = assembleRead(r.chunks, offset, request.length ?? 0);
  expect(assembled.covered).toBe(request.length ?? 0);
  return assembled.data;
}

/** A deterministic pattern for test data. */
export function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
