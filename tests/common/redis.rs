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
        let binary = server_binary();
        if !super::installed(&binary, "redis-server") {
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
        let binary = server_binary();
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

/// A Redis Cluster of three masters on loopback (`--cluster-enabled yes`
/// ×3, joined by `redis-cli --cluster create`), each stopped by its PID on
/// drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the three masters, assigns the slots and waits until every
    /// node says `cluster_state:ok`. `None` (SKIPPED) when the binaries are
    /// missing outside CI; in CI a missing binary fails the test.
    pub fn start() -> Option<RedisCluster> {
        let binary = server_binary();
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        if !super::installed(&binary, "redis-server") || !super::installed(&cli, "redis-server") {
            return None;
        }
        let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "sp-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: ports.clone(),
            dir,
        };
        for port in &ports {
            let conf = format!("nodes-{port}.conf");
            let dir = cluster.dir.to_string_lossy().into_owned();
            cluster.nodes.push(spawn_with(
                &binary,
                *port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--dir",
                    &dir,
                ],
            ));
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let made = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            made.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&made.stdout)
        );
        let until = Instant::now() + Duration::from_secs(20);
        while !ports.iter().all(|port| cluster_ok(*port)) {
            assert!(Instant::now() < until, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(cluster)
    }

    /// The store URL naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Each node as a `redis://` URL.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The redis-server binary: `$REDIS_SERVER`, or `redis-server`.
fn server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A free port whose cluster bus port (+10,000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = super::nodes::free_port();
        // The bus port (port + 10000) must stay below the kernel's ephemeral
        // range too, or another test's outgoing connection may hold it when
        // the node binds.
        if port + 10_000 < 32_768
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// Whether the node on `port` says `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"CLUSTER INFO\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains("cluster_state:ok")
}

/// Starts redis-server on `port` and waits until it answers PING. The
/// caller owns the child and reaps it ([`RedisServer`]'s drop).
fn spawn(binary: &str, port: u16) -> Child {
    spawn_with(binary, port, &[])
}

/// [`spawn`] with more arguments.
#[allow(clippy::zombie_processes)]
fn spawn_with(binary: &str, port: u16, extra: &[&str]) -> Child {
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
        .args(extra)
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
