//! The Kubernetes manifests in `deploy/kubernetes` run as they are written:
//! their container arguments and environment (secrets, the pod's name and
//! IP, `$(VAR)` references expanded as the kubelet does) start a connector
//! and a chat backend as local processes on a real Redis, which serve a
//! client; the preStop hooks drain them. What stands in for the cluster
//! network is only addresses: the `redis` Service is the test's Redis, a
//! pod's IP is 127.0.0.1 and its container ports are free loopback ports.

use crate::common;

use common::nodes::{free_port, spawn_binary};
use common::redis::RedisServer;
use serde_json::{json, Value};
use session_proxy_client::PomeloClient;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "a-kubernetes-test-secret";
/// The image's binary, as the manifests name it.
const IMAGE_BINARY: &str = "/usr/local/bin/session-proxy";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of a manifest file.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join("kubernetes").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .collect()
}

/// The one document of `kind` named `name` in `file`.
fn resource(file: &str, kind: &str, name: &str) -> Value {
    documents(file)
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {file}"))
}

/// A pod as a test runs it: its container's args, its rendered environment
/// and the ports its addresses were moved to.
struct Pod {
    args: Vec<String>,
    env: Vec<(String, String)>,
    pre_stop: Vec<String>,
    ports: BTreeMap<u16, u16>,
}

impl Pod {
    fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Where the container port `port` listens here.
    fn port(&self, port: u16) -> u16 {
        self.ports[&port]
    }
}

/// `$(NAME)` references to variables defined before, as the kubelet expands
/// them; unknown ones stay as they are.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// The cluster network on loopback: `redis:6379` is the test's Redis, and a
/// listen or advertised address (`0.0.0.0:P`, or the pod IP) gets a free
/// port of its own per container port.
fn localize(value: &str, redis: &str, ports: &mut BTreeMap<u16, u16>) -> String {
    let value = value.replace("redis:6379", redis);
    for host in ["0.0.0.0:", "127.0.0.1:"] {
        if let Some(port) = value.strip_prefix(host).and_then(|p| p.parse::<u16>().ok()) {
            let local = *ports.entry(port).or_insert_with(free_port);
            return format!("127.0.0.1:{local}");
        }
    }
    value
}

/// Renders the Deployment `name` of `file` as pod `pod`.
fn render(file: &str, name: &str, pod: &str, redis: &str) -> Pod {
    let deployment = resource(file, "Deployment", name);
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let mut env: Vec<(String, String)> = Vec::new();
    let mut ports = BTreeMap::new();
    for var in container["env"].as_array().expect("env") {
        let key = var["name"].as_str().expect("name").to_string();
        let value = match (&var["value"], &var["valueFrom"]) {
            (Value::String(v), _) => expand(v, &env),
            (_, from) if from["fieldRef"]["fieldPath"] == "metadata.name" => pod.to_string(),
            (_, from) if from["fieldRef"]["fieldPath"] == "status.podIP" => "127.0.0.1".into(),
            (_, from) if from["secretKeyRef"]["name"] == "session-proxy" => SECRET.into(),
            other => panic!("{file}: {key} comes from {other:?}, which this test cannot render"),
        };
        let value = localize(&value, redis, &mut ports);
        env.push((key, value));
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{file}: a list of strings: {v}"))
            .iter()
            .map(|a| expand(a.as_str().expect("a string"), &env))
            .collect()
    };
    let args = strings(&container["args"]);
    let pre_stop = strings(&container["lifecycle"]["preStop"]["exec"]["command"]);

    // What makes a drain right, read from the manifest itself.
    let drain: u64 = env
        .iter()
        .find(|(k, _)| k == "SESSION_PROXY_DRAIN_SECS")
        .and_then(|(_, v)| v.parse().ok())
        .expect("SESSION_PROXY_DRAIN_SECS");
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > drain,
        "{file}: a grace period ({grace} s) above the drain ({drain} s)"
    );
    assert_eq!(
        pre_stop.first().map(String::as_str),
        Some(IMAGE_BINARY),
        "{file}"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"], "/readyz",
        "{file}"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"], "/healthz",
        "{file}"
    );
    let admin_port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("an admin port");
    let admin = env
        .iter()
        .find(|(k, _)| k == "SESSION_PROXY_ADMIN_ADDR")
        .map(|(_, v)| v.clone())
        .expect("SESSION_PROXY_ADMIN_ADDR");
    let admin_port = u16::try_from(admin_port).expect("a port");
    assert_eq!(
        admin,
        format!("127.0.0.1:{}", ports[&admin_port]),
        "{file}: the probes' port is the admin address's"
    );
    Pod {
        args,
        env,
        pre_stop,
        ports,
    }
}

async fn start(pod: &Pod) -> tokio::process::Child {
    let env: Vec<(&str, &str)> = pod
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let id = pod.env("SESSION_PROXY_ID").expect("an id");
    spawn_binary(
        env!("CARGO_BIN_EXE_session-proxy"),
        &pod.args,
        &env,
        &format!("ready {id}"),
    )
    .await
    .0
}

/// Runs the pod's preStop hook (the image's binary is this build's) with
/// the pod's environment; returns what it printed.
async fn pre_stop(pod: &Pod) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_session-proxy"))
            .args(&pod.pre_stop[1..])
            .envs(pod.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the hook ends")
    .expect("the hook runs");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed
}

async fn readyz(admin_port: u16) -> u16 {
    let addr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    common::http::get(addr, "/readyz")
        .await
        .map_or(0, |(s, _)| s)
}

#[test]
fn the_kustomization_takes_every_manifest_and_the_dashboard() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).expect("read");
    let k: Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let listed: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml"))
        .map(|f| format!("kubernetes/{f}"))
        .collect();
    files.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, files, "kustomization.yaml lists every manifest");
    let dashboard = k["configMapGenerator"][0]["files"][0]
        .as_str()
        .expect("a file");
    assert!(deploy_dir().join(dashboard).exists(), "{dashboard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_commands_start_a_cluster_that_serves_and_their_prestop_hooks_drain_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let redis_addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .expect("host:port")
        .to_string();
    let connector = render(
        "connector.yaml",
        "connector",
        "connector-5d8f7-x2k4q",
        &redis_addr,
    );
    let chat = render("chat.yaml", "chat", "chat-6c9b4-p7m2z", &redis_addr);
    assert_eq!(
        connector.env("SESSION_PROXY_REDIS"),
        Some(url.as_str()),
        "the store is the redis Service"
    );
    let mut connector_process = start(&connector).await;
    let mut chat_process = start(&chat).await;

    // A client on the connector's client port is served by the chat pod.
    let clients = format!("127.0.0.1:{}", connector.port(3010))
        .parse()
        .expect("addr");
    let client = PomeloClient::connect(clients).await.expect("connect");
    common::eventually(WAIT, "a backend serves the connector", || async {
        match client
            .request("chat.benchHandler.echo", &json!({ "k": 8 }))
            .await
        {
            Ok(answer) if answer == json!({ "k": 8 }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(readyz(connector.port(9100)).await, 200);
    assert_eq!(readyz(chat.port(9100)).await, 200);

    // The preStop hooks drain each pod; the node exits 0 by itself.
    for (pod, process) in [
        (&connector, &mut connector_process),
        (&chat, &mut chat_process),
    ] {
        let id = pod.env("SESSION_PROXY_ID").expect("an id");
        let printed = pre_stop(pod).await;
        assert!(
            printed.contains(&format!("{id} drained and left")),
            "{printed}"
        );
        let status = tokio::time::timeout(WAIT, process.wait())
            .await
            .unwrap_or_else(|_| panic!("{id} exits"))
            .expect("wait");
        assert!(status.success(), "{id}: {status:?}");
    }
}
