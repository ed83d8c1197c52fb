//! Cluster nodes as real processes, from a cluster file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

/// Writes a cluster file with one connector and one chat backend; returns
/// its path and the connector's client port.
pub fn write_cluster(name: &str) -> (PathBuf, u16) {
    let (rpc, client) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("session-proxy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\napp = \"bench\"\n\n[[node]]\nid = \"connector-1\"\ntype = \"connector\"\nrole = \"frontend\"\nrpc = \"127.0.0.1:{rpc}\"\nclient = \"127.0.0.1:{client}\"\n\n[[node]]\nid = \"chat-1\"\ntype = \"chat\"\nrole = \"backend\"\n"
        ),
    )
    .expect("write cluster file");
    (path, client)
}

/// Starts one node and waits for its `ready` line.
pub async fn run_node(config: &Path, node: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_session-proxy"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--node", node])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("session-proxy starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the node starts in time")
        .expect("stdout")
        .expect("a line");
    assert_eq!(line, format!("ready {node}"));
    child
}

/// SIGKILL by PID, and reap.
pub async fn sigkill(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
