#!/usr/bin/env bun
// ctl: the one command line for the whole system (R18).
import { resolve } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import { ControllerClient } from "./client.ts";
import { table } from "./format.ts";
import { DEFAULT_CONTROL_ADDRESS, DEFAULT_NBD_ADDRESS, parseAddress } from "../engine/util/address.ts";
import { formatSize, parseSize } from "../engine/util/size.ts";
import { RemoteError } from "../engine/wire/peer.ts";
import type { DiskMode } from "../engine/catalog.ts";
import { NAME_LENGTH_MAX, NAME_PATTERN, NAME_RULE, type DiskSummary, type LunSummary } from "../engine/wire/messages.ts";
import { clientSecret, SECRET_FILE, type ClientSecret } from "../engine/secret.ts";
import packageJson from "../package.json" with { type: "json" };

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

/** A disk or agent name, checked before anything is sent: names are export names too. */
function nameArgument(kind: string): (text: string) => string {
  return (text) => {
    if (text.length > NAME_LENGTH_MAX) throw new InvalidArgumentError(`${kind} name "${text.slice(0, 40)}...": longer than ${NAME_LENGTH_MAX} characters`);
    if (!NAME_PATTERN.test(text)) throw new InvalidArgumentError(`${kind} name "${text}": ${NAME_RULE}`);
    return text;
  };
}
const diskName = nameArgument("disk");
const agentName = nameArgument("agent");

function countOption(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1) throw new InvalidArgumentError(`"${text}" is not a positive whole number`);
  return value;
}

const program = new Command("ctl")
  .description("Drive a table-driven virtual block storage system: controller, agents, disks and storage")
  .version(`${packageJson.name} ${packageJson.version}`, "-V, --version", "print the version")
  .option("--control <addr>", "controller address, HOST:PORT or unix:PATH (env CTL_CONTROL)", addressOption)
  .option(
    "--secret-file <path>",
    `the control secret's file (env CTL_SECRET_FILE; or the secret itself in CTL_SECRET); the controller creates it at first start, by default as DATA/${SECRET_FILE}, which clients also try as ${DEFAULT_CLIENT_SECRET_FILE}`,
  )
  .configureOutput({ outputError: (text, write) => write(text.startsWith("error:") ? `ctl: ${withoutPreamble(text)}` : text) });

/** Commander puts "command-argument value 'x' is invalid for argument 'name'." before the message
 *  of an argument parser; ours say what was wrong with which value already. */
function withoutPreamble(text: string): string {
  return text.replace(/^error: (command-argument value|option '[^']*' argument) '.*?' is invalid( for argument '[^']*')?\. /s, "error: ");
}

function controlAddress(): string {
  return program.opts<{ control?: string }>().control ?? process.env.CTL_CONTROL ?? DEFAULT_CONTROL_ADDRESS;
}

function secretFileOption(): string | undefined {
  return secretFileSource()?.path;
}

function secretFileSource(): { path: string; from: "--secret-file" | "CTL_SECRET_FILE" } | undefined {
  const flag = program.opts<{ secretFile?: string }>().secretFile;
  if (flag) return { path: flag, from: "--secret-file" };
  if (process.env.CTL_SECRET_FILE) return { path: process.env.CTL_SECRET_FILE, from: "CTL_SECRET_FILE" };
  return undefined;
}

/** The secret an agent or ctl presents to the controller, and where it came from. */
function clientSecretOption(): ClientSecret {
  return clientSecret({ file: secretFileSource(), value: process.env.CTL_SECRET, fallbackFile: DEFAULT_CLIENT_SECRET_FILE });
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

/** A warning of the controller's: what happened is not all that was asked (on stderr, exit 0). */
function warn(warning: string | undefined): void {
  if (warning) process.stderr.write(`ctl: warning: ${warning}\n`);
}

program
  .command("up")
  .description("run a controller and one agent in the foreground; every disk is exported under its name")
  .requiredOption("--data <dir>", "data directory (created with a default storage container when absent)")
  .option("--nbd <addr>", "NBD address, HOST:PORT or unix:PATH", addressOption, DEFAULT_NBD_ADDRESS)
  .option("--lun-size <size>", "size of the default storage container when it is created", sizeOption)
  .option("--log-compact-slack <size>", "compact the controller's log once it has grown past its compacted size by that size or by this much, whichever is more (default 4M)", sizeOption)
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
  .option("--log-compact-slack <size>", "compact the controller's log once it has grown past its compacted size by that size or by this much, whichever is more (default 4M)", sizeOption)
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
    if (!options.id) return agent.error("error: running an agent needs --id <id>");
    agentName(options.id);
    const { runAgent } = await loadServe();
    const { secret, origin } = clientSecretOption();
    await runAgent({ ...options, id: options.id, control: controlAddress(), secret, secretOrigin: origin });
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

const FORCE_AGENT_HELP = "also for an agent that has not registered yet";

program
  .command("export")
  .argument("<disk>", "disk name", diskName)
  .description("present a disk to an agent (host); once a disk has an export list, only listed agents serve it")
  .requiredOption("--agent <id>", "agent id", agentName)
  .option("--force", FORCE_AGENT_HELP)
  .action(async (name: string, options: { agent: string; force?: boolean }) => {
    await withController((client) => client.request("disk.export", { name, agent: options.agent, force: options.force }));
    console.log(`exported ${name} on agent ${options.agent}`);
  });

program
  .command("unexport")
  .argument("<disk>", "disk name", diskName)
  .description("stop presenting a disk to an agent; it finishes its I/O to the disk first")
  .requiredOption("--agent <id>", "agent id", agentName)
  .option("--force", FORCE_AGENT_HELP)
  .action(async (name: string, options: { agent: string; force?: boolean }) => {
    await withController((client) => client.request("disk.unexport", { name, agent: options.agent, force: options.force }));
    console.log(`unexported ${name} from agent ${options.agent}`);
  });

program
  .command("status")
  .description("controller, agents, pool and disks at a glance")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const status = await withController((client) => client.request("status", {}));
    const pool = status.pool;
    print(!!options.json, status, () =>
      [
        `controller: ${status.controller.disks} disks, log ${formatSize(status.controller.logBytes)}`,
        `pool:       ${formatSize(pool.usedBytes)} used of ${formatSize(pool.sizeBytes)} in ${pool.containers} container(s); ` +
          `disks provision ${formatSize(pool.provisionedBytes)}, overcommit ${pool.overcommit.toFixed(2)}x`,
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
  .command("create")
  .argument("<name>", "disk name", diskName)
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
    warn(created.warning);
  });

disk
  .command("list")
  .description("list disks, with the disk each snapshot was taken from")
  .option("--json", "print JSON")
  .action(async (options: { json?: boolean }) => {
    const disks = await withController((client) => client.request("disk.list", {}));
    print(!!options.json, disks, () =>
      table(
        ["NAME", "SIZE", "SEGMENT", "MODE", "PARENT", "PROTECTED", "ALLOCATED", "EXCLUSIVE", "SHARED"],
        disks.map((d) => [
          d.name,
          formatSize(d.size),
          formatSize(d.segmentSize),
          d.mode,
          parentOf(d),
          d.protected ? "yes" : "-",
          formatSize(d.allocatedBytes),
          formatSize(d.exclusiveBytes),
          formatSize(d.sharedBytes),
        ]),
      ),
    );
  });

disk
  .command("info")
  .argument("<name>", "disk name", diskName)
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
        `parent:     ${parentOf(info)}`,
        `protected:  ${info.protected ? "yes" : "no"}`,
        `allocated:  ${formatSize(info.allocatedBytes)} (exclusive ${formatSize(info.exclusiveBytes)}, shared ${formatSize(info.sharedBytes)})`,
      ].join("\n"),
    );
  });

disk
  .command("delete")
  .argument("<name>", "disk name", diskName)
  .description("delete a disk and free its storage (refused while it is protected)")
  .option("--force", "even when snapshots or clones were taken from it, or a host has it open")
  .action(async (name: string, options: { force?: boolean }) => {
    const result = await withController((client) => client.request("disk.delete", { name, force: options.force }));
    console.log(`deleted disk ${name}; freed ${formatSize(result.freedBytes)}`);
  });

disk
  .command("rollback")
  .argument("<disk>", "the disk to roll back", diskName)
  .argument("<snapshot>", "a snapshot taken of that disk (or of one of its snapshots)", diskName)
  .description("make a disk a copy of one of its snapshots again (a table copy; no data moves)")
  .option("--force", "even while a host has the disk open")
  .action(async (name: string, snapshot: string, options: { force?: boolean }) => {
    await withController((client) => client.request("disk.rollback", { name, snapshot, force: options.force }));
    console.log(`rolled ${name} back to ${snapshot}`);
  });

disk
  .command("diff")
  .argument("<a>", "disk name", diskName)
  .argument("<b>", "disk name", diskName)
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
  .command("create")
  .argument("<source>", "the disk to snapshot", diskName)
  .argument("<name>", "the snapshot's name", diskName)
  .description("snapshot a disk; the snapshot is itself a disk (exported, writable unless protected)")
  .option("--mode <mode>", `${MODE_HELP}; default: the source's`, modeOption)
  .option("--invalidate", "make agents reload the source's entries (Invalid) instead of setting No-write")
  .option("--protect", "protect the snapshot from the start (see snapshot protect)")
  .option("--json", "print JSON")
  .action(async (source: string, name: string, options: { mode?: DiskMode; invalidate?: boolean; protect?: boolean; json?: boolean }) => {
    const created = await withController((client) =>
      client.request("snapshot.create", { source, name, mode: options.mode, invalidate: options.invalidate, protect: options.protect }),
    );
    print(
      !!options.json,
      created,
      () => `created snapshot ${created.name} of ${source}: ${formatSize(created.size)}, ${created.mode} delta${created.protected ? ", protected" : ""}`,
    );
    warn(created.warning);
  });

for (const [verb, on] of [
  ["protect", true],
  ["unprotect", false],
] as const) {
  snapshot
    .command(verb)
    .argument("<name>", "disk name", diskName)
    .description(
      on
        ? "protect a snapshot (or any disk): it cannot be deleted or rolled back over, and hosts get it read-only"
        : "lift the protection of a snapshot (or any disk)",
    )
    .action(async (name: string) => {
      await withController((client) => client.request("disk.protect", { name, on }));
      console.log(`${on ? "protected" : "unprotected"} ${name}`);
    });
}

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

const group = snapshot
  .command("group <pairs...>")
  .description("snapshot several disks at one point in time: SOURCE=NAME for each")
  .option("--timeout <ms>", "how long agents may take to finish their I/O in progress", countOption)
  .option("--json", "print JSON")
  .action(async (pairs: string[], options: { timeout?: number; json?: boolean }) => {
    const parsed = pairs.map((pair) => {
      const match = /^([^=]+)=([^=]+)$/.exec(pair);
      if (!match) return group.error(`error: "${pair}" is not SOURCE=NAME`);
      return { source: diskName(match[1]!), name: diskName(match[2]!) };
    });
    const created = await withController((client) => client.request("snapshot.group", { pairs: parsed, timeoutMs: options.timeout }));
    print(!!options.json, created, () => created.map((disk) => `created snapshot ${disk.name} of ${disk.parent ?? "?"}`).join("\n"));
    for (const disk of created) warn(disk.warning);
  });

const lun = program.command("lun").description("storage containers (LUNs) of the pool");

lun
  .command("add <path>")
  .description("add a storage container (a file, created sparse if absent, or a block device)")
  .requiredOption("--size <size>", "usable size", sizeOption)
  .option("--json", "print JSON")
  .action(async (path: string, options: { size: number; json?: boolean }) => {
    // Relative to where ctl runs, not to where the controller runs.
    const added = await withController((client) => client.request("lun.add", { path: resolve(path), size: options.size }));
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

function parentOf(disk: DiskSummary): string {
  if (disk.parent === undefined) return disk.parentDeleted ? "(deleted)" : "-";
  return disk.parentDeleted ? `${disk.parent} (deleted)` : disk.parent;
}

/** An argument error prints one line and where to read more, not the whole help. */
function hintAfterErrors(command: Command, path: string): void {
  command.showHelpAfterError(`(see '${path} --help')`);
  for (const sub of command.commands) hintAfterErrors(sub, `${path} ${sub.name()}`);
}
hintAfterErrors(program, "ctl");

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const message = error instanceof RemoteError || error instanceof Error ? error.message : String(error);
  process.stderr.write(`ctl: error: ${message}\n`);
  process.exit(1);
}
