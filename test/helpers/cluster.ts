// A running system of separate processes for integration tests: `ctl controller` and several
// `ctl agent --id ID` on unix sockets in a temp dir. Any of them can be killed and started again
// (a killed agent comes back under the same id and socket; agents find a new controller themselves).
import { join } from "node:path";
import { Child, ctl, ctlOk, spawnCtl, tempDir } from "./processes.ts";
import { BlockClient } from "./block-client.ts";

/** The name `Cluster.restart` and `Cluster.child` use for the controller (agent ids are others). */
export const CONTROLLER = "controller";
const REGISTERED = /registered with the controller/;

export interface ClusterOptions {
  /** Agent ids, each started with its own NBD socket. */
  agents: string[];
  /** Size of the controller's default storage container (`--lun-size`). */
  lunSize?: string;
  /** The controller and the one agent run as one `ctl up` process (CONTROLLER names it too). */
  combined?: boolean;
  /** Extra environment of an agent's process, by agent id (test-only switches). */
  agentEnv?: Record<string, Record<string, string>>;
}

export class Cluster {
  readonly control: string;
  readonly data: string;
  private controllerChild: Child | null = null;
  private readonly agentChildren = new Map<string, Child>();

  private constructor(
    readonly dir: string,
    private readonly options: ClusterOptions,
    private readonly removeDir: () => void,
  ) {
    this.control = `unix:${join(dir, "control.sock")}`;
    this.data = join(dir, "data");
  }

  /** Starts the controller, then every agent, and resolves once each agent is registered. */
  static async start(options: ClusterOptions): Promise<Cluster> {
    if (options.combined && options.agents.length !== 1) throw new Error("cluster: `ctl up` runs exactly one agent");
    const dir = tempDir("cluster");
    const cluster = new Cluster(dir.path, options, dir.remove);
    await cluster.startController();
    for (const id of options.agents) await cluster.startAgent(id);
    return cluster;
  }

  /** The running process of the controller or of an agent. */
  child(name: string): Child {
    const child = name === CONTROLLER || this.options.combined ? this.controllerChild : this.agentChildren.get(name);
    if (!child) throw new Error(`cluster: no process named ${name}`);
    return child;
  }

  socket(agent: string): string {
    if (!this.options.agents.includes(agent)) throw new Error(`cluster: no agent ${agent}`);
    return join(this.dir, `nbd-${agent}.sock`);
  }

  uri(agent: string, disk: string): string {
    return `nbd+unix:///${disk}?socket=${this.socket(agent)}`;
  }

  /** The first `bytes` of disk `name`, read through `agent` on a connection of its own. */
  async readImage(agent: string, name: string, bytes: number): Promise<Uint8Array> {
    const client = await BlockClient.open(this.socket(agent), name);
    try {
      return await client.read(0, bytes);
    } finally {
      await client.close();
    }
  }

  /** Runs ctl against this cluster's controller. */
  ctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return ctl(["--control", this.control, ...args]);
  }

  /** Runs ctl and fails with its error output unless it succeeds; returns its stdout. */
  ctlOk(args: string[]): Promise<string> {
    return ctlOk(["--control", this.control, ...args]);
  }

  /** Creates a disk; the controller has given its table to every agent when this resolves. */
  async createDisk(name: string, size: string, extra: string[] = []): Promise<void> {
    await this.ctlOk(["disk", "create", name, "--size", size, ...extra]);
  }

  async startController(): Promise<void> {
    const args = ["--control", this.control, ...(this.options.combined ? ["up", "--nbd", `unix:${this.socket(this.options.agents[0]!)}`] : ["controller"]), "--data", this.data];
    if (this.options.lunSize) args.push("--lun-size", this.options.lunSize);
    this.controllerChild = spawnCtl(args, CONTROLLER);
    await this.controllerChild.waitForLine(/^ready:/);
  }

  async startAgent(id: string): Promise<void> {
    if (this.options.combined) return;
    const child = spawnCtl(["--control", this.control, "agent", "--id", id, "--nbd", `unix:${this.socket(id)}`], `agent-${id}`, this.options.agentEnv?.[id]);
    this.agentChildren.set(id, child);
    await child.waitForLine(REGISTERED);
  }

  /**
   * Kills the named processes (CONTROLLER and/or agent ids) at once with `signal`, starts them
   * again (the controller first) and resolves once every agent is registered with the controller:
   * a restarted one, and, when the controller was restarted, every other one too.
   */
  async restart(names: string[], signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.startAgain(names, await this.kill(names, signal));
  }

  /** Kills the named processes at once; returns what `startAgain` needs to start them. */
  async kill(names: string[], signal: NodeJS.Signals = "SIGKILL"): Promise<Map<string, number>> {
    const survivors = this.options.combined ? [] : this.options.agents.filter((id) => !names.includes(id));
    // Where each surviving agent's output stands, to wait for its next registration.
    const marks = new Map(survivors.map((id) => [id, this.child(id).lines.length]));
    await Promise.all([...new Set(names.map((name) => this.child(name)))].map((child) => child.kill(signal)));
    return marks;
  }

  /** Starts the processes `kill` killed (see restart). */
  async startAgain(names: string[], marks: Map<string, number>): Promise<void> {
    const controllerToo = names.includes(CONTROLLER) || (this.options.combined === true && names.length > 0);
    if (controllerToo) await this.startController();
    await Promise.all(this.options.agents.filter((id) => names.includes(id)).map((id) => this.startAgent(id)));
    if (controllerToo) await Promise.all([...marks].map(([id, mark]) => this.child(id).waitForLine(REGISTERED, undefined, mark)));
  }

  /** Removes the directory (call after the processes are gone: `reapAll` in afterAll). */
  remove(): void {
    this.removeDir();
  }
}
