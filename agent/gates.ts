// Quiesce gates (R12), one per table slot, shared by the agent's threads. While a disk's gate is
// closed, new host I/O to it waits before it is mapped; activate opens the gate and releases it.
//
// A worker enters the in-flight bucket before it looks at the gate, so a quiesce that closes the
// gate and then drains either waits for that I/O or is seen by it.
import { assert } from "../engine/util/assert.ts";
import { TABLE_SLOTS_MAX } from "../wasm/tables-api.ts";

export class QuiesceGates {
  private readonly cells: Int8Array;

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.cells = new Int8Array(buffer);
  }

  /** One byte per possible slot (1 MiB): the pages of slots never used are never touched. */
  static create(): QuiesceGates {
    return new QuiesceGates(new SharedArrayBuffer(TABLE_SLOTS_MAX));
  }

  static attach(buffer: SharedArrayBuffer): QuiesceGates {
    return new QuiesceGates(buffer);
  }

  isClosed(slot: number): boolean {
    return Atomics.load(this.cells, slot) !== 0;
  }

  close(slot: number): void {
    assert(slot >= 0 && slot < this.cells.length, `slot ${slot} out of range`);
    Atomics.store(this.cells, slot, 1);
  }

  open(slot: number): void {
    Atomics.store(this.cells, slot, 0);
  }
}
