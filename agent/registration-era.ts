// How many times the agent has dropped its entries to register with the controller, shared by its
// threads. A host connection notes the era it opened in; a FLUSH then tells the main thread, which
// knows whether mapping changes were lost since (uncommitted.ts): a connection of an earlier era
// may have had writes acknowledged through them.
import { assert } from "../engine/util/assert.ts";

export class RegistrationEra {
  private readonly cell: Int32Array;

  private constructor(readonly buffer: SharedArrayBuffer) {
    this.cell = new Int32Array(buffer);
  }

  static create(): RegistrationEra {
    return new RegistrationEra(new SharedArrayBuffer(4));
  }

  static attach(buffer: SharedArrayBuffer): RegistrationEra {
    assert(buffer.byteLength === 4, "a registration era is one 32-bit cell");
    return new RegistrationEra(buffer);
  }

  get current(): number {
    return Atomics.load(this.cell, 0);
  }

  /** A new era begins (main thread, before the entries are dropped); returns it. */
  advance(): number {
    return Atomics.add(this.cell, 0, 1) + 1;
  }
}
