// Test-only crash points: when the environment names a point (TABLEDISK_FAILPOINT=name), the
// process kills itself with SIGKILL on reaching it, so tests can crash the controller in the middle
// of a multi-step process and check what recovery makes of it. Unset, they cost a string compare.

const armed = process.env.TABLEDISK_FAILPOINT ?? "";

export function failpoint(name: string): void {
  if (armed !== name) return;
  process.stderr.write(`failpoint ${name}: killing the process\n`);
  process.kill(process.pid, "SIGKILL");
}
