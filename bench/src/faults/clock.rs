//! Clock jumps under libfaketime.

use anyhow::Context;
use std::path::PathBuf;

/// Clock jumps: nodes run under libfaketime, reading their offset from a
/// file of their host at every call (the monotonic clock is left alone, as
/// an NTP step leaves it).
pub(super) struct Clock {
    /// libfaketime, preloaded into every node.
    pub(super) lib: PathBuf,
    dir: PathBuf,
}

impl Clock {
    pub(super) fn find() -> Option<Clock> {
        let lib = [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/faketime/libfaketimeMT.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
        let dir = std::env::temp_dir().join(format!(
            "session-proxy-faults-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        Some(Clock { lib, dir })
    }

    pub(super) fn file(&self, host: &str) -> PathBuf {
        self.dir.join(format!("clock-{host}"))
    }

    pub(super) fn set(&self, host: &str, secs: i64) -> anyhow::Result<()> {
        std::fs::write(self.file(host), format!("{secs:+}s\n")).context("a clock file")
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
