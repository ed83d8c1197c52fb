//! Unit tests of the session table.

use super::*;
use crate::{Error, SessionConfig, SingleSessionPolicy};
use bytes::Bytes;
use session_proxy_protocol::{KeyWrite, Precondition};

fn service(policy: SingleSessionPolicy) -> SessionService {
    let mut config = SessionConfig::new("f1");
    config.single_session = policy;
    SessionService::new(config)
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn bind_unbind_and_index() {
    let s = service(SingleSessionPolicy::Off);
    let a = s.create(ConnectInfo::default());
    let b = s.create(ConnectInfo::default());
    s.bind(a.sid(), "u").expect("bind a");
    s.bind(b.sid(), "u").expect("bind b");
    s.bind(a.sid(), "u")
        .expect("rebinding the same uid is a no-op");
    assert_eq!(s.sids_of_uid("u").len(), 2);
    assert!(matches!(
        s.bind(a.sid(), "v"),
        Err(Error::AlreadyBound { .. })
    ));
    assert!(matches!(
        s.unbind(a.sid(), "v"),
        Err(Error::UidMismatch { .. })
    ));
    s.unbind(a.sid(), "u").expect("unbind");
    assert_eq!(s.sids_of_uid("u"), vec![b.sid()]);
    drop(b);
    assert_eq!(s.uid_count(), 0);
}

#[test]
fn the_settings_byte_count_stays_in_step() {
    let s = service(SingleSessionPolicy::Off);
    let a = s.create(ConnectInfo::default());
    let sid = a.sid();
    let check = || {
        let e = s.inner.sessions.get(&sid).expect("open");
        let sum: usize = e
            .settings
            .iter()
            .map(|(k, v)| k.len() + v.value.len())
            .sum();
        assert_eq!(e.settings_bytes, sum);
    };
    s.set(sid, "a", bytes("12345")).expect("set");
    check();
    s.set(sid, "a", bytes("1")).expect("replace");
    check();
    s.import(
        sid,
        [
            ("b".to_string(), bytes("xy")),
            ("a".to_string(), bytes("zzz")),
        ],
    )
    .expect("import");
    check();
    let writes = vec![
        KeyWrite {
            key: "b".into(),
            value: None,
            expect: Precondition::Any,
        },
        KeyWrite {
            key: "c".into(),
            value: Some(bytes("cc")),
            expect: Precondition::Any,
        },
        KeyWrite {
            key: "c".into(),
            value: Some(bytes("c")),
            expect: Precondition::Any,
        },
    ];
    s.apply_push(sid, writes).expect("push");
    check();
    assert!(s.remove_key(sid, "a").expect("open"));
    check();
}

#[test]
fn versions_are_never_reused() {
    let s = service(SingleSessionPolicy::Off);
    let a = s.create(ConnectInfo::default());
    let v1 = s.set(a.sid(), "k", bytes("1")).expect("set");
    assert!(s.remove_key(a.sid(), "k").expect("remove"));
    let v2 = s.set(a.sid(), "k", bytes("2")).expect("set");
    assert!(v2 > v1);
}

#[test]
fn push_is_all_or_nothing() {
    let s = service(SingleSessionPolicy::Off);
    let a = s.create(ConnectInfo::default());
    let v = s.set(a.sid(), "k", bytes("1")).expect("set");
    let err = s
        .apply_push(
            a.sid(),
            vec![
                KeyWrite {
                    key: "other".into(),
                    value: Some(bytes("x")),
                    expect: Precondition::Any,
                },
                KeyWrite {
                    key: "k".into(),
                    value: Some(bytes("2")),
                    expect: Precondition::Version(v + 1),
                },
            ],
        )
        .expect_err("stale version");
    assert!(matches!(err, Error::Conflict { ref key, .. } if key == "k"));
    let snap = s.get(a.sid()).expect("open");
    assert!(!snap.settings.contains_key("other"), "nothing applied");
    assert_eq!(snap.settings["k"].value, bytes("1"));
}

#[test]
fn kick_old_policy_replaces() {
    let s = service(SingleSessionPolicy::KickOld);
    let mut a = s.create(ConnectInfo::default());
    let b = s.create(ConnectInfo::default());
    s.bind(a.sid(), "u").expect("bind a");
    s.bind(b.sid(), "u").expect("bind b replaces a");
    assert_eq!(
        a.try_recv(),
        Ok(Some(Outbound::Kick {
            reason: "replaced".into()
        }))
    );
    assert_eq!(a.try_recv(), Err(()));
    assert_eq!(s.sids_of_uid("u"), vec![b.sid()]);
    assert!(s.get(a.sid()).is_none());
}

#[test]
fn reject_new_policy_refuses() {
    let s = service(SingleSessionPolicy::RejectNew);
    let a = s.create(ConnectInfo::default());
    let b = s.create(ConnectInfo::default());
    s.bind(a.sid(), "u").expect("bind a");
    assert!(matches!(s.bind(b.sid(), "u"), Err(Error::SessionLimit)));
    assert_eq!(s.get(b.sid()).expect("b stays open").uid, None);
    assert_eq!(s.sids_of_uid("u"), vec![a.sid()]);
}

#[test]
fn a_limit_of_two_keeps_the_two_newest_or_refuses_a_third() {
    for policy in [SingleSessionPolicy::KickOld, SingleSessionPolicy::RejectNew] {
        let mut config = SessionConfig::new("f1");
        config.single_session = policy;
        config.sessions_per_uid = 2;
        let s = SessionService::new(config);
        let owners: Vec<_> = (0..3).map(|_| s.create(ConnectInfo::default())).collect();
        let [a, b, c] = [0, 1, 2].map(|i| owners[i].sid());
        s.bind(a, "u").expect("first");
        s.bind(b, "u").expect("second");
        match policy {
            SingleSessionPolicy::KickOld => {
                s.bind(c, "u").expect("third replaces the oldest");
                assert_eq!(s.sids_of_uid("u"), vec![b, c]);
                assert!(s.get(a).is_none());
            }
            _ => {
                assert!(matches!(s.bind(c, "u"), Err(Error::SessionLimit)));
                assert_eq!(s.sids_of_uid("u"), vec![a, b]);
            }
        }
    }
}

#[test]
fn events_follow_the_lifecycle() {
    let s = service(SingleSessionPolicy::Off);
    let mut events = s.subscribe();
    let a = s.create(ConnectInfo::default());
    let sid = a.sid();
    s.bind(sid, "u").expect("bind");
    s.unbind(sid, "u").expect("unbind");
    s.bind(sid, "w").expect("bind");
    drop(a);
    let got: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert_eq!(
        got,
        vec![
            SessionEvent::Bound {
                sid,
                uid: "u".into()
            },
            SessionEvent::Unbound {
                sid,
                uid: "u".into()
            },
            SessionEvent::Bound {
                sid,
                uid: "w".into()
            },
            SessionEvent::Closed {
                sid,
                uid: Some("w".into()),
                reason: crate::EndReason::Disconnected
            },
        ]
    );
}

#[test]
fn a_full_push_queue_closes_the_slow_client() {
    let mut config = SessionConfig::new("f1");
    config.owner_queue = 1;
    let s = SessionService::new(config);
    let mut a = s.create(ConnectInfo::default());
    s.push_to_client(a.sid(), "onChat", bytes("1"))
        .expect("room for one");
    assert!(matches!(
        s.push_to_client(a.sid(), "onChat", bytes("2")),
        Err(Error::OwnerQueueFull(_))
    ));
    assert!(matches!(a.try_recv(), Ok(Some(Outbound::Push { .. }))));
}

/// Two frontends, "fa" and "fb", sharing one in-memory store.
async fn two_frontends_on_one_store() -> (SessionService, SessionService) {
    let store: Arc<dyn crate::store::SessionStore> = Arc::new(crate::store::MemoryStore::new());
    let a = SessionService::new(SessionConfig::new("fa"));
    let b = SessionService::new(SessionConfig::new("fb"));
    for s in [&a, &b] {
        s.attach_store(store.clone(), crate::StoreOptions::default())
            .await
            .expect("attach");
    }
    (a, b)
}

/// A session whose client resumed on another frontend (its old owner was
/// paused, say) is reported there as moved when the old owner's next write
/// is fenced: its close hook does not run, and no Closed event says the
/// player left. A session that ends for good runs the hook exactly once.
#[tokio::test]
async fn a_session_that_moved_is_reported_moved_and_never_closed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (a, b) = two_frontends_on_one_store().await;
    let hooks = Arc::new(AtomicUsize::new(0));
    let counted = hooks.clone();
    a.on_closed(Arc::new(move |_, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        None
    }));
    let mut events = a.subscribe();
    let owner = a.create(ConnectInfo::default());
    let sid = owner.sid();
    a.bind(sid, "alice").expect("bind");
    let token = a.issue_token(sid).expect("token");
    assert!(owner.park(std::time::Duration::from_secs(30)));
    a.flush().await.expect("written");

    // The client resumes on b; a's next write is fenced.
    let (_on_b, _) = b.resume_anywhere(&token, &[]).await.expect("resumed on b");
    a.set(sid, "k", bytes("v")).expect("a still holds its copy");
    let _ = a.flush().await;
    assert!(a.get(sid).is_none(), "a let its copy go");
    let seen: Vec<SessionEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(
        seen.contains(&SessionEvent::Moved {
            sid,
            uid: Some("alice".into()),
            to: "fb".into()
        }),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, SessionEvent::Closed { .. })),
        "{seen:?}"
    );
    assert_eq!(hooks.load(Ordering::SeqCst), 0, "no close hook for a move");

    // One that ends for good runs the hook once, however often it is
    // ended: once the store has deleted it.
    let other = a.create(ConnectInfo::default());
    assert_eq!(a.end_all(EndReason::Shutdown), 1);
    assert!(!a.close(other.sid(), EndReason::Disconnected));
    drop(other);
    assert_eq!(
        hooks.load(Ordering::SeqCst),
        0,
        "the store has not answered"
    );
    a.flush().await.expect("deleted");
    assert_eq!(hooks.load(Ordering::SeqCst), 1);

    // A parked copy left behind by a paused owner expires after its client
    // resumed elsewhere: the store refuses the deletion, so it moved.
    let owner = a.create(ConnectInfo::default());
    let sid = owner.sid();
    a.bind(sid, "bob").expect("bind");
    let token = a.issue_token(sid).expect("token");
    assert!(owner.park(std::time::Duration::from_secs(30)));
    a.flush().await.expect("written");
    let (_on_b, _) = b.resume_anywhere(&token, &[]).await.expect("resumed on b");
    assert!(a.close(sid, EndReason::Expired), "a's stale copy ends");
    a.flush().await.expect("answered");
    let seen: Vec<SessionEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(
        seen.contains(&SessionEvent::Moved {
            sid,
            uid: Some("bob".into()),
            to: "fb".into()
        }),
        "{seen:?}"
    );
    assert_eq!(hooks.load(Ordering::SeqCst), 1, "no hook for bob");
}

/// A frontend that still holds a parked copy of a session another frontend
/// claimed (it made no write since, so nothing fenced it yet) resumes the
/// session from the store, not from its stale copy: with the token the
/// client got from the other frontend, and with the older token it may
/// still hold (a handshake reply it never read), which the store keeps for
/// the overlap. Either way the client sees the write acknowledged there.
#[tokio::test]
async fn a_stale_parked_copy_is_never_resumed_after_a_move() {
    let (a, b) = two_frontends_on_one_store().await;
    let grace = std::time::Duration::from_secs(30);
    let value_on = |s: &SessionService, sid| {
        s.get(sid)
            .and_then(|snap| snap.settings.get("n").map(|v| v.value.clone()))
    };
    for comes_back_with_the_older_token in [false, true] {
        // A session on a, written there (1), parked: its client dropped.
        let owner = a.create(ConnectInfo::default());
        let sid = owner.sid();
        a.set(sid, "n", bytes("1")).expect("set on a");
        let first = a.issue_token(sid).expect("token");
        assert!(owner.park(grace));
        a.flush().await.expect("written");

        // It resumes on b and is written there (2), durably; b parks it.
        let (on_b, second) = b.resume_anywhere(&first, &[]).await.expect("on b");
        b.set(sid, "n", bytes("2")).expect("set on b");
        b.flush().await.expect("acknowledged");
        assert!(on_b.park(grace));
        b.flush().await.expect("parked on b");
        assert!(a.get(sid).is_some(), "a still holds its copy, unfenced");

        // Back on a.
        let token = match comes_back_with_the_older_token {
            true => first,
            false => second,
        };
        let (on_a, _) = a.resume_anywhere(&token, &[]).await.expect("resumed on a");
        assert_eq!(
            value_on(&a, sid),
            Some(bytes("2")),
            "a resumed its stale copy (older token: {comes_back_with_the_older_token})"
        );
        // a holds it now: b's copy is fenced at its next write.
        b.set(sid, "n", bytes("3")).expect("b still holds its copy");
        let _ = b.flush().await;
        assert!(b.get(sid).is_none(), "b let its copy go");
        a.set(sid, "n", bytes("4")).expect("set on a");
        a.flush().await.expect("a's write is kept");
        drop(on_a);
    }
}
