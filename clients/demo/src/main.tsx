// Indaba demo: sign in as a demo user, chat, watch ticks, typing and presence; edit and delete
// your messages, react, reply, follow threads, pin, see who read what, and send photos and
// files (picker or drag-and-drop; the bytes go straight to storage, never kept by the page).
// Everything real-time goes through @indaba/client's useChat and usePresence.
import { StrictMode, useEffect, useMemo, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import type { Attachment, ChatMessage, ConnectionState, ConversationState, IndabaClient, PresenceInfo, ThreadState } from '@indaba/client';
import { useChat, usePresence, type SendOptions, type UseChatResult } from '@indaba/client/react';

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
  const [pane, setPane] = useState<'thread' | 'pins' | null>(null);
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
  const connected = chat.isConnected;
  useEffect(() => {
    // The pinned messages of the open conversation (kept current by live events).
    if (active !== null && connected) chat.listPins(active).catch(() => {});
  }, [active, connected, chat.listPins]);

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
  const openConversation = (id: number) => {
    if (id !== active) {
      setPane(null);
      void chat.openThread(null);
    }
    setActive(id);
  };
  const openThread = (id: number) => {
    setPane('thread');
    chat.openThread(id).catch((e) => setError((e as Error).message));
  };
  const closePane = () => {
    setPane(null);
    void chat.openThread(null);
  };
  const showPane = conv !== null && (pane === 'pins' || (pane === 'thread' && chat.thread !== null));

  return (
    <div className={`app ${showPane ? 'with-pane' : ''}`}>
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
        {error && (
          <p className="error" data-testid="error" onClick={() => setError(null)}>
            {error}
          </p>
        )}
        <ul className="conversations">
          {chat.conversations.map((c) => (
            <ConversationItem key={c.id} c={c} me={session.userId} presence={presence} active={c.id === active} onClick={() => openConversation(c.id)} />
          ))}
          {!chat.conversations.length && <li className="empty">No conversations yet.</li>}
        </ul>
      </aside>
      <section className="thread">
        {conv ? (
          <Thread
            conv={conv}
            me={session.userId}
            chat={chat}
            presence={presence}
            onError={setError}
            onOpenThread={openThread}
            onTogglePins={() => (pane === 'pins' ? closePane() : (setPane('pins'), void chat.openThread(null)))}
          />
        ) : (
          <p className="empty">Pick a conversation, or start one with a user id.</p>
        )}
      </section>
      {showPane && conv && pane === 'thread' && chat.thread && <ThreadPane thread={chat.thread} conv={conv} me={session.userId} chat={chat} onError={setError} onClose={closePane} />}
      {showPane && conv && pane === 'pins' && <PinsPane conv={conv} chat={chat} onError={setError} onClose={closePane} onOpenThread={openThread} />}
    </div>
  );
}

function titleOf(c: ConversationState, me: number): string {
  if (c.title) return c.title;
  const others = c.participant_ids.filter((u) => u !== me);
  return others.length ? others.map(nameOf).join(', ') : `Conversation ${c.id}`;
}

/** What a message without text shows in the list: its first attachment. */
function summaryOf(m: ChatMessage): string {
  const a = m.attachments?.[0];
  if (!a) return m.upload_ids?.length ? '📎 File' : ' ';
  if (a.content_type.startsWith('image/')) return '📷 Photo';
  if (a.content_type.startsWith('audio/')) return '🎤 Voice message';
  return `📎 ${a.filename}`;
}

function Dot({ p }: { p?: PresenceInfo }) {
  const status = p?.status ?? 'offline';
  return <span className={`dot ${status}`} data-testid="presence" data-presence={status} title={status} />;
}

function ConversationItem({ c, me, presence, active, onClick }: { c: ConversationState; me: number; presence: Record<number, PresenceInfo>; active: boolean; onClick(): void }) {
  const other = c.kind === 'direct' ? c.participant_ids.find((u) => u !== me) : undefined;
  const typing = c.typing.length > 0;
  const last = c.last_message;
  return (
    <li className={active ? 'active' : ''} data-testid="conversation" data-conversation-id={c.id} onClick={onClick}>
      {other !== undefined ? <Dot p={presence[other]} /> : <span className="dot group" />}
      <div className="meta">
        <div className="title">{titleOf(c, me)}</div>
        <div className={`preview ${typing ? 'typing' : ''}`}>{typing ? 'typing…' : last ? (last.deleted ? 'message deleted' : last.text || summaryOf(last)) : ' '}</div>
      </div>
      {c.unread_mentions > 0 && (
        <span className="unread mention" data-testid="unread-mentions" title="mentions">
          @{c.unread_mentions}
        </span>
      )}
      {c.unread_count > 0 && (
        <span className="unread" data-testid="unread">
          {c.unread_count}
        </span>
      )}
    </li>
  );
}

const TICKS: Record<string, string> = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
const EMOJI = ['👍', '❤️', '😂', '🎉', '😮'];

/** `@Bob` or `@2` in a text: the mentioned participants (not yourself). */
function mentionsIn(text: string, conv: ConversationState, me: number): number[] {
  const ids = new Set<number>();
  for (const [, word] of text.matchAll(/@(\w+)/g)) {
    const n = Number(word);
    const id = Number.isSafeInteger(n) && n > 0 ? n : conv.participant_ids.find((u) => nameOf(u).toLowerCase() === word!.toLowerCase());
    if (id !== undefined && id !== me && conv.participant_ids.includes(id)) ids.add(id);
  }
  return [...ids];
}

const timeOf = (iso: string) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

interface MessageProps {
  m: ChatMessage;
  conv: ConversationState;
  me: number;
  chat: UseChatResult;
  onError(message: string): void;
  /** In the thread pane: no quote, no reply/thread actions. */
  inThread?: boolean;
  onReply?(m: ChatMessage): void;
  onOpenThread?(id: number): void;
  /** Show "seen by" without asking (your newest message). */
  showSeen?: boolean;
}

function Message({ m, conv, me, chat, onError, inThread, onReply, onOpenThread, showSeen }: MessageProps) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState('');
  const [picking, setPicking] = useState(false);
  const [askedSeen, setAskedSeen] = useState(false);
  const id = m.message_id;
  const act = (p: Promise<unknown>) => p.catch((e: Error) => onError(e.message));
  const root = m.reply_to !== null && !inThread ? chat.store?.getMessage(m.reply_to, conv.id) : undefined;
  const reads = id !== undefined ? chat.reads[id] : undefined;
  const mentionsMe = m.mentions.includes(me);
  const readers = (reads ?? []).filter((r) => r.user_id !== me);
  const reactions = Object.entries(m.reactions);
  return (
    <div
      className={`msg ${m.mine ? 'mine' : 'theirs'}${m.deleted ? ' deleted' : ''}${mentionsMe ? ' mention' : ''}${m.pinned_at ? ' pinned' : ''}`}
      data-testid="message"
      data-status={m.status ?? ''}
      data-message-id={id ?? ''}
      data-deleted={m.deleted ? 'true' : 'false'}
      data-pinned={m.pinned_at ? 'true' : 'false'}
    >
      {m.reply_to !== null && !inThread && (
        <button className="quote" data-testid="reply-quote" onClick={() => onOpenThread?.(m.reply_to!)}>
          <span className="quote-sender">{root ? nameOf(root.sender_id) : 'Reply'}</span>
          <span className="quote-text">{root ? (root.deleted ? 'message deleted' : root.text) : 'to an earlier message'}</span>
        </button>
      )}
      {!m.mine && conv.kind !== 'direct' && <div className="sender">{nameOf(m.sender_id)}</div>}
      {m.pinned_at && (
        <span className="pin-mark" data-testid="pinned-mark" title={`pinned by ${nameOf(m.pinned_by ?? 0)}`}>
          📌
        </span>
      )}
      {m.deleted ? (
        <span className="text tombstone" data-testid="tombstone">
          message deleted
        </span>
      ) : editing ? (
        <form
          className="edit"
          onSubmit={(e) => {
            e.preventDefault();
            const t = draft.trim();
            if (t && t !== m.text && id !== undefined) act(chat.editMessage(id, t));
            setEditing(false);
          }}
        >
          <input data-testid="edit-input" value={draft} autoFocus onChange={(e) => setDraft(e.target.value)} onKeyDown={(e) => e.key === 'Escape' && setEditing(false)} />
          <button type="submit" data-testid="edit-save">
            Save
          </button>
        </form>
      ) : (
        m.text && <span className="text">{m.text}</span>
      )}
      {!m.deleted && m.attachments?.length ? (
        <div className="attachments">
          {m.attachments.map((a) => (
            <AttachmentView key={a.id} a={a} client={chat.client} onError={onError} />
          ))}
        </div>
      ) : m.upload_ids?.length && !m.deleted ? (
        <div className="attachments pending" data-testid="attachment-pending">
          📎 sending {m.upload_ids.length} file{m.upload_ids.length > 1 ? 's' : ''}…
        </div>
      ) : null}
      {m.edited_at && !m.deleted && (
        <span className="edited" data-testid="edited" title={`edited ${new Date(m.edited_at).toLocaleString()}`}>
          edited
        </span>
      )}
      <span className="time">{timeOf(m.created_at)}</span>
      {m.mine && (
        <span className={`tick ${m.status}`} data-testid="tick" title={m.status}>
          {TICKS[m.status ?? 'sent']}
        </span>
      )}
      {reactions.length > 0 && (
        <div className="reactions">
          {reactions.map(([emoji, r]) => (
            <button
              key={emoji}
              className={`chip ${r.me ? 'me' : ''}`}
              data-testid="reaction"
              data-emoji={emoji}
              data-count={r.count}
              data-me={r.me ? 'true' : 'false'}
              title={r.me ? 'take your reaction back' : 'react too'}
              onClick={() => id !== undefined && act(chat.toggleReaction(id, emoji))}
            >
              {emoji} <span className="count">{r.count}</span>
            </button>
          ))}
        </div>
      )}
      {!inThread && m.reply_count > 0 && id !== undefined && (
        <button className="link thread-link" data-testid="thread-link" onClick={() => onOpenThread?.(id)}>
          {m.reply_count} {m.reply_count === 1 ? 'reply' : 'replies'}
          {m.last_reply_at && <small> · last {timeOf(m.last_reply_at)}</small>}
        </button>
      )}
      {m.mine && !m.deleted && (askedSeen || (showSeen && readers.length > 0)) && (
        <div className="seen" data-testid="seen-by">
          {reads === undefined ? 'Seen by …' : readers.length ? `Seen by ${readers.map((r) => nameOf(r.user_id)).join(', ')}` : 'Not seen yet'}
        </div>
      )}
      {id !== undefined && !m.deleted && !editing && (
        <div className="actions">
          <button data-testid="action-react" title="react" onClick={() => setPicking(!picking)}>
            ☺+
          </button>
          {!inThread && onReply && (
            <button data-testid="action-reply" onClick={() => onReply(m)}>
              Reply
            </button>
          )}
          {!inThread && onOpenThread && (
            <button data-testid="action-thread" onClick={() => onOpenThread(id)}>
              Thread
            </button>
          )}
          <button data-testid="action-pin" onClick={() => act(m.pinned_at ? chat.unpinMessage(id) : chat.pinMessage(id))}>
            {m.pinned_at ? 'Unpin' : 'Pin'}
          </button>
          {m.mine && (
            <button
              data-testid="action-edit"
              onClick={() => {
                setDraft(m.text);
                setEditing(true);
              }}
            >
              Edit
            </button>
          )}
          {m.mine && (
            <button data-testid="action-delete" onClick={() => act(chat.deleteMessage(id))}>
              Delete
            </button>
          )}
          {m.mine && (
            <button
              data-testid="action-seen"
              onClick={() => {
                setAskedSeen(true);
                act(chat.getReads(id));
              }}
            >
              Seen by
            </button>
          )}
        </div>
      )}
      {picking && id !== undefined && !m.deleted && (
        <div className="picker" data-testid="picker">
          {EMOJI.map((e) => (
            <button
              key={e}
              data-testid="pick"
              data-emoji={e}
              onClick={() => {
                setPicking(false);
                act(m.reactions[e]?.me ? chat.removeReaction(id, e) : chat.addReaction(id, e));
              }}
            >
              {e}
            </button>
          ))}
        </div>
      )}
    </div>
  );
}

/** One attachment: an image's thumbnail (click: the full image in a new tab), a player for
 *  audio, a download link for the rest. Addresses are asked for when shown and expire in
 *  minutes; nothing is cached beyond the page. */
function AttachmentView({ a, client, onError }: { a: Attachment; client: IndabaClient | null; onError(message: string): void }) {
  const [src, setSrc] = useState<string | null>(null);
  const isImage = a.content_type.startsWith('image/');
  const isAudio = a.content_type.startsWith('audio/');
  useEffect(() => {
    if (!client || (!a.thumbnail && !isAudio)) return;
    let live = true;
    client
      .attachmentUrl(a.id, { thumbnail: !!a.thumbnail })
      .then((u) => live && setSrc(u))
      .catch(() => live && setSrc(null));
    return () => {
      live = false;
    };
  }, [client, a.id, a.thumbnail, isAudio]);
  const open = () => {
    if (!client) return;
    // Opened first, filled in after: a window opened after an await is a popup to block.
    const w = window.open('', '_blank');
    if (w) w.opener = null;
    client
      .attachmentUrl(a.id)
      .then((u) => {
        if (w) w.location.href = u;
      })
      .catch((e: Error) => {
        w?.close();
        onError(e.message);
      });
  };
  if (isImage && a.thumbnail) {
    return (
      <button className="attachment image" data-testid="attachment" data-attachment-id={a.id} onClick={open} title={a.filename}>
        {src ? <img data-testid="attachment-thumbnail" src={src} alt={a.filename} width={a.width && a.height ? Math.min(320, a.width) : undefined} /> : <span className="placeholder">📷</span>}
      </button>
    );
  }
  if (isAudio) {
    const secs = a.duration_ms ? Math.round(a.duration_ms / 1000) : null;
    return (
      <div className="attachment audio" data-testid="attachment" data-attachment-id={a.id}>
        🎤 {secs !== null ? `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, '0')}` : 'Voice message'}
        {src && <audio controls preload="none" src={src} />}
      </div>
    );
  }
  return (
    <button className="attachment file link" data-testid="attachment" data-attachment-id={a.id} onClick={open}>
      📎 {a.filename} <span className="size">({Math.max(1, Math.round(a.size / 1024))} KB)</span>
    </button>
  );
}

function Composer({ testId, placeholder, onSend, onTyping, autoFocus }: { testId: string; placeholder: string; onSend(text: string): void; onTyping?(on: boolean): void; autoFocus?: boolean }) {
  const [text, setText] = useState('');
  return (
    <form
      className="composer"
      onSubmit={(e) => {
        e.preventDefault();
        const t = text.trim();
        if (!t) return;
        onSend(t);
        setText('');
      }}
    >
      <input
        data-testid={testId}
        placeholder={placeholder}
        value={text}
        autoFocus={autoFocus}
        onChange={(e) => {
          setText(e.target.value);
          onTyping?.(e.target.value !== '');
        }}
      />
      <button type="submit" data-testid={testId === 'composer' ? 'send' : `${testId}-send`}>
        Send
      </button>
    </form>
  );
}

function Thread({
  conv,
  me,
  chat,
  presence,
  onError,
  onOpenThread,
  onTogglePins,
}: {
  conv: ConversationState;
  me: number;
  chat: UseChatResult;
  presence: Record<number, PresenceInfo>;
  onError(message: string): void;
  onOpenThread(id: number): void;
  onTogglePins(): void;
}) {
  const messages = chat.messages;
  const [replyTo, setReplyTo] = useState<ChatMessage | null>(null);
  const bottom = useRef<HTMLDivElement>(null);
  useEffect(() => {
    // Braces matter: newer Chromium returns a Promise from scrollIntoView, and an effect
    // must return nothing or a cleanup function.
    bottom.current?.scrollIntoView({ block: 'end' });
  }, [messages.length]);
  useEffect(() => setReplyTo(null), [conv.id]);
  const other = conv.kind === 'direct' ? conv.participant_ids.find((u) => u !== me) : undefined;
  const typers = conv.typing.map(nameOf);
  const lastMine = [...messages].reverse().find((m) => m.mine && m.message_id !== undefined && !m.deleted)?.key;
  const send = (t: string, opts: SendOptions) => void chat.sendMessage(t, opts).catch((e: Error) => onError(e.message));
  const [uploading, setUploading] = useState<{ name: string; percent: number } | null>(null);
  const [dragging, setDragging] = useState(false);
  const fileInput = useRef<HTMLInputElement>(null);
  // A file goes to storage first, then out as a message of its own.
  const attach = async (files: FileList | null) => {
    const client = chat.client;
    if (!client || !files?.length) return;
    for (const file of Array.from(files).slice(0, 10)) {
      setUploading({ name: file.name, percent: 0 });
      try {
        const up = await client.upload(file, {
          conversationId: conv.id,
          onProgress: (sent, total) => setUploading({ name: file.name, percent: total ? Math.round((sent / total) * 100) : 100 }),
        });
        send('', { attachments: [up.uploadId], replyTo: replyTo?.message_id });
      } catch (e) {
        onError((e as Error).message);
      }
    }
    setUploading(null);
    setReplyTo(null);
    if (fileInput.current) fileInput.current.value = '';
  };
  return (
    <>
      <div className="thread-head">
        <strong>{titleOf(conv, me)}</strong>
        {other !== undefined && <span className="status">{presence[other]?.status ?? 'offline'}</span>}
        <button className="link pins-toggle" data-testid="pins-toggle" onClick={onTogglePins}>
          📌 Pinned{chat.pinned.length ? ` (${chat.pinned.length})` : ''}
        </button>
      </div>
      <div
        className={`messages${dragging ? ' dropping' : ''}`}
        data-testid="drop-zone"
        onDragOver={(e) => {
          e.preventDefault();
          setDragging(true);
        }}
        onDragLeave={() => setDragging(false)}
        onDrop={(e) => {
          e.preventDefault();
          setDragging(false);
          void attach(e.dataTransfer.files);
        }}
      >
        {messages.map((m) => (
          <Message key={m.key} m={m} conv={conv} me={me} chat={chat} onError={onError} onReply={setReplyTo} onOpenThread={onOpenThread} showSeen={m.key === lastMine} />
        ))}
        <div ref={bottom} />
      </div>
      <div className="typing" data-testid="typing">
        {typers.length ? `${typers.join(', ')} ${typers.length > 1 ? 'are' : 'is'} typing…` : ' '}
      </div>
      {replyTo && (
        <div className="replying" data-testid="replying">
          <span>
            Replying to <strong>{nameOf(replyTo.sender_id)}</strong>: {replyTo.text}
          </span>
          <button className="link" data-testid="cancel-reply" onClick={() => setReplyTo(null)}>
            ×
          </button>
        </div>
      )}
      {uploading && (
        <div className="uploading" data-testid="uploading">
          Uploading {uploading.name}… {uploading.percent}%
        </div>
      )}
      <div className="attach-row">
        <button className="link" data-testid="attach" title="Attach a photo or file" onClick={() => fileInput.current?.click()}>
          📎 Attach
        </button>
        <input ref={fileInput} type="file" hidden multiple data-testid="attach-input" onChange={(e) => void attach(e.target.files)} />
      </div>
      <Composer
        key={conv.id}
        testId="composer"
        placeholder={replyTo ? 'Reply' : 'Message (@name mentions)'}
        autoFocus
        onTyping={(on) => chat.sendTypingIndicator(conv.id, undefined, on)}
        onSend={(t) => {
          send(t, { replyTo: replyTo?.message_id, mentions: mentionsIn(t, conv, me) });
          setReplyTo(null);
        }}
      />
    </>
  );
}

function ThreadPane({ thread, conv, me, chat, onError, onClose }: { thread: ThreadState; conv: ConversationState; me: number; chat: UseChatResult; onError(message: string): void; onClose(): void }) {
  const root = thread.root;
  return (
    <aside className="pane" data-testid="thread-pane" data-root-id={thread.root_id}>
      <div className="pane-head">
        <strong>Thread</strong>
        <button className="link" data-testid="pane-close" onClick={onClose}>
          ×
        </button>
      </div>
      <div className="pane-body">
        {root ? <Message m={root} conv={conv} me={me} chat={chat} onError={onError} inThread /> : <p className="empty">{thread.loading ? 'Loading…' : 'This message is not available.'}</p>}
        <div className="divider" data-testid="thread-count">
          {thread.replies.length} {thread.replies.length === 1 ? 'reply' : 'replies'}
        </div>
        {thread.replies.map((m) => (
          <Message key={m.key} m={m} conv={conv} me={me} chat={chat} onError={onError} inThread />
        ))}
        {thread.has_more && (
          <button className="link" onClick={() => void chat.loadMoreReplies(thread.root_id)}>
            Load more replies
          </button>
        )}
      </div>
      <Composer
        key={thread.root_id}
        testId="thread-composer"
        placeholder="Reply in thread"
        onSend={(t) => void chat.sendMessage(t, { replyTo: thread.root_id, mentions: mentionsIn(t, conv, me) }).catch((e: Error) => onError(e.message))}
      />
    </aside>
  );
}

function PinsPane({ conv, chat, onError, onClose, onOpenThread }: { conv: ConversationState; chat: UseChatResult; onError(message: string): void; onClose(): void; onOpenThread(id: number): void }) {
  return (
    <aside className="pane" data-testid="pins-pane">
      <div className="pane-head">
        <strong>Pinned</strong>
        <button className="link" data-testid="pane-close" onClick={onClose}>
          ×
        </button>
      </div>
      <div className="pane-body">
        {chat.pinned.map((m) => (
          <div key={m.key} className="pinned-item" data-testid="pinned" data-message-id={m.message_id}>
            <div className="pinned-meta">
              <strong>{nameOf(m.sender_id)}</strong> · {timeOf(m.created_at)}
              {m.pinned_by !== null && <small> · pinned by {nameOf(m.pinned_by)}</small>}
            </div>
            <div className="pinned-text">{m.text}</div>
            <div className="row">
              {m.reply_count > 0 && (
                <button className="link" onClick={() => onOpenThread(m.message_id!)}>
                  {m.reply_count} {m.reply_count === 1 ? 'reply' : 'replies'}
                </button>
              )}
              <button className="link" data-testid="unpin" onClick={() => void chat.unpinMessage(m.message_id!).catch((e: Error) => onError(e.message))}>
                Unpin
              </button>
            </div>
          </div>
        ))}
        {!chat.pinned.length && <p className="empty">Nothing pinned in {conv.title || 'this conversation'}.</p>}
      </div>
    </aside>
  );
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
