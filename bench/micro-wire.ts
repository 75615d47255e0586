// Microbenchmark part: the cost of one message on the controller–agent wire, done with the wire's own
// code: encodeFrame (msgpack + length header) to send; FrameDecoder.push (reassembly + msgpack) to
// receive; then the schema checks every received message goes through (the envelope, then the
// request's args or the response's result, as Peer does). Messages: a typical fault (a 4 KiB write to
// a Z segment), its retry answer (the segment's new entry), and the set_entry push of that entry to
// another agent.
import { mappedWord, ZERO_WORD, entryState } from "../wasm/entry.ts";
import { encodeFrame, FrameDecoder } from "../engine/wire/frame.ts";
import { agentRequests, controllerRequests, envelope, type ArgsOf, type AgentRequests, type ControllerRequests, type ResultOf } from "../engine/wire/messages.ts";
import { type MicroSettings, newBench, nsPerOperation } from "./micro-timing.ts";

const MESSAGES = 1000; // per benchmark iteration: one message is too short to time alone
const MIB = 2 ** 20;
const DISK_ID = 7;
const SEGMENT = 517; // of a disk with 1 MiB segments
const REQUEST_ID = 4242;
const WORD = mappedWord(1, 3 * 2 ** 30 + SEGMENT * MIB);

const faultArgs: ArgsOf<ControllerRequests, "fault"> = {
  disk: DISK_ID,
  op: "write",
  first: SEGMENT,
  last: SEGMENT,
  state: entryState(ZERO_WORD),
  offset: SEGMENT * MIB + 12_288,
  length: 4096,
};
const CHANGE = 123_456;
const retryResult: ResultOf<ControllerRequests, "fault"> = { action: "retry", first: SEGMENT, runs: [[WORD, 1]], change: CHANGE };
const setEntryArgs: ArgsOf<AgentRequests, "set_entry"> = { disk: DISK_ID, first: SEGMENT, runs: [[WORD, 1]], blocking: false, change: CHANGE + 1 };

interface WireMessage {
  name: string;
  /** The envelope as Peer writes it. */
  message: object;
  /** What the receiving Peer checks before any code uses the message. */
  validate(decoded: unknown): unknown;
}

const MESSAGES_MEASURED: readonly WireMessage[] = [
  {
    name: "fault request",
    message: { t: "req", id: REQUEST_ID, op: "fault", args: faultArgs },
    validate: (decoded) => controllerRequests.fault.args(envelope(decoded, "message").args, "fault"),
  },
  {
    name: "fault retry answer",
    message: { t: "res", id: REQUEST_ID, ok: true, result: retryResult },
    validate: (decoded) => controllerRequests.fault.result(envelope(decoded, "message").result, "fault.result"),
  },
  {
    name: "set_entry push",
    message: { t: "req", id: REQUEST_ID, op: "set_entry", args: setEntryArgs },
    validate: (decoded) => agentRequests.set_entry.args(envelope(decoded, "message").args, "set_entry"),
  },
];

export interface WireCase {
  message: string;
  frameBytes: number;
  encodeNs: number;
  decodeNs: number;
  validateNs: number;
}

function encodeTask(message: object): () => void {
  return () => {
    let bytes = 0;
    for (let i = 0; i < MESSAGES; i++) bytes += encodeFrame(message).length;
    if (bytes === 0) throw new Error("unreachable"); // keeps the frames alive
  };
}

function decodeTask(frame: Uint8Array): () => void {
  const decoder = new FrameDecoder();
  return () => {
    for (let i = 0; i < MESSAGES; i++) if (decoder.push(frame).length !== 1) throw new Error("frame not decoded whole");
  };
}

function validateTask(wire: WireMessage, decoded: unknown): () => void {
  return () => {
    for (let i = 0; i < MESSAGES; i++) if (wire.validate(decoded) === undefined) throw new Error("unreachable");
  };
}

export async function measureWire(settings: MicroSettings): Promise<WireCase[]> {
  const bench = newBench(settings);
  const frames = MESSAGES_MEASURED.map((wire) => encodeFrame(wire.message));
  MESSAGES_MEASURED.forEach((wire, i) => {
    const decoded = new FrameDecoder().push(frames[i]!)[0];
    wire.validate(decoded); // a message the real peer would refuse would measure nothing useful
    bench.add(`encode ${wire.name}`, encodeTask(wire.message));
    bench.add(`decode ${wire.name}`, decodeTask(frames[i]!));
    bench.add(`validate ${wire.name}`, validateTask(wire, decoded));
  });
  await bench.run();
  return MESSAGES_MEASURED.map((wire, i) => ({
    message: wire.name,
    frameBytes: frames[i]!.length,
    encodeNs: nsPerOperation(bench, `encode ${wire.name}`, MESSAGES),
    decodeNs: nsPerOperation(bench, `decode ${wire.name}`, MESSAGES),
    validateNs: nsPerOperation(bench, `validate ${wire.name}`, MESSAGES),
  }));
}
