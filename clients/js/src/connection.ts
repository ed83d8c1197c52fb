// One connection to a Pomelo/Pinus server over WebSocket: the handshake,
// heartbeats both ways, requests as promises with a deadline, notifies,
// pushes and kicks. It does not reconnect; `Client` does that on top.

import {
  MessageType,
  Package,
  ProtocolError,
  decodeMessage,
  decodePackages,
  decodeUtf8,
  encodeMessage,
  encodePackage,
  encodeUtf8,
} from './protocol.js';
import { HandshakeProtos, Protos, decodeProtobuf, encodeProtobuf } from './protobuf.js';

/** What went wrong, for a game to branch on. */
export type ErrorKind =
  /** No answer within the request's deadline. */
  | 'timeout'
  /** The connection went away before the answer: the request may or may not have been applied. */
  | 'lost'
  /** The client is closed (by the game, or it gave up reconnecting). */
  | 'closed'
  /** A request made while reconnecting, with `whileReconnecting: 'fail'`. */
  | 'reconnecting'
  /** The session did not come back (a stale token): requests made for it are not sent. */
  | 'session-lost'
  /** The server, or the gate, refused: a handshake code other than 200, or no connector. */
  | 'refused'
  /** The server could not be reached, or did not shake hands in time. */
  | 'unreachable'
  /** Bytes that do not follow the protocol, or a body that does not fit its proto. */
  | 'protocol';

/** The client's typed error: `kind` says what happened. */
export class ClientError extends Error {
  override name = 'ClientError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** A refusal the server says may not happen again (`"retry": true`: its session store did not answer); a resume token is still good. */
    readonly retry = false,
  ) {
    super(message);
  }
}

/** The part of a WebSocket this client uses (the browser's, or `ws`'s in Node). */
export interface WebSocketLike {
  binaryType: string;
  /** The extensions the server accepted (`''` for none). */
  readonly extensions?: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}

/** A WebSocket constructor: the browser's `WebSocket`, or `ws`'s. */
export type WebSocketFactory = new (url: string) => WebSocketLike;

/** The server's handshake reply. */
export interface HandshakeReply {
  code: number;
  sys?: {
    heartbeat?: number;
    dict?: Record<string, number>;
    useDict?: boolean;
    protos?: HandshakeProtos;
    useProto?: boolean;
  };
  user?: Record<string, unknown>;
  [key: string]: unknown;
}

/** How to open one connection. */
export interface ConnectionOptions {
  url: string;
  WebSocket: WebSocketFactory;
  /** The handshake's `user` object (`resumeToken` goes there). */
  user?: Record<string, unknown>;
  /** Protos held from an earlier handshake: the server sends them only when their version differs. */
  protos?: HandshakeProtos;
  /** How long the socket and the handshake may take, in ms. */
  timeout: number;
  onPush?: (route: string, body: unknown) => void;
  onKick?: (reason: string) => void;
  /** Called once when the connection ends after a handshake, with the kick reason if there was one. */
  onClose?: (kicked: string | null, cause: string) => void;
}

interface Waiting {
  route: string;
  resolve: (body: unknown) => void;
  reject: (err: ClientError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;

function toBytes(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new ProtocolError('a text WebSocket message (the protocol is binary)');
}

/** One open connection, after its handshake. */
export class Connection {
  /** The server's handshake reply. */
  readonly handshake: HandshakeReply;
  /** The protos in use on this connection (fresh from the server, or the ones held). */
  readonly protos: HandshakeProtos | undefined;
  private readonly ws: WebSocketLike;
  private readonly options: ConnectionOptions;
  private readonly dict = new Map<string, number>();
  private readonly routes = new Map<number, string>();
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 1;
  private heartbeatMs = 0;
  private beat: ReturnType<typeof setTimeout> | undefined;
  private alive: ReturnType<typeof setTimeout> | undefined;
  private kicked: string | null = null;
  private ended = false;

  private constructor(ws: WebSocketLike, options: ConnectionOptions, reply: HandshakeReply) {
    this.ws = ws;
    this.options = options;
    this.handshake = reply;
    const sys = reply.sys ?? {};
    if (sys.useDict !== false && sys.dict) {
      for (const [route, code] of Object.entries(sys.dict)) {
        this.dict.set(route, code);
        this.routes.set(code, route);
      }
    }
    this.protos = sys.useProto ? (sys.protos?.version !== undefined ? sys.protos : options.protos) : undefined;
    this.heartbeatMs = (sys.heartbeat ?? 0) * 1000;
  }

  /** Opens a connection and shakes hands; rejects with a {@link ClientError}. */
  static open(options: ConnectionOptions): Promise<Connection> {
    return new Promise((resolve, reject) => {
      let conn: Connection | undefined;
      let settled = false;
      const fail = (err: ClientError) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        try {
          ws.close();
        } catch {
          // already closed
        }
        reject(err);
      };
      let ws: WebSocketLike;
      try {
        ws = new options.WebSocket(options.url);
      } catch (err) {
        reject(new ClientError('unreachable', `cannot open ${options.url}: ${String(err)}`));
        return;
      }
      const deadline = setTimeout(
        () => fail(new ClientError('unreachable', `${options.url} did not shake hands within ${options.timeout} ms`)),
        options.timeout,
      );
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        const hello = {
          sys: { type: 'js-websocket', version: '0.0.1', protoVersion: options.protos?.version ?? 0 },
          user: options.user ?? {},
        };
        ws.send(encodePackage(Package.Handshake, encodeUtf8(JSON.stringify(hello))));
      };
      ws.onerror = () => fail(new ClientError('unreachable', `cannot reach ${options.url}`));
      ws.onclose = (ev) => {
        if (conn) conn.finish(`closed (${ev.code ?? 'no code'})`);
        else fail(new ClientError('unreachable', `${options.url} closed before the handshake (${ev.code ?? 'no code'})`));
      };
      ws.onmessage = (ev) => {
        let packages;
        try {
          packages = decodePackages(toBytes(ev.data));
        } catch (err) {
          if (conn) conn.abort(`${(err as Error).message}`);
          else fail(new ClientError('protocol', (err as Error).message));
          return;
        }
        for (const p of packages) {
          if (conn) {
            conn.receive(p.type, p.body);
            continue;
          }
          if (p.type !== Package.Handshake) continue;
          let reply: HandshakeReply;
          try {
            reply = JSON.parse(decodeUtf8(p.body)) as HandshakeReply;
          } catch {
            fail(new ClientError('protocol', 'the handshake reply is not JSON'));
            return;
          }
          if (reply.code !== 200) {
            const why = typeof reply.error === 'string' ? reply.error : `code ${reply.code}`;
            fail(new ClientError('refused', `the handshake was refused: ${why}`, reply.retry === true));
            return;
          }
          settled = true;
          clearTimeout(deadline);
          conn = new Connection(ws, options, reply);
          ws.send(encodePackage(Package.HandshakeAck));
          conn.armHeartbeat();
          resolve(conn);
        }
      };
    });
  }

  /** The WebSocket extensions the server accepted (`''` for none). */
  get extensions(): string {
    return this.ws.extensions ?? '';
  }

  /** Whether the connection is still open. */
  get open(): boolean {
    return !this.ended;
  }

  /** Sends a request; resolves with the answer's body. */
  request(route: string, body: unknown, timeout: number): Promise<unknown> {
    if (this.ended) return Promise.reject(new ClientError('lost', 'the connection is closed'));
    const id = this.nextId++;
    if (this.nextId > 2 ** 31) this.nextId = 1;
    let bytes: Uint8Array;
    try {
      bytes = this.encode(MessageType.Request, id, route, body);
    } catch (err) {
      return Promise.reject(new ClientError('protocol', (err as Error).message));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ClientError('timeout', `${route} got no answer within ${timeout} ms`));
      }, timeout);
      this.waiting.set(id, { route, resolve, reject, timer });
      try {
        this.ws.send(bytes);
      } catch (err) {
        clearTimeout(timer);
        this.waiting.delete(id);
        reject(new ClientError('lost', `${route} could not be sent: ${String(err)}`));
      }
    });
  }

  /** Sends a notify (no answer). */
  notify(route: string, body: unknown): void {
    if (this.ended) throw new ClientError('lost', 'the connection is closed');
    let bytes: Uint8Array;
    try {
      bytes = this.encode(MessageType.Notify, 0, route, body);
    } catch (err) {
      throw new ClientError('protocol', (err as Error).message);
    }
    try {
      this.ws.send(bytes);
    } catch (err) {
      throw new ClientError('lost', `${route} could not be sent: ${String(err)}`);
    }
  }

  /** Closes the connection; requests still waiting fail with `lost`. */
  close(): void {
    this.finish('closed by the client');
  }

  private encode(type: number, id: number, route: string, body: unknown): Uint8Array {
    const client: Protos | undefined = this.protos?.client;
    const payload = client && client[route] ? encodeProtobuf(client, route, body) : encodeUtf8(JSON.stringify(body ?? {}));
    const code = this.dict.get(route);
    return encodePackage(Package.Data, encodeMessage({ type, id, route, code, body: payload }));
  }

  private decodeBody(route: string, body: Uint8Array): unknown {
    const server: Protos | undefined = this.protos?.server;
    if (server && server[route]) return decodeProtobuf(server, route, body);
    if (body.length === 0) return null;
    return JSON.parse(decodeUtf8(body));
  }

  private armHeartbeat(): void {
    if (!this.heartbeatMs) return;
    clearTimeout(this.beat);
    this.beat = setTimeout(() => {
      if (this.ws.readyState === OPEN) this.ws.send(encodePackage(Package.Heartbeat));
    }, this.heartbeatMs);
    // Anything from the server within two heartbeats, or the connection is dead.
    clearTimeout(this.alive);
    this.alive = setTimeout(() => this.abort('the server sent nothing for two heartbeats'), 2 * this.heartbeatMs + 1000);
  }

  private receive(type: number, body: Uint8Array): void {
    switch (type) {
      case Package.Heartbeat:
        this.armHeartbeat();
        return;
      case Package.Data:
        this.armHeartbeat();
        try {
          this.message(body);
        } catch (err) {
          this.abort(`a message from the server: ${(err as Error).message}`);
        }
        return;
      case Package.Kick: {
        let reason = 'kicked';
        try {
          const kick = JSON.parse(decodeUtf8(body)) as { reason?: unknown };
          if (typeof kick.reason === 'string') reason = kick.reason;
        } catch {
          // a kick without a JSON body is still a kick
        }
        this.kicked = reason;
        this.options.onKick?.(reason);
        return;
      }
      default:
        return;
    }
  }

  private message(bytes: Uint8Array): void {
    const m = decodeMessage(bytes);
    if (m.type === MessageType.Response) {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      clearTimeout(w.timer);
      try {
        w.resolve(this.decodeBody(w.route, m.body));
      } catch (err) {
        w.reject(new ClientError('protocol', `the answer to ${w.route}: ${(err as Error).message}`));
      }
    } else if (m.type === MessageType.Push) {
      const route = typeof m.route === 'number' ? this.routes.get(m.route) : m.route;
      if (route === undefined || route === null) throw new ProtocolError(`a push with unknown route code ${m.route}`);
      this.options.onPush?.(route, this.decodeBody(route, m.body));
    }
  }

  private abort(cause: string): void {
    try {
      this.ws.close();
    } catch {
      // already closing
    }
    this.finish(cause);
  }

  private finish(cause: string): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.beat);
    clearTimeout(this.alive);
    this.ws.onclose = null;
    this.ws.onmessage = null;
    this.ws.onerror = null;
    try {
      this.ws.close();
    } catch {
      // already closed
    }
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(new ClientError('lost', `the connection was lost before the answer to ${w.route} (${cause}); it may or may not have been applied`));
    }
    this.waiting.clear();
    this.options.onClose?.(this.kicked, cause);
  }
}
