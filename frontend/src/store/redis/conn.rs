//! The store's connection to Redis, a single server or a Redis Cluster,
//! with its deadlines.

use super::slots::Slots;
use crate::store::StoreError;
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, Pipeline, RedisFuture,
    RedisResult, Value,
};
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::debug;

/// How many commands a cluster link keeps in flight for one batch.
const CLUSTER_IN_FLIGHT: usize = 64;

/// The longest pipeline sent to one server.
const PIPELINE_MAX: usize = 1000;

/// A connection to the store's server: one server, or a cluster whose
/// client routes each command to the node that holds its keys' slot (with
/// the slot map batches are grouped by).
#[derive(Clone)]
pub(super) enum Link {
    One(ConnectionManager),
    Cluster(ClusterConnection, Arc<Slots>),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Cluster(c, _) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c, _) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Cluster(c, _) => c.get_db(),
        }
    }
}

impl Link {
    /// Runs `cmds`, each on keys of one slot, and answers in their order.
    /// One server takes them as pipelines of up to [`PIPELINE_MAX`]. A
    /// cluster takes them as one pipeline per master, by its slot map; when
    /// it has none (or it proved stale), each command goes to its slot's
    /// node by itself, [`CLUSTER_IN_FLIGHT`] at a time.
    pub(super) async fn each<T: FromRedisValue>(&mut self, cmds: &[Cmd]) -> RedisResult<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Link::One(c) => pipelined(c, &[cmds]).await,
            Link::Cluster(c, slots) => {
                if cmds.len() > 1 {
                    if let Some(answers) = slots.run(c, cmds).await? {
                        return answers.iter().map(T::from_redis_value).collect();
                    }
                }
                let mut out = Vec::with_capacity(cmds.len());
                for chunk in cmds.chunks(CLUSTER_IN_FLIGHT) {
                    let calls = chunk.iter().map(|cmd| {
                        let (mut c, cmd) = (c.clone(), cmd.clone());
                        async move { cmd.query_async::<T>(&mut c).await }
                    });
                    out.extend(futures::future::try_join_all(calls).await?);
                }
                Ok(out)
            }
        }
    }

    /// Runs `first`, then `then`, and answers `first`'s answers: one
    /// pipeline on one server (which runs it in order), two rounds on a
    /// cluster.
    pub(super) async fn each_then(
        &mut self,
        first: &[Cmd],
        then: &[Cmd],
    ) -> RedisResult<Vec<Value>> {
        match self {
            Link::One(c) => {
                let mut answers: Vec<Value> = pipelined(c, &[first, then]).await?;
                answers.truncate(first.len());
                Ok(answers)
            }
            Link::Cluster(..) => {
                let answers = self.each(first).await?;
                self.each::<Value>(then).await?;
                Ok(answers)
            }
        }
    }

    /// Every key matching `pattern`, from every master of a cluster.
    pub(super) async fn scan(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        match self {
            Link::One(c) => {
                scan_node(pattern, |cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async(&mut c).await }
                })
                .await
            }
            Link::Cluster(c, _) => {
                let mut out = Vec::new();
                for (host, port) in masters(c).await? {
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let node = scan_node(pattern, |cmd| {
                        let (mut c, route) = (c.clone(), route.clone());
                        async move { from_value(c.route_command(&cmd, route).await?) }
                    })
                    .await?;
                    out.extend(node);
                }
                Ok(out)
            }
        }
    }

    /// The `run_id` of the server, or of every master of a cluster (sorted,
    /// comma-separated): it changes when a server restarts.
    pub(super) async fn run_ids(&mut self) -> RedisResult<String> {
        let info = ::redis::cmd("INFO").arg("server").clone();
        let mut ids = match self {
            Link::One(c) => vec![run_id(&info.query_async::<String>(c).await?)],
            Link::Cluster(c, _) => {
                let mut ids = Vec::new();
                for (host, port) in masters(c).await? {
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let answer = c.route_command(&info, route).await?;
                    ids.push(run_id(&from_value::<String>(answer)?));
                }
                ids
            }
        };
        ids.sort();
        Ok(ids.join(","))
    }

    /// Sends `cmd` to every master (to one server: once).
    pub(super) async fn on_every_master(&mut self, cmd: &Cmd) -> RedisResult<()> {
        match self {
            Link::One(c) => cmd.query_async(c).await,
            Link::Cluster(c, _) => {
                for (host, port) in masters(c).await? {
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    c.route_command(cmd, route).await?;
                }
                Ok(())
            }
        }
    }
}

/// The `run_id:` line of an `INFO server` answer (empty when missing).
fn run_id(info: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The commands of `runs`, in order, as pipelines of up to
/// [`PIPELINE_MAX`] on one server; their answers in the same order.
async fn pipelined<T: FromRedisValue>(
    c: &mut ConnectionManager,
    runs: &[&[Cmd]],
) -> RedisResult<Vec<T>> {
    let mut out = Vec::new();
    let mut pipe = ::redis::pipe();
    let mut queued = 0;
    for cmd in runs.iter().flat_map(|run| run.iter()) {
        pipe.add_command(cmd.clone());
        queued += 1;
        if queued == PIPELINE_MAX {
            out.extend(pipe.query_async::<Vec<T>>(c).await?);
            pipe = ::redis::pipe();
            queued = 0;
        }
    }
    if queued > 0 {
        out.extend(pipe.query_async::<Vec<T>>(c).await?);
    }
    Ok(out)
}

fn from_value<T: FromRedisValue>(v: Value) -> RedisResult<T> {
    T::from_redis_value(&v)
}

/// A full SCAN of one node, each step run by `query`.
async fn scan_node<F, Fut>(pattern: &str, mut query: F) -> RedisResult<Vec<String>>
where
    F: FnMut(Cmd) -> Fut,
    Fut: std::future::Future<Output = RedisResult<(u64, Vec<String>)>>,
{
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, batch) = query(cmd).await?;
        out.extend(batch);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// The cluster's masters that serve slots and are not failing, as
/// `CLUSTER NODES` lists them.
async fn masters(c: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let nodes: String = from_value(
        c.route_command(
            &::redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?,
    )?;
    Ok(parse_masters(&nodes))
}

/// The `host:port` of each line of `CLUSTER NODES` that is a master with
/// slots and not failing: `<id> <ip:port@cport[,hostname]> <flags> <master>
/// <ping> <pong> <epoch> <link> <slot> …`.
fn parse_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "fail?")
                && fields.len() > 8;
            if !serving {
                return None;
            }
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// How the store dials its server.
pub(super) enum Dial {
    One {
        client: Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        /// The first seed, whose credentials every node takes.
        seed: ConnectionInfo,
    },
}

impl Dial {
    async fn connect(&self) -> RedisResult<Link> {
        match self {
            Dial::One { client, config } => Ok(Link::One(
                client
                    .get_connection_manager_with_config(config.clone())
                    .await?,
            )),
            Dial::Cluster { client, .. } => Ok(Link::Cluster(
                client.get_async_connection().await?,
                Arc::new(Slots::default()),
            )),
        }
    }

    /// The server, or each master of the cluster, to subscribe to: keyspace
    /// notifications are local to the node whose keys they are about.
    pub(super) async fn nodes(&self, link: &mut Link) -> RedisResult<Vec<Client>> {
        match (self, link) {
            (Dial::One { client, .. }, _) => Ok(vec![client.clone()]),
            (Dial::Cluster { seed, .. }, Link::Cluster(c, _)) => masters(c)
                .await?
                .into_iter()
                .map(|(host, port)| {
                    Client::open(ConnectionInfo {
                        addr: ConnectionAddr::Tcp(host, port),
                        redis: seed.redis.clone(),
                    })
                })
                .collect(),
            (Dial::Cluster { seed, .. }, Link::One(_)) => Ok(vec![Client::open(seed.clone())?]),
        }
    }
}

/// The store's connection to the server, replaced when it stops answering.
///
/// The `redis` connection manager redials by itself when a connection is
/// closed or reset, but a server that stops answering (stopped, or behind a
/// dead network path) leaves it waiting on a socket that never fails. Each
/// command has a response timeout; after one, a fresh connection is dialled
/// in the background and swapped in once it answers, while the old one keeps
/// serving whatever it still can.
pub(super) struct Conn {
    current: RwLock<Link>,
    pub(super) dial: Dial,
    /// How long dialling and the first answer may take together.
    dial_timeout: Duration,
    redialing: AtomicBool,
}

impl Conn {
    /// Dials, within `dial_timeout`.
    pub(super) async fn open(dial: Dial, dial_timeout: Duration) -> Result<Conn, StoreError> {
        let link = tokio::time::timeout(dial_timeout, dial.connect())
            .await
            .map_err(|_| StoreError::TimedOut {
                after: dial_timeout,
            })??;
        Ok(Conn {
            current: RwLock::new(link),
            dial,
            dial_timeout,
            redialing: AtomicBool::new(false),
        })
    }

    pub(super) fn get(&self) -> Link {
        self.current.read_unpoisoned().clone()
    }

    /// Dials a replacement after `err`, if it says the server stopped
    /// answering; one redial at a time.
    pub(super) fn failed(
        self: &Arc<Self>,
        err: &::redis::RedisError,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        if !err.is_timeout() || self.redialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let conn = self.clone();
        tasks.spawn(async move {
            match tokio::time::timeout(conn.dial_timeout, conn.dial.connect()).await {
                Ok(Ok(fresh)) => {
                    *conn.current.write_unpoisoned() = fresh;
                    debug!("store connection replaced after a timeout");
                }
                Ok(Err(err)) => debug!(cause = %session_proxy_protocol::chain(&err), "store redial failed; next timeout retries"),
                Err(_) => debug!("store redial timed out; next timeout retries"),
            }
            conn.redialing.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::parse_masters;

    #[test]
    fn masters_are_the_serving_masters_of_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,node-b master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 1 3 disconnected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
e5 ::1:7004@17004 master - 0 1 4 connected 16000
f6 127.0.0.1:7005@17005 master - 0 1 5 connected
";
        assert_eq!(
            parse_masters(nodes),
            vec![
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001),
                ("::1".to_string(), 7004),
            ]
        );
    }
}
