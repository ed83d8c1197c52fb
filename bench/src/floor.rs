//! The raw floor: the least a server must do to answer this protocol —
//! handshake, heartbeat, and an echo of every request, all inline in one
//! task per connection, no sessions, no forwarding. What session-proxy
//! adds on top is measured against it.
//!
//! It is also the fan-out floor: `*.login` is answered `{code: 200}`,
//! `*.join {channel}` puts the connection in a channel, and
//! `*.fanout {channel, msg}` encodes one `onFanout {msg}` push once and
//! writes those bytes to every member's socket from the requesting
//! connection's task, one `write` each, before answering. That is as
//! little as the kernel lets a push to N sockets cost: N sends of shared
//! bytes, no task per member, no copy per member.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
};
use session_proxy_protocol::sync::LockUnpoisoned as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::codec::Decoder;

/// One client connection, shared between its own task (which reads it and
/// answers) and the fan-out of any other connection (which writes to it).
struct Conn {
    stream: TcpStream,
    /// Bytes a write could not take yet; the connection's task flushes
    /// them when the socket is writable. A writer appends here whenever
    /// it is not empty, so bytes never pass each other.
    pending: Mutex<BytesMut>,
    /// Wakes the connection's task when `pending` got bytes.
    flush: Notify,
}

impl Conn {
    /// Writes `bytes` at once as far as the socket takes them; the rest
    /// waits in `pending`, in order.
    fn send(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock_unpoisoned();
        let mut written = 0;
        if pending.is_empty() {
            while written < bytes.len() {
                match self.stream.try_write(&bytes[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        if written < bytes.len() {
            pending.extend_from_slice(&bytes[written..]);
            self.flush.notify_one();
        }
    }

    /// Writes what waits in `pending`, as far as the socket takes it.
    fn write_pending(&self) -> std::io::Result<()> {
        let mut pending = self.pending.lock_unpoisoned();
        while !pending.is_empty() {
            match self.stream.try_write(&pending) {
                Ok(n) => {
                    let _ = pending.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        !self.pending.lock_unpoisoned().is_empty()
    }
}

/// The channels: their members' connections.
type Channels = Arc<Mutex<HashMap<String, Vec<Arc<Conn>>>>>;

/// Serves the floor on `addr` (raw TCP only) until the task is dropped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("floor listening on {}", listener.local_addr()?);
    serve_on(listener).await
}

/// Serves the floor on a bound listener until the task is dropped.
pub async fn serve_on(listener: TcpListener) -> std::io::Result<()> {
    let channels = Channels::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn {
            stream,
            pending: Mutex::default(),
            flush: Notify::new(),
        });
        let channels = channels.clone();
        tokio::spawn(async move {
            if let Err(err) = serve_conn(&conn, &channels).await {
                tracing::debug!(cause = %err, "floor connection ended");
            }
            // A closed member leaves its channels.
            for members in channels.lock_unpoisoned().values_mut() {
                members.retain(|m| !Arc::ptr_eq(m, &conn));
            }
        });
    }
}

async fn serve_conn(conn: &Arc<Conn>, channels: &Channels) -> anyhow::Result<()> {
    let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    loop {
        // Only a wake for pending bytes writes them: a request is read
        // and answered without touching them.
        let readable = tokio::select! {
            ready = conn.stream.readable() => { ready?; true }
            _ = conn.flush.notified() => false,
            ready = conn.stream.writable(), if conn.has_pending() => { ready?; false }
        };
        if !readable {
            conn.write_pending()?;
            continue;
        }
        match conn.stream.try_read_buf(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        while let Some(p) = codec.decode(&mut buf)? {
            match p.kind {
                PackageType::Handshake => {
                    codec.encode_to(
                        PackageType::Handshake,
                        br#"{"code":200,"sys":{"heartbeat":10}}"#,
                        &mut out,
                    )?;
                }
                PackageType::Heartbeat => codec.encode_to(PackageType::Heartbeat, &[], &mut out)?,
                PackageType::Data => {
                    let m = ClientMessage::decode(p.body)?;
                    if m.kind == MessageType::Request {
                        let answer = answer(conn, channels, &m)?;
                        let body = answer.as_ref().unwrap_or(&m.body);
                        codec.encode_with(PackageType::Data, &mut out, |b| {
                            encode_parts(MessageType::Response, m.id, &Route::None, body, b)
                        })?;
                    }
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            conn.send(&out);
            out.clear();
        }
    }
}

/// The answer to a request: `None` echoes its body.
fn answer(
    conn: &Arc<Conn>,
    channels: &Channels,
    m: &ClientMessage,
) -> anyhow::Result<Option<Bytes>> {
    let Route::Name(route) = &m.route else {
        return Ok(None);
    };
    let method = route.rsplit('.').next().unwrap_or_default();
    let ok = |v: Value| Ok(Some(Bytes::from(v.to_string())));
    match method {
        "login" => ok(json!({ "code": 200 })),
        "join" | "fanout" => {
            let body: Value = serde_json::from_slice(&m.body)?;
            let channel = body["channel"].as_str().unwrap_or("all").to_string();
            if method == "join" {
                let mut all = channels.lock_unpoisoned();
                let members = all.entry(channel).or_default();
                members.push(conn.clone());
                return ok(json!({ "code": 200, "members": members.len() }));
            }
            let push = json!({ "msg": body["msg"] }).to_string();
            let mut bytes = BytesMut::new();
            PackageCodec::new(MAX_PACKAGE_BODY).encode_with(
                PackageType::Data,
                &mut bytes,
                |b| {
                    encode_parts(
                        MessageType::Push,
                        0,
                        &Route::Name("onFanout".into()),
                        push.as_bytes(),
                        b,
                    )
                },
            )?;
            let members = channels
                .lock_unpoisoned()
                .get(&channel)
                .cloned()
                .unwrap_or_default();
            for member in &members {
                member.send(&bytes);
            }
            ok(json!({ "code": 200 }))
        }
        _ => Ok(None),
    }
}
