// Messages between the agent's threads go in batches: what one thread posts to another in the same
// tick travels as one postMessage (an array, in order). Structured cloning and waking the other
// thread cost per postMessage, and faults and their answers come in bursts (one per request of a
// queue of first writes).

interface MessageTarget {
  postMessage(message: unknown): void;
}

interface MessageSource {
  addEventListener(type: "message", listener: (event: MessageEvent) => void): void;
}

export class BatchingPort<T> {
  private queued: T[] = [];

  constructor(private readonly target: MessageTarget) {}

  post(message: T): void {
    if (this.queued.length === 0) queueMicrotask(() => this.flush());
    this.queued.push(message);
  }

  private flush(): void {
    const batch = this.queued;
    this.queued = [];
    this.target.postMessage(batch);
  }
}

/** Calls `handle` for each message of every batch that `source` receives, in order. */
export function onMessages<T>(source: MessageSource, handle: (message: T) => void): void {
  source.addEventListener("message", (event: MessageEvent<T[]>) => {
    for (const message of event.data) handle(message);
  });
}
