//! A real etcd (one member) on free loopback ports, with its data in a
//! directory of its own; stopped by its PID and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    child: Child,
    binary: String,
    data: PathBuf,
    pub port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts a throwaway member. `None` when the binary is missing outside
    /// CI; in CI (`CI` set) a missing binary fails the test.
    pub fn start() -> Option<EtcdServer> {
        let binary = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
        if !super::installed(&binary, "etcd-server") {
            return None;
        }
        let (port, peer_port) = (super::nodes::free_port(), super::nodes::free_port());
        let data = std::env::temp_dir().join(format!("sp-etcd-{}-{port}", std::process::id()));
        let child = spawn(&binary, &data, port, peer_port);
        Some(EtcdServer {
            child,
            binary,
            data,
            port,
            peer_port,
        })
    }

    /// SIGKILLs the member by its PID; its data stays for [`start_again`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the member again on the same ports and data (after [`kill`]).
    pub fn start_again(&mut self) {
        self.child = spawn(&self.binary, &self.data, self.port, self.peer_port);
    }

    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Starts etcd and waits until it answers `/health`. The caller owns the
/// child and reaps it ([`EtcdServer`]'s drop).
#[allow(clippy::zombie_processes)]
fn spawn(binary: &str, data: &std::path::Path, port: u16, peer_port: u16) -> Child {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut child = Command::new(binary)
        .arg("--name")
        .arg("test")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("test={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut answer = String::new();
            if s.read_to_string(&mut answer).is_ok() && answer.contains("\"health\":\"true\"") {
                return child;
            }
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcd did not come up on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
