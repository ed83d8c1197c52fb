/** Package types. */
export declare const Package: {
    readonly Handshake: 1;
    readonly HandshakeAck: 2;
    readonly Heartbeat: 3;
    readonly Data: 4;
    readonly Kick: 5;
};
/** Message types (bits 1–3 of a message's flag byte). */
export declare const MessageType: {
    readonly Request: 0;
    readonly Notify: 1;
    readonly Response: 2;
    readonly Push: 3;
};
/** The largest body a package header can announce. */
export declare const MAX_BODY = 16777215;
/** Bytes that do not follow the protocol. */
export declare class ProtocolError extends Error {
    name: string;
}
/** UTF-8 bytes of a string. */
export declare function encodeUtf8(s: string): Uint8Array;
/** The string of UTF-8 bytes; throws {@link ProtocolError} on bad UTF-8. */
export declare function decodeUtf8(bytes: Uint8Array): string;
/** One package: its type and body. */
export declare function encodePackage(type: number, body?: Uint8Array): Uint8Array;
/** A decoded package. */
export interface Pkg {
    type: number;
    body: Uint8Array;
}
/**
 * The packages in one WebSocket message (a server may put several in one).
 * Throws {@link ProtocolError} when a header promises more than is there.
 */
export declare function decodePackages(bytes: Uint8Array): Pkg[];
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
export declare function encodeMessage(m: OutMessage): Uint8Array;
/** A received message: a response (id, no route) or a push (route). */
export interface InMessage {
    type: number;
    id: number;
    /** The route, or its dictionary code when compressed. */
    route: string | number | null;
    body: Uint8Array;
}
/** Decodes a message; throws {@link ProtocolError} on one cut short. */
export declare function decodeMessage(bytes: Uint8Array): InMessage;
