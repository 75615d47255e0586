/**
 * The NBD server: listens on TCP and/or a unix socket with Bun.listen and wires each connection's
 * bytes through the handshake and then the transmission phase. No protocol logic lives here.
 *
 * Works the same on the main thread and inside a Bun Worker; the agent runs one server per worker
 * and lets the kernel spread TCP connections over them with `reusePort` (a unix socket path can
 * only be bound once, so only one server may own it).
 *
 * Shutdown (close()): stop accepting; options get NBD_REP_ERR_SHUTDOWN (L274-276) and new
 * requests NBD_ESHUTDOWN (L451-455) while in-flight work finishes; clients that received that are
 * expected to disconnect, and after `shutdownGraceMs` every connection with nothing left in flight
 * is closed. close() resolves when every connection is closed and every export handle released.
 */
import type { Socket, SocketHandler, SocketListener } from "bun";
import { assert } from "../../engine/util/assert.ts";
import type { NbdBackend } from "./backend.ts";
import { Handshake, type HandshakeHost, type Session } from "./handshake.ts";
import { OutputQueue } from "./output-queue.ts";
import { INPUT_BUFFERED_BYTES_MAX } from "./protocol.ts";
import { Transmission, type TransmissionHost } from "./transmission.ts";

/**
 * Where one server listens. TCP port 0 picks a free port (see NbdServer.port); reusePort lets
 * several servers (one per worker thread) share a port. A unix socket path must not exist yet.
 */
export type NbdListenAddress =
  | { kind: "tcp"; host: string; port: number; reusePort?: boolean }
  | { kind: "unix"; path: string };

export interface NbdServerOptions {
  backend: NbdBackend;
  listen: NbdListenAddress;
  /** Advertise NBD_FLAG_CAN_MULTI_CONN (default true): only if the backend's flush covers all connections. */
  multiConn?: boolean;
  /** One-line diagnostics (bad magic from a client, backend failures); default: dropped. */
  log?: (line: string) => void;
  /** Simultaneous connections; more are closed at once (default 1024). */
  connectionsMax?: number;
  /** A client must finish negotiating within this time (default 30000; 0 = no limit). */
  handshakeTimeoutMs?: number;
  /** After close(), how long idle connections may stay to send NBD_CMD_DISC (default 2000). */
  shutdownGraceMs?: number;
}

export interface NbdServer {
  /** nbd://host:port/ or nbd+unix:///?socket=path (the default export). */
  readonly uri: string;
  readonly host: string | undefined;
  readonly port: number | undefined;
  readonly unixPath: string | undefined;
  /** Open connections. */
  readonly connectionCount: number;
  /** Stops accepting, finishes in-flight work, then closes every connection. */
  close(): Promise<void>;
}

const DEFAULT_CONNECTIONS_MAX = 1024;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
const DEFAULT_SHUTDOWN_GRACE_MS = 2_000;
/** Starting size of a connection's input buffer for bytes that arrive split across reads. */
const INPUT_BUFFER_INITIAL_BYTES = 64 * 1024;

export async function startNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const server = new Server(options);
  server.listen();
  return server;
}

type NbdSocket = Socket<Connection | undefined>;

class Server implements NbdServer {
  readonly backend: NbdBackend;
  readonly multiConn: boolean;
  readonly log: (line: string) => void;
  readonly handshakeTimeoutMs: number;
  private readonly connectionsMax: number;
  private readonly shutdownGraceMs: number;
  private readonly connections = new Set<Connection>();
  private listener: SocketListener<Connection | undefined> | null = null;
  private tcpPort: number | undefined;
  private shuttingDown = false;
  private closePromise: Promise<void> | null = null;
  private closeResolve: (() => void) | null = null;
  private graceTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly options: NbdServerOptions) {
    this.backend = options.backend;
    this.multiConn = options.multiConn ?? true;
    this.log = options.log ?? (() => {});
    this.connectionsMax = options.connectionsMax ?? DEFAULT_CONNECTIONS_MAX;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.shutdownGraceMs = options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
  }

  get host(): string | undefined {
    return this.options.listen.kind === "tcp" ? this.options.listen.host : undefined;
  }
  get port(): number | undefined {
    return this.tcpPort;
  }
  get unixPath(): string | undefined {
    return this.options.listen.kind === "unix" ? this.options.listen.path : undefined;
  }
  get connectionCount(): number {
    return this.connections.size;
  }
  get isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  get uri(): string {
    const listen = this.options.listen;
    if (listen.kind === "unix") return `nbd+unix:///?socket=${encodeURIComponent(listen.path)}`;
    const host = listen.host.includes(":") ? `[${listen.host}]` : listen.host;
    return `nbd://${host}:${this.tcpPort}/`;
  }

  listen(): void {
    const server = this;
    const handlers: SocketHandler<Connection | undefined> = {
      binaryType: "uint8array",
      open(socket) {
        if (server.shuttingDown || server.connections.size >= server.connectionsMax) {
          server.log(server.shuttingDown ? "refusing a connection: shutting down" : "refusing a connection: too many");
          socket.terminate();
          return;
        }
        const connection = new Connection(server, socket);
        socket.data = connection;
        server.connections.add(connection);
        connection.start();
      },
      data(socket, chunk) {
        socket.data?.onData(chunk);
      },
      drain(socket) {
        socket.data?.out.onDrain();
      },
      close(socket) {
        socket.data?.onClose();
      },
      error(socket, error) {
        server.log(`socket error: ${error.message}`);
        socket.data?.hangUp("socket error");
      },
    };
    const listen = this.options.listen;
    if (listen.kind === "unix") {
      this.listener = Bun.listen<Connection | undefined>({ unix: listen.path, socket: handlers });
      return;
    }
    // reusePort is honoured by Bun.listen; the type definitions only list it for connect.
    const tcpOptions: Bun.TCPSocketListenOptions<Connection | undefined> & { reusePort: boolean } = {
      hostname: listen.host,
      port: listen.port,
      reusePort: listen.reusePort ?? false,
      socket: handlers,
    };
    const listener = Bun.listen<Connection | undefined>(tcpOptions);
    this.listener = listener;
    this.tcpPort = listener.port;
  }

  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.shuttingDown = true;
    this.listener?.stop(false);
    this.closePromise = new Promise<void>((resolve) => {
      this.closeResolve = resolve;
    });
    this.graceTimer = setTimeout(() => {
      for (const connection of this.connections) connection.closeWhenIdle();
    }, this.shutdownGraceMs);
    for (const connection of this.connections) connection.onServerShutdown();
    this.checkClosed();
    return this.closePromise;
  }

  /** A connection is closed and its export handle released. */
  forget(connection: Connection): void {
    this.connections.delete(connection);
    this.checkClosed();
  }

  private checkClosed(): void {
    if (!this.shuttingDown || this.connections.size > 0 || this.closeResolve === null) return;
    if (this.graceTimer !== null) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    const resolve = this.closeResolve;
    this.closeResolve = null;
    resolve();
  }
}

/** One client connection: input buffering, phase switching, orderly and hard endings. */
class Connection implements HandshakeHost, TransmissionHost {
  readonly out: OutputQueue;
  private handshake: Handshake | null;
  private transmission: Transmission | null = null;
  /** Bytes received but not parsed yet, in input[inputStart, inputEnd). */
  private input: Uint8Array | null = null;
  private inputStart = 0;
  private inputEnd = 0;
  private paused = false;
  private parsing = false;
  /** Close once all replies are written (after ABORT, or DISC once nothing is in flight). */
  private endWhenWritten = false;
  /** Close as soon as nothing is in flight (shutdown grace expired). */
  private closeIdle = false;
  private socketClosed = false;
  private finished = false;
  private handshakeTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly server: Server,
    private readonly socket: NbdSocket,
  ) {
    this.out = new OutputQueue(socket, () => this.onWritten());
    this.handshake = new Handshake(this);
  }

  get backend(): NbdBackend {
    return this.server.backend;
  }
  get multiConn(): boolean {
    return this.server.multiConn;
  }
  isShuttingDown(): boolean {
    return this.server.isShuttingDown;
  }
  log(line: string): void {
    this.server.log(line);
  }

  start(): void {
    if (this.server.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => this.hangUp("handshake timed out"), this.server.handshakeTimeoutMs);
    }
    this.handshake!.start();
  }

  onData(chunk: Uint8Array): void {
    if (this.socketClosed) return;
    if (this.inputEnd > this.inputStart) {
      this.appendInput(chunk, 0);
      this.pump();
      this.maybeEnd();
      return;
    }
    const pos = this.parse(chunk, 0, chunk.length, true);
    if (pos < chunk.length && !this.socketClosed) this.appendInput(chunk, pos);
    this.updateFlow();
    this.maybeEnd();
  }

  // --- HandshakeHost ------------------------------------------------------------------------

  enterTransmission(session: Session): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.handshake = null;
    this.transmission = new Transmission(this, session);
  }

  endAfterWrite(): void {
    this.endWhenWritten = true;
    this.maybeEnd();
  }

  /** Hard disconnect (L243-245, L447-448): drop the connection without another byte. */
  hangUp(reason: string): void {
    if (this.socketClosed) return;
    this.log(`closing connection: ${reason}`);
    this.out.kill();
    this.socket.terminate();
    this.onClose();
  }

  // --- TransmissionHost ---------------------------------------------------------------------

  requestDone(): void {
    if (this.socketClosed) return this.releaseWhenIdle();
    this.pump();
    this.maybeEnd();
  }

  // --- Server --------------------------------------------------------------------------------

  onServerShutdown(): void {
    // Nothing to do at once: the phases answer new options and requests with shutdown errors.
    this.maybeEnd();
  }

  closeWhenIdle(): void {
    this.closeIdle = true;
    this.maybeEnd();
  }

  onClose(): void {
    if (!this.socketClosed) {
      this.socketClosed = true;
      this.out.kill();
      if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
      this.input = null;
      this.inputStart = this.inputEnd = 0;
    }
    this.releaseWhenIdle();
  }

  // --- Internals -----------------------------------------------------------------------------

  private parse(buf: Uint8Array, pos: number, end: number, owned: boolean): number {
    assert(!this.parsing, "parse is not re-entered");
    this.parsing = true;
    try {
      while (pos < end && !this.socketClosed) {
        if (this.handshake !== null) {
          pos = this.handshake.parse(buf, pos, end);
          if (this.handshake !== null && !this.handshake.finished) break; // needs more bytes
          if (this.transmission === null) return end; // aborted or hung up: ignore the rest
          continue;
        }
        if (this.transmission !== null) pos = this.transmission.parse(buf, pos, end, owned);
        break;
      }
      return pos;
    } finally {
      this.parsing = false;
    }
  }

  /** Parses buffered input, e.g. after in-flight requests completed. */
  private pump(): void {
    if (this.socketClosed || this.parsing) return;
    if (this.inputEnd > this.inputStart) {
      const pos = this.parse(this.input!, this.inputStart, this.inputEnd, false);
      this.inputStart = pos;
      if (this.inputStart === this.inputEnd) this.inputStart = this.inputEnd = 0;
    }
    this.updateFlow();
  }

  /** Pauses the socket while the transmission phase refuses more requests, resumes otherwise. */
  private updateFlow(): void {
    if (this.socketClosed) return;
    const t = this.transmission;
    const shouldPause = t !== null && !t.disconnecting && this.inputEnd > this.inputStart && !t.mayStartRequest();
    if (shouldPause && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private appendInput(chunk: Uint8Array, from: number): void {
    const n = chunk.length - from;
    if (this.input === null) this.input = new Uint8Array(Math.max(INPUT_BUFFER_INITIAL_BYTES, n));
    if (this.inputEnd + n > this.input.length) {
      const kept = this.inputEnd - this.inputStart;
      if (kept + n > INPUT_BUFFERED_BYTES_MAX) {
        this.hangUp(`more than ${INPUT_BUFFERED_BYTES_MAX} unparsed input bytes`);
        return;
      }
      if (kept + n <= this.input.length) {
        this.input.copyWithin(0, this.inputStart, this.inputEnd);
      } else {
        const bigger = new Uint8Array(Math.max(kept + n, 2 * this.input.length));
        bigger.set(this.input.subarray(this.inputStart, this.inputEnd));
        this.input = bigger;
      }
      this.inputStart = 0;
      this.inputEnd = kept;
    }
    this.input.set(chunk.subarray(from), this.inputEnd);
    this.inputEnd += n;
  }

  private onWritten(): void {
    // Output drained: input held back by output backpressure may go on, and endings may happen.
    this.pump();
    this.maybeEnd();
  }

  /** Ends the connection when it is due and nothing is left to do. */
  private maybeEnd(): void {
    if (this.socketClosed) return;
    const t = this.transmission;
    const idle = (t === null || t.inFlight === 0) && this.out.isEmpty;
    if (!idle) return;
    if (this.endWhenWritten || t?.disconnecting) {
      // Soft end: ABORT was acknowledged, or DISC with every outstanding request answered.
      this.socket.end();
      this.onClose();
      return;
    }
    if (this.closeIdle) this.hangUp("server shut down");
  }

  /** Releases the export handle once nothing is in flight, then leaves the server. */
  private releaseWhenIdle(): void {
    if (this.finished) return;
    if (this.transmission !== null && !this.transmission.closeHandleWhenIdle()) return;
    this.finished = true;
    this.server.forget(this);
  }
}
