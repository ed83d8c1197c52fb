// The TypeScript client's protobuf codec (clients/js/dist/protobuf.js)
// against pomelo-protobuf, the reference: the same bytes for the same
// message, and each decodes what the other encodes.
// Usage: node client_protobuf.js   (exits 0 when every check passed)
'use strict';
const assert = require('assert');
const path = require('path');
const { pathToFileURL } = require('url');
const Protobuf = require('pomelo-protobuf');
const Parser = require('pomelo-protobuf/lib/parser');

// Raw protos as a server writes them: every type, nesting, shared messages,
// repeated numbers and messages.
const raw = {
  'area.playerHandler.move': {
    'required uInt32 id': 1,
    'optional sInt32 dx': 2,
    'optional int32 dy': 3,
    'optional float speed': 4,
    'optional double at': 5,
    'optional string name': 6,
    'message Point': { 'required sInt32 x': 1, 'required sInt32 y': 2 },
    'repeated Point path': 7,
    'repeated uInt32 seen': 8,
    'repeated sInt32 deltas': 9,
    'optional Item item': 10,
  },
  'message Item': { 'required string kind': 1, 'repeated string tags': 2, 'optional uInt32 count': 3 },
};
const messages = [
  { id: 1 },
  { id: 300, dx: -1, dy: -70000, speed: 1.5, at: 1234567.890123, name: 'ünï 名前' },
  { id: 2 ** 31, path: [{ x: 1, y: -2 }, { x: -300, y: 40000 }], seen: [0, 1, 127, 128, 16384], deltas: [-1, 0, 1, -65] },
  { id: 7, item: { kind: 'sword', tags: ['rare', 'sharp'], count: 3 }, name: '' },
];

(async () => {
  const lib = await import(pathToFileURL(path.join(__dirname, '../../clients/js/dist/protobuf.js')).href);
  const protos = Parser.parse(raw);
  Protobuf.init({ encoderProtos: protos, decoderProtos: protos });
  const route = 'area.playerHandler.move';
  for (const msg of messages) {
    const theirs = Protobuf.encode(route, msg);
    const ours = lib.encodeProtobuf(protos, route, msg);
    assert(Buffer.from(ours).equals(theirs), `bytes of ${JSON.stringify(msg)}:\n ours   ${Buffer.from(ours).toString('hex')}\n theirs ${theirs.toString('hex')}`);
    const back = lib.decodeProtobuf(protos, route, new Uint8Array(theirs));
    const ref = Protobuf.decode(route, theirs);
    // Floats come back as float32 on both sides.
    assert.deepStrictEqual(back, ref, `decoded ${JSON.stringify(msg)}`);
  }
  // A body that does not fit its proto is an error, not a wrong value.
  assert.throws(() => lib.decodeProtobuf(protos, route, Uint8Array.of(0x08)), /cut short/);
  assert.throws(() => lib.encodeProtobuf(protos, route, { dx: 1 }), /required field id/);
  console.log(`client-protobuf: ok (${messages.length} messages)`);
})().catch((err) => {
  console.error(`client-protobuf failed: ${err.stack || err}`);
  process.exit(1);
});
