//! The processes of a run: Redis, the frontends and backends, and the
//! faults a scenario applies to them.

use super::clock::Clock;
use super::link::{StoreLink, STALL};
use super::net::Net;
use super::redis::{start_redis, StoreCluster};
use super::scenario::Planned;
use super::{FaultOptions, DRAIN_SECS, LEASE_SECS};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;

/// One node process on a host.
struct Node {
    child: Child,
}

impl Node {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args([format!("-{name}"), pid.to_string()])
                .status();
        }
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// The processes of a run, by host.
pub(super) struct Cluster<'a> {
    o: &'a FaultOptions,
    net: &'a Net,
    redis: Child,
    /// The registry's (and the single store's) URL.
    pub(super) redis_url: String,
    secret: String,
    nodes: HashMap<String, Node>,
    generation: u64,
    /// Each frontend's link to the store, through a delaying proxy.
    links: HashMap<String, StoreLink>,
    /// libfaketime, and a clock offset file per host, for clock jumps.
    clock: Option<Clock>,
    /// A Redis Cluster as the store, when the scenario asks for one.
    store_cluster: Option<StoreCluster>,
}

impl<'a> Cluster<'a> {
    pub(super) async fn start(
        o: &'a FaultOptions,
        net: &'a Net,
        cluster_store: bool,
    ) -> anyhow::Result<Cluster<'a>> {
        let redis_ip = net.host("redis")?.ip;
        let redis = start_redis(o, net).await?;
        // Each frontend's store link goes through a proxy in the players'
        // host, where this runtime's sockets are.
        let client_ip = net.host("client")?.ip;
        let mut links = HashMap::new();
        for (i, fe) in ["fe1", "fe2"].iter().enumerate() {
            let port = 6381 + u16::try_from(i)?;
            let link = StoreLink::start(
                SocketAddr::from((client_ip, port)),
                SocketAddr::from((redis_ip, 6379)),
            )
            .await?;
            links.insert(fe.to_string(), link);
        }
        let store_cluster = match cluster_store {
            true => Some(StoreCluster::start(o, net).await?),
            false => None,
        };
        let clock = Clock::find();
        if let Some(c) = &clock {
            for host in ["fe1", "fe2", "be1", "be2"] {
                c.set(host, 0)?;
            }
        }
        let mut cluster = Cluster {
            o,
            net,
            redis,
            redis_url: format!("redis://{redis_ip}:6379/0"),
            secret: format!("faults-{}-{}", std::process::id(), rand::random::<u64>()),
            nodes: HashMap::new(),
            generation: 0,
            links,
            clock,
            store_cluster,
        };
        for host in ["fe1", "fe2", "be1", "be2"] {
            cluster.start_node(host).await?;
        }
        Ok(cluster)
    }

    /// A new node on `host`: a frontend on `fe*`, a backend on `be*`.
    async fn start_node(&mut self, host: &str) -> anyhow::Result<()> {
        self.generation += 1;
        let id = format!("{host}-{}", self.generation);
        let ip = self.net.host(host)?.ip;
        let mut args: Vec<String> = vec!["run".into(), "--id".into(), id.clone()];
        if host.starts_with("fe") {
            let store = match &self.store_cluster {
                Some(c) => c.url(),
                None => format!(
                    "redis://{}/0",
                    self.links.get(host).context("a store link")?.addr
                ),
            };
            args.extend(
                [
                    "--role",
                    "frontend",
                    "--type",
                    "connector",
                    "--rpc-addr",
                    &format!("{ip}:4010"),
                    "--client-addr",
                    &format!("{ip}:3010"),
                    "--redis",
                    &store,
                    "--resume-grace-secs",
                    "60",
                ]
                .map(str::to_string),
            );
        } else {
            args.extend(["--role", "backend", "--type", "chat"].map(str::to_string));
        }
        args.extend(
            [
                "--registry",
                &self.redis_url,
                "--lease-secs",
                &LEASE_SECS.to_string(),
                "--drain-secs",
                &DRAIN_SECS.to_string(),
            ]
            .map(str::to_string),
        );
        let mut command = self
            .net
            .command(host, &self.o.binary.display().to_string())?;
        if let Some(clock) = &self.clock {
            command
                .env("LD_PRELOAD", &clock.lib)
                .env("FAKETIME_TIMESTAMP_FILE", clock.file(host))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let mut child = command
            .args(&args)
            .env("SESSION_PROXY_APP", "bench")
            .env("SESSION_PROXY_SECRET", &self.secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {id}"))?;
        crate::soak::until_ready(&mut child, &id).await?;
        if let Some(mut old) = self.nodes.insert(host.to_string(), Node { child }) {
            old.kill().await;
        }
        Ok(())
    }

    fn node(&self, host: &str) -> anyhow::Result<&Node> {
        self.nodes
            .get(host)
            .with_context(|| format!("no node on {host}"))
    }

    pub(super) async fn apply(&mut self, step: &Planned) -> anyhow::Result<()> {
        let host = || step.host.clone().context("a host");
        match step.action.as_str() {
            "partition" | "one-way" => {
                let (a, b) = (step.a.clone().context("a")?, step.b.clone().context("b")?);
                self.net.partition(&a, &b, step.action == "one-way")?;
            }
            "loss" => self.net.loss(&host()?, step.percent)?,
            "heal" => self.heal_network()?,
            "delay" | "stall" => {
                let link = self
                    .links
                    .get(&host()?)
                    .context("delay and stall act on a frontend")?;
                let d = if step.action == "stall" {
                    STALL
                } else {
                    step.delay
                };
                link.set(d);
            }
            "clock-jump" => {
                let clock = self
                    .clock
                    .as_ref()
                    .context("clock-jump needs libfaketime (Debian: faketime)")?;
                clock.set(&host()?, step.secs)?;
            }
            "failover" => {
                let o = self.o;
                self.store_cluster
                    .as_mut()
                    .context("failover needs store = \"cluster\"")?
                    .fail_a_master(o, step.draw)
                    .await?;
            }
            "redis-restart" => {
                // Killed, and back empty at the same address.
                let _ = self.redis.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), self.redis.wait()).await;
                self.redis = start_redis(self.o, self.net).await?;
            }
            "pause" => self.node(&host()?)?.signal("STOP"),
            "unpause" => self.node(&host()?)?.signal("CONT"),
            "drain" => self.node(&host()?)?.signal("TERM"),
            "kill" => {
                if let Some(node) = self.nodes.get_mut(&host()?) {
                    node.kill().await;
                }
            }
            "restart" => {
                let h = host()?;
                // A draining node finishes first (or is killed at its limit).
                if let Some(node) = self.nodes.get_mut(&h) {
                    let limit = Duration::from_secs(DRAIN_SECS + 2);
                    if tokio::time::timeout(limit, node.child.wait())
                        .await
                        .is_err()
                    {
                        node.kill().await;
                    }
                }
                self.start_node(&h).await?;
            }
            other => bail!("unknown action {other}"),
        }
        Ok(())
    }

    /// Every network fault healed: rules, delays, stalls, clocks.
    fn heal_network(&self) -> anyhow::Result<()> {
        self.net.heal();
        for link in self.links.values() {
            link.set(Duration::ZERO);
        }
        if let Some(clock) = &self.clock {
            for host in ["fe1", "fe2", "be1", "be2"] {
                clock.set(host, 0)?;
            }
        }
        Ok(())
    }

    /// Every fault healed, every node running again.
    pub(super) async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_network()?;
        let (o, net) = (self.o, self.net);
        if let Some(c) = &mut self.store_cluster {
            c.restart_all(o, net).await?;
        }
        let hosts: Vec<String> = self.nodes.keys().cloned().collect();
        for host in hosts {
            let node = self.nodes.get_mut(&host).context("node")?;
            node.signal("CONT");
            if node.child.try_wait()?.is_some() {
                self.start_node(&host).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn stop(mut self) {
        for node in self.nodes.values_mut() {
            node.signal("CONT");
            node.kill().await;
        }
        let _ = self.redis.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.redis.wait()).await;
        if let Some(c) = &mut self.store_cluster {
            c.stop().await;
        }
    }
}
