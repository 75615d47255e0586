// Listening/connecting addresses: "HOST:PORT" (TCP) or "unix:PATH".

export type Address =
  | { kind: "tcp"; host: string; port: number }
  | { kind: "unix"; path: string };

export const DEFAULT_NBD_ADDRESS = "127.0.0.1:10809";
export const DEFAULT_CONTROL_ADDRESS = "127.0.0.1:10810";

export function parseAddress(text: string): Address {
  if (text.startsWith("unix:")) {
    const path = text.slice("unix:".length);
    if (path === "") throw new TypeError(`Invalid address "${text}": unix: needs a socket path`);
    return { kind: "unix", path };
  }
  const colon = text.lastIndexOf(":");
  if (colon <= 0) throw new TypeError(`Invalid address "${text}": expected HOST:PORT or unix:PATH`);
  let host = text.slice(0, colon);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  const portText = text.slice(colon + 1);
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    throw new TypeError(`Invalid address "${text}": port must be a number from 0 to 65535`);
  }
  return { kind: "tcp", host, port };
}

export function formatAddress(address: Address): string {
  if (address.kind === "unix") return `unix:${address.path}`;
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `${host}:${address.port}`;
}

/** The NBD URI of an export served at `address` (see the NBD URI specification). */
export function nbdUri(address: Address, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (address.kind === "unix") return `nbd+unix:///${name}?socket=${address.path}`;
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${name}`;
}

/** A failed listen in words: `Cannot listen on 127.0.0.1:10809: in use by another process`. */
export function listenError(address: Address, error: unknown): Error {
  const code = (error as { code?: unknown }).code;
  const why =
    code === "EADDRINUSE" ? "in use by another process" : code === "EACCES" ? "permission denied" : code === "EADDRNOTAVAIL" ? "no such local address" : (error as Error).message;
  return new Error(`Cannot listen on ${formatAddress(address)}: ${why}`);
}
