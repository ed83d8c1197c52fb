// Protobuf clients on the chat example, as Pomelo's own clients do it:
// pinus-protocol for the packages, pomelo-protobuf (the reference codec)
// for the bodies, initialised with the protos the handshake hands out.
// Usage: node protobuf.js <gate host:port>   (exits 0 when every check passed)
'use strict';
const assert = require('assert');
const Protobuf = require('pomelo-protobuf');
const { Message } = require('pinus-protocol');
const { Conn } = require('./conn');

const addr = process.argv[2];
if (!addr) {
  console.error('usage: node protobuf.js <gate host:port>');
  process.exit(2);
}
const at = (a) => [a.slice(0, a.lastIndexOf(':')), Number(a.slice(a.lastIndexOf(':') + 1))];
const [host, gatePort] = at(addr);
const ENTER = 'connector.entryHandler.enter';
const SEND = 'chat.chatHandler.send';

// pomelo-protobuf keeps one encoder and one decoder per process: a client
// encodes with the client protos and decodes with the server's.
function asClient(protos) {
  Protobuf.init({ encoderProtos: protos.client, decoderProtos: protos.server });
}
// What pomelo-protobuf itself encodes for a server message, for byte
// equality with what the connector sent.
function serverBytes(protos, route, msg) {
  Protobuf.init({ encoderProtos: protos.server, decoderProtos: protos.server });
  const bytes = Protobuf.encode(route, msg);
  asClient(protos);
  return bytes;
}

async function nextOf(c, type) {
  for (;;) {
    const m = await c.nextMessage();
    if (m.type === type) return m;
  }
}

async function nextPush(c, route) {
  for (;;) {
    const m = await nextOf(c, Message.TYPE_PUSH);
    if (m.route === route) return m;
  }
}

(async () => {
  // The gate has no protos: JSON, for a client that holds none.
  const gate = await Conn.open('tcp', host, gatePort);
  const gateHello = await gate.handshake({ sys: { type: 'js-websocket', version: '0.0.1', protoVersion: 0 } });
  assert.strictEqual(gateHello.sys.protos, undefined, 'the gate has no protos');
  gate.request(1, 'gate.gateHandler.queryEntry', { uid: 'ann' });
  const entry = JSON.parse((await nextOf(gate, Message.TYPE_RESPONSE)).body.toString());
  assert.strictEqual(entry.code, 200, JSON.stringify(entry));
  gate.sock.end();

  // A client that holds no protos gets them, in pomelo-protobuf's parsed form.
  const ann = await Conn.open('ws', entry.host, entry.port);
  const hello = await ann.handshake({ sys: { type: 'js-websocket', version: '0.0.1', protoVersion: 0 }, user: {} });
  assert.strictEqual(hello.sys.useProto, true);
  const protos = hello.sys.protos;
  assert(protos && protos.server && protos.client && protos.version, JSON.stringify(hello.sys));
  assert.deepStrictEqual(protos.server.onChat.__tags, { 1: 'msg', 2: 'from', 3: 'target' });
  asClient(protos);

  // A request in protobuf; its answer decoded by pomelo-protobuf.
  ann.requestBytes(1, ENTER, Protobuf.encode(ENTER, { username: 'ann', rid: 'pb' }));
  const entered = await nextOf(ann, Message.TYPE_RESPONSE);
  assert.deepStrictEqual(Protobuf.decode(ENTER, entered.body), { users: ['ann'] });
  assert(entered.body.equals(serverBytes(protos, ENTER, { users: ['ann'] })), 'answer bytes');

  // A client that holds the current version gets no protos again.
  const bob = await Conn.open('tcp', entry.host, entry.port);
  const bobHello = await bob.handshake({ sys: { type: 'js-tcp', version: '0.0.1', protoVersion: protos.version } });
  assert.strictEqual(bobHello.sys.protos, undefined, 'protos sent to a client that holds them');
  assert.strictEqual(bobHello.sys.useProto, true);
  bob.requestBytes(1, ENTER, Protobuf.encode(ENTER, { username: 'bob', rid: 'pb' }));
  const bobEntered = Protobuf.decode(ENTER, (await nextOf(bob, Message.TYPE_RESPONSE)).body);
  assert.deepStrictEqual(bobEntered.users.slice().sort(), ['ann', 'bob']);

  // Pushes: decoded by pomelo-protobuf, and byte for byte what it encodes.
  const added = await nextPush(ann, 'onAdd');
  assert.deepStrictEqual(Protobuf.decode('onAdd', added.body), { user: 'bob' });
  assert(added.body.equals(serverBytes(protos, 'onAdd', { user: 'bob' })), 'onAdd bytes');

  // A protobuf request whose answer has no proto: the answer is JSON.
  bob.requestBytes(2, SEND, Protobuf.encode(SEND, { content: 'hi ünïcode', from: 'bob', target: '*' }));
  const sent = await nextOf(bob, Message.TYPE_RESPONSE);
  assert.deepStrictEqual(JSON.parse(sent.body.toString()), { route: SEND });
  const chat = await nextPush(ann, 'onChat');
  const said = { msg: 'hi ünïcode', from: 'bob', target: '*' };
  assert.deepStrictEqual(Protobuf.decode('onChat', chat.body), said);
  assert(chat.body.equals(serverBytes(protos, 'onChat', said)), 'onChat bytes');

  // A body that does not fit its proto: a typed answer, in protobuf, and
  // the connection goes on.
  ann.requestBytes(3, ENTER, Buffer.from([0x0a, 0x03, 0x61]));
  const refused = Protobuf.decode(ENTER, (await nextOf(ann, Message.TYPE_RESPONSE)).body);
  assert.strictEqual(refused.code, 400, JSON.stringify(refused));
  assert(/proto/.test(refused.msg), refused.msg);
  ann.requestBytes(4, SEND, Protobuf.encode(SEND, { content: 'still here', target: '*' }));
  assert.deepStrictEqual(JSON.parse((await nextOf(ann, Message.TYPE_RESPONSE)).body.toString()), { route: SEND });

  ann.ws.close();
  bob.sock.end();
  console.log('node-protobuf: ok');
})().catch((err) => {
  console.error(`node-protobuf failed: ${err.stack || err}`);
  process.exit(1);
});
