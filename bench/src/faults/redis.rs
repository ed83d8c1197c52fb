//! The store the nodes use: one redis-server, or a Redis Cluster of three
//! masters and three replicas, on the Redis host.

use super::net::Net;
use super::FaultOptions;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// A redis-server without persistence on the `redis` host, once it accepts.
pub(super) async fn start_redis(o: &FaultOptions, net: &Net) -> anyhow::Result<Child> {
    let ip = net.host("redis")?.ip;
    let mut redis = net
        .command("redis", &o.redis_server.display().to_string())?
        .args(["--bind", &ip.to_string(), "--port", "6379"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server")?;
    if let Err(err) = wait_for_port(ip, 6379).await {
        let _ = redis.start_kill();
        return Err(err);
    }
    Ok(redis)
}

/// The first port of a Redis Cluster's six nodes (three masters, three
/// replicas) on the Redis host.
const CLUSTER_PORT: u16 = 7000;

/// A Redis Cluster on the Redis host: each node by its port, `None` while
/// it is down.
pub(super) struct StoreCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
    ip: std::net::Ipv4Addr,
}

impl StoreCluster {
    pub(super) async fn start(o: &FaultOptions, net: &Net) -> anyhow::Result<StoreCluster> {
        let ip = net.host("redis")?.ip;
        let dir = std::env::temp_dir().join(format!(
            "session-proxy-faults-cluster-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = StoreCluster {
            nodes: Vec::new(),
            dir,
            ip,
        };
        for i in 0..6 {
            let port = CLUSTER_PORT + i;
            let child = cluster.spawn(o, net, port)?;
            cluster.nodes.push((port, Some(child)));
        }
        for &(port, _) in &cluster.nodes {
            wait_for_port(ip, port).await?;
        }
        let mut create = tokio::process::Command::new(&o.redis_cli);
        create.args(["--cluster", "create"]);
        for &(port, _) in &cluster.nodes {
            create.arg(format!("{ip}:{port}"));
        }
        let made = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("redis-cli --cluster create")?;
        if !made.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&made.stdout)
            );
        }
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = true;
            for &(port, _) in &cluster.nodes {
                ok &= cluster
                    .cli(o, port, &["cluster", "info"])
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"));
            }
            if ok {
                return Ok(cluster);
            }
            if Instant::now() > until {
                bail!("the Redis Cluster did not come up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&self, o: &FaultOptions, net: &Net, port: u16) -> anyhow::Result<Child> {
        let conf = format!("nodes-{port}.conf");
        net.command("redis", &o.redis_server.display().to_string())?
            .args(["--bind", &self.ip.to_string(), "--port", &port.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", &conf])
            .args(["--cluster-node-timeout", "1500"])
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a Redis Cluster node")
    }

    async fn cli(&self, o: &FaultOptions, port: u16, args: &[&str]) -> Option<String> {
        let out = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::process::Command::new(&o.redis_cli)
                .args(["-h", &self.ip.to_string(), "-p", &port.to_string()])
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The store URL, naming the three first nodes.
    pub(super) fn url(&self) -> String {
        let seeds: Vec<String> = (0..3)
            .map(|i| format!("{}:{}", self.ip, CLUSTER_PORT + i))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// SIGKILLs a master, the `draw`-th of those up: its replica takes over
    /// once the others see it fail.
    pub(super) async fn fail_a_master(
        &mut self,
        o: &FaultOptions,
        draw: u32,
    ) -> anyhow::Result<()> {
        let mut masters = Vec::new();
        for &(port, ref child) in &self.nodes {
            if child.is_none() {
                continue;
            }
            if let Some(role) = self.cli(o, port, &["role"]).await {
                if role.lines().next() == Some("master") {
                    masters.push(port);
                }
            }
        }
        if masters.is_empty() {
            bail!("no Redis Cluster master answers");
        }
        let port = masters[draw as usize % masters.len()];
        if let Some((_, slot)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            if let Some(mut child) = slot.take() {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
        }
        Ok(())
    }

    /// Every node up again (a failed master rejoins as a replica).
    pub(super) async fn restart_all(&mut self, o: &FaultOptions, net: &Net) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].0;
            if self.nodes[i].1.is_none() {
                let child = self.spawn(o, net, port)?;
                self.nodes[i].1 = Some(child);
                wait_for_port(self.ip, port).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn stop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `ip:port` accepts (10 s at most).
pub(super) async fn wait_for_port(ip: std::net::Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect((ip, port)).await.is_err() {
        if Instant::now() > until {
            bail!("{ip}:{port} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
