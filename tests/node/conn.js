// A Pomelo client connection over WebSocket (`ws`) or raw TCP, every byte
// encoded and decoded by the real pinus-protocol package; it yields the
// decoded packages in order.
'use strict';
const net = require('net');
const assert = require('assert');
const WebSocket = require('ws');
const { Package, Message } = require('pinus-protocol');

class Conn {
  constructor(kind) {
    this.kind = kind;
    this.queue = [];
    this.waiters = [];
    this.closed = false;
    this.buf = Buffer.alloc(0);
  }
  static open(kind, host, port) {
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
    this.requestBytes(id, route, Buffer.from(JSON.stringify(body)));
  }
  // A request with a body encoded by the caller (protobuf).
  requestBytes(id, route, bytes) {
    this.send(Package.encode(Package.TYPE_DATA,
      Message.encode(id, Message.TYPE_REQUEST, false, route, bytes)));
  }
  notify(route, body) {
    this.send(Package.encode(Package.TYPE_DATA,
      Message.encode(0, Message.TYPE_NOTIFY, false, route, Buffer.from(JSON.stringify(body)))));
  }
  // Handshake (`hs`), then the ack; returns the reply.
  async handshake(hs) {
    this.send(Package.encode(Package.TYPE_HANDSHAKE, Buffer.from(JSON.stringify(hs))));
    const reply = await this.next();
    assert(reply, `${this.kind}: closed before the handshake reply`);
    assert.strictEqual(reply.type, Package.TYPE_HANDSHAKE);
    const res = JSON.parse(reply.body.toString());
    assert.strictEqual(res.code, 200, `handshake: ${reply.body}`);
    this.send(Package.encode(Package.TYPE_HANDSHAKE_ACK));
    return res;
  }
  // The next data message (heartbeats skipped), decoded by pinus-protocol;
  // its body stays bytes.
  async nextMessage() {
    for (;;) {
      const p = await this.next();
      assert(p, `${this.kind}: closed while waiting for a message`);
      if (p.type === Package.TYPE_HEARTBEAT) continue;
      assert.strictEqual(p.type, Package.TYPE_DATA, `${this.kind}: expected data, got type ${p.type}`);
      return Message.decode(p.body);
    }
  }
}

module.exports = { Conn };
