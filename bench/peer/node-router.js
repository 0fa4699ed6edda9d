// The benchmark's Node peer (target `node`): a small in-memory router on the `ws` package,
// speaking the frames the generator uses, the same as the ceiling router in
// bench/src/ceiling.rs: no auth (the token is the bare user id), no storage, no bus.
// What a user might write instead of deploying Indaba; every run shows Indaba beside it.
//
//   node node-router.js <host> <port>
//
// WebSocket  /ws/chat/?token=<user id>
//   → {"type":"connection_established","user_id":N}
//   ← {"type":"chat_message","receiver_id":N | "conversation_id":G,"text":..,"client_msg_id":..}
//   → sender's socket: {"type":"message_sent","message_id":M,"client_msg_id":..}
//   → every socket of each recipient but the sender: {"type":"new_message","message_id":M,"sender_id":S,"text":..}
// HTTP  POST /api/v1/conversations/ (Authorization: Bearer <user id>,
//         {"participant_ids":[..]}) → 201 {"id":G}; members are the caller and the participants
//       GET /readyz → 200

'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);

// user id → Set of sockets; group id → array of member ids.
const peers = new Map();
const groups = new Map();
let nextMessage = 1;
let nextGroup = 1000000;

// Like the ceiling (a bounded queue per socket) and the product: a reader that lets this
// much pile up loses frames, the others are never held up.
const MAX_BUFFERED = 1 << 20;

function json(res, status, body) {
  const b = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b) });
  res.end(b);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/readyz') {
    json(res, 200, { status: 'ready' });
    return;
  }
  if (req.method === 'POST' && req.url.split('?')[0] === '/api/v1/conversations/') {
    const auth = req.headers.authorization || '';
    const user = Number(auth.replace(/^Bearer\s+/i, ''));
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      let v;
      try { v = JSON.parse(body); } catch { v = null; }
      if (!Number.isInteger(user) || user <= 0 || !v || !Array.isArray(v.participant_ids)) {
        json(res, 400, { error: 'invalid_field' });
        return;
      }
      const id = nextGroup++;
      groups.set(id, [user, ...v.participant_ids.map(Number)]);
      json(res, 201, { id });
    });
    return;
  }
  json(res, 404, { error: 'not_found' });
});

const wss = new WebSocketServer({ server, perMessageDeflate: false });

wss.on('connection', (ws, req) => {
  const q = req.url.indexOf('?');
  const params = new URLSearchParams(q >= 0 ? req.url.slice(q + 1) : '');
  const user = Number(params.get('token')) || 0;
  let mine = peers.get(user);
  if (!mine) {
    mine = new Set();
    peers.set(user, mine);
  }
  mine.add(ws);
  ws.on('close', () => {
    mine.delete(ws);
    if (mine.size === 0 && peers.get(user) === mine) peers.delete(user);
  });
  ws.on('error', () => {});
  ws.send(JSON.stringify({ type: 'connection_established', user_id: user }));
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let v;
    try { v = JSON.parse(data); } catch { return; }
    if (!v || v.type !== 'chat_message') return;
    const id = nextMessage++;
    let recipients;
    if (v.conversation_id !== undefined && v.conversation_id !== null) {
      recipients = groups.get(Number(v.conversation_id)) || [];
    } else {
      recipients = v.receiver_id !== undefined ? [Number(v.receiver_id)] : [];
    }
    ws.send(JSON.stringify({ type: 'message_sent', message_id: id, client_msg_id: v.client_msg_id }));
    // Serialised once per message, not once per socket.
    const frame = Buffer.from(JSON.stringify({ type: 'new_message', message_id: id, sender_id: user, text: v.text }));
    for (const r of recipients) {
      if (r === user) continue;
      const sockets = peers.get(r);
      if (!sockets) continue;
      for (const s of sockets) {
        if (s.readyState === s.OPEN && s.bufferedAmount < MAX_BUFFERED) s.send(frame, { binary: false });
      }
    }
  });
});

server.listen({ host, port, backlog: 4096 }, () => {
  const a = server.address();
  process.stderr.write(`node-router listening on ${a.address}:${a.port}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
