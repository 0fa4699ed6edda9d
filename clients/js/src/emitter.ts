/** A tiny typed event emitter. Listener errors are reported, never thrown into the client. */
export type Listener<A extends unknown[]> = (...args: A) => void;

export class Emitter<M extends { [K in keyof M]: unknown[] }> {
  private listeners = new Map<keyof M, Set<Listener<never[]>>>();
  protected onListenerError: (err: unknown) => void = (err) => {
    // eslint-disable-next-line no-console
    console.error('[indaba] event listener threw', err);
  };

  /** Subscribes; returns the function that unsubscribes. */
  on<K extends keyof M>(event: K, fn: Listener<M[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as unknown as Listener<never[]>);
    return () => this.off(event, fn);
  }

  once<K extends keyof M>(event: K, fn: Listener<M[K]>): () => void {
    const off = this.on(event, ((...args: M[K]) => {
      off();
      fn(...args);
    }) as Listener<M[K]>);
    return off;
  }

  off<K extends keyof M>(event: K, fn: Listener<M[K]>): void {
    this.listeners.get(event)?.delete(fn as unknown as Listener<never[]>);
  }

  protected emit<K extends keyof M>(event: K, ...args: M[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as unknown as Listener<M[K]>)(...args);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}
