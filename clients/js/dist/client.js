// A client that keeps its session: it resumes with the server's token
// after a drop, goes back through the gate when its connector drains (a
// "reconnect" kick), keeps the token across a page reload, and tells the
// game whether the session came back.
import { ClientError, Connection } from './connection.js';
function memoryStorage() {
    const m = new Map();
    return {
        getItem: (k) => m.get(k) ?? null,
        setItem: (k, v) => void m.set(k, v),
        removeItem: (k) => void m.delete(k),
    };
}
function urlOf(host, port, secure) {
    const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
    return `${secure ? 'wss' : 'ws'}://${h}:${port}/`;
}
/**
 * A Pomelo/Pinus client for session-proxy that keeps its session.
 *
 * ```ts
 * const client = new Client({ gate: { host, port: 3014, route: 'gate.gateHandler.queryEntry', body: { uid } }, storage: sessionStorage });
 * client.on('session', ({ resumed }) => { if (!resumed) client.request('connector.entryHandler.enter', { username, rid }); });
 * await client.connect();
 * ```
 */
export class Client {
    constructor(options) {
        this.listeners = {
            session: new Set(),
            push: new Set(),
            reconnecting: new Set(),
            kick: new Set(),
            close: new Set(),
        };
        this.queue = [];
        this.current = 'idle';
        this.lastResumed = false;
        if (!options.gate && (options.host === undefined || options.port === undefined)) {
            throw new TypeError('a Client needs a gate, or a host and port');
        }
        const ws = options.WebSocket ?? globalThis.WebSocket;
        if (!ws)
            throw new TypeError('no WebSocket here: pass one (in Node, `WebSocket` from the `ws` package)');
        this.options = options;
        this.WebSocket = ws;
        this.storage = options.storage ?? memoryStorage();
        this.key = options.storageKey ?? 'session-proxy';
    }
    /** Where the client stands. */
    get state() {
        return this.current;
    }
    /** Whether the last handshake gave the same session back. */
    get resumed() {
        return this.lastResumed;
    }
    /** The connection in use, while there is one. */
    get connection() {
        return this.conn;
    }
    /** The resume token held (kept in `storage`), if any. */
    get token() {
        return this.load()?.token;
    }
    /** Listens to an event. */
    on(event, listener) {
        this.listeners[event].add(listener);
        return this;
    }
    /** Stops listening. */
    off(event, listener) {
        this.listeners[event].delete(listener);
        return this;
    }
    /**
     * Connects: resumes the session whose token `storage` holds, or starts a
     * new one (through the gate when there is one). Resolves with the
     * session event (`resumed` says which); rejects with a {@link ClientError}.
     */
    async connect() {
        if (this.current !== 'idle' && this.current !== 'closed') {
            throw new ClientError('refused', `connect() while ${this.current}`);
        }
        this.current = 'connecting';
        try {
            return await this.establish(false);
        }
        catch (err) {
            this.current = 'closed';
            throw err;
        }
    }
    /** Sends a request; resolves with the answer's body (a `{code: 500}` body is an answer, not an error). */
    request(route, body = {}, options = {}) {
        const timeout = options.timeout ?? this.options.requestTimeout ?? 10000;
        if (this.current === 'open' && this.conn?.open)
            return this.conn.request(route, body, timeout);
        return this.enqueue(route, body, false, timeout);
    }
    /** Sends a notify; while reconnecting it waits like a request (or throws with `'fail'`). */
    notify(route, body = {}) {
        if (this.current === 'open' && this.conn?.open) {
            this.conn.notify(route, body);
            return;
        }
        const timeout = this.options.requestTimeout ?? 10000;
        this.enqueue(route, body, true, timeout).catch(() => {
            // a notify has no answer to fail: it is dropped
        });
    }
    /**
     * Closes the client. The token is forgotten unless `keepToken` (the
     * session then stays resumable on the server for its resume grace).
     */
    close(options = {}) {
        if (!options.keepToken)
            this.storage.removeItem(this.key);
        this.shut(null);
    }
    emit(event, ...args) {
        for (const l of [...this.listeners[event]]) {
            try {
                l(...args);
            }
            catch (err) {
                // A game's listener must not break the client.
                setTimeout(() => {
                    throw err;
                });
            }
        }
    }
    load() {
        const raw = this.storage.getItem(this.key);
        if (!raw)
            return undefined;
        try {
            const s = JSON.parse(raw);
            return typeof s.token === 'string' && typeof s.host === 'string' && typeof s.port === 'number' ? s : undefined;
        }
        catch {
            return undefined;
        }
    }
    enqueue(route, body, notify, timeout) {
        if (this.current === 'closed' || this.current === 'idle') {
            return Promise.reject(new ClientError('closed', `${route}: the client is not connected`));
        }
        if ((this.options.whileReconnecting ?? 'wait') === 'fail') {
            return Promise.reject(new ClientError('reconnecting', `${route}: the client is reconnecting`));
        }
        return new Promise((resolve, reject) => {
            const q = {
                route,
                body,
                notify,
                deadline: Date.now() + timeout,
                resolve,
                reject,
                timer: setTimeout(() => {
                    this.queue = this.queue.filter((x) => x !== q);
                    reject(new ClientError('timeout', `${route}: the session was not back within ${timeout} ms`));
                }, timeout),
            };
            this.queue.push(q);
        });
    }
    async askGate() {
        const gate = this.options.gate;
        const conn = await Connection.open({
            url: urlOf(gate.host, gate.port, !!this.options.secure),
            WebSocket: this.WebSocket,
            timeout: this.options.connectTimeout ?? 5000,
        });
        try {
            const answer = (await conn.request(gate.route, gate.body ?? {}, this.options.requestTimeout ?? 10000));
            if (answer?.code !== 200 || typeof answer.host !== 'string' || typeof answer.port !== 'number') {
                const why = typeof answer?.error === 'string' ? answer.error : JSON.stringify(answer);
                throw new ClientError('refused', `the gate gave no connector: ${why}`);
            }
            return { host: answer.host, port: answer.port };
        }
        finally {
            conn.close();
        }
    }
    /** Opens a connection (resuming when a token is held) and makes it current. */
    async establish(reroute) {
        const saved = this.load();
        let target;
        if (this.options.gate && (reroute || !saved))
            target = await this.askGate();
        else if (saved)
            target = saved;
        else
            target = { host: this.options.host, port: this.options.port };
        const user = { ...(this.options.user ?? {}) };
        if (saved)
            user.resumeToken = saved.token;
        const conn = await Connection.open({
            url: urlOf(target.host, target.port, !!this.options.secure),
            WebSocket: this.WebSocket,
            user,
            protos: this.protos,
            timeout: this.options.connectTimeout ?? 5000,
            onPush: (route, body) => this.emit('push', route, body),
            onClose: (kicked, cause) => this.dropped(conn, kicked, cause),
        });
        if (this.current === 'closed') {
            conn.close();
            throw new ClientError('closed', 'the client was closed while connecting');
        }
        this.conn = conn;
        this.protos = conn.protos ?? this.protos;
        const reply = conn.handshake.user ?? {};
        const resumed = reply.resumed === true;
        this.lastResumed = resumed;
        if (typeof reply.resumeToken === 'string') {
            this.storage.setItem(this.key, JSON.stringify({ ...target, token: reply.resumeToken }));
        }
        else {
            this.storage.removeItem(this.key);
        }
        this.current = 'open';
        const event = { resumed, host: target.host, port: target.port, handshake: conn.handshake };
        if (typeof reply.resumeRefused === 'string')
            event.refused = reply.resumeRefused;
        this.flush(resumed || !saved);
        this.emit('session', event);
        return event;
    }
    /** Sends what waited for the session; when the session did not come back, fails it. */
    flush(sameSession) {
        const queued = this.queue;
        this.queue = [];
        for (const q of queued) {
            clearTimeout(q.timer);
            if (!sameSession) {
                q.reject(new ClientError('session-lost', `${q.route}: the session did not come back (a new one was started)`));
            }
            else if (q.notify) {
                try {
                    this.conn?.notify(q.route, q.body);
                    q.resolve(undefined);
                }
                catch (err) {
                    q.reject(err instanceof ClientError ? err : new ClientError('lost', String(err)));
                }
            }
            else {
                const left = Math.max(1, q.deadline - Date.now());
                this.conn.request(q.route, q.body, left).then(q.resolve, q.reject);
            }
        }
    }
    dropped(conn, kicked, cause) {
        if (conn !== this.conn || this.current === 'closed')
            return;
        if (kicked !== null && kicked !== 'reconnect') {
            // The session is over on the server (kicked, replaced, resumed elsewhere…).
            this.storage.removeItem(this.key);
            this.emit('kick', kicked);
            this.shut(new ClientError('closed', `kicked: ${kicked}`));
            return;
        }
        void this.reconnect(kicked === 'reconnect', kicked === 'reconnect' ? 'the connector is draining' : cause);
    }
    async reconnect(reroute, cause) {
        this.current = 'reconnecting';
        const r = this.options.reconnect ?? {};
        const attempts = r.attempts ?? 10;
        const min = r.minDelay ?? 200;
        const max = r.maxDelay ?? 5000;
        let last;
        for (let attempt = 1; attempt <= attempts; attempt++) {
            // Full jitter; a draining connector's players go at once.
            const cap = Math.min(max, min * 2 ** (attempt - 1));
            const delay = attempt === 1 && reroute ? 0 : Math.round(Math.random() * cap);
            this.emit('reconnecting', { attempt, delay, cause });
            await new Promise((resolve) => {
                const t = setTimeout(resolve, delay);
                this.wake = () => {
                    clearTimeout(t);
                    resolve();
                };
            });
            this.wake = undefined;
            if (this.closed())
                return;
            try {
                await this.establish(reroute);
                return;
            }
            catch (err) {
                if (this.closed())
                    return;
                last = err;
                // The connector could not be reached: ask the gate next time.
                reroute = !!this.options.gate;
                // A handshake the server refused will be refused again with this
                // token, unless the server said to try again.
                if (err instanceof ClientError && err.kind === 'refused' && !err.retry && this.load())
                    this.storage.removeItem(this.key);
            }
        }
        const why = last instanceof Error ? last.message : String(last);
        this.shut(new ClientError('closed', `gave up reconnecting after ${attempts} attempts: ${why}`));
    }
    /** Whether the client was closed (read afresh after an await). */
    closed() {
        return this.current === 'closed';
    }
    shut(error) {
        if (this.current === 'closed')
            return;
        this.current = 'closed';
        this.wake?.();
        const conn = this.conn;
        this.conn = undefined;
        conn?.close();
        for (const q of this.queue) {
            clearTimeout(q.timer);
            q.reject(error ?? new ClientError('closed', `${q.route}: the client was closed`));
        }
        this.queue = [];
        this.emit('close', error);
    }
}
