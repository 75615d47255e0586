// Request/response over a framed stream. Either side may send requests; each gets one response
// with the same id. Every incoming message is validated against the schemas in messages.ts; a
// malformed one is answered with an error and the connection is closed.
import { assert } from "../util/assert.ts";
import { encodeFrame, FRAME_BYTES_MAX, FrameDecoder } from "./frame.ts";
import { envelope, type ArgsOf, type RequestTable, type ResultOf } from "./messages.ts";
import { WireError } from "./schema.ts";
import type { Stream } from "./transport.ts";

/** An error answered by the other side; `code` is machine-readable (e.g. "ENOSPC", "NOT_FOUND"). */
export class RemoteError extends Error {
  override name = "RemoteError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Thrown by request handlers to answer with a specific error code (and, for a peer that broke
 *  the protocol, to close the connection after the answer). */
export class RequestError extends Error {
  override name = "RequestError";
  constructor(
    readonly code: string,
    message: string,
    readonly closeConnection = false,
  ) {
    super(message);
  }
}

export class ConnectionClosedError extends Error {
  override name = "ConnectionClosedError";
}

export const REQUESTS_IN_FLIGHT_MAX = 4096;

type Handler<In extends RequestTable> = <K extends keyof In & string>(op: K, args: ArgsOf<In, K>) => Promise<unknown>;

interface PendingRequest {
  op: string;
  resolve(result: unknown): void;
  reject(error: Error): void;
}

export class Peer<In extends RequestTable, Out extends RequestTable> {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, PendingRequest>();
  private nextId = 1;
  private closedError: Error | null = null;
  private readonly closeListeners: ((error: Error) => void)[] = [];
  private handler: Handler<In> | null = null;

  constructor(
    private readonly stream: Stream,
    private readonly incoming: In,
    private readonly outgoing: Out,
  ) {
    stream.handlers = {
      data: (chunk) => this.onData(chunk),
      close: (error) => this.onClose(error ?? new ConnectionClosedError("connection closed")),
    };
  }

  /** Sets the function that serves incoming requests. */
  serve(handler: Handler<In>): void {
    this.handler = handler;
  }

  /** Refuses incoming frames longer than `bytes` (at most FRAME_BYTES_MAX) from now on. */
  limitFrames(bytes: number): void {
    assert(bytes <= FRAME_BYTES_MAX, `a frame limit of ${bytes} bytes is above the protocol's ${FRAME_BYTES_MAX}`);
    this.decoder.frameBytesMax = bytes;
  }

  onClosed(listener: (error: Error) => void): void {
    if (this.closedError) listener(this.closedError);
    else this.closeListeners.push(listener);
  }

  get isClosed(): boolean {
    return this.closedError !== null;
  }

  /**
   * Sends a request. `onArrival`, when given, runs synchronously when the response is read, before
   * any later message from the peer is handled: for effects whose order against the peer's
   * following requests matters (a promise continuation would run after them).
   */
  request<K extends keyof Out & string>(
    op: K,
    args: ArgsOf<Out, K>,
    onArrival?: (result: ResultOf<Out, K>) => void,
  ): Promise<ResultOf<Out, K>> {
    if (this.closedError) return Promise.reject(new ConnectionClosedError(`cannot send ${op}: ${this.closedError.message}`));
    const id = this.nextId;
    this.nextId = this.nextId >= 2 ** 32 - 1 ? 1 : this.nextId + 1;
    return new Promise((resolve, reject) => {
      const arrived = (result: unknown) => {
        onArrival?.(result as ResultOf<Out, K>);
        resolve(result as ResultOf<Out, K>);
      };
      this.pending.set(id, { op, resolve: arrived, reject });
      this.stream.write(encodeFrame({ t: "req", id, op, args }));
    });
  }

  close(error: Error = new ConnectionClosedError("connection closed")): void {
    this.stream.close();
    this.onClose(error);
  }

  private onData(chunk: Uint8Array): void {
    if (this.closedError) return;
    let messages: unknown[];
    try {
      messages = this.decoder.push(chunk);
    } catch (error) {
      this.protocolError(error as Error);
      return;
    }
    for (const message of messages) {
      try {
        this.dispatch(message);
      } catch (error) {
        if (!(error instanceof WireError)) throw error;
        this.protocolError(error);
        return;
      }
    }
  }

  private dispatch(raw: unknown): void {
    const message = envelope(raw, "message");
    if (message.t === "res") {
      if (message.id === 0 && message.error) {
        // The other side refused our traffic and is closing the connection.
        this.close(new RemoteError(message.error.code, message.error.message));
        return;
      }
      const waiter = this.pending.get(message.id);
      if (!waiter) throw new WireError(`message.id: no request ${message.id} is waiting for a response`);
      this.pending.delete(message.id);
      if (message.ok) {
        const spec = this.outgoing[waiter.op];
        assert(spec, `no schema for ${waiter.op}`);
        waiter.resolve(spec.result(message.result, `${waiter.op}.result`));
      } else {
        const error = message.error ?? { code: "EPROTO", message: "error response without detail" };
        waiter.reject(new RemoteError(error.code, error.message));
      }
      return;
    }
    const op = message.op ?? "";
    const spec = Object.hasOwn(this.incoming, op) ? this.incoming[op] : undefined;
    if (!spec) throw new WireError(`message.op: unknown request "${op.slice(0, 64)}"`);
    if (this.pending.size > REQUESTS_IN_FLIGHT_MAX) throw new WireError("too many requests in flight");
    let args: unknown;
    try {
      args = spec.args(message.args ?? {}, op);
    } catch (error) {
      // A well-framed request with bad arguments is refused; the connection stays usable.
      if (!(error instanceof WireError)) throw error;
      this.respond({ t: "res", id: message.id, ok: false, error: { code: "EINVAL", message: error.message } });
      return;
    }
    this.handle(message.id, op, args);
  }

  private handle(id: number, op: string, args: unknown): void {
    const handler = this.handler;
    assert(handler, "peer has no request handler");
    handler(op as keyof In & string, args as never).then(
      (result) => this.respond({ t: "res", id, ok: true, result: result ?? {} }),
      (error: Error) => {
        const code = error instanceof RequestError ? error.code : error instanceof RemoteError ? error.code : "EINTERNAL";
        if (code === "EINTERNAL" && !(error instanceof ConnectionClosedError)) console.error(`error serving ${op}:`, error);
        this.respond({ t: "res", id, ok: false, error: { code, message: String(error.message).slice(0, 4000) } });
        if (error instanceof RequestError && error.closeConnection) this.close(new WireError(error.message));
      },
    );
  }

  private respond(message: unknown): void {
    if (!this.closedError) this.stream.write(encodeFrame(message));
  }

  private protocolError(error: Error): void {
    this.respond({ t: "res", id: 0, ok: false, error: { code: "EPROTO", message: error.message.slice(0, 4000) } });
    this.close(new WireError(`protocol error: ${error.message}`));
  }

  private onClose(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    for (const waiter of this.pending.values()) waiter.reject(new ConnectionClosedError(`${waiter.op}: ${error.message}`));
    this.pending.clear();
    for (const listener of this.closeListeners.splice(0)) listener(error);
  }
}
