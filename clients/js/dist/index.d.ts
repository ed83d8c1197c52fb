export { Client } from './client.js';
export type { ClientEvents, ClientOptions, ClientState, GateOptions, ReconnectOptions, ReconnectingEvent, SessionEvent, TokenStorage, } from './client.js';
export { ClientError, Connection } from './connection.js';
export type { ConnectionOptions, ErrorKind, HandshakeReply, WebSocketFactory, WebSocketLike } from './connection.js';
export { decodeProtobuf, encodeProtobuf } from './protobuf.js';
export type { FieldProto, HandshakeProtos, MessageProto, Protos } from './protobuf.js';
export { MessageType, Package, ProtocolError } from './protocol.js';
