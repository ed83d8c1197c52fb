//! The core session proxy: one frontend, backends on loopback TCP; and every
//! invariant again over the in-process link (`RpcConfig::in_process`),
//! which must behave exactly as TCP does.

use crate::common;

use common::*;
use session_proxy::protocol::{Bind, KeyWrite, KickByUid, Precondition, Push, Unbind};
use session_proxy::{
    ConnectInfo, ErrorCode, Outbound, SessionConfig, SessionId, SingleSessionPolicy,
};
use std::time::Duration;

/// An invariant test twice: `<name>::tcp` and `<name>::in_process`.
macro_rules! over_both_links {
    ($(#[$attr:meta])* async fn $name:ident($link:ident) $body:block) => {
        mod $name {
            use super::*;
            $(#[$attr])*
            async fn tcp() {
                let $link = Link::Tcp;
                $body
            }
            $(#[$attr])*
            async fn in_process() {
                let $link = Link::InProcess;
                $body
            }
        }
    };
}

over_both_links! {
#[tokio::test]
async fn backend_operations_are_visible_on_the_frontend(link) {
    let f = start_frontend_on("f1", link).await;
    let mut owner = f.sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    let backend = start_backend("b1", "f1", &f.dial);

    let mut s = backend
        .get("f1", sid)
        .await
        .expect("call")
        .expect("session exists");
    assert_eq!(s.id(), sid);
    assert_eq!(s.frontend_id(), "f1");
    assert_eq!(s.uid(), None);

    s.bind("alice").await.expect("bind");
    assert_eq!(
        f.sessions.get(sid).expect("open").uid.as_deref(),
        Some("alice")
    );
    assert_eq!(s.uid(), Some("alice"));

    s.set("room", "lobby").expect("encode");
    assert_eq!(
        frontend_value::<String>(&f.sessions, sid, "room"),
        None,
        "set is local until pushed"
    );
    s.push("room").await.expect("push");
    assert_eq!(
        frontend_value::<String>(&f.sessions, sid, "room").as_deref(),
        Some("lobby")
    );

    s.set("hp", &100u32).expect("encode");
    s.set("pos", &(3i32, -4i32)).expect("encode");
    s.push_all().await.expect("push_all");
    assert_eq!(frontend_value::<u32>(&f.sessions, sid, "hp"), Some(100));
    assert_eq!(
        frontend_value::<(i32, i32)>(&f.sessions, sid, "pos"),
        Some((3, -4))
    );

    s.remove("hp");
    assert_eq!(s.get::<u32>("hp").expect("decode"), None);
    s.push("hp").await.expect("push of a removed key");
    assert!(!f
        .sessions
        .get(sid)
        .expect("open")
        .settings
        .contains_key("hp"));

    // get and get_by_uid from a backend return the current state.
    let fresh = backend.get("f1", sid).await.expect("call").expect("exists");
    assert_eq!(
        fresh.get::<String>("room").expect("decode").as_deref(),
        Some("lobby")
    );
    assert_eq!(
        fresh.get::<(i32, i32)>("pos").expect("decode"),
        Some((3, -4))
    );
    assert_eq!(
        fresh.version("room"),
        f.sessions
            .get(sid)
            .expect("open")
            .settings
            .get("room")
            .map(|s| s.version)
    );
    let by_uid = backend.get_by_uid("f1", "alice").await.expect("call");
    assert_eq!(by_uid.len(), 1);
    assert_eq!(by_uid[0].id(), sid);
    assert_eq!(by_uid[0].export(), fresh.export());
    assert!(backend
        .get_by_uid("f1", "nobody")
        .await
        .expect("call")
        .is_empty());
    assert!(backend
        .get("f1", SessionId::from_raw(1))
        .await
        .expect("call")
        .is_none());

    s.unbind("alice").await.expect("unbind");
    assert_eq!(f.sessions.get(sid).expect("open").uid, None);
    assert!(f.sessions.sids_of_uid("alice").is_empty());

    // Kick by uid from a backend reaches the owning connection.
    s.bind("alice").await.expect("bind again");
    assert_eq!(
        backend
            .kick_by_uid("f1", "alice", "maintenance")
            .await
            .expect("kick"),
        1
    );
    assert_eq!(
        owner.recv().await,
        Some(Outbound::Kick {
            reason: "maintenance".into()
        })
    );
    assert_eq!(owner.recv().await, None, "the session is over");
    assert_eq!(f.sessions.count(), 0);
    assert!(!backend.kick_by_sid("f1", sid, "again").await.expect("kick"));
}
}

over_both_links! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_pushes_last_applied_wins_per_key(link) {
    let f = start_frontend_on("f1", link).await;
    let owner = f.sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    f.sessions
        .set(sid, "shared", encode("initial"))
        .expect("open");
    let a = start_backend("a", "f1", &f.dial);
    let b = start_backend("b", "f1", &f.dial);

    // Both backends hammer the same key; each remembers the version the
    // frontend gave each of its writes. The winner is the highest version.
    let worker = |svc: session_proxy::BackendSessionService, tag: &'static str| async move {
        let mut s = svc.get("f1", sid).await.expect("call").expect("open");
        let mut writes = Vec::new();
        for i in 0..500u32 {
            let value = format!("{tag}-{i}");
            s.set("shared", &value).expect("encode");
            s.push("shared").await.expect("push");
            writes.push((
                s.version("shared").expect("pushed keys have versions"),
                value,
            ));
        }
        writes
    };
    let (wa, wb) = tokio::join!(
        tokio::spawn(worker(a.clone(), "a")),
        tokio::spawn(worker(b.clone(), "b"))
    );
    let mut all: Vec<_> = wa.expect("a").into_iter().chain(wb.expect("b")).collect();
    all.sort();
    let versions: Vec<u64> = all.iter().map(|(v, _)| *v).collect();
    let mut dedup = versions.clone();
    dedup.dedup();
    assert_eq!(versions, dedup, "every applied write got its own version");
    let (last_version, last_value) = all.last().expect("writes").clone();
    let now = f.sessions.get(sid).expect("open");
    assert_eq!(now.settings["shared"].version, last_version);
    assert_eq!(decode::<String>(&now.settings["shared"].value), last_value);

    // push_all writes the keys of its own snapshot and nothing else.
    let mut from_b = b.get("f1", sid).await.expect("call").expect("open"); // has "shared"
    let mut from_a = a.get("f1", sid).await.expect("call").expect("open");
    from_a.set("a_only", &1u8).expect("encode");
    from_a.push("a_only").await.expect("push");
    from_b.set("b_only", &2u8).expect("encode");
    from_b.push_all().await.expect("push_all");
    assert_eq!(
        frontend_value::<u8>(&f.sessions, sid, "a_only"),
        Some(1),
        "untouched by b's push_all"
    );
    assert_eq!(frontend_value::<u8>(&f.sessions, sid, "b_only"), Some(2));
    // A key that only the other backend removed stays removed from b's view
    // only after an explicit removal: push_all never deletes unnamed keys.
    from_a.remove("a_only");
    from_b.set("b_only", &3u8).expect("encode");
    from_b.push_all().await.expect("push_all");
    assert_eq!(frontend_value::<u8>(&f.sessions, sid, "a_only"), Some(1));
    from_a.push_all().await.expect("push_all with a removal");
    assert!(!f
        .sessions
        .get(sid)
        .expect("open")
        .settings
        .contains_key("a_only"));
    assert_eq!(frontend_value::<u8>(&f.sessions, sid, "b_only"), Some(3));
}
}

over_both_links! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_pushes_are_applied_in_order(link) {
    const N: u64 = 10_000;
    let f = start_frontend_on("f1", link).await;
    let owner = f.sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    let backend = start_backend("b", "f1", &f.dial);
    let client = backend.client("f1").expect("known frontend");

    // An observer on the frontend reads the key as fast as it can; the
    // sequence it sees must never go backwards.
    let sessions = f.sessions.clone();
    let observer = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let (mut last, mut seen) = (None::<u64>, 0u64);
        while tokio::time::Instant::now() < deadline {
            let current = sessions
                .get(sid)
                .and_then(|s| s.settings.get("seq").map(|v| decode::<u64>(&v.value)));
            if let Some(v) = current {
                assert!(
                    last.is_none_or(|l| v >= l),
                    "observed {v} after {last:?}: reordered"
                );
                if last != Some(v) {
                    seen += 1;
                }
                last = Some(v);
                if v == N - 1 {
                    return seen;
                }
            }
            tokio::task::yield_now().await;
        }
        panic!("the last push never arrived (last seen {last:?})");
    });

    // Send all 10,000 before waiting for any reply.
    let mut pending = Vec::with_capacity(N as usize);
    for i in 0..N {
        let call = Push {
            sid,
            writes: vec![KeyWrite {
                key: "seq".into(),
                value: Some(encode(&i)),
                expect: Precondition::Any,
            }],
        };
        pending.push(client.send(call).await.expect("queued"));
    }
    let mut last_version = 0;
    for p in pending {
        let versions = p.response().await.expect("applied");
        let v = versions[0].expect("a write has a version");
        assert!(v > last_version, "versions follow the send order");
        last_version = v;
    }
    assert_eq!(frontend_value::<u64>(&f.sessions, sid, "seq"), Some(N - 1));
    assert_eq!(
        f.sessions.get(sid).expect("open").settings["seq"].version,
        last_version
    );
    let distinct = observer.await.expect("observer saw no reordering");
    assert!(distinct >= 1);
}
}

over_both_links! {
#[tokio::test]
async fn conditional_push_after_a_concurrent_change_conflicts_and_changes_nothing(link) {
    let f = start_frontend_on("f1", link).await;
    let owner = f.sessions.create(ConnectInfo::default());
    let sid = owner.sid();
    f.sessions.set(sid, "gold", encode(&10u32)).expect("open");
    let a = start_backend("a", "f1", &f.dial);
    let b = start_backend("b", "f1", &f.dial);

    let mut from_a = a.get("f1", sid).await.expect("call").expect("open");
    let mut from_b = b.get("f1", sid).await.expect("call").expect("open");
    from_b.set("gold", &20u32).expect("encode");
    from_b
        .push_if_unchanged("gold")
        .await
        .expect("nobody moved it yet");

    from_a.set("gold", &15u32).expect("encode");
    let err = from_a
        .push_if_unchanged("gold")
        .await
        .expect_err("b moved the key");
    assert_eq!(err.code(), ErrorCode::Conflict, "{err}");
    assert_eq!(frontend_value::<u32>(&f.sessions, sid, "gold"), Some(20));

    // A key that appeared since the snapshot conflicts too, and an
    // all-or-nothing push_all writes nothing when one key conflicts.
    from_b.set("title", "knight").expect("encode");
    from_b.push("title").await.expect("push");
    from_a.set("title", "squire").expect("encode");
    from_a.set("fresh", &1u8).expect("encode");
    let err = from_a
        .push_all_if_unchanged()
        .await
        .expect_err("title and gold moved");
    assert_eq!(err.code(), ErrorCode::Conflict);
    let now = f.sessions.get(sid).expect("open");
    assert!(
        !now.settings.contains_key("fresh"),
        "nothing of the failed push applied"
    );
    assert_eq!(decode::<String>(&now.settings["title"].value), "knight");

    // After a refresh the conditional push goes through.
    from_a.refresh().await.expect("refresh");
    from_a
        .set(
            "gold",
            &(from_a.get::<u32>("gold").expect("decode").expect("set") + 5),
        )
        .expect("encode");
    from_a
        .push_if_unchanged("gold")
        .await
        .expect("fresh snapshot");
    assert_eq!(frontend_value::<u32>(&f.sessions, sid, "gold"), Some(25));
}
}

over_both_links! {
#[tokio::test]
async fn bad_calls_get_typed_errors(link) {
    let f = start_frontend_on("f1", link).await;
    let first = f.sessions.create(ConnectInfo::default());
    let second = f.sessions.create(ConnectInfo::default());
    let backend = start_backend("b", "f1", &f.dial);
    let client = backend.client("f1").expect("known");

    // Unknown sid.
    let err = client
        .call(Bind {
            sid: SessionId::from_raw(12345),
            uid: "x".into(),
        })
        .await
        .expect_err("no such session");
    assert_eq!(err.code(), ErrorCode::SessionNotFound);
    assert!(!err.to_string().contains("12345"), "{err}");

    // Bind of a session bound to another uid; unbind with the wrong uid.
    let mut s = backend
        .get("f1", first.sid())
        .await
        .expect("call")
        .expect("open");
    let mut stale = s.clone();
    s.bind("alice").await.expect("bind");
    assert_eq!(
        stale.bind("bob").await.expect_err("bound to alice").code(),
        ErrorCode::AlreadyBound
    );
    assert_eq!(
        s.unbind("bob").await.expect_err("bound to alice").code(),
        ErrorCode::UidMismatch
    );
    assert_eq!(
        f.sessions.get(first.sid()).expect("open").uid.as_deref(),
        Some("alice")
    );

    // A proxy whose session closed meanwhile.
    let mut gone = backend
        .get("f1", second.sid())
        .await
        .expect("call")
        .expect("open");
    drop(second);
    gone.set("k", &1u8).expect("encode");
    assert_eq!(
        gone.push("k").await.expect_err("closed").code(),
        ErrorCode::SessionNotFound
    );
    assert_eq!(
        gone.refresh().await.expect_err("closed").code(),
        ErrorCode::SessionNotFound
    );

    // A frontend id nobody configured, and one that answers with another id.
    assert_eq!(
        backend
            .get("f9", first.sid())
            .await
            .expect_err("unknown")
            .code(),
        ErrorCode::Unavailable
    );
    backend.add_frontend("f2", f.dial.clone());
    let err = backend
        .get("f2", first.sid())
        .await
        .expect_err("f1 is not f2");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    let shown = session_proxy::protocol::chain(&err).to_string();
    assert!(shown.contains("wrong frontend"), "{shown}");

    // A value that does not decode as the asked type.
    s.set("name", "alice").expect("encode");
    assert_eq!(
        s.get::<u64>("name").expect_err("a string").code(),
        ErrorCode::Malformed
    );

    // The frontend took none of this badly.
    s.push("name").await.expect("still serving");
    assert_eq!(f.sessions.count(), 1);
}
}

over_both_links! {
#[tokio::test]
async fn single_session_policy_kick_old(link) {
    let mut config = SessionConfig::new("f1");
    config.single_session = SingleSessionPolicy::KickOld;
    let f = start_frontend_with_on(config, link).await;
    let mut old = f.sessions.create(ConnectInfo::default());
    let new = f.sessions.create(ConnectInfo::default());
    let backend = start_backend("b", "f1", &f.dial);

    common::bind_via(&backend, "f1", old.sid(), "alice")
        .await
        .expect("bind");
    common::bind_via(&backend, "f1", new.sid(), "alice")
        .await
        .expect("second bind wins");
    assert_eq!(
        old.recv().await,
        Some(Outbound::Kick {
            reason: "replaced".into()
        })
    );
    assert_eq!(old.recv().await, None);
    let sessions = backend.get_by_uid("f1", "alice").await.expect("call");
    assert_eq!(
        sessions.iter().map(|s| s.id()).collect::<Vec<_>>(),
        vec![new.sid()]
    );
    assert_eq!(f.sessions.count(), 1);
}
}

over_both_links! {
#[tokio::test]
async fn single_session_policy_reject_new(link) {
    let mut config = SessionConfig::new("f1");
    config.single_session = SingleSessionPolicy::RejectNew;
    let f = start_frontend_with_on(config, link).await;
    let old = f.sessions.create(ConnectInfo::default());
    let new = f.sessions.create(ConnectInfo::default());
    let backend = start_backend("b", "f1", &f.dial);

    common::bind_via(&backend, "f1", old.sid(), "alice")
        .await
        .expect("bind");
    let mut second = backend
        .get("f1", new.sid())
        .await
        .expect("call")
        .expect("open");
    assert_eq!(
        second.bind("alice").await.expect_err("refused").code(),
        ErrorCode::SessionLimit
    );
    assert_eq!(second.uid(), None);
    assert_eq!(f.sessions.get(new.sid()).expect("still open").uid, None);
    assert_eq!(f.sessions.sids_of_uid("alice"), vec![old.sid()]);
    // Once the old session is gone the uid is free again.
    drop(old);
    second.bind("alice").await.expect("free now");
}
}

over_both_links! {
#[tokio::test]
async fn ten_thousand_create_bind_close_cycles_leak_nothing(link) {
    let f = start_frontend_on("f1", link).await;
    let backend = start_backend("b", "f1", &f.dial);
    let client = backend.client("f1").expect("known");
    let mut events = f.sessions.subscribe();
    for i in 0..10_000u32 {
        let owner = f.sessions.create(ConnectInfo::default());
        let uid = format!("user-{}", i % 97);
        client
            .call(Bind {
                sid: owner.sid(),
                uid: uid.clone(),
            })
            .await
            .expect("bind");
        match i % 3 {
            0 => drop(owner),
            1 => {
                client
                    .call(KickByUid {
                        uid,
                        reason: "cycle".into(),
                    })
                    .await
                    .expect("kick");
            }
            _ => {
                client
                    .call(Unbind {
                        sid: owner.sid(),
                        uid,
                    })
                    .await
                    .expect("unbind");
                f.sessions.close(owner.sid(), session_proxy::frontend::EndReason::Kicked("cycle".into()));
            }
        }
        // Keep the event channel drained so it never lags.
        while events.try_recv().is_ok() {}
    }
    assert_eq!(f.sessions.count(), 0);
    assert_eq!(f.sessions.uid_count(), 0, "uid index leaked entries");
}
}

over_both_links! {
#[tokio::test]
async fn a_user_is_located_and_kicked_on_every_frontend(link) {
    let f1 = start_frontend_on("f1", link).await;
    let f2 = start_frontend_on("f2", link).await;
    let backend = start_backend("b1", "f1", &f1.dial);
    backend.add_frontend("f2", f2.dial.clone());
    let mut owners = Vec::new();
    for f in [&f1, &f2, &f2] {
        let owner = f.sessions.create(ConnectInfo::default());
        f.sessions.bind(owner.sid(), "alice").expect("bind");
        owners.push((f.sessions.frontend_id().to_string(), owner));
    }
    let other = f1.sessions.create(ConnectInfo::default());
    f1.sessions.bind(other.sid(), "bob").expect("bind");

    let mut expected: Vec<(String, SessionId)> =
        owners.iter().map(|(f, o)| (f.clone(), o.sid())).collect();
    expected.sort();
    assert_eq!(backend.locate("alice").await.expect("locate"), expected);
    assert_eq!(
        backend
            .kick_user_everywhere("alice", "banned")
            .await
            .expect("kick"),
        3
    );
    assert!(backend.locate("alice").await.expect("locate").is_empty());
    assert_eq!(
        backend.locate("bob").await.expect("locate"),
        vec![("f1".to_string(), other.sid())],
        "nobody else was touched"
    );
}
}
