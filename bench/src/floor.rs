//! The raw floor: the least a server must do to answer this protocol —
//! handshake, heartbeat, and an echo of every request, all inline in one
//! task per connection, no sessions, no forwarding. What session-proxy
//! adds on top is measured against it.

use bytes::BytesMut;
use session_proxy_protocol::client::{
    encode_parts, ClientMessage, MessageType, PackageCodec, PackageType, Route, MAX_PACKAGE_BODY,
};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

/// Serves the floor on `addr` (raw TCP only) until the task is dropped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("floor listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(err) = echo(stream).await {
                tracing::debug!(cause = %err, "floor connection ended");
            }
        });
    }
}

async fn echo(mut stream: TcpStream) -> anyhow::Result<()> {
    let mut codec = PackageCodec::new(MAX_PACKAGE_BODY);
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
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
                        codec.encode_with(PackageType::Data, &mut out, |b| {
                            encode_parts(MessageType::Response, m.id, &Route::None, &m.body, b)
                        })?;
                    }
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}
