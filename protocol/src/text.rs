//! Strings a peer chose, made safe to log.
//!
//! Node ids, server types and routes arrive from the network before (or
//! without) any authentication. Written raw, a newline or an ESC byte in
//! one forges log lines or terminal output, and a megabyte of it fills the
//! disk. [`log_safe`] escapes every control character and truncates.

use std::fmt::Write;

/// How many characters of a peer's string are logged at most.
pub const LOG_SAFE_MAX: usize = 64;

/// `s` with control characters (newlines, ESC, DEL, …) escaped as `\n`,
/// `\u{1b}` and so on, cut to [`LOG_SAFE_MAX`] characters with `…` when
/// longer.
pub fn log_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(LOG_SAFE_MAX + 8));
    for (i, c) in s.chars().enumerate() {
        if i == LOG_SAFE_MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_strings_cut() {
        assert_eq!(log_safe("game-1"), "game-1");
        assert_eq!(
            log_safe("x\n2026 ERROR forged\u{1b}[31m\u{7f}"),
            "x\\n2026 ERROR forged\\u{1b}[31m\\u{7f}"
        );
        let long = "a".repeat(10_000);
        let safe = log_safe(&long);
        assert_eq!(safe.chars().count(), LOG_SAFE_MAX + 1);
        assert!(safe.ends_with('…'));
        assert!(!log_safe("é\r\tü").contains(['\r', '\t']));
    }
}
