// session-proxy's client for games: the Pomelo/Pinus protocol over
// WebSocket, with resume built in.
export { Client } from './client.js';
export { ClientError, Connection } from './connection.js';
export { decodeProtobuf, encodeProtobuf } from './protobuf.js';
export { MessageType, Package, ProtocolError } from './protocol.js';
