import type { OutboxItem } from './types.js';

/** Where the outbox lives. `load` runs once at the first `connect()`; `save` after every change. */
export interface OutboxStorage {
  load(): OutboxItem[] | null | undefined | Promise<OutboxItem[] | null | undefined>;
  save(items: readonly OutboxItem[]): void | Promise<void>;
}

/** The default: the outbox lives as long as the client object. */
export function memoryStorage(): OutboxStorage {
  let items: OutboxItem[] = [];
  return {
    load: () => items.map((i) => ({ ...i })),
    save: (next) => {
      items = next.map((i) => ({ ...i }));
    },
  };
}

/** Any key-value store with getItem/setItem, sync (`localStorage`) or async (React Native's
 *  AsyncStorage): unsent messages survive a page reload or an app restart. */
export function webStorage(
  store: { getItem(key: string): string | null | Promise<string | null>; setItem(key: string, value: string): void | Promise<void> },
  key = 'indaba.outbox',
): OutboxStorage {
  return {
    async load() {
      const raw = await store.getItem(key);
      if (!raw) return [];
      try {
        const parsed = JSON.parse(raw);
        return Array.isArray(parsed) ? parsed : [];
      } catch {
        return [];
      }
    },
    save(items) {
      return store.setItem(key, JSON.stringify(items));
    },
  };
}
