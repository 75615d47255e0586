#!/usr/bin/env bun
// ctl: the one command line for the whole system (R18).
import { Command, InvalidArgumentError } from "commander";
import { ControllerClient } from "./client.ts";
import { table } from "./format.ts";
import { DEFAULT_CONTROL_ADDRESS, DEFAULT_NBD_ADDRESS, parseAddress } from "../engine/util/address.ts";
import { formatSize, parseSize } from "../engine/util/size.ts";
import { RemoteError } from "../engine/wire/peer.ts";
import type { DiskMode } from "../engine/catalog.ts";
import type { LunSummary } from "../engine/wire/messages.ts";
import { clientSecret, SECRET_FILE } from "../engine/secret.ts";

/** Where clients look for the secret last: the data directory of the README's quick start. */
const DEFAULT_CLIENT_SECRET_FILE = `data/${SECRET_FILE}`;

/** The servers (controller, agent, WebAssembly tables) load only for the commands that run them, so
 *  that a client command such as `ctl snapshot create` starts fast. */
function loadServe(): Promise<typeof import("./serve.ts")> {
  return import("./serve.ts");
}

function sizeOption(text: string): number {
  try {
    return parseSize(text);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

function addressOption(text: string): string {
  try {
    parseAddress(text);
    return text;
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

function containerId(text: string): number {
  if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`"${text}" is not a container id (see ctl lun list)`);
  return Number(text);
}

function lunHealth(lun: LunSummary): string {
  return lun.failed === undefined ? "ok" : `FAILED (${lun.errorEntries} entries in E): ${lun.failed}`;
}

function countOption(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1) throw new InvalidArgumentError(`"${text}" is not a positive whole number`);
  return value;
}

const program = new Command("ctl")
  .description("Drive a table-driven virtual block storage system: controller, agents, disks and storage")
  .option("--control <addr>", "controller address, HOST:PORT or unix:PATH (env CTL_CONTROL)", addressOption)
  .option(
    "--secret-file <path>",
    `the control secret's file (env CTL_SECRET_FILE; or the secret itself in CTL_SECRET); the controller creates it at first start, by default as DATA/${SECRET_FILE}, which clients also try as ${DEFAULT_CLIENT_SECRET_FILE}`,
  )
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text.startsWith("error:") ? `ctl: ${text}` : text) });

function controlAddress(): string {
  return program.opts<{ control?: string }>().control ?? process.env.CTL_CONTROL ?? DEFAULT_CONTROL_ADDRESS;
}

function secretFileOption(): string | undefined {
  return program.opts<{ secretFile?: string }>().secretFile || process.env.CTL_SECRET_FILE || undefined;
}

/** The secret an agent or ctl presents to the controller. */
function clientSecretOption(): string {
  return clientSecret({ file: secretFileOption(), value: process.env.CTL_SECRET, fallbackFile: DEFAULT_CLIENT_SECRET_FILE });
}

/** Runs one request against the controller and closes the connection. */
async function withController<T>(work: (client: ControllerClient) => Promise<T>): Promise<T> {
  const client = await ControllerClient.open(controlAddress(), clientSecretOption());
  try {
    return await work(client);
  } finally {
    client.close();
  }
}

function print(json: boolean, value: unknown, human: () => string): void {
  console.log(json ? JSON.stringify(value, null, 2) : human());
}

program
  .command("up")
  .description("run a controller and one agent in the foreground; every disk is exported under its name")
  .requiredOption("--data <dir>", "data directory (created with a default storage container when absent)")
  .option("--nbd <addr>", "NBD address, HOST:PORT or unix:PATH", addressOption, DEFAULT_NBD_ADDRESS)
  .option("--lun-size <size>", "size of the default storage container when it is created", sizeOption)
  .option("--log-compact-slack <size>", "compact the controller's log once it grows this much past its live state", sizeOption)
  .option("--workers <n>", "NBD worker threads", countOption)
  .option("--lease <ms>", "the agent's lease: without a renewal for this long it stops I/O", countOption)
  .action(async (options: { data: string; nbd: string; lunSize?: number; logCompactSlack?: number; workers?: number; lease?: number }) => {
    const { runUp } = await loadServe();
    await runUp({ ...options, control: controlAddress(), secretFile: secretFileOption() });
  });

program
  .command("controller")
  .description("run the controller alone in the foreground")
  .requiredOption("--data <dir>", "data directory")
  .option("--lun-size <size>", "size of the default storage container when it is created", sizeOption)
  .option("--log-compact-slack <size>", "compact the controller's log once it grows this much past its live state", sizeOption)
  .action(async (options: { data: string; lunSize?: number; logCompactSlack?: number }) => {
    const { runController } = await loadServe();
    await runController({ ...options, control: controlAddress(), secretFile: secretFileOption() });
  });

const agent = program
  .command("agent")
  .description("run a mapping agent in the foreground (needs --id), or list agents (agent list)")
  .option("--id <id>", "agent id, unique among the controller's agents")
  .option("--nbd <addr>", "NBD address, HOST:PORT or unix:PATH", addressOption, DEFAULT_NBD_ADDRESS)
  .option("--workers <n>", "NBD worker threads", countOption)
  .option("--lease <ms>", "lease: without a renewal from the controller for this long the agent stops I/O", countOption)
  .action(async (options: { id?: string; nbd: string; workers?: number; lease?: number }) => {
    // Not a required option: `agent list` must not need it.
    if (!options.id) throw new InvalidArgumentError("running an agent needs --id <id>");
    const { runAgent } = await loadServe();
    await runAgent({ ...options, id: options.id, control: controlAddress(), secret: clientSecretOption() });
  });

agent
  .command("list")
  .description("list the agents registered with the controller and the disks each serves")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const agents = await withController((client) => client.request("agent.list", {}));
    print(!!options.json, agents, () =>
      table(["ID", "NBD", "STATE", "DISKS"], agents.map((a) => [a.id, a.nbd, a.connected ? "connected" : "gone", a.disks.join(",") || "-"])),
    );
  });

program
  .command("export <disk>")
  .description("present a disk to an agent (host); once a disk has an export list, only listed agents serve it")
  .requiredOption("--agent <id>", "agent id")
  .action(async (name: string, options: { agent: string }) => {
    await withController((client) => client.request("disk.export", { name, agent: options.agent }));
    console.log(`exported ${name} on agent ${options.agent}`);
  });

program
  .command("unexport <disk>")
  .description("stop presenting a disk to an agent; it finishes its I/O to the disk first")
  .requiredOption("--agent <id>", "agent id")
  .action(async (name: string, options: { agent: string }) => {
    await withController((client) => client.request("disk.unexport", { name, agent: options.agent }));
    console.log(`unexported ${name} from agent ${options.agent}`);
  });

program
  .command("status")
  .description("controller, agents, pool and disks at a glance")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const status = await withController((client) => client.request("status", {}));
    print(!!options.json, status, () =>
      [
        `controller: ${status.controller.disks} disks, log ${formatSize(status.controller.logBytes)}`,
        `pool:       ${formatSize(status.pool.usedBytes)} used of ${formatSize(status.pool.sizeBytes)} in ${status.pool.containers} container(s)`,
        `agents:     ${status.agents.map((a) => `${a.id} (${a.connected ? "connected" : "gone"}, ${a.disks.length} disks)`).join(", ") || "none"}`,
        `disks:      ${status.disks.map((d) => d.name).join(", ") || "none"}`,
      ].join("\n"),
    );
  });

const disk = program.command("disk").description("virtual disks");

function modeOption(text: string): DiskMode {
  if (text !== "forward" && text !== "reverse") throw new InvalidArgumentError(`"${text}" is not a mode: use forward or reverse`);
  return text;
}

const MODE_HELP = "copy-on-write after a snapshot: forward (the writer gets a new segment) or reverse (the writer keeps it, the others move)";

disk
  .command("create <name>")
  .description("create a thin disk: all zero, no storage used until written")
  .requiredOption("--size <size>", "virtual size (bytes or K/M/G/T/P, binary)", sizeOption)
  .option("--segment-size <size>", "segment size, a power of two from 64K to 1G (default 1M)", sizeOption)
  .option("--mode <mode>", MODE_HELP, modeOption)
  .option("--json", "print JSON")
  .action(async (name: string, options: { size: number; segmentSize?: number; mode?: DiskMode; json?: boolean }) => {
    const created = await withController((client) =>
      client.request("disk.create", { name, size: options.size, segmentSize: options.segmentSize, mode: options.mode }),
    );
    print(!!options.json, created, () => `created disk ${created.name}: ${formatSize(created.size)}, segments of ${formatSize(created.segmentSize)}`);
  });

disk
  .command("list")
  .description("list disks, with the disk each snapshot was taken from")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const disks = await withController((client) => client.request("disk.list", {}));
    print(!!options.json, disks, () =>
      table(
        ["NAME", "SIZE", "SEGMENT", "MODE", "PARENT", "ALLOCATED", "EXCLUSIVE", "SHARED"],
        disks.map((d) => [
          d.name,
          formatSize(d.size),
          formatSize(d.segmentSize),
          d.mode,
          d.parent ?? "-",
          formatSize(d.allocatedBytes),
          formatSize(d.exclusiveBytes),
          formatSize(d.sharedBytes),
        ]),
      ),
    );
  });

disk
  .command("info <name>")
  .description("show one disk")
  .option("--json", "print JSON")
  .action(async (name: string, options: { json?: boolean }) => {
    const info = await withController((client) => client.request("disk.info", { name }));
    print(!!options.json, info, () =>
      [
        `name:       ${info.name}`,
        `size:       ${formatSize(info.size)} (${info.size} bytes)`,
        `segment:    ${formatSize(info.segmentSize)}`,
        `mode:       ${info.mode}`,
        `parent:     ${info.parent ?? "-"}`,
        `allocated:  ${formatSize(info.allocatedBytes)} (exclusive ${formatSize(info.exclusiveBytes)}, shared ${formatSize(info.sharedBytes)})`,
      ].join("\n"),
    );
  });

disk
  .command("delete <name>")
  .description("delete a disk and free its storage")
  .action(async (name: string) => {
    const result = await withController((client) => client.request("disk.delete", { name }));
    console.log(`deleted disk ${name}; freed ${formatSize(result.freedBytes)}`);
  });

disk
  .command("rollback <disk> <snapshot>")
  .description("make a disk a copy of one of its snapshots again (a table copy; no data moves)")
  .action(async (name: string, snapshot: string) => {
    await withController((client) => client.request("disk.rollback", { name, snapshot }));
    console.log(`rolled ${name} back to ${snapshot}`);
  });

disk
  .command("diff <a> <b>")
  .description("byte ranges where two disks of one family differ, from their tables (no data is read)")
  .option("--json", "print JSON: a list of {offset, length}")
  .action(async (a: string, b: string, options: { json?: boolean }) => {
    const result = await withController((client) => client.request("disk.diff", { a, b }));
    print(!!options.json, result.ranges, () =>
      table(["OFFSET", "LENGTH"], result.ranges.map((range) => [String(range.offset), String(range.length)])),
    );
  });

const snapshot = program.command("snapshot").description("snapshots: instant, space-efficient copies of disks");

snapshot
  .command("create <source> <name>")
  .description("snapshot a disk; the snapshot is itself a disk (exported, writable)")
  .option("--mode <mode>", `${MODE_HELP}; default: the source's`, modeOption)
  .option("--invalidate", "make agents reload the source's entries (Invalid) instead of setting No-write")
  .option("--json", "print JSON")
  .action(async (source: string, name: string, options: { mode?: DiskMode; invalidate?: boolean; json?: boolean }) => {
    const created = await withController((client) =>
      client.request("snapshot.create", { source, name, mode: options.mode, invalidate: options.invalidate }),
    );
    print(!!options.json, created, () => `created snapshot ${created.name} of ${source}: ${formatSize(created.size)}, ${created.mode} delta`);
  });

program
  .command("check")
  .description("check the controller's tables, reference counts and allocator against each other")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const report = await withController((client) => client.request("check", {}));
    print(!!options.json, report, () =>
      [`${report.disks} disks, ${report.segments} segments in use (${formatSize(report.usedBytes)})`, ...report.problems].join("\n"),
    );
    if (report.problems.length > 0) {
      process.stderr.write(`ctl: error: ${report.problems.length} problem(s) found\n`);
      process.exitCode = 1;
    }
  });

snapshot
  .command("group <pairs...>")
  .description("snapshot several disks at one point in time: SOURCE=NAME for each")
  .option("--timeout <ms>", "how long agents may take to finish their I/O in progress", countOption)
  .option("--json", "print JSON")
  .action(async (pairs: string[], options: { timeout?: number; json?: boolean }) => {
    const parsed = pairs.map((pair) => {
      const match = /^([^=]+)=([^=]+)$/.exec(pair);
      if (!match) throw new InvalidArgumentError(`"${pair}" is not SOURCE=NAME`);
      return { source: match[1]!, name: match[2]! };
    });
    const created = await withController((client) => client.request("snapshot.group", { pairs: parsed, timeoutMs: options.timeout }));
    print(!!options.json, created, () => created.map((disk) => `created snapshot ${disk.name} of ${disk.parent ?? "?"}`).join("\n"));
  });

const lun = program.command("lun").description("storage containers (LUNs) of the pool");

lun
  .command("add <path>")
  .description("add a storage container (a file, created sparse if absent, or a block device)")
  .requiredOption("--size <size>", "usable size", sizeOption)
  .option("--json", "print JSON")
  .action(async (path: string, options: { size: number; json?: boolean }) => {
    const added = await withController((client) => client.request("lun.add", { path, size: options.size }));
    print(!!options.json, added, () => `added container ${added.id}: ${added.path}, ${formatSize(added.size)}`);
  });

lun
  .command("list")
  .description("list storage containers")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const luns = await withController((client) => client.request("lun.list", {}));
    print(!!options.json, luns, () =>
      table(
        ["ID", "PATH", "SIZE", "USED", "FREE", "HEALTH"],
        luns.map((l) => [String(l.id), l.path, formatSize(l.size), formatSize(l.usedBytes), formatSize(l.freeBytes), lunHealth(l)]),
      ),
    );
  });

lun
  .command("repair <id>")
  .description("put a failed container back in service once it works again; its segments leave the error state")
  .action(async (id: string) => {
    const repaired = await withController((client) => client.request("lun.repair", { id: containerId(id) }));
    console.log(`container ${repaired.id} (${repaired.path}) is back in service`);
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const message = error instanceof RemoteError || error instanceof Error ? error.message : String(error);
  process.stderr.write(`ctl: error: ${message}\n`);
  process.exit(1);
}
