// Drives a session-proxy gateway with the real Pinus client packages:
// pinus-protocol encodes and decodes every byte, ws is the WebSocket client.
// Usage: node compat.js <host:port>   (exits 0 when every check passed)
'use strict';
const assert = require('assert');
const { Package, Message } = require('pinus-protocol');
const { Conn } = require('./conn');

const addr = process.argv[2];
if (!addr) {
  console.error('usage: node compat.js <host:port>');
  process.exit(2);
}
const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];

// The next data message, its JSON body parsed.
async function nextJson(c) {
  const m = await c.nextMessage();
  m.json = m.body.length ? JSON.parse(m.body.toString()) : null;
  return m;
}

async function run(kind) {
  const c = await Conn.open(kind, host, port);
  const hs = { sys: { type: 'js-websocket', version: '0.0.1' }, user: { name: 'node' } };
  c.send(Package.encode(Package.TYPE_HANDSHAKE, Buffer.from(JSON.stringify(hs))));
  const reply = await c.next();
  assert.strictEqual(reply.type, Package.TYPE_HANDSHAKE);
  const res = JSON.parse(reply.body.toString());
  assert.strictEqual(res.code, 200, `handshake: ${reply.body}`);
  assert.strictEqual(typeof res.sys.heartbeat, 'number');
  c.send(Package.encode(Package.TYPE_HANDSHAKE_ACK));
  const beat = await c.next();
  assert.strictEqual(beat.type, Package.TYPE_HEARTBEAT, 'a heartbeat follows the ack');

  // request / response
  c.request(1, 'game.h.echo', { hello: 'pinus', n: [1, 2], s: 'ü' });
  let m = await nextJson(c);
  assert.strictEqual(m.type, Message.TYPE_RESPONSE);
  assert.strictEqual(m.id, 1);
  assert.deepStrictEqual(m.json, { hello: 'pinus', n: [1, 2], s: 'ü' });

  // a notify gets no response: the next message answers request 2
  c.notify('game.h.echo', { ignored: true });
  c.request(2, 'game.h.echo', { second: true });
  m = await nextJson(c);
  assert.strictEqual(m.id, 2);
  assert.deepStrictEqual(m.json, { second: true });

  // pushes issued by the handler, then its response, in that order; a
  // large id exercises the varint
  c.request(300, 'game.h.steps', { n: 3 });
  for (let i = 0; i < 3; i++) {
    m = await nextJson(c);
    assert.strictEqual(m.type, Message.TYPE_PUSH);
    assert.strictEqual(m.route, 'onStep');
    assert.deepStrictEqual(m.json, { i });
  }
  m = await nextJson(c);
  assert.strictEqual(m.type, Message.TYPE_RESPONSE);
  assert.strictEqual(m.id, 300);
  assert.deepStrictEqual(m.json, { done: 3 });

  // an application error is a response with a code
  c.request(4, 'game.h.fail', {});
  m = await nextJson(c);
  assert.deepStrictEqual(m.json, { code: 1001, msg: 'not enough gold' });

  // heartbeat answered
  c.send(Package.encode(Package.TYPE_HEARTBEAT));
  const hb = await c.next();
  assert.strictEqual(hb.type, Package.TYPE_HEARTBEAT);

  // kick: a kick package with the reason, then the connection closes
  c.request(5, 'connector.entry.kickme', {});
  let k;
  do { k = await c.next(); } while (k && k.type === Package.TYPE_HEARTBEAT);
  assert(k, 'closed without a kick package');
  assert.strictEqual(k.type, Package.TYPE_KICK);
  assert.deepStrictEqual(JSON.parse(k.body.toString()), { reason: 'bye' });
  assert.strictEqual(await c.next(), null, 'closed after the kick');
  console.log(`node-compat ${kind}: ok`);
}

(async () => {
  await run('ws');
  await run('tcp');
  console.log('node-compat: 2 passed, 0 failed');
})().catch((err) => {
  console.error(`node-compat failed: ${err.stack || err}`);
  process.exit(1);
});
