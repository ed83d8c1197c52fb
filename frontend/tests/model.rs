//! Property: any sequence of bind/unbind/push/remove/close, as several
//! backends would send them, leaves the frontend's sessions equal to a
//! plain reference model applying the same sequence in arrival order, and
//! the uid index always agrees with the sessions.

use bytes::Bytes;
use proptest::prelude::*;
use session_proxy_frontend::{ConnectInfo, SessionConfig, SessionOwner, SessionService};
use session_proxy_protocol::{KeyWrite, Precondition, SessionId};
use std::collections::{BTreeMap, BTreeSet};

/// One call, tagged with the backend that sent it (the tag is only read in
/// a failing case's Debug output: arrival order is what matters).
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Op {
    Create,
    Bind {
        backend: u8,
        session: usize,
        uid: u8,
    },
    Unbind {
        backend: u8,
        session: usize,
        uid: u8,
    },
    Push {
        backend: u8,
        session: usize,
        key: u8,
        value: u8,
    },
    Remove {
        backend: u8,
        session: usize,
        key: u8,
    },
    Close {
        session: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        3 => (0..3u8, 0..8usize, 0..4u8).prop_map(|(backend, session, uid)| Op::Bind { backend, session, uid }),
        2 => (0..3u8, 0..8usize, 0..4u8).prop_map(|(backend, session, uid)| Op::Unbind { backend, session, uid }),
        4 => (0..3u8, 0..8usize, 0..4u8, any::<u8>()).prop_map(|(backend, session, key, value)| Op::Push { backend, session, key, value }),
        2 => (0..3u8, 0..8usize, 0..4u8).prop_map(|(backend, session, key)| Op::Remove { backend, session, key }),
        1 => (0..8usize).prop_map(|session| Op::Close { session }),
    ]
}

#[derive(Default, Debug)]
struct ModelSession {
    uid: Option<String>,
    settings: BTreeMap<String, Vec<u8>>,
}

fn uid(n: u8) -> String {
    format!("user:{n}")
}

fn key(n: u8) -> String {
    format!("k{n}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn frontend_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..120)) {
        let service = SessionService::new(SessionConfig::new("f1"));
        // Slot i: the live owner and the model of session i (None once closed).
        let mut owners: Vec<Option<SessionOwner>> = Vec::new();
        let mut model: Vec<Option<ModelSession>> = Vec::new();
        let mut sids: Vec<SessionId> = Vec::new();
        for op in ops {
            match op {
                Op::Create => {
                    let o = service.create(ConnectInfo::default());
                    sids.push(o.sid());
                    owners.push(Some(o));
                    model.push(Some(ModelSession::default()));
                }
                Op::Bind { session, uid: u, .. } if session < sids.len() => {
                    let got = service.bind(sids[session], &uid(u));
                    match model[session].as_mut() {
                        None => prop_assert!(got.is_err()),
                        Some(m) => match &m.uid {
                            Some(current) if *current == uid(u) => prop_assert!(got.is_ok()),
                            Some(_) => prop_assert!(got.is_err(), "bound to another uid"),
                            None => {
                                prop_assert!(got.is_ok());
                                m.uid = Some(uid(u));
                            }
                        },
                    }
                }
                Op::Unbind { session, uid: u, .. } if session < sids.len() => {
                    let got = service.unbind(sids[session], &uid(u));
                    match model[session].as_mut() {
                        Some(m) if m.uid.as_deref() == Some(uid(u).as_str()) => {
                            prop_assert!(got.is_ok());
                            m.uid = None;
                        }
                        _ => prop_assert!(got.is_err()),
                    }
                }
                Op::Push { session, key: k, value, .. } if session < sids.len() => {
                    let writes = vec![KeyWrite { key: key(k), value: Some(Bytes::from(vec![value])), expect: Precondition::Any }];
                    let got = service.apply_push(sids[session], writes);
                    match model[session].as_mut() {
                        Some(m) => {
                            prop_assert!(got.is_ok());
                            m.settings.insert(key(k), vec![value]);
                        }
                        None => prop_assert!(got.is_err()),
                    }
                }
                Op::Remove { session, key: k, .. } if session < sids.len() => {
                    let writes = vec![KeyWrite { key: key(k), value: None, expect: Precondition::Any }];
                    let got = service.apply_push(sids[session], writes);
                    match model[session].as_mut() {
                        Some(m) => {
                            prop_assert!(got.is_ok());
                            m.settings.remove(&key(k));
                        }
                        None => prop_assert!(got.is_err()),
                    }
                }
                Op::Close { session } if session < sids.len() => {
                    owners[session] = None; // dropping the owner closes it
                    model[session] = None;
                }
                _ => {}
            }
            // The frontend equals the model, and the uid index agrees.
            let mut by_uid: BTreeMap<String, BTreeSet<SessionId>> = BTreeMap::new();
            for (i, m) in model.iter().enumerate() {
                let got = service.get(sids[i]);
                match m {
                    None => prop_assert!(got.is_none()),
                    Some(m) => {
                        let got = got.expect("open in the model, so open on the frontend");
                        prop_assert_eq!(&got.uid, &m.uid);
                        let values: BTreeMap<String, Vec<u8>> =
                            got.settings.iter().map(|(k, s)| (k.clone(), s.value.to_vec())).collect();
                        prop_assert_eq!(&values, &m.settings);
                        if let Some(u) = &m.uid {
                            by_uid.entry(u.clone()).or_default().insert(sids[i]);
                        }
                    }
                }
            }
            prop_assert_eq!(service.uid_count(), by_uid.len());
            for (u, want) in &by_uid {
                let got: BTreeSet<SessionId> = service.sids_of_uid(u).into_iter().collect();
                prop_assert_eq!(&got, want);
            }
            prop_assert_eq!(service.count(), model.iter().filter(|m| m.is_some()).count());
        }
    }
}
