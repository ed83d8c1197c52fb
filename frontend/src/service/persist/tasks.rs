//! The store's background work: coalesced writes, TTL refreshes, retries
//! while it is down, and the sessions other frontends' logins end.

use super::StoreLink;
use crate::service::SessionService;
use std::sync::Weak;
use std::time::Duration;
use tokio::time::Instant;

/// Closes the sessions another frontend's admission ended (the uid's
/// session limit), as the store announces them, until the service or the
/// store is dropped. One this frontend does not hold is none of its
/// business; one it misses is fenced at its next write.
pub(super) async fn follow_evictions(
    inner: Weak<crate::service::Inner>,
    mut evictions: tokio::sync::broadcast::Receiver<crate::store::Evicted>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let evicted = match evictions.recv().await {
            Ok(evicted) => evicted,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "missed session evictions; their writes will be fenced"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let service = SessionService { inner };
        let ending =
            crate::service::close::Ending::Ended(crate::EndReason::from_stored(&evicted.reason));
        if service.remove_as(evicted.sid, ending, true, false) {
            tracing::info!(
                sid = %evicted.sid.redacted(),
                reason = %evicted.reason,
                "session ended by another frontend's login (session limit)"
            );
        }
    }
}

/// Flushes coalesced changes and keeps live sessions alive in the store,
/// until the service is dropped. While the store is down it retries with a
/// doubling pause (up to [`StoreOptions::retry_max`]); once the store
/// answers it writes what waited and refreshes at once, so sessions a
/// restarted-empty server lost are written again.
/// `incarnation` is the store server's run the sessions were read from.
pub(super) async fn background(
    inner: Weak<crate::service::Inner>,
    mut incarnation: Option<String>,
) {
    let Some((flush_every, ttl, retry_max, check_every)) = inner.upgrade().and_then(|i| {
        i.store.get().map(|l| {
            let o = &l.options;
            (o.flush_interval, o.ttl, o.retry_max, o.restart_check)
        })
    }) else {
        return;
    };
    let refresh_every = (ttl / 3).max(Duration::from_millis(10));
    let mut next_refresh = Instant::now() + refresh_every;
    let mut next_check = Instant::now() + check_every;
    let first_retry = Duration::from_millis(50);
    let mut retry = first_retry;
    loop {
        let down = inner
            .upgrade()
            .and_then(|i| i.store.get().map(StoreLink::is_down))
            .unwrap_or(false);
        let pause = if down { retry } else { flush_every };
        tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
        let Some(inner) = inner.upgrade() else { return };
        let service = SessionService { inner };
        let Some(link) = service.inner.store.get() else {
            return;
        };
        let was_down = link.is_down();
        if let Err(err) = link.write(&service).await {
            tracing::debug!(cause = %session_proxy_protocol::chain(&err), "writing sessions to the store failed; will retry");
            retry = (retry * 2).min(retry_max);
            continue;
        }
        if was_down {
            if link.is_down() {
                // Nothing was waiting to be written, so nothing asked the
                // store: the refresh is the probe.
                if let Err(err) = link.refresh(&service).await {
                    tracing::debug!(cause = %session_proxy_protocol::chain(&err), "the session store is still down");
                    retry = (retry * 2).min(retry_max);
                    continue;
                }
            }
            // Back after an outage: it may have come back empty, so
            // refresh (which finds what it lost) at once.
            retry = first_retry;
            next_refresh = Instant::now();
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + check_every;
            if let Ok(Some(now)) = link.call(link.store.incarnation()).await {
                if incarnation.as_ref().is_some_and(|was| *was != now) {
                    tracing::warn!(
                        "the session store's server restarted; writing every live session again"
                    );
                    next_refresh = Instant::now();
                }
                incarnation = Some(now);
            }
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + refresh_every;
            if let Err(err) = link.refresh(&service).await {
                tracing::debug!(cause = %session_proxy_protocol::chain(&err), "refreshing session TTLs failed; will retry");
            }
        }
    }
}
