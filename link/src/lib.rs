//! The I/O both ends of a session-proxy cluster link share.
//!
//! The frames and calls themselves are `session-proxy-protocol`'s, which
//! does no I/O. This crate holds what touches a transport and is the same on
//! a frontend's end of a link and a backend's:
//!
//! - [`write_batch`]: the writer that sends what is queued for a link in one
//!   write (one flush per batch, not per frame);
//! - [`inproc`]: the in-process transport, for backends that run in the
//!   frontend's process;
//! - [`LinkTls`] (feature `tls`): the authorities a frontend's certificate
//!   is checked against, for backends and clients that dial it.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use futures::SinkExt;
//! use session_proxy_link::write_batch;
//! use tokio::sync::mpsc;
//!
//! // Three frames queued by other tasks leave in one flush.
//! let (tx, mut queue) = mpsc::channel(8);
//! for frame in [2, 3] {
//!     tx.send(frame).await.expect("room");
//! }
//! let mut sink = futures::sink::drain::<i32>().buffer(8);
//! write_batch(&mut sink, 1, &mut queue).await.expect("written");
//! # }
//! ```

pub mod inproc;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
pub use tls::LinkTls;

use futures::{Sink, SinkExt};
use tokio::sync::mpsc;

/// Writes `first` and every frame already queued behind it, then flushes
/// once.
///
/// Before the flush it yields once, so other tasks that are ready now
/// (client connections whose requests were read in the same I/O round,
/// handlers finishing together) queue their frames in time to leave in this
/// write instead of one write each. `feed` only buffers; a sink that is
/// past its high-water mark writes as it is fed, which is the link's
/// backpressure.
pub async fn write_batch<S, M>(
    sink: &mut S,
    first: M,
    queue: &mut mpsc::Receiver<M>,
) -> Result<(), S::Error>
where
    S: Sink<M> + Unpin,
{
    sink.feed(first).await?;
    while let Ok(frame) = queue.try_recv() {
        sink.feed(frame).await?;
    }
    tokio::task::yield_now().await;
    while let Ok(frame) = queue.try_recv() {
        sink.feed(frame).await?;
    }
    sink.flush().await
}

/// Writes what is still queued, then flushes, for a link that is closing:
/// its last answers leave before it does.
pub async fn write_rest<S, M>(sink: &mut S, queue: &mut mpsc::Receiver<M>) -> Result<(), S::Error>
where
    S: Sink<M> + Unpin,
{
    while let Ok(frame) = queue.try_recv() {
        sink.feed(frame).await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc as fmpsc;
    use futures::StreamExt;

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_takes_what_is_queued_and_what_others_queue_meanwhile() {
        let (tx, mut queue) = mpsc::channel(8);
        tx.send(2).await.expect("room");
        // Queued by another task while the writer yields.
        let late = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await.expect("room") }
        });
        let (sink, mut written) = fmpsc::unbounded::<i32>();
        let mut sink = sink.buffer(8);
        write_batch(&mut sink, 1, &mut queue)
            .await
            .expect("written");
        late.await.expect("task");
        drop(sink);
        let got: Vec<i32> = written.by_ref().collect().await;
        assert_eq!(got, vec![1, 2, 3]);
    }
}
