// The request/response layer used between controller, agents and ctl, over a real unix socket.
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { tempDir } from "./helpers/processes.ts";
import { agentRequests, controllerRequests, PROTOCOL_VERSION } from "../engine/wire/messages.ts";
import { Peer, RemoteError } from "../engine/wire/peer.ts";
import { connect, listen } from "../engine/wire/transport.ts";
import { KeyedMutex } from "../engine/util/mutex.ts";

const dir = tempDir("wire-peer");
afterAll(() => dir.remove());

/** A controller-side peer and an agent-side peer connected to each other. */
async function pair() {
  const path = join(dir.path, `p${Math.random().toString(36).slice(2)}.sock`);
  let server!: Peer<typeof controllerRequests, typeof agentRequests>;
  const accepted = new Promise<void>((resolve) => {
    const listener = listen({ kind: "unix", path }, (stream) => {
      server = new Peer(stream, controllerRequests, agentRequests);
      listener.stop();
      resolve();
    });
  });
  const client = new Peer(await connect({ kind: "unix", path }), agentRequests, controllerRequests);
  await accepted;
  return { server, client };
}

test("wire: a response's onArrival runs before a request the other side sent right after it", async () => {
  const { server, client } = await pair();
  const order: string[] = [];
  server.serve(async (op) => {
    if (op !== "hello") throw new Error(op);
    // Answer, then send a command right after (as the controller does when it releases a family
    // lock: the next section starts a macrotask later). Both frames usually arrive in one read.
    setImmediate(() => void server.request("get_entry", { disk: 1, first: 0, count: 1 }).catch(() => undefined));
    return { version: PROTOCOL_VERSION, controller: "test" };
  });
  client.serve(async (op) => {
    order.push(`command ${op}`);
    return { words: [0] };
  });
  const answered = client.request("hello", { version: PROTOCOL_VERSION, role: "ctl" }, () => order.push("answer applied"));
  await answered;
  await new Promise<void>((resolve) => {
    const check = () => (order.length >= 2 ? resolve() : setImmediate(check));
    check();
  });
  expect(order).toEqual(["answer applied", "command get_entry"]);
  client.close();
  server.close();
});

test("wire: an error answer reaches the caller as a RemoteError with its code", async () => {
  const { server, client } = await pair();
  server.serve(async () => {
    throw new RemoteError("NOT_FOUND", "no such thing");
  });
  const error = await client.request("hello", { version: PROTOCOL_VERSION, role: "ctl" }).catch((e: Error) => e);
  expect(error).toBeInstanceOf(RemoteError);
  expect((error as RemoteError).code).toBe("NOT_FOUND");
  client.close();
  server.close();
});

test("mutex: sections on one key run one at a time, in order; other keys do not wait", async () => {
  const mutex = new KeyedMutex<string>();
  const events: string[] = [];
  let releaseFirst!: () => void;
  const first = mutex.run("a", async () => {
    events.push("a1 start");
    await new Promise<void>((resolve) => (releaseFirst = resolve));
    events.push("a1 end");
  });
  const second = mutex.run("a", async () => {
    events.push("a2");
  });
  await mutex.run("b", async () => {
    events.push("b");
  });
  releaseFirst();
  await Promise.all([first, second]);
  expect(events).toEqual(["a1 start", "b", "a1 end", "a2"]);
});
