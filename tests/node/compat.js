// Drives a session-proxy gateway with the real Pinus client packages:
// pinus-protocol encodes and decodes every byte, ws is the WebSocket client.
// Usage: node compat.js <host:port>   (exits 0 when every check passed)
'use strict';
const net = require('net');
const assert = require('assert');
const WebSocket = require('ws');
const { Package, Message } = require('pinus-protocol');

const addr = process.argv[2];
if (!addr) {
  console.error('usage: node compat.js <host:port>');
  process.exit(2);
}
const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];

// A connection that yields decoded packages in order.
class Conn {
  constructor(kind) {
    this.kind = kind;
    this.queue = [];
    this.waiters = [];
    this.closed = false;
    this.buf = Buffer.alloc(0);
  }
  static open(kind) {
    const c = new Conn(kind);
    return new Promise((resolve, reject) => {
      if (kind === 'ws') {
        c.ws = new WebSocket(`ws://${host}:${port}/`);
        c.ws.on('open', () => resolve(c));
        c.ws.on('error', reject);
        c.ws.on('message', (data) => {
          let pkgs = Package.decode(data);
          if (!Array.isArray(pkgs)) pkgs = [pkgs];
          pkgs.forEach((p) => c.push(p));
        });
        c.ws.on('close', () => c.close());
      } else {
        c.sock = net.connect(port, host, () => resolve(c));
        c.sock.on('error', reject);
        c.sock.on('data', (chunk) => {
          c.buf = Buffer.concat([c.buf, chunk]);
          while (c.buf.length >= 4) {
            const len = (c.buf[1] << 16) | (c.buf[2] << 8) | c.buf[3];
            if (c.buf.length < 4 + len) break;
            c.push(Package.decode(c.buf.slice(0, 4 + len)));
            c.buf = c.buf.slice(4 + len);
          }
        });
        c.sock.on('close', () => c.close());
      }
    });
  }
  push(p) {
    const w = this.waiters.shift();
    if (w) w.resolve(p); else this.queue.push(p);
  }
  close() {
    this.closed = true;
    this.waiters.splice(0).forEach((w) => w.resolve(null));
  }
  send(bytes) {
    if (this.kind === 'ws') this.ws.send(bytes); else this.sock.write(bytes);
  }
  next(ms = 5000) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const w = { resolve: (v) => { clearTimeout(t); resolve(v); } };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`${this.kind}: nothing received within ${ms} ms`));
      }, ms);
      this.waiters.push(w);
    });
  }
  request(id, route, body) {
    this.send(Package.encode(Package.TYPE_DATA,
      Message.encode(id, Message.TYPE_REQUEST, false, route, Buffer.from(JSON.stringify(body)))));
  }
  notify(route, body) {
    this.send(Package.encode(Package.TYPE_DATA,
      Message.encode(0, Message.TYPE_NOTIFY, false, route, Buffer.from(JSON.stringify(body)))));
  }
  async nextMessage() {
    for (;;) {
      const p = await this.next();
      assert(p, `${this.kind}: closed while waiting for a message`);
      if (p.type === Package.TYPE_HEARTBEAT) continue;
      assert.strictEqual(p.type, Package.TYPE_DATA, `${this.kind}: expected data, got type ${p.type}`);
      const m = Message.decode(p.body);
      m.json = m.body.length ? JSON.parse(m.body.toString()) : null;
      return m;
    }
  }
}

async function run(kind) {
  const c = await Conn.open(kind);
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
  let m = await c.nextMessage();
  assert.strictEqual(m.type, Message.TYPE_RESPONSE);
  assert.strictEqual(m.id, 1);
  assert.deepStrictEqual(m.json, { hello: 'pinus', n: [1, 2], s: 'ü' });

  // a notify gets no response: the next message answers request 2
  c.notify('game.h.echo', { ignored: true });
  c.request(2, 'game.h.echo', { second: true });
  m = await c.nextMessage();
  assert.strictEqual(m.id, 2);
  assert.deepStrictEqual(m.json, { second: true });

  // pushes issued by the handler, then its response, in that order; a
  // large id exercises the varint
  c.request(300, 'game.h.steps', { n: 3 });
  for (let i = 0; i < 3; i++) {
    m = await c.nextMessage();
    assert.strictEqual(m.type, Message.TYPE_PUSH);
    assert.strictEqual(m.route, 'onStep');
    assert.deepStrictEqual(m.json, { i });
  }
  m = await c.nextMessage();
  assert.strictEqual(m.type, Message.TYPE_RESPONSE);
  assert.strictEqual(m.id, 300);
  assert.deepStrictEqual(m.json, { done: 3 });

  // an application error is a response with a code
  c.request(4, 'game.h.fail', {});
  m = await c.nextMessage();
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
