//! Membership in etcd (v3), what Pitaya users run: each node's record is a
//! key attached to a lease of its own, kept alive by the node's renewals; a
//! lapsed lease deletes the key. Every node watches the prefix and re-reads
//! it on each event, and every few seconds whatever happened.
//!
//! It speaks etcd's JSON gateway (`/v3/kv/…`, `/v3/lease/…`, `/v3/watch`,
//! served on the client port by every etcd since 3.3) over HTTP/1.1, so it
//! needs no gRPC stack or `protoc`. Keys are `<prefix><node id>` (default
//! prefix `/session-proxy/nodes/`), values the node's JSON record.

use crate::view::{Changes, View};
use crate::{Members, Membership, NodeRecord, RegistryError, RegistryFuture};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use session_proxy_protocol::sync::LockUnpoisoned as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tracing::debug;

/// Where and how an [`EtcdMembership`] keeps the records.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdMembershipConfig {
    /// The etcd client URL, e.g. `http://127.0.0.1:2379`.
    pub endpoint: String,
    /// Prefix of every record's key. Default: `"/session-proxy/nodes/"`.
    pub prefix: String,
    /// How often every record is read again, whatever the watch said.
    /// Default: 2 s.
    pub resync: Duration,
    /// Deadline of each request. Default: 1 s.
    pub timeout: Duration,
}

impl EtcdMembershipConfig {
    /// Defaults, with the given endpoint (`http://host:port`; an
    /// `etcd://host:port` URL is taken as `http://host:port`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        let endpoint: String = endpoint.into();
        let endpoint = match endpoint.strip_prefix("etcd://") {
            Some(rest) => format!("http://{rest}"),
            None => endpoint,
        };
        EtcdMembershipConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            prefix: "/session-proxy/nodes/".into(),
            resync: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        }
    }
}

/// Node records in a real etcd cluster.
pub struct EtcdMembership {
    api: Api,
    prefix: String,
    /// This process's leases, by node id: the lease id and the record last
    /// written under it (unchanged records are only kept alive).
    leases: Mutex<HashMap<String, (i64, String)>>,
    /// The members, kept fresh from the watch.
    view: View,
}

impl std::fmt::Debug for EtcdMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembership")
            .field("endpoint", &self.api.endpoint)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The JSON gateway, one POST at a time, each under the deadline.
#[derive(Clone)]
struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: String,
    timeout: Duration,
}

fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
    RegistryError::Unavailable {
        source: Box::new(err),
    }
}

/// What etcd answered that is not what its API promises.
#[derive(Debug, thiserror::Error)]
#[error("etcd answered {status}: {body}")]
struct EtcdRefused {
    status: u16,
    body: String,
}

impl Api {
    fn request(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Request<Full<Bytes>>, RegistryError> {
        hyper::Request::post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(unavailable)
    }

    /// One call; its answer as JSON.
    async fn call(&self, path: &str, body: Value) -> Result<Value, RegistryError> {
        let request = self.request(path, &body)?;
        let after = self.timeout;
        let answer = async {
            let response = self.client.request(request).await.map_err(unavailable)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(unavailable)?
                .to_bytes();
            if !status.is_success() {
                return Err(unavailable(EtcdRefused {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                }));
            }
            serde_json::from_slice(&bytes).map_err(RegistryError::Record)
        };
        tokio::time::timeout(after, answer)
            .await
            .unwrap_or(Err(RegistryError::TimedOut { after }))
    }
}

/// An int64 as the gateway writes it (a JSON string), or a number.
fn int(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

/// The first key after every key that starts with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

impl EtcdMembership {
    /// Connects, reads the members once and starts following changes.
    /// Must be called within a tokio runtime.
    pub async fn connect(config: EtcdMembershipConfig) -> Result<Self, RegistryError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let api = Api {
            client: Client::builder(TokioExecutor::new()).build(connector),
            endpoint: config.endpoint.clone(),
            timeout: config.timeout,
        };
        let first = list(&api, &config.prefix).await?;
        let changes = EtcdChanges {
            api: api.clone(),
            prefix: config.prefix.clone(),
            events: None,
        };
        Ok(EtcdMembership {
            api,
            prefix: config.prefix,
            leases: Mutex::default(),
            view: View::start(first, changes, config.resync),
        })
    }

    fn key(&self, id: &str) -> String {
        B64.encode(format!("{}{id}", self.prefix))
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, String)>> {
        self.leases.lock_unpoisoned()
    }

    /// Keeps `lease` alive; `false` when etcd no longer has it.
    async fn keep_alive(&self, lease: i64) -> Result<bool, RegistryError> {
        let answer = self
            .api
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        // An expired or unknown lease comes back without a TTL.
        Ok(int(&answer["result"]["TTL"]).is_some_and(|ttl| ttl > 0))
    }
}

impl Membership for EtcdMembership {
    fn put(&self, record: &NodeRecord, ttl: Duration) -> RegistryFuture<'_, ()> {
        let json = serde_json::to_string(record).map_err(RegistryError::Record);
        let id = record.id.clone();
        Box::pin(async move {
            let json = json?;
            let held = self.leases().get(&id).cloned();
            let mut lease = None;
            if let Some((held, written)) = held {
                if self.keep_alive(held).await? {
                    if written == json {
                        return Ok(());
                    }
                    lease = Some(held);
                }
            }
            let lease = match lease {
                Some(lease) => lease,
                None => {
                    // Whole seconds, rounded up; etcd raises a TTL below its
                    // minimum to that minimum.
                    let secs = ttl.as_millis().div_ceil(1000).max(1);
                    let granted = self
                        .api
                        .call("/v3/lease/grant", json!({ "TTL": secs.to_string() }))
                        .await?;
                    int(&granted["ID"]).ok_or_else(|| {
                        unavailable(EtcdRefused {
                            status: 200,
                            body: "a lease grant without an ID".into(),
                        })
                    })?
                }
            };
            self.api
                .call(
                    "/v3/kv/put",
                    json!({
                        "key": self.key(&id),
                        "value": B64.encode(&json),
                        "lease": lease.to_string(),
                    }),
                )
                .await?;
            self.leases().insert(id, (lease, json));
            self.view.reread();
            Ok(())
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(async move {
            self.api
                .call("/v3/kv/deleterange", json!({ "key": self.key(id) }))
                .await?;
            let held = self.leases().remove(id);
            if let Some((lease, _)) = held {
                // The key is gone already; the lease would only lapse.
                if let Err(err) = self
                    .api
                    .call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
                    .await
                {
                    debug!(cause = %session_proxy_protocol::chain(&err), "revoking the lease failed; it lapses");
                }
            }
            self.view.reread();
            Ok(())
        })
    }

    fn watch(&self) -> watch::Receiver<Members> {
        self.view.watch()
    }

    fn close(&self) -> crate::CloseFuture<'_> {
        self.view.close()
    }
}

/// Every record under `prefix`; a malformed, oversized or misnamed one is
/// skipped with a warning.
async fn list(api: &Api, prefix: &str) -> Result<Members, RegistryError> {
    let answer = api
        .call(
            "/v3/kv/range",
            json!({
                "key": B64.encode(prefix),
                "range_end": B64.encode(range_end(prefix)),
            }),
        )
        .await?;
    let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
    let records = kvs.iter().filter_map(|kv| {
        let key = B64.decode(kv["key"].as_str()?).ok()?;
        let id = std::str::from_utf8(&key).ok()?.strip_prefix(prefix)?;
        let value = B64.decode(kv["value"].as_str()?).ok()?;
        crate::record::parse_entry(id, &value)
    });
    Ok(Members::from_records(records))
}

/// A watch on the prefix: each chunk etcd streams is an event (or the
/// watch's creation), and only wakes a re-read.
async fn open_watch(api: &Api, prefix: &str) -> Result<hyper::body::Incoming, RegistryError> {
    let request = api.request(
        "/v3/watch",
        &json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix)),
        }}),
    )?;
    let after = api.timeout;
    let response = tokio::time::timeout(after, api.client.request(request))
        .await
        .map_err(|_| RegistryError::TimedOut { after })?
        .map_err(unavailable)?;
    if !response.status().is_success() {
        return Err(unavailable(EtcdRefused {
            status: response.status().as_u16(),
            body: "watch refused".into(),
        }));
    }
    Ok(response.into_body())
}

/// A watch on the prefix, and full reads of it.
struct EtcdChanges {
    api: Api,
    prefix: String,
    events: Option<hyper::body::Incoming>,
}

impl Changes for EtcdChanges {
    async fn open(&mut self) -> Result<(), RegistryError> {
        self.events = Some(open_watch(&self.api, &self.prefix).await?);
        Ok(())
    }

    async fn next(&mut self) -> bool {
        match self.events.as_mut() {
            Some(body) => matches!(body.frame().await, Some(Ok(_))),
            None => false,
        }
    }

    async fn list(&mut self) -> Result<Members, RegistryError> {
        list(&self.api, &self.prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(range_end("/sp/"), b"/sp0".to_vec());
        assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(
            EtcdMembershipConfig::new("etcd://127.0.0.1:2379/").endpoint,
            "http://127.0.0.1:2379"
        );
    }
}
