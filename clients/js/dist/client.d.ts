import { ClientError, Connection, HandshakeReply, WebSocketFactory } from './connection.js';
/** Where tokens are kept: `sessionStorage` or `localStorage` in a browser, memory by default. */
export interface TokenStorage {
    getItem(key: string): string | null;
    setItem(key: string, value: string): void;
    removeItem(key: string): void;
}
/** The gate: where a client asks which connector to use (chatofpomelo's `gate.gateHandler.queryEntry`). */
export interface GateOptions {
    host: string;
    port: number;
    /** The route that answers `{code: 200, host, port}`. */
    route: string;
    /** The request's body (e.g. `{uid}`). */
    body?: unknown;
}
/** How the client reconnects. */
export interface ReconnectOptions {
    /** Attempts before it gives up (default: 10). */
    attempts?: number;
    /** The first delay's upper bound, in ms (default 200); it doubles per attempt. */
    minDelay?: number;
    /** The largest delay, in ms (default 5000). */
    maxDelay?: number;
}
/** What a {@link Client} is built with. */
export interface ClientOptions {
    /** A connector to use directly, when there is no gate. */
    host?: string;
    port?: number;
    /** Ask this gate for a connector (first, and whenever a connector drains or cannot be reached). */
    gate?: GateOptions;
    /** `wss://` instead of `ws://`. */
    secure?: boolean;
    /** A WebSocket constructor: the browser's by default; in Node, `ws`'s. */
    WebSocket?: WebSocketFactory;
    /** Where the token and connector are kept (default: memory; `sessionStorage` keeps them across a reload). */
    storage?: TokenStorage;
    /** The key in `storage` (default `session-proxy`). */
    storageKey?: string;
    /** A request's deadline, in ms (default 10000). */
    requestTimeout?: number;
    /** How long opening a connection and its handshake may take, in ms (default 5000). */
    connectTimeout?: number;
    reconnect?: ReconnectOptions;
    /**
     * Requests made while reconnecting: `'wait'` (default) sends them once the
     * session is back, within their deadline; `'fail'` rejects them at once
     * with kind `reconnecting`.
     */
    whileReconnecting?: 'wait' | 'fail';
    /** More fields for the handshake's `user` object. */
    user?: Record<string, unknown>;
}
/** A session (re)established: new, or the same one back. */
export interface SessionEvent {
    /** Whether the server gave the same session back. When false, the game logs in again. */
    resumed: boolean;
    /** Why a resume was refused (`user.resumeRefused`), when it was. */
    refused?: string;
    host: string;
    port: number;
    /** The whole handshake reply. */
    handshake: HandshakeReply;
}
/** A reconnect attempt about to be made. */
export interface ReconnectingEvent {
    attempt: number;
    /** The delay before it, in ms. */
    delay: number;
    /** Why the connection was lost. */
    cause: string;
}
/** The events a {@link Client} emits, and what their listeners get. */
export interface ClientEvents {
    session: (event: SessionEvent) => void;
    push: (route: string, body: unknown) => void;
    reconnecting: (event: ReconnectingEvent) => void;
    /** A kick that ends the session (not `"reconnect"`, which the client handles). */
    kick: (reason: string) => void;
    /** The client is closed: by the game (`null`), or after it gave up. */
    close: (error: ClientError | null) => void;
}
/** Where the client stands. */
export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';
/**
 * A Pomelo/Pinus client for session-proxy that keeps its session.
 *
 * ```ts
 * const client = new Client({ gate: { host, port: 3014, route: 'gate.gateHandler.queryEntry', body: { uid } }, storage: sessionStorage });
 * client.on('session', ({ resumed }) => { if (!resumed) client.request('connector.entryHandler.enter', { username, rid }); });
 * await client.connect();
 * ```
 */
export declare class Client {
    private readonly options;
    private readonly WebSocket;
    private readonly storage;
    private readonly key;
    private readonly listeners;
    private conn;
    private protos;
    private queue;
    private current;
    private wake;
    private lastResumed;
    constructor(options: ClientOptions);
    /** Where the client stands. */
    get state(): ClientState;
    /** Whether the last handshake gave the same session back. */
    get resumed(): boolean;
    /** The connection in use, while there is one. */
    get connection(): Connection | undefined;
    /** The resume token held (kept in `storage`), if any. */
    get token(): string | undefined;
    /** Listens to an event. */
    on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this;
    /** Stops listening. */
    off<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this;
    /**
     * Connects: resumes the session whose token `storage` holds, or starts a
     * new one (through the gate when there is one). Resolves with the
     * session event (`resumed` says which); rejects with a {@link ClientError}.
     */
    connect(): Promise<SessionEvent>;
    /** Sends a request; resolves with the answer's body (a `{code: 500}` body is an answer, not an error). */
    request(route: string, body?: unknown, options?: {
        timeout?: number;
    }): Promise<unknown>;
    /** Sends a notify; while reconnecting it waits like a request (or throws with `'fail'`). */
    notify(route: string, body?: unknown): void;
    /**
     * Closes the client. The token is forgotten unless `keepToken` (the
     * session then stays resumable on the server for its resume grace).
     */
    close(options?: {
        keepToken?: boolean;
    }): void;
    private emit;
    private load;
    private enqueue;
    private askGate;
    /** Opens a connection (resuming when a token is held) and makes it current. */
    private establish;
    /** Sends what waited for the session; when the session did not come back, fails it. */
    private flush;
    private dropped;
    private reconnect;
    /** Whether the client was closed (read afresh after an await). */
    private closed;
    private shut;
}
