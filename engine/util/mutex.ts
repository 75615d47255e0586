/** Serialises async sections per key (e.g. per disk family), in arrival order. */
export class KeyedMutex<K> {
  private readonly tails = new Map<K, Promise<void>>();

  async run<T>(key: K, section: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const current = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => current);
    this.tails.set(key, tail);
    await previous;
    try {
      return await section();
    } finally {
      // The next holder starts a macrotask later, so whatever the finished section's result sets
      // off in microtasks (a response written to an agent) usually goes out before the next
      // section acts. Agents do not rely on that (changes are numbered: a fault's answer older
      // than a command that overtook it is dropped); it spares them a second fault.
      setImmediate(release);
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
