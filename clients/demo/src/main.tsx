// Indaba demo: sign in as a demo user, chat, watch ticks, typing and presence.
// Everything real-time goes through @indaba/client's useChat and usePresence.
import { StrictMode, useEffect, useMemo, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import type { ChatMessage, ConnectionState, ConversationState, PresenceInfo } from '@indaba/client';
import { useChat, usePresence } from '@indaba/client/react';

const NAMES: Record<number, string> = { 1: 'Alice', 2: 'Bob', 3: 'Carol', 4: 'Dan' };
const nameOf = (id: number) => NAMES[id] ?? `User ${id}`;

interface Session {
  userId: number;
  token: string;
  dev: boolean;
}

async function devToken(userId: number): Promise<string> {
  const res = await fetch(`./api/v1/dev/token/?user_id=${userId}`, { cache: 'no-store' });
  if (res.status === 404) throw new Error('Dev tokens are off: start the server with INDABA_DEV_TOKENS=1, or paste a token.');
  if (!res.ok) throw new Error(`Could not get a token (HTTP ${res.status}).`);
  return (await res.json()).token;
}

function userOfToken(token: string): number | null {
  try {
    const p = token.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(p + '='.repeat((4 - (p.length % 4)) % 4)));
    const id = Number(claims.user_id ?? claims.sub);
    return Number.isSafeInteger(id) && id > 0 ? id : null;
  } catch {
    return null;
  }
}

function App() {
  const [session, setSession] = useState<Session | null>(() => {
    try {
      return JSON.parse(sessionStorage.getItem('indaba.session') ?? 'null');
    } catch {
      return null;
    }
  });
  const signIn = (s: Session | null) => {
    if (s) sessionStorage.setItem('indaba.session', JSON.stringify(s));
    else sessionStorage.removeItem('indaba.session');
    setSession(s);
  };
  return session ? <Chat key={session.userId} session={session} onSignOut={() => signIn(null)} /> : <SignIn onSignIn={signIn} />;
}

function SignIn({ onSignIn }: { onSignIn(s: Session): void }) {
  const [error, setError] = useState<string | null>(null);
  const [other, setOther] = useState('');
  const [pasted, setPasted] = useState('');
  const go = async (userId: number) => {
    setError(null);
    try {
      onSignIn({ userId, token: await devToken(userId), dev: true });
    } catch (e) {
      setError((e as Error).message);
    }
  };
  const usePasted = () => {
    const token = pasted.trim();
    const userId = userOfToken(token);
    if (!userId) return setError('That does not look like an Indaba JWT (no user_id claim).');
    onSignIn({ userId, token, dev: false });
  };
  return (
    <main className="signin">
      <h1>Indaba</h1>
      <p>Real-time chat. Sign in as a demo user — open a second window as someone else.</p>
      <div className="users">
        {[1, 2, 3, 4].map((id) => (
          <button key={id} data-testid={`signin-${id}`} onClick={() => go(id)}>
            {nameOf(id)}
          </button>
        ))}
      </div>
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          if (Number(other) > 0) void go(Number(other));
        }}
      >
        <input placeholder="or any user id" inputMode="numeric" value={other} onChange={(e) => setOther(e.target.value)} />
        <button type="submit">Sign in</button>
      </form>
      <details>
        <summary>Use a token</summary>
        <textarea data-testid="token" rows={3} placeholder="paste a JWT (indaba token --user N)" value={pasted} onChange={(e) => setPasted(e.target.value)} />
        <button data-testid="use-token" onClick={usePasted}>
          Use token
        </button>
      </details>
      {error && <p className="error">{error}</p>}
    </main>
  );
}

const STATE_LABEL: Record<ConnectionState, string> = {
  idle: 'idle',
  connecting: 'connecting…',
  open: 'live',
  reconnecting: 'reconnecting…',
  fallback: 'fallback (SSE)',
  closed: 'offline',
};

function Chat({ session, onSignOut }: { session: Session; onSignOut(): void }) {
  const [active, setActive] = useState<number | null>(null);
  const chat = useChat({
    key: session.userId,
    token: session.token,
    getToken: session.dev ? () => devToken(session.userId) : undefined,
    conversationId: active,
  });
  const others = useMemo(
    () => [...new Set(chat.conversations.flatMap((c) => c.participant_ids).filter((u) => u !== session.userId))],
    [chat.conversations, session.userId],
  );
  const presence = usePresence(chat.client, others);
  const conv = chat.conversations.find((c) => c.id === active) ?? null;
  const [newUser, setNewUser] = useState('');
  const [error, setError] = useState<string | null>(null);

  const startChat = async (e: React.FormEvent) => {
    e.preventDefault();
    const id = Number(newUser);
    if (!(id > 0) || id === session.userId) return;
    try {
      setActive(await chat.startDirect(id));
      setNewUser('');
      setError(null);
    } catch (err) {
      setError((err as Error).message);
    }
  };

  return (
    <div className="app">
      <header>
        <strong>Indaba</strong>
        <span className="me">
          {nameOf(session.userId)} <small>#{session.userId}</small>
        </span>
        <span className={`badge ${chat.state}`} data-testid="connection" data-state={chat.state}>
          {STATE_LABEL[chat.state]}
        </span>
        <button className="link" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <aside>
        <form className="row" onSubmit={startChat}>
          <input data-testid="new-chat" placeholder="chat with user id" inputMode="numeric" value={newUser} onChange={(e) => setNewUser(e.target.value)} />
          <button type="submit" data-testid="start-chat">
            Chat
          </button>
        </form>
        {error && <p className="error">{error}</p>}
        <ul className="conversations">
          {chat.conversations.map((c) => (
            <ConversationItem key={c.id} c={c} me={session.userId} presence={presence} active={c.id === active} onClick={() => setActive(c.id)} />
          ))}
          {!chat.conversations.length && <li className="empty">No conversations yet.</li>}
        </ul>
      </aside>
      <section className="thread">
        {conv ? (
          <Thread conv={conv} me={session.userId} messages={chat.messages} presence={presence} send={(t) => chat.sendMessage(t)} typing={(on) => chat.sendTypingIndicator(conv.id, undefined, on)} />
        ) : (
          <p className="empty">Pick a conversation, or start one with a user id.</p>
        )}
      </section>
    </div>
  );
}

function titleOf(c: ConversationState, me: number): string {
  if (c.title) return c.title;
  const others = c.participant_ids.filter((u) => u !== me);
  return others.length ? others.map(nameOf).join(', ') : `Conversation ${c.id}`;
}

function Dot({ p }: { p?: PresenceInfo }) {
  const status = p?.status ?? 'offline';
  return <span className={`dot ${status}`} data-testid="presence" data-presence={status} title={status} />;
}

function ConversationItem({ c, me, presence, active, onClick }: { c: ConversationState; me: number; presence: Record<number, PresenceInfo>; active: boolean; onClick(): void }) {
  const other = c.kind === 'direct' ? c.participant_ids.find((u) => u !== me) : undefined;
  const typing = c.typing.length > 0;
  return (
    <li className={active ? 'active' : ''} data-testid="conversation" data-conversation-id={c.id} onClick={onClick}>
      {other !== undefined ? <Dot p={presence[other]} /> : <span className="dot group" />}
      <div className="meta">
        <div className="title">{titleOf(c, me)}</div>
        <div className={`preview ${typing ? 'typing' : ''}`}>{typing ? 'typing…' : c.last_message ? c.last_message.text : ' '}</div>
      </div>
      {c.unread_count > 0 && (
        <span className="unread" data-testid="unread">
          {c.unread_count}
        </span>
      )}
    </li>
  );
}

const TICKS: Record<string, string> = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };

function Thread({ conv, me, messages, presence, send, typing }: { conv: ConversationState; me: number; messages: ChatMessage[]; presence: Record<number, PresenceInfo>; send(text: string): Promise<unknown>; typing(on: boolean): void }) {
  const [text, setText] = useState('');
  const bottom = useRef<HTMLDivElement>(null);
  useEffect(() => {
    // Braces matter: newer Chromium returns a Promise from scrollIntoView, and an effect
    // must return nothing or a cleanup function.
    bottom.current?.scrollIntoView({ block: 'end' });
  }, [messages.length]);
  const other = conv.kind === 'direct' ? conv.participant_ids.find((u) => u !== me) : undefined;
  const typers = conv.typing.map(nameOf);
  return (
    <>
      <div className="thread-head">
        <strong>{titleOf(conv, me)}</strong>
        {other !== undefined && <span className="status">{presence[other]?.status ?? 'offline'}</span>}
      </div>
      <div className="messages">
        {messages.map((m) => (
          <div key={m.key} className={`msg ${m.mine ? 'mine' : 'theirs'}`} data-testid="message" data-status={m.status ?? ''}>
            {!m.mine && conv.kind !== 'direct' && <div className="sender">{nameOf(m.sender_id)}</div>}
            <span className="text">{m.text}</span>
            <span className="time">{new Date(m.created_at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}</span>
            {m.mine && (
              <span className={`tick ${m.status}`} data-testid="tick" title={m.status}>
                {TICKS[m.status ?? 'sent']}
              </span>
            )}
          </div>
        ))}
        <div ref={bottom} />
      </div>
      <div className="typing" data-testid="typing">
        {typers.length ? `${typers.join(', ')} ${typers.length > 1 ? 'are' : 'is'} typing…` : ' '}
      </div>
      <form
        className="composer"
        onSubmit={(e) => {
          e.preventDefault();
          const t = text.trim();
          if (!t) return;
          void send(t).catch(() => {});
          setText('');
        }}
      >
        <input
          data-testid="composer"
          placeholder="Message"
          value={text}
          autoFocus
          onChange={(e) => {
            setText(e.target.value);
            typing(e.target.value !== '');
          }}
        />
        <button type="submit" data-testid="send">
          Send
        </button>
      </form>
    </>
  );
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
