import { HandshakeProtos } from './protobuf.js';
/** What went wrong, for a game to branch on. */
export type ErrorKind = 
/** No answer within the request's deadline. */
'timeout'
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
export declare class ClientError extends Error {
    readonly kind: ErrorKind;
    /** A refusal the server says may not happen again (`"retry": true`: its session store did not answer); a resume token is still good. */
    readonly retry: boolean;
    name: string;
    constructor(kind: ErrorKind, message: string, 
    /** A refusal the server says may not happen again (`"retry": true`: its session store did not answer); a resume token is still good. */
    retry?: boolean);
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
    onclose: ((ev: {
        code?: number;
        reason?: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
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
/** One open connection, after its handshake. */
export declare class Connection {
    /** The server's handshake reply. */
    readonly handshake: HandshakeReply;
    /** The protos in use on this connection (fresh from the server, or the ones held). */
    readonly protos: HandshakeProtos | undefined;
    private readonly ws;
    private readonly options;
    private readonly dict;
    private readonly routes;
    private readonly waiting;
    private nextId;
    private heartbeatMs;
    private beat;
    private alive;
    private kicked;
    private ended;
    private constructor();
    /** Opens a connection and shakes hands; rejects with a {@link ClientError}. */
    static open(options: ConnectionOptions): Promise<Connection>;
    /** The WebSocket extensions the server accepted (`''` for none). */
    get extensions(): string;
    /** Whether the connection is still open. */
    get open(): boolean;
    /** Sends a request; resolves with the answer's body. */
    request(route: string, body: unknown, timeout: number): Promise<unknown>;
    /** Sends a notify (no answer). */
    notify(route: string, body: unknown): void;
    /** Closes the connection; requests still waiting fail with `lost`. */
    close(): void;
    private encode;
    private decodeBody;
    private armHeartbeat;
    private receive;
    private message;
    private abort;
    private finish;
}
