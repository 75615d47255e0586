// Framing: each message is a big-endian u32 length followed by that many bytes of msgpack.
//
//   +----------------+------------------------------+
//   | length (u32 BE) | msgpack body (length bytes)   |
//   +----------------+------------------------------+
import { Decoder, Encoder } from "@msgpack/msgpack";
import { WireError } from "./schema.ts";

export const FRAME_BYTES_MAX = 16 * 1024 * 1024;
const HEADER_BYTES = 4;
// Shared, so each message does not build a new encoder and decoder (their set-up costs more than
// a small message); the encoder's scratch bytes are copied into the frame at once.
const encoder = new Encoder();
const decoder = new Decoder();

export function encodeFrame(message: unknown): Uint8Array {
  const body = encoder.encodeSharedRef(message);
  if (body.length > FRAME_BYTES_MAX) throw new RangeError(`Message of ${body.length} bytes exceeds the ${FRAME_BYTES_MAX}-byte frame limit`);
  const frame = new Uint8Array(HEADER_BYTES + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, HEADER_BYTES);
  return frame;
}

/** Reassembles frames from a byte stream; throws WireError on an oversized or undecodable frame. */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** The largest frame accepted; a server keeps it small until the peer has authenticated. */
  frameBytesMax = FRAME_BYTES_MAX;

  push(chunk: Uint8Array): unknown[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const messages: unknown[] = [];
    for (;;) {
      if (this.buffered < HEADER_BYTES) break;
      const head = this.peek(HEADER_BYTES);
      const length = new DataView(head.buffer, head.byteOffset, HEADER_BYTES).getUint32(0);
      if (length > this.frameBytesMax) throw new WireError(`frame of ${length} bytes exceeds the ${this.frameBytesMax}-byte limit`);
      if (this.buffered < HEADER_BYTES + length) break;
      const frame = this.take(HEADER_BYTES + length);
      try {
        messages.push(decoder.decode(frame.subarray(HEADER_BYTES)));
      } catch (error) {
        throw new WireError(`undecodable frame: ${(error as Error).message}`);
      }
    }
    return messages;
  }

  private peek(bytes: number): Uint8Array {
    if (this.chunks[0]!.length >= bytes) return this.chunks[0]!;
    this.chunks = [this.concat(this.buffered)];
    return this.chunks[0]!;
  }

  private take(bytes: number): Uint8Array {
    const first = this.chunks[0]!;
    if (first.length < bytes) this.chunks = [this.concat(this.buffered)];
    const whole = this.chunks[0]!;
    const taken = whole.subarray(0, bytes);
    if (whole.length === bytes) this.chunks.shift();
    else this.chunks[0] = whole.subarray(bytes);
    this.buffered -= bytes;
    return taken;
  }

  private concat(bytes: number): Uint8Array {
    const joined = new Uint8Array(bytes);
    let at = 0;
    for (const chunk of this.chunks) {
      joined.set(chunk, at);
      at += chunk.length;
    }
    return joined;
  }
}
