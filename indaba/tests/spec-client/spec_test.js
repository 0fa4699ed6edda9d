// Drives two instances of the spec's unmodified ChatWebSocket class and one of its
// useChatWebSocket hook against a running Indaba gateway, the way the spec's apps use them.
// Usage:
//   node spec_test.js ws://127.0.0.1:PORT <tokenA> <userA> <tokenB> <userB> <tokenC> <userC>
// Exits 0 when every expectation held, 1 (with the reason) otherwise.
'use strict';

globalThis.WebSocket = require('ws');
const [base, tokenA, userA, tokenB, userB, tokenC, userC] = process.argv.slice(2);
globalThis.INDABA_WS_BASE = base;
let currentToken = null;
globalThis.localStorage = { getItem: (k) => (k === 'authToken' ? currentToken : null) };
globalThis.getAuthToken = () => currentToken; // the hook's "Your auth token function"
const { ChatWebSocket } = require('./chat_websocket.js');

const events = [];

function instrument(chat, who) {
  // The spec leaves these UI hooks to the app; record what the class calls them with.
  chat.displayMessage = (data) => events.push({ who, kind: 'display', data });
  chat.showTypingIndicator = (data) => events.push({ who, kind: 'typing', data });
  chat.updateMessageStatus = (ids, status) => events.push({ who, kind: 'status', ids, status });
  chat.useFallbackPolling = () => events.push({ who, kind: 'fallback' });
  return chat;
}

function open(userId, token, who) {
  currentToken = token;
  const chat = instrument(new ChatWebSocket(Number(userId)), who);
  chat.connect();
  return chat;
}

async function waitFor(what, pred, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const hit = events.find(pred);
    if (hit) return hit;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}; saw ${JSON.stringify(events)}`);
}

async function waitOpen(chat, who) {
  const deadline = Date.now() + 10000;
  while (!(chat.ws && chat.ws.readyState === 1)) {
    if (Date.now() > deadline) throw new Error(`${who} never connected`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

(async () => {
  const a = open(userA, tokenA, 'A');
  const b = open(userB, tokenB, 'B');
  await waitOpen(a, 'A');
  await waitOpen(b, 'B');
  // connection_established is handled by the class (it logs); give both a moment to be routed.
  await new Promise((r) => setTimeout(r, 200));

  // 1. A sends to B by receiver only, as the spec's sendMessage allows.
  a.sendMessage(undefined, Number(userB), 'Hello from the spec client!');
  const shown = await waitFor('B displays the message', (e) => e.who === 'B' && e.kind === 'display');
  const msg = shown.data;
  if (msg.type !== 'new_message' || msg.text !== 'Hello from the spec client!' || msg.sender_id !== Number(userA)) {
    throw new Error(`unexpected new_message ${JSON.stringify(msg)}`);
  }
  // 2. message_sent → the class marks it "delivered".
  await waitFor('A sees delivered', (e) => e.who === 'A' && e.kind === 'status' && e.status === 'delivered' && e.ids[0] === msg.message_id);
  // 3. B's class sent a read receipt automatically; A's class marks the message "read".
  await waitFor('A sees read', (e) => e.who === 'A' && e.kind === 'status' && e.status === 'read' && e.ids.includes(msg.message_id));
  // 4. Typing reaches the peer.
  a.sendTypingIndicator(msg.conversation_id, Number(userB), true);
  const typing = await waitFor('B sees typing', (e) => e.who === 'B' && e.kind === 'typing');
  if (typing.data.is_typing !== true || typing.data.user_id !== Number(userA)) {
    throw new Error(`unexpected typing ${JSON.stringify(typing.data)}`);
  }
  // 5. B answers in the conversation; A displays it and B sees it read.
  b.sendMessage(msg.conversation_id, Number(userA), 'Hi A!');
  const back = await waitFor('A displays the answer', (e) => e.who === 'A' && e.kind === 'display');
  await waitFor('B sees read', (e) => e.who === 'B' && e.kind === 'status' && e.status === 'read' && e.ids.includes(back.data.message_id));
  // 6. The room calls are accepted.
  a.joinConversation(msg.conversation_id);
  a.leaveConversation(msg.conversation_id);
  await new Promise((r) => setTimeout(r, 200));

  // 7. The React Native hook, rendered once through a minimal React stand-in.
  currentToken = tokenC;
  const { render } = require('./react_shim.js');
  const { useChatWebSocket } = require('./use_chat_websocket.js');
  const { result: hook, slots } = render(useChatWebSocket, Number(userC));
  const isConnected = () => slots[1].value;
  const messages = () => slots[2].value;
  const deadline = Date.now() + 10000;
  while (!isConnected()) {
    if (Date.now() > deadline) throw new Error('hook never connected');
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 200));
  a.sendMessage(undefined, Number(userC), 'Hello hook!');
  let toHook;
  while (!(toHook = messages().find((m) => m.type === 'new_message' && m.text === 'Hello hook!'))) {
    if (Date.now() > deadline) throw new Error(`hook never got the message: ${JSON.stringify(messages())}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  // The hook sent a read receipt on its own; A's class marks the message read.
  await waitFor('A sees the hook read it', (e) => e.who === 'A' && e.kind === 'status' && e.status === 'read' && e.ids.includes(toHook.message_id));
  hook.sendMessage(toHook.conversation_id, Number(userA), 'Hi from the hook');
  await waitFor('A displays the hook message', (e) => e.who === 'A' && e.kind === 'display' && e.data.text === 'Hi from the hook');

  console.log(JSON.stringify({ ok: true, events: events.length }));
  process.exit(0);
})().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
