//! A real redis-server on a free loopback port, stopped by its PID on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts a throwaway server (no persistence). `None` when the binary is
    /// missing outside CI; in CI (`CI` set) a missing binary fails the test.
    pub fn start() -> Option<RedisServer> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        if Command::new(&binary).arg("--version").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is required in CI (.ci/run installs it)");
            }
            eprintln!("SKIPPED: {binary} is not installed; install redis-server to run this test");
            return None;
        }
        let port = super::nodes::free_port();
        Some(RedisServer {
            child: spawn(&binary, port),
            port,
        })
    }

    /// SIGKILLs the server by its PID (it keeps nothing: no persistence).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh, empty server on the same port (after [`kill`]).
    pub fn start_again(&mut self) {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        self.child = spawn(&binary, self.port);
    }

    /// SIGSTOP: the server keeps its sockets and answers nothing.
    pub fn pause(&self) {
        super::nodes::signal(self.child.id(), "STOP");
    }

    /// SIGCONT after [`pause`].
    pub fn resume(&self) {
        super::nodes::signal(self.child.id(), "CONT");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server on `port` and waits until it answers PING. The
/// caller owns the child and reaps it ([`RedisServer`]'s drop).
#[allow(clippy::zombie_processes)]
fn spawn(binary: &str, port: u16) -> Child {
    let mut child = Command::new(binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(b"PING\r\n");
            let mut buf = [0u8; 7];
            if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                return child;
            }
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not come up on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
