//! The per-uid admission across frontends, in steps that each stay within
//! one hash slot: read the uid's admitted sessions, read how each of them
//! stands (each in its own slot), decide atomically on the uid's slot, then
//! end the evicted sessions on theirs.
//!
//! A decided eviction is written to the uid's pending hash in the same
//! script that decides it, and taken off only once the session is ended; a
//! frontend that dies in between leaves it there for the next admission of
//! that uid, or the sweep, to carry out.

use super::{eval, millis, parse_sid, sid_hex, Inner};
use crate::store::{Admission, Fenced, StoreError, ADMISSION_GRACE};
use ::redis::Value;
use session_proxy_protocol::SessionId;
use std::collections::HashMap;

impl Inner {
    pub(super) async fn admit(
        &self,
        uid: &str,
        sid: SessionId,
        limit: usize,
        evict_oldest: bool,
        reason: &str,
    ) -> Result<Admission, StoreError> {
        let me = sid_hex(sid);
        let (members, pending): (Vec<String>, HashMap<String, String>) = ::redis::pipe()
            .zrange(self.keys.admitted(uid), 0, -1)
            .hgetall(self.keys.pending(uid))
            .query_async(&mut self.conn.get())
            .await?;
        let mut evicted = self.evict(uid, pending.into_iter().collect()).await?;
        // How each other member stands: `e` absent means no session key
        // (admitted, not written yet), `u` absent that it ended (a write
        // sets it, to '' while not bound yet: that one still counts; an
        // unbind or a rebind takes the session out of this set itself).
        let (ours, strays): (Vec<_>, Vec<_>) = members
            .iter()
            .filter(|m| **m != me)
            .map(|m| (m, parse_sid(m)))
            .partition(|(_, sid)| sid.is_some());
        let reads = self.read_fields(ours.iter().filter_map(|(_, sid)| *sid), &["e", "u"]);
        let stands: Vec<(Option<String>, Option<String>)> = self.conn.get().each(&reads).await?;
        let mut cmd = eval(
            &self.scripts.admit,
            &[self.keys.admitted(uid), self.keys.pending(uid)],
        );
        cmd.arg(&me)
            .arg(limit.max(1))
            .arg(if evict_oldest { "1" } else { "0" })
            .arg(millis(ADMISSION_GRACE))
            .arg(reason);
        for ((member, _), (epoch, of)) in ours.iter().zip(stands) {
            match (epoch, of) {
                (None, _) => cmd.arg(member.as_str()).arg("a"),
                (Some(_), Some(_)) => continue,
                (Some(_), None) => cmd.arg(member.as_str()).arg("g"),
            };
        }
        // Members that are not ours at all go without asking.
        for (member, _) in &strays {
            cmd.arg(member.as_str()).arg("g");
        }
        let answer: Vec<Vec<String>> = self.run(&[cmd]).await?;
        let mut answer = answer.into_iter().flatten();
        if answer.next().as_deref() != Some("1") {
            return Ok(Admission::Refused);
        }
        let decided = answer.map(|m| (m, reason.to_string())).collect();
        evicted.extend(self.evict(uid, decided).await?);
        Ok(Admission::Admitted { evicted })
    }

    /// Ends the sessions an admission of `uid` evicted (sid hex, reason),
    /// announces each, takes them out of the uid's set and then off its
    /// pending hash. Answers each with the frontend that held it.
    pub(super) async fn evict(
        &self,
        uid: &str,
        decided: Vec<(String, String)>,
    ) -> Result<Vec<Fenced>, StoreError> {
        let channel = self.keys.evictions();
        let tombstone = millis(ADMISSION_GRACE * 20);
        let mut sids = Vec::with_capacity(decided.len());
        let mut cmds = Vec::with_capacity(decided.len());
        let mut stale = Vec::new();
        for (hex, reason) in &decided {
            let Some(sid) = parse_sid(hex) else {
                stale.push(hex.as_str());
                continue;
            };
            let mut cmd = self.on_session(&self.scripts.evict, sid);
            cmd.arg(reason).arg(tombstone).arg(&channel).arg(hex);
            cmds.push(cmd);
            sids.push((sid, hex.as_str()));
        }
        let ended: Vec<(String, String)> = self.run(&cmds).await?;
        let mut after = Vec::new();
        let mut evicted = Vec::with_capacity(sids.len());
        for ((sid, hex), (owner, of)) in sids.into_iter().zip(ended) {
            self.unindex(sid, uid, &mut after);
            if !of.is_empty() && of != uid {
                self.unindex(sid, &of, &mut after);
            }
            stale.push(hex);
            evicted.push(Fenced { sid, owner });
        }
        if !stale.is_empty() {
            after.push(
                ::redis::cmd("HDEL")
                    .arg(self.keys.pending(uid))
                    .arg(&stale)
                    .clone(),
            );
        }
        self.run::<Value>(&after).await?;
        Ok(evicted)
    }
}
