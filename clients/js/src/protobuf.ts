// Protobuf bodies in pomelo-protobuf's format: the server hands its protos
// out in the handshake, already parsed ({field: {option, type, tag}},
// `__tags`, `__messages`), and both sides encode with them. Wire types:
// varints for uInt32, int32 and sInt32 (both zig-zag, as pomelo-protobuf
// does), 64-bit for double, 32-bit for float, length-delimited for string
// and messages; a repeated number is a key, a count and the values.

import { ProtocolError, decodeUtf8, encodeUtf8 } from './protocol.js';

/** One field of a parsed proto. */
export interface FieldProto {
  option: 'required' | 'optional' | 'repeated';
  type: string;
  tag: number;
}

/** A parsed message proto, as pomelo-protobuf's parser makes it. */
export interface MessageProto {
  __messages?: Record<string, MessageProto>;
  __tags?: Record<string, string>;
  [field: string]: FieldProto | Record<string, MessageProto> | Record<string, string> | undefined;
}

/** Parsed protos by route (and `message Name` for shared messages). */
export type Protos = Record<string, MessageProto>;

/** What the handshake's `sys.protos` carries. */
export interface HandshakeProtos {
  server?: Protos;
  client?: Protos;
  version?: number | string;
}

const WIRE: Record<string, number> = { uInt32: 0, sInt32: 0, int32: 0, double: 1, string: 2, float: 5 };
const SIMPLE = new Set(['uInt32', 'sInt32', 'int32', 'double', 'float']);

function fieldOf(proto: MessageProto, name: string): FieldProto | undefined {
  if (name === '__messages' || name === '__tags') return undefined;
  const f = proto[name] as FieldProto | undefined;
  return f && typeof f === 'object' && typeof f.tag === 'number' ? f : undefined;
}

function nested(root: Protos, proto: MessageProto, type: string): MessageProto | undefined {
  return proto.__messages?.[type] ?? root[`message ${type}`];
}

class Writer {
  bytes: number[] = [];

  varint(n: number): void {
    if (!Number.isInteger(n) || n < 0) throw new ProtocolError(`${n} is not an unsigned integer`);
    do {
      let low = n % 128;
      n = Math.floor(n / 128);
      if (n) low += 128;
      this.bytes.push(low);
    } while (n);
  }

  zigzag(n: number): void {
    if (!Number.isInteger(n)) throw new ProtocolError(`${n} is not an integer`);
    this.varint(n < 0 ? -2 * n - 1 : 2 * n);
  }

  raw(b: Uint8Array): void {
    for (const x of b) this.bytes.push(x);
  }

  float(n: number, size: 4 | 8): void {
    const buf = new DataView(new ArrayBuffer(size));
    if (size === 4) buf.setFloat32(0, n, true);
    else buf.setFloat64(0, n, true);
    this.raw(new Uint8Array(buf.buffer));
  }
}

function encodeValue(w: Writer, root: Protos, proto: MessageProto, type: string, value: unknown): void {
  switch (type) {
    case 'uInt32':
      w.varint(Number(value));
      return;
    case 'int32':
    case 'sInt32':
      w.zigzag(Number(value));
      return;
    case 'float':
      w.float(Number(value), 4);
      return;
    case 'double':
      w.float(Number(value), 8);
      return;
    case 'string': {
      const b = encodeUtf8(String(value));
      w.varint(b.length);
      w.raw(b);
      return;
    }
    default: {
      const message = nested(root, proto, type);
      if (!message) throw new ProtocolError(`no proto for message type ${type}`);
      const inner = new Writer();
      encodeFields(inner, root, message, value as Record<string, unknown>);
      w.varint(inner.bytes.length);
      w.raw(Uint8Array.from(inner.bytes));
    }
  }
}

function key(w: Writer, f: FieldProto): void {
  w.varint(f.tag * 8 + (WIRE[f.type] ?? 2));
}

function encodeFields(w: Writer, root: Protos, proto: MessageProto, msg: Record<string, unknown>): void {
  if (msg === null || typeof msg !== 'object') throw new ProtocolError('a protobuf message must be an object');
  for (const name of Object.keys(proto)) {
    const f = fieldOf(proto, name);
    if (f?.option === 'required' && msg[name] === undefined) {
      throw new ProtocolError(`required field ${name} is missing`);
    }
  }
  for (const [name, value] of Object.entries(msg)) {
    const f = fieldOf(proto, name);
    if (!f || value === undefined) continue;
    if (f.option !== 'repeated') {
      key(w, f);
      encodeValue(w, root, proto, f.type, value);
      continue;
    }
    if (!Array.isArray(value)) throw new ProtocolError(`repeated field ${name} must be an array`);
    if (value.length === 0) continue;
    if (SIMPLE.has(f.type)) {
      key(w, f);
      w.varint(value.length);
      for (const v of value) encodeValue(w, root, proto, f.type, v);
    } else {
      for (const v of value) {
        key(w, f);
        encodeValue(w, root, proto, f.type, v);
      }
    }
  }
}

/** Encodes `msg` with the proto of `route` in `protos`. */
export function encodeProtobuf(protos: Protos, route: string, msg: unknown): Uint8Array {
  const proto = protos[route];
  if (!proto) throw new ProtocolError(`no proto for ${route}`);
  const w = new Writer();
  encodeFields(w, protos, proto, msg as Record<string, unknown>);
  return Uint8Array.from(w.bytes);
}

class Reader {
  at = 0;
  constructor(private readonly bytes: Uint8Array, private readonly end = bytes.length) {}

  done(): boolean {
    return this.at >= this.end;
  }

  varint(): number {
    let n = 0;
    let shift = 1;
    for (;;) {
      if (this.at >= this.end) throw new ProtocolError('a protobuf varint is cut short');
      const b = this.bytes[this.at++];
      n += (b & 0x7f) * shift;
      if (b < 128) return n;
      shift *= 128;
      if (shift > 2 ** 56) throw new ProtocolError('a protobuf varint is too long');
    }
  }

  zigzag(): number {
    const n = this.varint();
    return n % 2 === 1 ? -(n + 1) / 2 : n / 2;
  }

  take(len: number): Uint8Array {
    if (this.at + len > this.end) throw new ProtocolError('a protobuf field is cut short');
    const out = this.bytes.subarray(this.at, this.at + len);
    this.at += len;
    return out;
  }

  float(size: 4 | 8): number {
    const b = this.take(size);
    const view = new DataView(b.buffer, b.byteOffset, size);
    return size === 4 ? view.getFloat32(0, true) : view.getFloat64(0, true);
  }
}

function decodeValue(r: Reader, root: Protos, proto: MessageProto, type: string): unknown {
  switch (type) {
    case 'uInt32':
      return r.varint();
    case 'int32':
    case 'sInt32':
      return r.zigzag();
    case 'float':
      return r.float(4);
    case 'double':
      return r.float(8);
    case 'string':
      return decodeUtf8(r.take(r.varint()));
    default: {
      const message = nested(root, proto, type);
      if (!message) throw new ProtocolError(`no proto for message type ${type}`);
      const body = r.take(r.varint());
      return decodeFields(new Reader(body), root, message);
    }
  }
}

function decodeFields(r: Reader, root: Protos, proto: MessageProto): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  while (!r.done()) {
    const tag = Math.floor(r.varint() / 8);
    const name = proto.__tags?.[tag];
    const f = name === undefined ? undefined : fieldOf(proto, name);
    if (!f || name === undefined) throw new ProtocolError(`tag ${tag} is not in the proto`);
    if (f.option !== 'repeated') {
      out[name] = decodeValue(r, root, proto, f.type);
      continue;
    }
    const list = (out[name] as unknown[] | undefined) ?? [];
    out[name] = list;
    if (SIMPLE.has(f.type)) {
      const count = r.varint();
      for (let i = 0; i < count; i++) list.push(decodeValue(r, root, proto, f.type));
    } else {
      list.push(decodeValue(r, root, proto, f.type));
    }
  }
  return out;
}

/** Decodes a body of `route` with its proto in `protos`. */
export function decodeProtobuf(protos: Protos, route: string, body: Uint8Array): Record<string, unknown> {
  const proto = protos[route];
  if (!proto) throw new ProtocolError(`no proto for ${route}`);
  return decodeFields(new Reader(body), protos, proto);
}
