// One connection to a Pomelo/Pinus server over WebSocket: the handshake,
// heartbeats both ways, requests as promises with a deadline, notifies,
// pushes and kicks. It does not reconnect; `Client` does that on top.
import { MessageType, Package, ProtocolError, decodeMessage, decodePackages, decodeUtf8, encodeMessage, encodePackage, encodeUtf8, } from './protocol.js';
import { decodeProtobuf, encodeProtobuf } from './protobuf.js';
/** The client's typed error: `kind` says what happened. */
export class ClientError extends Error {
    constructor(kind, message, 
    /** A refusal the server says may not happen again (`"retry": true`: its session store did not answer); a resume token is still good. */
    retry = false) {
        super(message);
        this.kind = kind;
        this.retry = retry;
        this.name = 'ClientError';
    }
}
const OPEN = 1;
function toBytes(data) {
    if (data instanceof ArrayBuffer)
        return new Uint8Array(data);
    if (ArrayBuffer.isView(data))
        return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new ProtocolError('a text WebSocket message (the protocol is binary)');
}
/** One open connection, after its handshake. */
export class Connection {
    constructor(ws, options, reply) {
        this.dict = new Map();
        this.routes = new Map();
        this.waiting = new Map();
        this.nextId = 1;
        this.heartbeatMs = 0;
        this.kicked = null;
        this.ended = false;
        this.ws = ws;
        this.options = options;
        this.handshake = reply;
        const sys = reply.sys ?? {};
        if (sys.useDict !== false && sys.dict) {
            for (const [route, code] of Object.entries(sys.dict)) {
                this.dict.set(route, code);
                this.routes.set(code, route);
            }
        }
        this.protos = sys.useProto ? (sys.protos?.version !== undefined ? sys.protos : options.protos) : undefined;
        this.heartbeatMs = (sys.heartbeat ?? 0) * 1000;
    }
    /** Opens a connection and shakes hands; rejects with a {@link ClientError}. */
    static open(options) {
        return new Promise((resolve, reject) => {
            let conn;
            let settled = false;
            const fail = (err) => {
                if (settled)
                    return;
                settled = true;
                clearTimeout(deadline);
                try {
                    ws.close();
                }
                catch {
                    // already closed
                }
                reject(err);
            };
            let ws;
            try {
                ws = new options.WebSocket(options.url);
            }
            catch (err) {
                reject(new ClientError('unreachable', `cannot open ${options.url}: ${String(err)}`));
                return;
            }
            const deadline = setTimeout(() => fail(new ClientError('unreachable', `${options.url} did not shake hands within ${options.timeout} ms`)), options.timeout);
            ws.binaryType = 'arraybuffer';
            ws.onopen = () => {
                const hello = {
                    sys: { type: 'js-websocket', version: '0.0.1', protoVersion: options.protos?.version ?? 0 },
                    user: options.user ?? {},
                };
                ws.send(encodePackage(Package.Handshake, encodeUtf8(JSON.stringify(hello))));
            };
            ws.onerror = () => fail(new ClientError('unreachable', `cannot reach ${options.url}`));
            ws.onclose = (ev) => {
                if (conn)
                    conn.finish(`closed (${ev.code ?? 'no code'})`);
                else
                    fail(new ClientError('unreachable', `${options.url} closed before the handshake (${ev.code ?? 'no code'})`));
            };
            ws.onmessage = (ev) => {
                let packages;
                try {
                    packages = decodePackages(toBytes(ev.data));
                }
                catch (err) {
                    if (conn)
                        conn.abort(`${err.message}`);
                    else
                        fail(new ClientError('protocol', err.message));
                    return;
                }
                for (const p of packages) {
                    if (conn) {
                        conn.receive(p.type, p.body);
                        continue;
                    }
                    if (p.type !== Package.Handshake)
                        continue;
                    let reply;
                    try {
                        reply = JSON.parse(decodeUtf8(p.body));
                    }
                    catch {
                        fail(new ClientError('protocol', 'the handshake reply is not JSON'));
                        return;
                    }
                    if (reply.code !== 200) {
                        const why = typeof reply.error === 'string' ? reply.error : `code ${reply.code}`;
                        fail(new ClientError('refused', `the handshake was refused: ${why}`, reply.retry === true));
                        return;
                    }
                    settled = true;
                    clearTimeout(deadline);
                    conn = new Connection(ws, options, reply);
                    ws.send(encodePackage(Package.HandshakeAck));
                    conn.armHeartbeat();
                    resolve(conn);
                }
            };
        });
    }
    /** The WebSocket extensions the server accepted (`''` for none). */
    get extensions() {
        return this.ws.extensions ?? '';
    }
    /** Whether the connection is still open. */
    get open() {
        return !this.ended;
    }
    /** Sends a request; resolves with the answer's body. */
    request(route, body, timeout) {
        if (this.ended)
            return Promise.reject(new ClientError('lost', 'the connection is closed'));
        const id = this.nextId++;
        if (this.nextId > 2 ** 31)
            this.nextId = 1;
        let bytes;
        try {
            bytes = this.encode(MessageType.Request, id, route, body);
        }
        catch (err) {
            return Promise.reject(new ClientError('protocol', err.message));
        }
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.waiting.delete(id);
                reject(new ClientError('timeout', `${route} got no answer within ${timeout} ms`));
            }, timeout);
            this.waiting.set(id, { route, resolve, reject, timer });
            try {
                this.ws.send(bytes);
            }
            catch (err) {
                clearTimeout(timer);
                this.waiting.delete(id);
                reject(new ClientError('lost', `${route} could not be sent: ${String(err)}`));
            }
        });
    }
    /** Sends a notify (no answer). */
    notify(route, body) {
        if (this.ended)
            throw new ClientError('lost', 'the connection is closed');
        let bytes;
        try {
            bytes = this.encode(MessageType.Notify, 0, route, body);
        }
        catch (err) {
            throw new ClientError('protocol', err.message);
        }
        try {
            this.ws.send(bytes);
        }
        catch (err) {
            throw new ClientError('lost', `${route} could not be sent: ${String(err)}`);
        }
    }
    /** Closes the connection; requests still waiting fail with `lost`. */
    close() {
        this.finish('closed by the client');
    }
    encode(type, id, route, body) {
        const client = this.protos?.client;
        const payload = client && client[route] ? encodeProtobuf(client, route, body) : encodeUtf8(JSON.stringify(body ?? {}));
        const code = this.dict.get(route);
        return encodePackage(Package.Data, encodeMessage({ type, id, route, code, body: payload }));
    }
    decodeBody(route, body) {
        const server = this.protos?.server;
        if (server && server[route])
            return decodeProtobuf(server, route, body);
        if (body.length === 0)
            return null;
        return JSON.parse(decodeUtf8(body));
    }
    armHeartbeat() {
        if (!this.heartbeatMs)
            return;
        clearTimeout(this.beat);
        this.beat = setTimeout(() => {
            if (this.ws.readyState === OPEN)
                this.ws.send(encodePackage(Package.Heartbeat));
        }, this.heartbeatMs);
        // Anything from the server within two heartbeats, or the connection is dead.
        clearTimeout(this.alive);
        this.alive = setTimeout(() => this.abort('the server sent nothing for two heartbeats'), 2 * this.heartbeatMs + 1000);
    }
    receive(type, body) {
        switch (type) {
            case Package.Heartbeat:
                this.armHeartbeat();
                return;
            case Package.Data:
                this.armHeartbeat();
                try {
                    this.message(body);
                }
                catch (err) {
                    this.abort(`a message from the server: ${err.message}`);
                }
                return;
            case Package.Kick: {
                let reason = 'kicked';
                try {
                    const kick = JSON.parse(decodeUtf8(body));
                    if (typeof kick.reason === 'string')
                        reason = kick.reason;
                }
                catch {
                    // a kick without a JSON body is still a kick
                }
                this.kicked = reason;
                this.options.onKick?.(reason);
                return;
            }
            default:
                return;
        }
    }
    message(bytes) {
        const m = decodeMessage(bytes);
        if (m.type === MessageType.Response) {
            const w = this.waiting.get(m.id);
            if (!w)
                return;
            this.waiting.delete(m.id);
            clearTimeout(w.timer);
            try {
                w.resolve(this.decodeBody(w.route, m.body));
            }
            catch (err) {
                w.reject(new ClientError('protocol', `the answer to ${w.route}: ${err.message}`));
            }
        }
        else if (m.type === MessageType.Push) {
            const route = typeof m.route === 'number' ? this.routes.get(m.route) : m.route;
            if (route === undefined || route === null)
                throw new ProtocolError(`a push with unknown route code ${m.route}`);
            this.options.onPush?.(route, this.decodeBody(route, m.body));
        }
    }
    abort(cause) {
        try {
            this.ws.close();
        }
        catch {
            // already closing
        }
        this.finish(cause);
    }
    finish(cause) {
        if (this.ended)
            return;
        this.ended = true;
        clearTimeout(this.beat);
        clearTimeout(this.alive);
        this.ws.onclose = null;
        this.ws.onmessage = null;
        this.ws.onerror = null;
        try {
            this.ws.close();
        }
        catch {
            // already closed
        }
        for (const w of this.waiting.values()) {
            clearTimeout(w.timer);
            w.reject(new ClientError('lost', `the connection was lost before the answer to ${w.route} (${cause}); it may or may not have been applied`));
        }
        this.waiting.clear();
        this.options.onClose?.(this.kicked, cause);
    }
}
