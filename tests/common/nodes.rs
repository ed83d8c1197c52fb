//! Cluster nodes as real processes, from a cluster file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A free loopback port for a child process to listen on, taken below the
/// kernel's ephemeral range (32768 and up here): a port handed out from that
/// range and released could be taken by any concurrent test's outgoing
/// connection before the child binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(104_729)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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

/// Runs the `session-proxy` binary with `args` and returns it, with the
/// lines it printed, once a line contains `until` (its "I serve" line).
pub async fn spawn_session_proxy<S: AsRef<OsStr>>(args: &[S], until: &str) -> (Child, Vec<String>) {
    spawn_session_proxy_env(args, &[], until).await
}

/// Like [`spawn_session_proxy`], with environment variables set (and the
/// bench app asked for by name).
pub async fn spawn_session_proxy_env<S: AsRef<OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    until: &str,
) -> (Child, Vec<String>) {
    let mut env = env.to_vec();
    env.push(("SESSION_PROXY_APP", "bench"));
    spawn_binary(env!("CARGO_BIN_EXE_session-proxy"), args, &env, until).await
}

/// Runs `binary` with `args` and `env`, and returns it, with the lines it
/// printed, once a line contains `until`.
pub async fn spawn_binary<S: AsRef<OsStr>>(
    binary: &str,
    args: &[S],
    env: &[(&str, &str)],
    until: &str,
) -> (Child, Vec<String>) {
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the session-proxy binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the process starts in time")
            .expect("stdout readable")
            .expect("a line before it exits");
        let done = line.contains(until);
        seen.push(line);
        if done {
            return (child, seen);
        }
    }
}

/// Starts one node of a cluster file and waits for its `ready` line.
pub async fn run_node(config: &Path, node: &str) -> Child {
    let args = [
        OsStr::new("run"),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--node"),
        OsStr::new(node),
    ];
    let (child, lines) = spawn_session_proxy(&args, "ready").await;
    assert_eq!(lines, vec![format!("ready {node}")]);
    child
}

/// SIGKILL by PID and reap; the process must not have exited on its own.
pub async fn sigkill(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the process exits")
        .expect("wait");
    assert!(!status.success(), "killed, not exited");
}

/// Sends `SIG<name>` to one process, by its PID.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// `session-proxy run --role frontend --type connector`, registered in
/// `registry`, with `extra` flags; returns once it is ready, with its
/// client address.
pub async fn registered_frontend(
    id: &str,
    registry: &str,
    extra: &[&str],
) -> (Child, std::net::SocketAddr) {
    let (rpc, client_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut args = vec![
        "run",
        "--role",
        "frontend",
        "--id",
        id,
        "--type",
        "connector",
        "--rpc-addr",
        &rpc,
        "--client-addr",
        &client_addr,
        "--registry",
        registry,
    ];
    args.extend_from_slice(extra);
    let (child, _) = spawn_session_proxy(&args, &format!("ready {id}")).await;
    (child, client_addr.parse().expect("addr"))
}

/// Waits until the bench app's backend behind `client` is in at least `n`
/// `sleep` requests (they reached it), asking it through `client`.
pub async fn sleeping(client: &session_proxy_client::PomeloClient, n: u64) {
    super::eventually(
        Duration::from_secs(10),
        "the sleep requests reach the backend",
        || async {
            let answer = client
                .request("chat.benchHandler.sleeping", &serde_json::json!({}))
                .await
                .map_err(|err| err.to_string())?;
            match answer["sleeping"].as_u64() {
                Some(now) if now >= n => Ok(()),
                _ => Err(answer.to_string()),
            }
        },
    )
    .await;
}

/// Waits until something accepts TCP connections on loopback `port` (a
/// server that other processes connect to at their start), at most 30 s.
pub async fn until_listening(port: u16) {
    super::eventually(
        Duration::from_secs(30),
        &format!("127.0.0.1:{port} accepts connections"),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// Waits until `target` answers the bench app's echo route with no error
/// (a frontend listens before it has found its backend), at most 30 s.
pub async fn until_echo_answers(target: std::net::SocketAddr) {
    until_route_answers(
        target,
        "chat.benchHandler.echo",
        serde_json::json!({ "msg": "hello" }),
    )
    .await;
}

/// Waits until `target` answers `route` with `body` with no error (servers
/// that find each other after they listen), at most 30 s.
pub async fn until_route_answers(
    target: std::net::SocketAddr,
    route: &str,
    body: serde_json::Value,
) {
    super::eventually(
        Duration::from_secs(30),
        &format!("{target} answers {route}"),
        || async {
            let r = bench_route(target, 1, route, body.clone(), false)
                .await
                .map_err(|e| e.to_string())?;
            (r.ops > 0 && r.errors == 0)
                .then_some(())
                .ok_or(r.to_string())
        },
    )
    .await;
}

/// A short closed-loop run of `route` with `body` by `clients` clients
/// (200 ms, warmed up 100 ms when more than one), each logging in as
/// `u{i}` first when `login`.
pub async fn bench_route(
    target: std::net::SocketAddr,
    clients: usize,
    route: &str,
    body: serde_json::Value,
    login: bool,
) -> anyhow::Result<session_proxy_bench::BenchResult> {
    let mut o = session_proxy_bench::LoadOptions::new(target);
    o.clients = clients;
    (o.duration, o.warmup) = match clients {
        1 => (Duration::from_millis(200), Duration::ZERO),
        _ => (Duration::from_millis(500), Duration::from_millis(100)),
    };
    o.route = route.into();
    o.body = body;
    if login {
        o.setup = vec![(
            "chat.benchHandler.login".into(),
            serde_json::json!({ "uid": "u{i}" }),
        )];
    }
    session_proxy_bench::load(o).await
}
