// Byte streams over TCP or unix sockets (Bun.listen / Bun.connect), with an output queue so a
// partial socket write never drops bytes.
import type { Socket, TCPSocketListener, UnixSocketListener } from "bun";
import { existsSync, unlinkSync } from "node:fs";
import { listenError, type Address } from "../util/address.ts";

export interface StreamHandlers {
  data(chunk: Uint8Array): void;
  close(error?: Error): void;
}

/**
 * One connected socket. Writes made in one turn of the event loop go out as one socket write (many
 * answers and pushes are sent at once: one system call instead of one each; waiting only for the
 * microtasks to run out would send each answer of a chain of awaits on its own); what the kernel
 * did not take is queued and sent on drain.
 */
export class Stream {
  private pending: Uint8Array[] = [];
  private corked: Uint8Array[] = [];
  private uncorkScheduled = false;
  private closed = false;
  handlers: StreamHandlers | null = null;

  constructor(private readonly socket: Socket<StreamRef>) {}

  write(bytes: Uint8Array): void {
    if (this.closed) return;
    this.corked.push(bytes);
    if (this.uncorkScheduled) return;
    this.uncorkScheduled = true;
    setImmediate(() => this.uncork());
  }

  private uncork(): void {
    this.uncorkScheduled = false;
    const chunks = this.corked;
    this.corked = [];
    if (this.closed || chunks.length === 0) return;
    const bytes = chunks.length === 1 ? chunks[0]! : concatChunks(chunks);
    if (this.pending.length > 0) {
      this.pending.push(bytes);
      return;
    }
    const written = this.socket.write(bytes);
    if (written < bytes.length) this.pending.push(bytes.subarray(Math.max(written, 0)));
  }

  /** Called by the socket's drain event: push out what is queued. */
  drain(): void {
    while (this.pending.length > 0) {
      const head = this.pending[0]!;
      const written = this.socket.write(head);
      if (written < head.length) {
        this.pending[0] = head.subarray(Math.max(written, 0));
        return;
      }
      this.pending.shift();
    }
  }

  close(): void {
    if (this.closed) return;
    this.uncork(); // what was written before the close still goes out
    this.closed = true;
    this.socket.end();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  markClosed(): void {
    this.closed = true;
  }
}

function concatChunks(chunks: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const chunk of chunks) length += chunk.length;
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

interface StreamRef {
  stream?: Stream;
}

function socketHandlers(onOpen: (stream: Stream) => void) {
  return {
    open(socket: Socket<StreamRef>) {
      const stream = new Stream(socket);
      socket.data = { stream };
      onOpen(stream);
    },
    data(socket: Socket<StreamRef>, chunk: Uint8Array) {
      socket.data.stream?.handlers?.data(chunk);
    },
    drain(socket: Socket<StreamRef>) {
      socket.data.stream?.drain();
    },
    close(socket: Socket<StreamRef>, error?: Error) {
      const stream = socket.data?.stream;
      if (!stream) return;
      stream.markClosed();
      stream.handlers?.close(error);
    },
    error(socket: Socket<StreamRef>, error: Error) {
      const stream = socket.data?.stream;
      if (!stream) return;
      stream.markClosed();
      stream.handlers?.close(error);
    },
  };
}

export type Listener = TCPSocketListener<StreamRef> | UnixSocketListener<StreamRef>;

export function listen(address: Address, onConnection: (stream: Stream) => void): Listener {
  const socket = socketHandlers(onConnection);
  try {
    if (address.kind === "unix") return Bun.listen<StreamRef>({ unix: address.path, socket, data: {} });
    return Bun.listen<StreamRef>({ hostname: address.host, port: address.port, socket, data: {} });
  } catch (error) {
    throw listenError(address, error);
  }
}

export async function connect(address: Address): Promise<Stream> {
  let opened: Stream | null = null;
  const socket = socketHandlers((stream) => {
    opened = stream;
  });
  if (address.kind === "unix") await Bun.connect<StreamRef>({ unix: address.path, socket, data: {} });
  else await Bun.connect<StreamRef>({ hostname: address.host, port: address.port, socket, data: {} });
  if (!opened) throw new Error("connection did not open");
  return opened;
}

/**
 * Removes a unix socket file left behind by a process that died without cleaning up, so a restart
 * can bind the path again. A socket someone still listens on is left alone (binding then fails
 * with "address in use", as it should).
 */
export async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  try {
    const probe = await Bun.connect({ unix: path, socket: { data() {} } });
    probe.end();
  } catch {
    unlinkSync(path);
  }
}
