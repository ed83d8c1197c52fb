//! The connection's protocol state, without I/O and without a clock, as
//! quinn-proto keeps a connection: it is fed the client's packages, the
//! answers that finished, the writes that stalled, and the time (the
//! gateway's milliseconds); it says what to do with each package, whether
//! there is room for more requests, and when and why the connection must
//! end. The connection's task (`io.rs`) does the reading, the writing and
//! the timer.

use super::heartbeats::Heartbeats;
use crate::GatewayConfig;
use session_proxy_protocol::client::PackageType;

/// Why a connection ends when its client stops sending heartbeats.
pub(super) const HEARTBEAT_TIMEOUT: &str = "heartbeat timeout";
/// Why a connection ends when its client does not finish the handshake.
pub(super) const HANDSHAKE_TIMEOUT: &str = "handshake timeout";
/// Why a connection ends when its client does not read what is written.
pub(super) const WRITE_TIMEOUT: &str = "client stopped reading (write timed out)";
/// Why a connection ends when its client says goodbye with a kick package.
pub(super) const CLIENT_KICK: &str = "client sent a kick package";

/// The gateway's rules for every connection, in the units the state
/// keeps: made once per gateway from its [`GatewayConfig`].
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// How long a client may stay silent once it acked the handshake.
    silence_ms: u32,
    /// Half the heartbeat interval: client heartbeats are answered at most
    /// once per half interval.
    half_heartbeat_ms: u32,
    /// How long a write may wait on a client that does not read.
    write_ms: u32,
    /// Requests in flight per connection.
    max_pending: usize,
    /// Bytes waiting for the client, written or promised by the answers in
    /// flight.
    max_outgoing_bytes: usize,
}

fn ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Limits {
    pub(crate) fn of(config: &GatewayConfig) -> Limits {
        Limits {
            silence_ms: ms(config.silence_limit()),
            half_heartbeat_ms: ms(config.heartbeat_whole_secs() / 2),
            write_ms: ms(config.write_timeout),
            max_pending: config.max_pending_requests,
            max_outgoing_bytes: config.max_outgoing_bytes,
        }
    }
}

/// Where the connection is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's handshake.
    Inited,
    /// Handshake answered; waiting for the ack.
    WaitAck,
    /// Acked: requests, notifies, pushes and heartbeats flow.
    Working,
}

/// What to do with a package the client sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Open the client's session (new or resumed) and answer the handshake
    /// ([`Protocol::answered`] once answered).
    Handshake,
    /// Write a heartbeat.
    Heartbeat,
    /// Dispatch the data package's message.
    Message,
    /// Nothing: a heartbeat not to answer, or a package out of phase (data
    /// before the ack, a second handshake), which is ignored.
    Nothing,
    /// End the connection, for this reason.
    Close(String),
}

/// Whether deadline `at` has passed at `now` (gateway ms, which wrap after
/// 49 days: deadlines are never more than 24 days away).
fn passed(at: u32, now: u32) -> bool {
    now.wrapping_sub(at) < 1 << 31
}

/// One connection's protocol state. Every connected client pays for it
/// (see the connection's size test): times are `u32` gateway ms, not
/// `Instant`s.
#[derive(Debug)]
pub(super) struct Protocol {
    phase: Phase,
    /// Whether the handshake resumed an existing session.
    resumed: bool,
    /// Whether the client speaks protobuf on the routes that have protos.
    protobuf: bool,
    /// Whether a write waits on a client that does not read (until
    /// `write_until`).
    write_stalled: bool,
    /// The deadline moved since the timer was last set.
    moved: bool,
    heartbeats: Heartbeats,
    /// Running average of the answers' sizes, in bytes: big answers leave
    /// room for fewer requests in flight. It starts high, so a first burst
    /// of requests with big answers cannot hold more than the byte cap.
    answer_size: u32,
    /// The handshake deadline until the ack, then the heartbeat deadline.
    alive_until: u32,
    write_until: u32,
}

impl Protocol {
    /// A connection that must finish its handshake by `handshake_until`.
    /// Until answers are seen, each is assumed to be an eighth of the byte
    /// cap: at most 8 requests are in flight until the real sizes are known.
    pub(super) fn new(handshake_until: u32, limits: &Limits) -> Protocol {
        Protocol {
            phase: Phase::Inited,
            resumed: false,
            protobuf: false,
            write_stalled: false,
            moved: true,
            heartbeats: Heartbeats::default(),
            answer_size: u32::try_from(limits.max_outgoing_bytes / 8).unwrap_or(u32::MAX),
            alive_until: handshake_until,
            write_until: 0,
        }
    }

    /// A package of `kind` arrived at `now`: what to do with it.
    pub(super) fn on_package(&mut self, kind: PackageType, now: u32, limits: &Limits) -> Step {
        match (kind, self.phase) {
            (PackageType::Handshake, Phase::Inited) => Step::Handshake,
            (PackageType::HandshakeAck, Phase::WaitAck) => {
                // The server's first heartbeat goes with the ack. It is
                // not an answer: the client's first is answered however
                // soon it comes.
                self.phase = Phase::Working;
                self.alive(now, limits);
                self.heartbeats.first_sent(now, limits.half_heartbeat_ms);
                Step::Heartbeat
            }
            (PackageType::Heartbeat, Phase::Working) => {
                // Answered (as Pinus does), but at most once per half
                // interval, so a client that answers every server heartbeat
                // at once (seen from browsers) does not start a ping-pong.
                self.alive(now, limits);
                match self.heartbeats.on_client(now, limits.half_heartbeat_ms) {
                    Ok(true) => Step::Heartbeat,
                    Ok(false) => Step::Nothing,
                    Err(flood) => Step::Close(flood),
                }
            }
            (PackageType::Data, Phase::Working) => Step::Message,
            (PackageType::Kick, _) => Step::Close(CLIENT_KICK.into()),
            _ => Step::Nothing,
        }
    }

    fn alive(&mut self, now: u32, limits: &Limits) {
        self.alive_until = now.wrapping_add(limits.silence_ms);
        self.moved = true;
    }

    /// The handshake was answered with a session (`resumed`: the one the
    /// client's token named), in protobuf if `protobuf`; the ack comes next.
    pub(super) fn answered(&mut self, resumed: bool, protobuf: bool) {
        self.phase = Phase::WaitAck;
        self.resumed = resumed;
        self.protobuf = protobuf;
    }

    /// Whether the client acked its handshake: pushes flow.
    pub(super) fn working(&self) -> bool {
        self.phase == Phase::Working
    }

    /// Whether the client speaks protobuf.
    pub(super) fn protobuf(&self) -> bool {
        self.protobuf
    }

    /// Whether the session outlives a connection that drops: once acked, or
    /// when resumed (a client that never acked a new session has nobody to
    /// resume it).
    pub(super) fn resumable(&self) -> bool {
        self.phase == Phase::Working || self.resumed
    }

    /// An answer of `size` bytes finished.
    pub(super) fn on_answer(&mut self, size: usize) {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        self.answer_size = self.answer_size - self.answer_size / 8 + size / 8;
    }

    /// Whether `out` bytes waiting to be written are at the byte cap.
    pub(super) fn out_full(&self, out: usize, limits: &Limits) -> bool {
        out >= limits.max_outgoing_bytes
    }

    /// Whether `pending` requests in flight and `out` bytes waiting leave no
    /// room for another request: then nothing more is decoded or read, and
    /// a pipelining client is slowed by TCP, not refused.
    pub(super) fn at_capacity(&self, pending: usize, out: usize, limits: &Limits) -> bool {
        pending >= limits.max_pending
            || self.out_full(out, limits)
            || pending.saturating_mul(self.answer_size as usize) >= limits.max_outgoing_bytes
    }

    /// A write could not finish at `now`: the client has until the write
    /// timeout to take it (the first stall counts, not each retry).
    pub(super) fn write_stalled(&mut self, now: u32, limits: &Limits) {
        if !self.write_stalled {
            self.write_stalled = true;
            self.write_until = now.wrapping_add(limits.write_ms);
            self.moved = true;
        }
    }

    /// Everything encoded was written.
    pub(super) fn write_done(&mut self) {
        if self.write_stalled {
            self.write_stalled = false;
            self.moved = true;
        }
    }

    /// The earliest deadline, if it moved since the last call: the timer
    /// must be set to it.
    pub(super) fn moved_deadline(&mut self) -> Option<u32> {
        if !std::mem::take(&mut self.moved) {
            return None;
        }
        Some(
            if self.write_stalled && !passed(self.alive_until, self.write_until) {
                self.write_until
            } else {
                self.alive_until
            },
        )
    }

    /// The timer fired at `now`: why the connection ends, or `None` if the
    /// deadline it was set to has moved (it is set again).
    pub(super) fn on_timer(&mut self, now: u32) -> Option<&'static str> {
        if self.write_stalled && passed(self.write_until, now) {
            return Some(WRITE_TIMEOUT);
        }
        if passed(self.alive_until, now) {
            return Some(match self.phase {
                Phase::Working => HEARTBEAT_TIMEOUT,
                _ => HANDSHAKE_TIMEOUT,
            });
        }
        self.moved = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        let config = GatewayConfig {
            heartbeat: Duration::from_secs(10),
            heartbeat_timeout: Some(Duration::from_secs(20)),
            write_timeout: Duration::from_secs(3),
            max_pending_requests: 64,
            max_outgoing_bytes: 8_000,
            ..GatewayConfig::default()
        };
        Limits::of(&config)
    }

    /// A connection that acked its handshake at `now`.
    fn working(now: u32, l: &Limits) -> Protocol {
        let mut p = Protocol::new(now.wrapping_add(5_000), l);
        assert_eq!(
            p.on_package(PackageType::Handshake, now, l),
            Step::Handshake
        );
        p.answered(false, false);
        assert_eq!(
            p.on_package(PackageType::HandshakeAck, now, l),
            Step::Heartbeat,
            "the ack is answered with the first heartbeat"
        );
        p
    }

    #[test]
    fn the_handshake_has_its_deadline_then_the_heartbeat_has_its_own() {
        let l = limits();
        let mut p = Protocol::new(5_000, &l);
        assert_eq!(p.moved_deadline(), Some(5_000));
        assert_eq!(p.moved_deadline(), None, "said once");
        assert_eq!(p.on_timer(5_000), Some(HANDSHAKE_TIMEOUT));

        let mut p = working(1_000, &l);
        assert_eq!(p.moved_deadline(), Some(21_000), "acked: the silence limit");
        assert_eq!(p.on_timer(20_999), None);
        assert_eq!(
            p.on_package(PackageType::Heartbeat, 15_000, &l),
            Step::Heartbeat
        );
        assert_eq!(p.moved_deadline(), Some(35_000), "a heartbeat moves it");
        assert_eq!(p.on_timer(21_000), None, "fired for the old deadline");
        assert_eq!(p.moved_deadline(), Some(35_000), "set again");
        assert_eq!(p.on_timer(35_000), Some(HEARTBEAT_TIMEOUT));
    }

    #[test]
    fn packages_out_of_phase_are_ignored_and_a_kick_ends_any_phase() {
        let l = limits();
        let mut p = Protocol::new(5_000, &l);
        for kind in [
            PackageType::Data,
            PackageType::Heartbeat,
            PackageType::HandshakeAck,
        ] {
            assert_eq!(p.on_package(kind, 0, &l), Step::Nothing, "{kind:?} first");
        }
        assert!(!p.working());
        assert_eq!(p.on_package(PackageType::Handshake, 0, &l), Step::Handshake);
        p.answered(true, true);
        assert!(
            p.protobuf() && p.resumable(),
            "a resumed session outlives the drop"
        );
        assert_eq!(
            p.on_package(PackageType::Data, 0, &l),
            Step::Nothing,
            "before the ack"
        );
        assert_eq!(
            p.on_package(PackageType::Handshake, 0, &l),
            Step::Nothing,
            "a second one"
        );
        assert_eq!(
            p.on_package(PackageType::Kick, 0, &l),
            Step::Close(CLIENT_KICK.into())
        );
        let mut p = working(0, &l);
        assert!(p.working() && p.resumable());
        assert_eq!(p.on_package(PackageType::Data, 1, &l), Step::Message);
    }

    #[test]
    fn a_new_session_never_acked_is_not_resumable() {
        let l = limits();
        let mut p = Protocol::new(5_000, &l);
        p.on_package(PackageType::Handshake, 0, &l);
        p.answered(false, false);
        assert!(!p.resumable());
    }

    #[test]
    fn heartbeats_are_answered_once_per_half_interval_and_a_flood_closes() {
        let l = limits();
        let mut p = working(0, &l);
        assert_eq!(
            p.on_package(PackageType::Heartbeat, 10, &l),
            Step::Heartbeat
        );
        assert_eq!(p.on_package(PackageType::Heartbeat, 20, &l), Step::Nothing);
        assert_eq!(
            p.on_package(PackageType::Heartbeat, 5_010, &l),
            Step::Heartbeat
        );
        let mut closed = None;
        for i in 0..=u32::from(super::super::heartbeats::MAX_EARLY_HEARTBEATS) {
            if let Step::Close(why) = p.on_package(PackageType::Heartbeat, 5_011 + i, &l) {
                closed = Some(why);
            }
        }
        assert!(closed.is_some_and(|why| why.contains("flood")));
    }

    #[test]
    fn a_stalled_write_has_the_earlier_deadline_and_ends_when_it_passes() {
        let l = limits();
        let mut p = working(0, &l);
        p.moved_deadline();
        p.write_stalled(1_000, &l);
        assert_eq!(
            p.moved_deadline(),
            Some(4_000),
            "the write timeout is earlier"
        );
        p.write_stalled(2_000, &l);
        assert_eq!(p.moved_deadline(), None, "a retry does not extend it");
        assert_eq!(p.on_timer(4_000), Some(WRITE_TIMEOUT));

        let mut p = working(0, &l);
        p.write_stalled(1_000, &l);
        p.write_done();
        assert_eq!(
            p.moved_deadline(),
            Some(20_000),
            "written: back to the heartbeat"
        );
        assert_eq!(p.on_timer(4_000), None);

        let mut p = working(0, &l);
        p.write_stalled(19_000, &l);
        assert_eq!(p.moved_deadline(), Some(20_000), "the heartbeat is earlier");
        assert_eq!(p.on_timer(20_000), Some(HEARTBEAT_TIMEOUT));
    }

    #[test]
    fn the_gateway_clock_may_wrap() {
        let l = limits();
        let start = u32::MAX - 1_000;
        let mut p = working(start, &l);
        assert_eq!(p.moved_deadline(), Some(start.wrapping_add(20_000)));
        assert_eq!(p.on_timer(500), None, "past zero, before the deadline");
        assert_eq!(
            p.on_timer(start.wrapping_add(20_000)),
            Some(HEARTBEAT_TIMEOUT)
        );
    }

    #[test]
    fn the_first_burst_is_bounded_by_bytes_until_answers_are_seen() {
        let l = limits();
        let mut p = working(0, &l);
        assert!(!p.at_capacity(7, 0, &l));
        assert!(
            p.at_capacity(8, 0, &l),
            "an eighth of the byte cap is assumed per answer"
        );
        for _ in 0..64 {
            p.on_answer(10);
        }
        assert!(!p.at_capacity(63, 0, &l), "small answers make room");
        assert!(p.at_capacity(64, 0, &l), "the count cap holds");
        assert!(p.at_capacity(0, 8_000, &l), "so does the byte cap");
        assert!(p.out_full(8_000, &l) && !p.out_full(7_999, &l));
        for _ in 0..64 {
            p.on_answer(4_000);
        }
        assert!(p.at_capacity(2, 0, &l), "big answers leave room for fewer");
    }
}
