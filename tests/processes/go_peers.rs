//! The Go peers of `bench/compare`, built from their pinned modules by
//! `bench/peers/build.sh`: Pitaya in cluster mode (a connector and a chat
//! server over a NATS server, found through etcd) and nano in cluster mode
//! (a master, a gate and a chat member over gRPC). Each answers every bench
//! workload our load generator drives (Pitaya also the remote route: an
//! RPC between its servers), with no error, so a compare run
//! measures them doing the same work as session-proxy and Pinus.

use crate::common;

use common::nodes::{
    bench_route, free_port, until_echo_answers, until_listening, until_route_answers,
};
use session_proxy_bench as bench;
use session_proxy_client::Transport;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The processes of one peer, stopped by PID when dropped (the last
/// started first: the servers before the NATS and etcd they talk through),
/// each logging to a file in `dir` that a failed test prints the end of.
struct Cluster {
    dir: PathBuf,
    children: Vec<(Child, PathBuf)>,
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    fn start(&mut self, program: &Path, args: &[&str]) {
        let name = program.file_name().unwrap_or_default().to_string_lossy();
        let log = self.dir.join(format!("{}-{name}.log", self.children.len()));
        let file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(program)
            .args(args)
            .stdout(file.try_clone().expect("a log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        self.children.push((child, log));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, log) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!("--- the end of {}:", log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Builds the peers once (a few minutes the first time, from the Go module
/// proxy); `None` (SKIPPED) without Go or etcd, outside CI.
fn peers() -> Option<PathBuf> {
    if !common::installed("go", "golang (the machine's Go)")
        || !common::installed("etcd", "etcd-server")
    {
        return None;
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/peers");
        let status = Command::new(root.join("build.sh"))
            .status()
            .expect("bench/peers/build.sh runs");
        assert!(status.success(), "bench/peers/build.sh failed: {status}");
        root.join("bin")
    });
    Some(dir.clone())
}

/// Echo, set after login, login, and a channel fan-out, with no error;
/// with `remote`, a handler's call to another server too.
async fn serves_the_workloads(name: &str, target: SocketAddr, remote: bool) {
    until_echo_answers(target).await;
    let set = serde_json::json!({ "key": "k", "value": 1 });
    let mut routes = vec![
        ("echo", serde_json::json!({ "msg": "x" }), false),
        ("set", set, true),
        ("login", serde_json::json!({ "uid": "u{i}" }), false),
    ];
    if remote {
        // The chat server finds the connector (through etcd) on its own
        // schedule, maybe after the connector found it: wait for its RPC too.
        let body = serde_json::json!({ "x": 1 });
        until_route_answers(target, "chat.benchHandler.remote", body.clone()).await;
        routes.push(("remote", body, false));
    }
    for (route, body, login) in routes {
        let full = format!("chat.benchHandler.{route}");
        let r = bench_route(target, 8, &full, body, login)
            .await
            .expect("load");
        assert!(r.ops > 10, "{name} {route}: {r}");
        assert_eq!(r.errors, 0, "{name} {route}: {r}");
    }
    let r = bench::fanout(target, Transport::Tcp, 20, 5, "chat")
        .await
        .expect("fanout");
    assert_eq!((r.ops, r.errors), (100, 0), "{name} fanout: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitaya_and_nano_serve_the_bench_workloads() {
    let Some(bin) = peers() else {
        return;
    };
    let data = std::env::temp_dir().join(format!("session-proxy-go-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("temp dir");

    // Pitaya: etcd and NATS on free loopback ports, a chat server, the
    // connector.
    {
        let (etcd, etcd_peer, nats, client) = (free_port(), free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd}");
        let mut pitaya = Cluster::new(&data);
        pitaya.start(
            Path::new("etcd"),
            &[
                "--data-dir",
                &data.join("etcd").to_string_lossy(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
            ],
        );
        let nats_port = nats.to_string();
        pitaya.start(
            &bin.join("nats-server"),
            &["-a", "127.0.0.1", "-p", &nats_port],
        );
        // Pitaya's servers exit when NATS does not answer at their start.
        until_listening(etcd).await;
        until_listening(nats).await;
        let (nats_url, etcd_addr) = (
            format!("nats://127.0.0.1:{nats}"),
            format!("127.0.0.1:{etcd}"),
        );
        let server = ["-nats", nats_url.as_str(), "-etcd", etcd_addr.as_str()];
        let peer = bin.join("pitaya-peer");
        pitaya.start(&peer, &[&["-type", "chat"][..], &server].concat());
        let port = client.to_string();
        let front = ["-type", "connector", "-frontend", "-port", port.as_str()];
        pitaya.start(&peer, &[&front[..], &server].concat());
        let target = format!("127.0.0.1:{client}").parse().expect("addr");
        serves_the_workloads("pitaya", target, true).await;
    }

    // nano: a master, a chat member, the gate.
    {
        let (master, chat, gate, client) = (free_port(), free_port(), free_port(), free_port());
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let peer = bin.join("nano-peer");
        let mut nano = Cluster::new(&data);
        nano.start(&peer, &["-role", "master", "-listen", &addr(master)]);
        // Members register with the master at their start.
        until_listening(master).await;
        let member = ["-master", &addr(master)].map(String::from);
        nano.start(
            &peer,
            &[
                "-role",
                "chat",
                "-listen",
                &addr(chat),
                &member[0],
                &member[1],
            ],
        );
        nano.start(
            &peer,
            &[
                "-role",
                "gate",
                "-listen",
                &addr(gate),
                "-client",
                &addr(client),
                &member[0],
                &member[1],
            ],
        );
        let target = addr(client).parse().expect("addr");
        serves_the_workloads("nano", target, false).await;
    }
    let _ = std::fs::remove_dir_all(&data);
}
