// A stand-in controller on a unix socket: a real `ctl agent` registers with it, the test sends it
// commands and decides how faults are answered. Like the controller, it numbers every change it
// sends (commands, and answers with entries), in order, unless the test numbers one itself.
import { join } from "node:path";
import { Child, spawnCtl } from "./processes.ts";
import { agentRequests, controllerRequests, PROTOCOL_VERSION, type ArgsOf, type ControllerRequests, type ResultOf } from "../../engine/wire/messages.ts";
import { Peer } from "../../engine/wire/peer.ts";
import { listen, type Listener } from "../../engine/wire/transport.ts";

export type Fault = ArgsOf<ControllerRequests, "fault">;
export type FaultAnswer = ResultOf<ControllerRequests, "fault">;
/** A command's arguments, its change number optional (the stand-in gives the next one). */
type Numbered<T> = T extends { change: number } ? Omit<T, "change"> & { change?: number } : T;

export interface StandIn {
  agent: Child;
  nbdSocket: string;
  faults: Fault[];
  /** Hears every storage failure the agent reports (R14). */
  onStorageError: (report: ArgsOf<ControllerRequests, "storage_error">) => void;
  answerFault: (fault: Fault) => FaultAnswer;
  command<K extends keyof typeof agentRequests & string>(op: K, args: Numbered<ArgsOf<typeof agentRequests, K>>): Promise<ResultOf<typeof agentRequests, K>>;
  /** The number of the next change (every change to the one disk a test uses is numbered in turn). */
  nextChange(): number;
  stop(): Promise<void>;
}

export async function startStandIn(dir: string, env: Record<string, string> = {}): Promise<StandIn> {
  let peer: Peer<ControllerRequests, typeof agentRequests> | null = null;
  let registered!: () => void;
  const whenRegistered = new Promise<void>((resolve) => (registered = resolve));
  let changes = 0;
  const standIn: StandIn = {
    agent: null as unknown as Child,
    nbdSocket: join(dir, "nbd.sock"),
    faults: [],
    onStorageError: () => undefined,
    answerFault: () => ({ action: "error", errno: "EIO" }),
    command: (op, args) => peer!.request(op, numbered(op, args, () => standIn.nextChange())),
    nextChange: () => (changes += 1),
    async stop() {
      await standIn.agent.kill();
      listener.stop(true);
    },
  };
  const listener: Listener = listen({ kind: "unix", path: join(dir, "control.sock") }, (stream) => {
    const connection = new Peer(stream, controllerRequests, agentRequests);
    connection.serve(async (op, args) => {
      if (op === "hello") {
        peer = connection;
        queueMicrotask(registered);
        return { version: PROTOCOL_VERSION, controller: "stand-in" };
      }
      if (op === "fault") {
        standIn.faults.push(args as Fault);
        const answer = standIn.answerFault(args as Fault);
        return answer.runs && answer.change === undefined ? { ...answer, change: standIn.nextChange() } : answer;
      }
      if (op === "storage_error") {
        standIn.onStorageError(args as ArgsOf<ControllerRequests, "storage_error">);
        return {};
      }
      throw new Error(`unexpected ${op}`);
    });
  });
  standIn.agent = spawnCtl(["--control", `unix:${join(dir, "control.sock")}`, "agent", "--id", "t1", "--nbd", `unix:${standIn.nbdSocket}`], "agent", env);
  await whenRegistered;
  return standIn;
}

const NUMBERED_COMMANDS: ReadonlySet<string> = new Set(["new_table", "set_entry", "set_entry_state"]);

/** The command's arguments with a change number, the next one unless the test gave one. */
function numbered<K extends keyof typeof agentRequests & string>(op: K, args: Numbered<ArgsOf<typeof agentRequests, K>>, next: () => number): ArgsOf<typeof agentRequests, K> {
  if (!NUMBERED_COMMANDS.has(op) || (args as { change?: number }).change !== undefined) return args as ArgsOf<typeof agentRequests, K>;
  return { ...args, change: next() } as ArgsOf<typeof agentRequests, K>;
}
