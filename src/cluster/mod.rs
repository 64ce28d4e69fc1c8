//! Cluster membership (`docs/design/cluster.md`): this node's lease in the shared index
//! (join with a new epoch, renewal, self-fencing, re-joining after a loss), stream
//! ownership (claiming a stream before ingesting it, taking over the streams of a node
//! whose lease expired), where GetDataEndpoint sends a stream's producers and live
//! readers, and leaving cleanly at shutdown. The database side is the [`Coordinator`]
//! trait (implemented by the PostgreSQL index); every decision uses the database's clock,
//! never a node's. Correctness rests on the commit fence ([`Fence`], checked inside every
//! fragment commit); the timers here only keep the cluster live.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{Fence, IndexError, IndexResult};

pub mod forward;
#[cfg(test)]
mod tests;

/// A node as the cluster table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    /// The node's `public_url`: where GetDataEndpoint sends clients.
    pub url: String,
    pub epoch: i64,
}

/// The answer to a claim of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node (at the fence's epoch) owns the stream now.
    Mine,
    /// Another node with a live lease owns it.
    Elsewhere(NodeInfo),
}

/// The cluster tables, in the shared index's database. Every method is one transaction.
#[async_trait]
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// Takes the node's lease with a new epoch (one above any earlier incarnation's) for
    /// `ttl`, forgetting the streams earlier incarnations owned. Fails when another
    /// process with a different URL holds a live lease under the same node id.
    async fn join(&self, node_id: &str, url: &str, ttl: Duration) -> IndexResult<i64>;
    /// Extends the lease by `ttl` from the database's now; `false` when it is lost (a
    /// takeover raised the epoch or marked the node dead).
    async fn renew(&self, fence: &Fence, ttl: Duration) -> IndexResult<bool>;
    /// Clean shutdown: releases every stream the node owns and marks it `left`.
    async fn leave(&self, fence: &Fence) -> IndexResult<()>;
    /// Makes `fence`'s node the owner of `stream_id` unless another node with a live
    /// lease owns it. An owner whose lease expired is taken over first (its epoch
    /// raised, its streams released) when `may_take_over`; otherwise it is answered as
    /// the owner. Fails with [`IndexError::Fenced`] when `fence` is not a live lease and
    /// [`IndexError::StreamNotFound`] when the stream is gone.
    async fn claim_stream(
        &self,
        fence: &Fence,
        stream_id: &str,
        may_take_over: bool,
    ) -> IndexResult<Claim>;
    /// The owner of `stream_id` when its lease is live.
    async fn stream_owner(&self, stream_id: &str) -> IndexResult<Option<NodeInfo>>;
    /// Every node with a live lease, by node id.
    async fn live_nodes(&self) -> IndexResult<Vec<NodeInfo>>;
    /// Takes over every node whose lease expired (epoch raised, state `dead`, its
    /// streams released), waiting for their fenced commits in flight; returns their ids.
    async fn take_over_expired(&self, fence: &Fence) -> IndexResult<Vec<String>>;
    /// Takes or extends the singleton lease `name` (`retention`, `gc`) for `ttl` when it
    /// is free, expired, or already `fence`'s; `true` while `fence`'s node holds it.
    async fn hold_singleton(&self, fence: &Fence, name: &str, ttl: Duration) -> IndexResult<bool>;
}

/// Who ingests a stream, as a PutMedia on this node finds it.
#[derive(Debug, Clone)]
pub enum Ownership {
    /// This node: ingest under this lease.
    Mine(Lease),
    /// Another node with a live lease: forward to it.
    Elsewhere(NodeInfo),
}

/// The lease this node holds now.
#[derive(Debug, Clone)]
pub struct Lease {
    pub epoch: i64,
    /// Cancelled when this lease is lost or given up: sessions admitted under it end.
    pub token: CancellationToken,
}

#[derive(Debug)]
struct State {
    lease: Option<Lease>,
    /// Last successful join or renewal (this node's monotonic clock).
    renewed_at: Instant,
    /// Since when every renewal succeeded: takeovers wait for one full TTL of it.
    healthy_since: Instant,
}

/// This node's membership: its id, address, lease, and the coordinator it uses.
#[derive(Debug)]
pub struct Membership {
    node_id: String,
    url: String,
    settings: ClusterSettings,
    coord: Arc<dyn Coordinator>,
    state: Mutex<State>,
    /// Forwards requests for streams other nodes own.
    http: reqwest::Client,
}

impl Membership {
    /// Joins the cluster (start-up): fails when the lease cannot be taken.
    pub async fn join(
        coord: Arc<dyn Coordinator>,
        settings: &ClusterSettings,
        url: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let node_id = settings.node_id();
        let epoch = coord
            .join(&node_id, url, settings.lease_ttl)
            .await
            .map_err(|e| anyhow::anyhow!("joining the cluster as node {node_id}: {e}"))?;
        tracing::info!(node = %node_id, epoch, url, "joined the cluster");
        let now = Instant::now();
        Ok(Arc::new(Self {
            node_id,
            url: url.to_owned(),
            settings: settings.clone(),
            coord,
            state: Mutex::new(State {
                lease: Some(Lease {
                    epoch,
                    token: CancellationToken::new(),
                }),
                renewed_at: now,
                healthy_since: now,
            }),
            http: forward::client(),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The lease, unless it is lost or older than the self-fencing limit (the TTL less
    /// one renewal interval since the last renewal): past that, this node does not
    /// commit or admit anything, before anyone could take it over.
    pub fn lease(&self) -> Option<Lease> {
        let st = self.state.lock().expect("membership");
        let limit = self
            .settings
            .lease_ttl
            .saturating_sub(self.settings.lease_renew);
        st.lease.clone().filter(|_| st.renewed_at.elapsed() < limit)
    }

    /// The commit fence for a fragment admitted under `epoch`: `None` (do not commit)
    /// unless that is still this node's live lease.
    pub fn fence_for(&self, epoch: i64) -> Option<Fence> {
        self.lease()
            .filter(|l| l.epoch == epoch)
            .map(|l| self.fence(l.epoch))
    }

    fn fence(&self, epoch: i64) -> Fence {
        Fence {
            node_id: self.node_id.clone(),
            epoch,
        }
    }

    /// Takeovers are allowed after one full TTL of successful renewals (after an outage
    /// of the database every lease looks expired; the owners get a TTL to renew first).
    fn may_take_over(&self) -> bool {
        let st = self.state.lock().expect("membership");
        st.lease.is_some() && st.healthy_since.elapsed() >= self.settings.lease_ttl
    }

    /// Claims `stream_id` before a PutMedia session ingests it: the lease the session
    /// runs under, or the live node that owns the stream (the request is forwarded there).
    pub async fn claim(&self, stream_id: &str) -> Result<Ownership> {
        let lease = self.lease().ok_or_else(not_serving)?;
        let claim = self
            .coord
            .claim_stream(&self.fence(lease.epoch), stream_id, self.may_take_over())
            .await;
        match claim {
            Ok(Claim::Mine) => Ok(Ownership::Mine(lease)),
            Ok(Claim::Elsewhere(owner)) => Ok(Ownership::Elsewhere(owner)),
            Err(IndexError::Fenced(m)) => {
                self.lost(lease.epoch, &m);
                Err(not_serving())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The node that ingests `stream_id`, or will: the live owner; with no live owner,
    /// the node the stream's rendezvous hash picks among the live ones (every node picks
    /// the same one, which claims the stream when its producer arrives). `None` when no
    /// node holds a lease.
    async fn ingest_node(&self, stream_id: &str) -> Result<Option<NodeInfo>> {
        if let Some(owner) = self.coord.stream_owner(stream_id).await? {
            return Ok(Some(owner));
        }
        let nodes = self.coord.live_nodes().await?;
        Ok(rendezvous(stream_id, &nodes).cloned())
    }

    /// Where a GetMedia of `stream_id` is served: the ingesting node (see
    /// [`Membership::data_endpoint`]) when that is another node, where the live tail is.
    pub async fn media_node_elsewhere(&self, stream_id: &str) -> Result<Option<NodeInfo>> {
        Ok(self
            .ingest_node(stream_id)
            .await?
            .filter(|n| n.node_id != self.node_id))
    }

    /// GetDataEndpoint for PUT_MEDIA and GET_MEDIA: the URL of the node that ingests the
    /// stream or will (this node's own when no node holds a lease).
    pub async fn data_endpoint(&self, stream_id: &str) -> Result<String> {
        Ok(self
            .ingest_node(stream_id)
            .await?
            .map_or_else(|| self.url.clone(), |n| n.url))
    }

    /// Marks the lease of `epoch` lost (a renewal or a commit found it fenced): sessions
    /// admitted under it end; the lease task joins again with a new epoch.
    pub fn lost(&self, epoch: i64, why: &str) {
        let mut st = self.state.lock().expect("membership");
        if let Some(l) = st.lease.take_if(|l| l.epoch == epoch) {
            tracing::error!(node = %self.node_id, epoch, why, "cluster lease lost: ending this node's PutMedia sessions");
            metrics::counter!(crate::metrics::CLUSTER_LEASES_LOST).increment(1);
            l.token.cancel();
        }
    }

    /// Renews the lease every `cluster.lease_renew` (joining again after a loss) and takes
    /// over expired nodes every `cluster.takeover_scan`, until `stop`. Two tasks: a
    /// takeover waiting for a paused node's lock must never delay this node's renewals.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let every = |period: Duration| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let (me, halt) = (self.clone(), stop.clone());
        let mut renew = every(self.settings.lease_renew);
        let renewals = tokio::spawn(async move {
            while tokio::select! {
                _ = halt.cancelled() => false,
                _ = renew.tick() => true,
            } {
                me.renew_once().await;
            }
        });
        let mut scan = every(self.settings.takeover_scan);
        let scans = tokio::spawn(async move {
            while tokio::select! {
                _ = stop.cancelled() => false,
                _ = scan.tick() => true,
            } {
                self.scan_once().await;
            }
        });
        tokio::spawn(async move {
            let _ = tokio::join!(renewals, scans);
        })
    }

    async fn renew_once(&self) {
        let held = self.state.lock().expect("membership").lease.clone();
        let ttl = self.settings.lease_ttl;
        match held {
            Some(l) => match self.coord.renew(&self.fence(l.epoch), ttl).await {
                Ok(true) => {
                    let mut st = self.state.lock().expect("membership");
                    st.renewed_at = Instant::now();
                }
                Ok(false) => self.lost(l.epoch, "the lease was taken over"),
                Err(e) => {
                    tracing::warn!(node = %self.node_id, error = %e, "cluster lease not renewed; retrying");
                    self.state.lock().expect("membership").healthy_since = Instant::now();
                }
            },
            None => match self.coord.join(&self.node_id, &self.url, ttl).await {
                Ok(epoch) => {
                    tracing::info!(node = %self.node_id, epoch, "joined the cluster again");
                    let now = Instant::now();
                    let mut st = self.state.lock().expect("membership");
                    st.lease = Some(Lease {
                        epoch,
                        token: CancellationToken::new(),
                    });
                    st.renewed_at = now;
                    st.healthy_since = now;
                }
                Err(e) => {
                    tracing::warn!(node = %self.node_id, error = %e, "cannot join the cluster; retrying")
                }
            },
        }
    }

    async fn scan_once(&self) {
        if !self.may_take_over() {
            return;
        }
        let Some(l) = self.lease() else { return };
        match self.coord.take_over_expired(&self.fence(l.epoch)).await {
            Ok(nodes) => {
                for n in nodes {
                    tracing::warn!(node = %self.node_id, dead = %n, "took over a node whose lease expired; its streams go to the nodes their producers reach");
                    metrics::counter!(crate::metrics::CLUSTER_TAKEOVERS).increment(1);
                }
            }
            Err(IndexError::Fenced(m)) => self.lost(l.epoch, &m),
            Err(e) => tracing::warn!(node = %self.node_id, error = %e, "takeover scan failed"),
        }
    }

    /// Whether this node may run the singleton task `name` now (C5): it holds the
    /// singleton lease, taken or extended for `ttl` (at least one lease TTL). Background
    /// retention and garbage sweeps run on one node at a time; their transactions are
    /// safe to repeat, so this spares work rather than guarding correctness.
    pub async fn singleton(&self, name: &str, ttl: Duration) -> bool {
        let Some(l) = self.lease() else { return false };
        match self
            .coord
            .hold_singleton(&self.fence(l.epoch), name, ttl.max(self.settings.lease_ttl))
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(node = %self.node_id, singleton = name, error = %e, "singleton lease not taken");
                false
            }
        }
    }

    /// Clean shutdown, after the last commit: the node's streams move at once instead of
    /// after the TTL.
    pub async fn leave(&self) {
        let held = self.state.lock().expect("membership").lease.take();
        if let Some(l) = held {
            l.token.cancel();
            match self.coord.leave(&self.fence(l.epoch)).await {
                Ok(()) => tracing::info!(node = %self.node_id, "left the cluster"),
                Err(e) => {
                    tracing::warn!(node = %self.node_id, error = %e, "leaving the cluster failed; its lease expires instead")
                }
            }
        }
    }
}

fn not_serving() -> Error {
    Error::new(
        ErrorKind::ClientLimitExceeded,
        "this node holds no cluster lease right now: retry, or call GetDataEndpoint and connect to another node",
    )
}

/// The node the rendezvous (highest random weight) hash of `stream_id` picks: every
/// caller with the same live set picks the same node, and a node leaving moves only
/// its own streams.
pub fn rendezvous<'a>(stream_id: &str, nodes: &'a [NodeInfo]) -> Option<&'a NodeInfo> {
    nodes.iter().max_by_key(|n| {
        let mut h = blake3::Hasher::new();
        h.update(stream_id.as_bytes());
        h.update(&[0]);
        h.update(n.node_id.as_bytes());
        let out = h.finalize();
        let b = out.as_bytes();
        (
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            n.node_id.clone(),
        )
    })
}

/// This machine's host name (the default `cluster.node_id`).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
