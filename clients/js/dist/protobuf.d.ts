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
/** Encodes `msg` with the proto of `route` in `protos`. */
export declare function encodeProtobuf(protos: Protos, route: string, msg: unknown): Uint8Array;
/** Decodes a body of `route` with its proto in `protos`. */
export declare function decodeProtobuf(protos: Protos, route: string, body: Uint8Array): Record<string, unknown>;
