//! The heartbeat rules of a client connection, without I/O or a clock:
//! fed the gateway's time in ms and the half heartbeat interval, they say
//! whether to answer a client's heartbeat or close it as flooding. (The
//! first slice of the connection's sans-I/O state.)

/// Client heartbeats in a row, each within half an interval of the last
/// server heartbeat, before the client is closed as flooding.
pub(super) const MAX_EARLY_HEARTBEATS: u16 = 64;

/// When the server last sent a heartbeat, and how many client heartbeats
/// came too early since. Packed to 6 bytes: every connected client pays
/// for it (see the connection's size test).
#[derive(Debug, Default)]
#[repr(Rust, packed(2))]
pub(super) struct Heartbeats {
    /// When the last heartbeat went to the client (gateway ms).
    sent_ms: u32,
    /// Client heartbeats in a row that came too early to be answered.
    early: u16,
}

impl Heartbeats {
    /// The server's first heartbeat (at the handshake ack), sent at
    /// `now_ms`; the client's first is answered whenever it comes.
    pub(super) fn first_sent(&mut self, now_ms: u32, half_ms: u32) {
        self.sent_ms = now_ms.wrapping_sub(half_ms);
    }

    /// A client heartbeat at `now_ms`: `Ok(true)` to answer it (at most one
    /// answer per half interval, as Pinus answers, without a ping-pong with
    /// clients that answer every server heartbeat at once), `Ok(false)` to
    /// let it be, `Err` for a client that keeps sending far too often.
    pub(super) fn on_client(&mut self, now_ms: u32, half_ms: u32) -> Result<bool, String> {
        if now_ms.wrapping_sub(self.sent_ms) >= half_ms {
            self.early = 0;
            self.sent_ms = now_ms;
            return Ok(true);
        }
        self.early = self.early.saturating_add(1);
        if self.early > MAX_EARLY_HEARTBEATS {
            return Err(format!(
                "heartbeat flood: {MAX_EARLY_HEARTBEATS} heartbeats within half an interval"
            ));
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: u32 = 5_000;

    #[test]
    fn the_first_is_answered_then_one_per_half_interval() {
        let mut h = Heartbeats::default();
        h.first_sent(1_000, HALF);
        assert_eq!(h.on_client(1_001, HALF), Ok(true));
        assert_eq!(h.on_client(1_002, HALF), Ok(false), "an echo is let be");
        assert_eq!(h.on_client(6_001, HALF), Ok(true));
    }

    #[test]
    fn a_flood_is_closed_and_a_pause_forgives_it() {
        let mut h = Heartbeats::default();
        h.first_sent(0, HALF);
        assert_eq!(h.on_client(0, HALF), Ok(true));
        for i in 0..MAX_EARLY_HEARTBEATS {
            assert_eq!(h.on_client(1 + u32::from(i), HALF), Ok(false));
        }
        assert!(h.on_client(100, HALF).is_err(), "one too many");
        let mut calm = Heartbeats::default();
        calm.first_sent(0, HALF);
        for _ in 0..MAX_EARLY_HEARTBEATS {
            let _ = calm.on_client(1, HALF);
        }
        assert_eq!(calm.on_client(10_000, HALF), Ok(true), "answered again");
        assert_eq!(
            calm.on_client(10_001, HALF),
            Ok(false),
            "the count starts over"
        );
    }

    #[test]
    fn the_gateway_clock_may_wrap() {
        let mut h = Heartbeats::default();
        h.first_sent(u32::MAX - 10, HALF);
        assert_eq!(h.on_client(u32::MAX - 5, HALF), Ok(true));
        assert_eq!(h.on_client(HALF, HALF), Ok(true), "wrapped past zero");
    }
}
