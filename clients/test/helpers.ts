import WebSocket from 'ws';
import { IndabaClient, type IndabaClientEvents, type IndabaClientOptions, type WebSocketConstructor } from '@indaba/client';
import type { IndabaServer } from './server.js';

/** A `ws` WebSocket that records every frame the client sends. */
export function recordingWebSocket(): { Ctor: WebSocketConstructor; sent: Record<string, any>[]; urls: string[] } {
  const sent: Record<string, any>[] = [];
  const urls: string[] = [];
  class Recording extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      urls.push(url);
    }
    override send(data: any, ...rest: any[]): void {
      sent.push(JSON.parse(String(data)));
      (super.send as (...a: any[]) => void)(data, ...rest);
    }
  }
  return { Ctor: Recording as unknown as WebSocketConstructor, sent, urls };
}

/** Collects the arguments of every emission of an event. */
export function collect<K extends keyof IndabaClientEvents>(client: IndabaClient, event: K): IndabaClientEvents[K][0][] {
  const out: IndabaClientEvents[K][0][] = [];
  client.on(event, ((...args: IndabaClientEvents[K]) => out.push(args[0])) as never);
  return out;
}

export class Clients {
  private all: IndabaClient[] = [];
  constructor(private server: IndabaServer) {}

  /** A connected-on-demand client for `user`, on `ws`, with quick reconnects and no fallback. */
  make(user: number, extra: Partial<IndabaClientOptions> = {}): IndabaClient {
    const c = new IndabaClient({
      url: this.server.url,
      getToken: () => this.server.token(user),
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      reconnect: { baseDelayMs: 100, maxDelayMs: 1000 },
      fallback: false,
      ...extra,
    });
    this.all.push(c);
    return c;
  }

  closeAll(): void {
    for (const c of this.all.splice(0)) c.disconnect();
  }
}

export function waitState(c: IndabaClient, state: IndabaClient['state'], timeoutMs = 15_000): Promise<void> {
  if (c.state === state) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`client never reached state ${state} (is ${c.state})`));
    }, timeoutMs);
    const off = c.on('state', (s) => {
      if (s === state) {
        clearTimeout(t);
        off();
        resolve();
      }
    });
  });
}

export async function connected(...cs: IndabaClient[]): Promise<void> {
  for (const c of cs) {
    if (c.state === 'idle' || c.state === 'closed') c.connect();
  }
  await Promise.all(cs.map((c) => waitState(c, 'open')));
}
