// What the tests share: the cluster's control address (set by the Rust
// test that started the chat cluster), a TCP proxy that can cut its
// connections, and waiting for an event within a deadline.
import net from 'node:net';
import WebSocket from 'ws';
import { Client } from '../dist/index.js';

export const CONTROL = process.env.CHAT_CONTROL;
export const WAIT = 10_000;

/** The control address's answer to `method path`. */
export async function control(method, path) {
  const res = await fetch(`${CONTROL}${path}`, { method, signal: AbortSignal.timeout(20_000) });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status}`);
  return res.json();
}

/** Where the gate and connectors are. */
export function cluster() {
  return control('GET', '/cluster');
}

/** A client of the chat's gate, in memory unless given a storage. */
export function gateClient(c, uid, more = {}) {
  return new Client({
    gate: { host: c.host, port: c.gate, route: 'gate.gateHandler.queryEntry', body: { uid } },
    WebSocket,
    requestTimeout: 5000,
    reconnect: { attempts: 20, minDelay: 50, maxDelay: 500 },
    ...more,
  });
}

/** A client of one connector (or proxy), with no gate. */
export function directClient(host, port, more = {}) {
  return new Client({
    host,
    port,
    WebSocket,
    requestTimeout: 5000,
    reconnect: { attempts: 20, minDelay: 50, maxDelay: 500 },
    ...more,
  });
}

/** Enters `rid` as `name`; resolves with the room's members. */
export async function enter(client, name, rid) {
  const answer = await client.request('connector.entryHandler.enter', { username: name, rid });
  if (!Array.isArray(answer.users)) throw new Error(`${name} could not enter ${rid}: ${JSON.stringify(answer)}`);
  return answer.users;
}

/** Resolves with the first `event` for which `test` holds, within `WAIT`. */
export function next(client, event, test = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(event, on);
      reject(new Error(`no ${event} within ${WAIT} ms`));
    }, WAIT);
    function on(...args) {
      if (!test(...args)) return;
      clearTimeout(timer);
      client.off(event, on);
      resolve(args);
    }
    client.on(event, on);
  });
}

/** The pushes a client gets, kept for later asserts. */
export function pushes(client) {
  const seen = [];
  client.on('push', (route, body) => seen.push({ route, body }));
  return seen;
}

/** A TCP proxy on loopback in front of `port`; `cut()` drops every connection through it. */
export async function proxy(host, port) {
  const sockets = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(port, host);
    for (const s of [down, up]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    connections: () => sockets.size / 2,
    cut() {
      for (const s of sockets) s.destroy();
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
