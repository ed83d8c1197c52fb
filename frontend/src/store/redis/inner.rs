//! What the store's calls and its background tasks share: running a batch
//! (scripts reloaded after a server restart), the session scripts' keys,
//! ending sessions and taking them out of their uid's sets, reading records.

use super::conn::Conn;
use super::scripts::Scripts;
use super::Keys;
use crate::store::{StoreError, StoredSession};
use ::redis::{AsyncCommands, Cmd, FromRedisValue, Script, Value};
use session_proxy_protocol::SessionId;
use std::sync::Arc;
use std::time::Duration;

/// What the store's calls and its background tasks share.
pub(super) struct Inner {
    pub(super) conn: Arc<Conn>,
    pub(super) keys: Keys,
    pub(super) scripts: Scripts,
}

pub(super) fn parse_sid(hex: &str) -> Option<SessionId> {
    u64::from_str_radix(hex, 16).ok().map(SessionId::from_raw)
}

pub(super) fn sid_hex(sid: SessionId) -> String {
    format!("{:016x}", sid.as_u64())
}

pub(super) fn encode(s: &StoredSession) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(s).map_err(StoreError::Encode)
}

/// A session from its hash fields `e`, `f`, `d`: the record, with the
/// epoch and owner the store holds. `None` for an ended one.
pub(super) fn decode(
    (epoch, owner, record): (Option<u64>, Option<String>, Option<Vec<u8>>),
) -> Result<Option<StoredSession>, StoreError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let mut s: StoredSession = rmp_serde::from_slice(&record).map_err(StoreError::Decode)?;
    s.epoch = epoch.unwrap_or(0);
    if let Some(owner) = owner {
        s.info.frontend_id = owner;
    }
    Ok(Some(s))
}

/// An EVALSHA of `script` on `keys`; the caller adds the arguments.
pub(super) fn eval(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Inner {
    /// Runs `cmds` (each within one slot) and answers in their order;
    /// after a server restart (NOSCRIPT) loads the scripts again and runs
    /// them once more (every script may run twice).
    pub(super) async fn run<T: FromRedisValue>(&self, cmds: &[Cmd]) -> Result<Vec<T>, StoreError> {
        let answers = self.run_then(cmds, &[]).await?;
        Ok(answers
            .iter()
            .map(T::from_redis_value)
            .collect::<Result<_, _>>()?)
    }

    /// [`Inner::run`] of `first`, then of `then`, which must not start
    /// before `first` is done; answers `first`'s answers.
    pub(super) async fn run_then(
        &self,
        first: &[Cmd],
        then: &[Cmd],
    ) -> Result<Vec<Value>, StoreError> {
        let mut link = self.conn.get();
        match link.each_then(first, then).await {
            Err(err) if err.kind() == ::redis::ErrorKind::NoScriptError => {
                self.scripts.load(&mut link).await?;
                Ok(link.each_then(first, then).await?)
            }
            other => Ok(other?),
        }
    }

    /// A script on one session's keys (session hash, owner key).
    pub(super) fn on_session(&self, script: &Script, sid: SessionId) -> Cmd {
        eval(script, &[self.keys.session(sid), self.keys.owner(sid)])
    }

    /// Takes `sid` out of `uid`'s set and admission set.
    pub(super) fn unindex(&self, sid: SessionId, uid: &str, into: &mut Vec<Cmd>) {
        let hex = sid_hex(sid);
        into.push(
            ::redis::cmd("SREM")
                .arg(self.keys.uid(uid))
                .arg(&hex)
                .clone(),
        );
        into.push(
            ::redis::cmd("ZREM")
                .arg(self.keys.admitted(uid))
                .arg(&hex)
                .clone(),
        );
    }

    /// An HMGET of `fields` of each session.
    pub(super) fn read_fields(
        &self,
        sids: impl Iterator<Item = SessionId>,
        fields: &[&str],
    ) -> Vec<Cmd> {
        sids.map(|sid| {
            let mut cmd = ::redis::cmd("HMGET");
            cmd.arg(self.keys.session(sid)).arg(fields);
            cmd
        })
        .collect()
    }

    pub(super) async fn read_many(
        &self,
        sids: &[SessionId],
    ) -> Result<Vec<StoredSession>, StoreError> {
        let cmds = self.read_fields(sids.iter().copied(), &["e", "f", "d"]);
        type Fields = (Option<u64>, Option<String>, Option<Vec<u8>>);
        let found: Vec<Fields> = self.conn.get().each(&cmds).await?;
        let mut out = Vec::with_capacity(found.len());
        for fields in found {
            out.extend(decode(fields)?);
        }
        Ok(out)
    }

    /// The sessions a uid's set names that are held under that uid.
    pub(super) async fn by_uid(&self, uid: &str) -> Result<Vec<StoredSession>, StoreError> {
        let members: Vec<String> = self.conn.get().smembers(self.keys.uid(uid)).await?;
        let sids: Vec<SessionId> = members.iter().filter_map(|m| parse_sid(m)).collect();
        let mut held = self.read_many(&sids).await?;
        held.retain(|s| s.info.uid.as_deref() == Some(uid));
        Ok(held)
    }

    /// Runs the end script in `mode` (`delete` or `release`, with the
    /// epoch), then takes each ended session out of its uid's sets.
    /// Answers each session's `(code, uid or owner)`.
    pub(super) async fn end(
        &self,
        sessions: &[(SessionId, u64)],
        mode: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let cmds: Vec<Cmd> = sessions
            .iter()
            .map(|(sid, epoch)| {
                let mut cmd = self.on_session(&self.scripts.end, *sid);
                cmd.arg(mode).arg(*epoch);
                cmd
            })
            .collect();
        let answers: Vec<(i64, String)> = self.run(&cmds).await?;
        let mut unindex = Vec::new();
        for ((sid, _), (code, uid)) in sessions.iter().zip(&answers) {
            if *code != 2 && !uid.is_empty() {
                self.unindex(*sid, uid, &mut unindex);
            }
        }
        self.run::<Value>(&unindex).await?;
        Ok(answers)
    }

    pub(super) async fn delete(&self, sids: Vec<SessionId>) -> Result<usize, StoreError> {
        let sessions: Vec<(SessionId, u64)> = sids.into_iter().map(|sid| (sid, 0)).collect();
        let answers = self.end(&sessions, "delete").await?;
        Ok(answers.iter().filter(|(code, _)| *code == 1).count())
    }
}
