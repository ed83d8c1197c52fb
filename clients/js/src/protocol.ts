// The Pomelo/Pinus "hybrid" wire format: packages (type, 24-bit length,
// body) and, inside data packages, messages (flag, id, route, body).

/** Package types. */
export const Package = {
  Handshake: 1,
  HandshakeAck: 2,
  Heartbeat: 3,
  Data: 4,
  Kick: 5,
} as const;

/** Message types (bits 1–3 of a message's flag byte). */
export const MessageType = {
  Request: 0,
  Notify: 1,
  Response: 2,
  Push: 3,
} as const;

/** The largest body a package header can announce. */
export const MAX_BODY = 0xffffff;

const utf8 = new TextEncoder();
const text = new TextDecoder('utf-8', { fatal: true });

/** Bytes that do not follow the protocol. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

/** UTF-8 bytes of a string. */
export function encodeUtf8(s: string): Uint8Array {
  return utf8.encode(s);
}

/** The string of UTF-8 bytes; throws {@link ProtocolError} on bad UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return text.decode(bytes);
  } catch {
    throw new ProtocolError('a body is not UTF-8');
  }
}

/** One package: its type and body. */
export function encodePackage(type: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (body.length > MAX_BODY) throw new ProtocolError(`a package body of ${body.length} bytes is too long`);
  const out = new Uint8Array(4 + body.length);
  out[0] = type;
  out[1] = (body.length >> 16) & 0xff;
  out[2] = (body.length >> 8) & 0xff;
  out[3] = body.length & 0xff;
  out.set(body, 4);
  return out;
}

/** A decoded package. */
export interface Pkg {
  type: number;
  body: Uint8Array;
}

/**
 * The packages in one WebSocket message (a server may put several in one).
 * Throws {@link ProtocolError} when a header promises more than is there.
 */
export function decodePackages(bytes: Uint8Array): Pkg[] {
  const out: Pkg[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (at + 4 > bytes.length) throw new ProtocolError('a package header is cut short');
    const len = (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3];
    if (at + 4 + len > bytes.length) throw new ProtocolError('a package body is cut short');
    out.push({ type: bytes[at], body: bytes.subarray(at + 4, at + 4 + len) });
    at += 4 + len;
  }
  return out;
}

/** A message to send: a request (with an id) or a notify (id 0). */
export interface OutMessage {
  type: number;
  id: number;
  route: string;
  /** The route's dictionary code, when the server gave one. */
  code?: number;
  body: Uint8Array;
}

/** Encodes a request or notify message. */
export function encodeMessage(m: OutMessage): Uint8Array {
  const compressed = m.code !== undefined;
  const ids: number[] = [];
  if (m.type === MessageType.Request) {
    let n = m.id;
    do {
      let low = n % 128;
      n = Math.floor(n / 128);
      if (n) low += 128;
      ids.push(low);
    } while (n);
  }
  let route: Uint8Array;
  if (compressed) {
    const code = m.code as number;
    route = Uint8Array.of((code >> 8) & 0xff, code & 0xff);
  } else {
    const r = utf8.encode(m.route);
    if (r.length > 255) throw new ProtocolError(`route ${m.route} is longer than 255 bytes`);
    route = new Uint8Array(1 + r.length);
    route[0] = r.length;
    route.set(r, 1);
  }
  const out = new Uint8Array(1 + ids.length + route.length + m.body.length);
  out[0] = (m.type << 1) | (compressed ? 1 : 0);
  out.set(ids, 1);
  out.set(route, 1 + ids.length);
  out.set(m.body, 1 + ids.length + route.length);
  return out;
}

/** A received message: a response (id, no route) or a push (route). */
export interface InMessage {
  type: number;
  id: number;
  /** The route, or its dictionary code when compressed. */
  route: string | number | null;
  body: Uint8Array;
}

/** Decodes a message; throws {@link ProtocolError} on one cut short. */
export function decodeMessage(bytes: Uint8Array): InMessage {
  if (bytes.length < 1) throw new ProtocolError('an empty message');
  const flag = bytes[0];
  if (flag & 0x10) throw new ProtocolError('a gzip message body (this client does not inflate)');
  const type = (flag >> 1) & 0x7;
  let at = 1;
  let id = 0;
  if (type === MessageType.Request || type === MessageType.Response) {
    let shift = 1;
    for (;;) {
      if (at >= bytes.length) throw new ProtocolError('a message id is cut short');
      const b = bytes[at++];
      id += (b & 0x7f) * shift;
      shift *= 128;
      if (b < 128) break;
      if (shift > 2 ** 49) throw new ProtocolError('a message id is too long');
    }
  }
  let route: string | number | null = null;
  if (type === MessageType.Request || type === MessageType.Notify || type === MessageType.Push) {
    if (flag & 1) {
      if (at + 2 > bytes.length) throw new ProtocolError('a route code is cut short');
      route = (bytes[at] << 8) | bytes[at + 1];
      at += 2;
    } else {
      if (at >= bytes.length) throw new ProtocolError('a route is cut short');
      const len = bytes[at++];
      if (at + len > bytes.length) throw new ProtocolError('a route is cut short');
      route = decodeUtf8(bytes.subarray(at, at + len));
      at += len;
    }
  }
  return { type, id, route, body: bytes.subarray(at) };
}
