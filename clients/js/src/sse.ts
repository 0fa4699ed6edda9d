// Server-Sent Events without dependencies: a fetch-stream reader (Authorization header,
// HTTP status visible) where fetch can stream, else the platform's EventSource.

import { IndabaError } from './types.js';

export interface EventSourceLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: string; lastEventId?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface SseOptions {
  url: string; // without token / last_event_id
  token: string;
  lastEventId?: string;
  fetch?: typeof fetch;
  EventSource?: EventSourceConstructor;
  onOpen(): void;
  onEvent(data: string, id: string | undefined): void;
  /** The stream ended or failed; `status` is the HTTP status when known. Called at most once. */
  onError(err: IndabaError): void;
}

export interface SseHandle {
  close(): void;
}

function withQuery(url: string, params: Record<string, string | undefined>): string {
  const q = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v as string)}`)
    .join('&');
  if (!q) return url;
  return url + (url.includes('?') ? '&' : '?') + q;
}

export function canStreamFetch(f: typeof fetch | undefined): boolean {
  return (
    typeof f === 'function' &&
    typeof ReadableStream !== 'undefined' &&
    typeof TextDecoder !== 'undefined' &&
    typeof AbortController !== 'undefined'
  );
}

export function openSse(o: SseOptions): SseHandle {
  let done = false;
  const fail = (err: IndabaError) => {
    if (done) return;
    done = true;
    o.onError(err);
  };

  let es: EventSourceLike | null = null;
  const viaEventSource = (): boolean => {
    if (!o.EventSource || done) return false;
    es = new o.EventSource(withQuery(o.url, { token: o.token, last_event_id: o.lastEventId }));
    es.onopen = () => {
      if (!done) o.onOpen();
    };
    es.onmessage = (ev) => {
      if (!done) o.onEvent(ev.data, ev.lastEventId || undefined);
    };
    es.onerror = () => {
      // We reconnect ourselves (with a fresh token and our own backoff), not EventSource.
      es?.close();
      fail(new IndabaError('network', 'EventSource error'));
    };
    return true;
  };

  if (canStreamFetch(o.fetch)) {
    const ctrl = new AbortController();
    const headers: Record<string, string> = {
      Accept: 'text/event-stream',
      Authorization: `Bearer ${o.token}`,
    };
    if (o.lastEventId) headers['Last-Event-ID'] = o.lastEventId;
    (async () => {
      let res: Response;
      try {
        res = await o.fetch!(o.url, { headers, signal: ctrl.signal, cache: 'no-store' });
      } catch (e) {
        return fail(new IndabaError('network', String((e as Error)?.message ?? e)));
      }
      if (res.ok && typeof res.body?.getReader !== 'function') {
        // fetch without streaming bodies (React Native): EventSource, if there is one.
        ctrl.abort();
        if (!viaEventSource()) fail(new IndabaError('unsupported', 'fetch cannot stream here and there is no EventSource'));
        return;
      }
      if (!res.ok || !res.body) {
        let code = 'http_error';
        try {
          const body = await res.json();
          code = body?.error?.code ?? code;
        } catch {
          /* not JSON */
        }
        return fail(new IndabaError(code, `SSE ${res.status}`, res.status));
      }
      const ctype = res.headers.get('content-type') ?? '';
      if (!ctype.includes('text/event-stream')) {
        ctrl.abort();
        return fail(new IndabaError('http_error', `SSE answered ${ctype || 'no content type'}`, res.status));
      }
      if (done) return;
      o.onOpen();
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      let data: string[] = [];
      let id: string | undefined;
      try {
        for (;;) {
          const { value, done: eof } = await reader.read();
          if (eof) break;
          buf += decoder.decode(value, { stream: true });
          let nl: number;
          while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
            if (line === '') {
              if (data.length && !done) o.onEvent(data.join('\n'), id);
              data = [];
              id = undefined;
              continue;
            }
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let value2 = colon < 0 ? '' : line.slice(colon + 1);
            if (value2.startsWith(' ')) value2 = value2.slice(1);
            if (field === 'data') data.push(value2);
            else if (field === 'id') id = value2;
          }
        }
        fail(new IndabaError('closed', 'SSE stream ended'));
      } catch (e) {
        fail(new IndabaError('network', String((e as Error)?.message ?? e)));
      }
    })();
    return {
      close() {
        done = true;
        ctrl.abort();
        es?.close();
      },
    };
  }

  if (viaEventSource()) {
    return {
      close() {
        done = true;
        es?.close();
      },
    };
  }

  void Promise.resolve().then(() => fail(new IndabaError('unsupported', 'neither streaming fetch nor EventSource is available')));
  return { close() { done = true; } };
}
