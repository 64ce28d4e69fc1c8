//! Cluster settings (`[cluster]`) and the rules a cluster node's settings must meet: a
//! server on the PostgreSQL index is a node, and nodes share their secrets through files.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, IndexBackend, Settings};

/// Cluster membership (`docs/design/cluster.md`). A server on the PostgreSQL index is a
/// cluster node: it holds a lease in the database, owns the streams it ingests, and
/// fences every fragment commit with its lease's epoch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster. Default: the host name.
    pub node_id: Option<String>,
    /// How long a lease lasts without renewal; another node takes over after it.
    /// Default `6s`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the lease is renewed. Default `2s` (three tries per TTL).
    #[serde(with = "humantime_serde")]
    pub lease_renew: Duration,
    /// How often a node looks for expired nodes to take over. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub takeover_scan: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: None,
            lease_ttl: Duration::from_secs(6),
            lease_renew: Duration::from_secs(2),
            takeover_scan: Duration::from_secs(1),
        }
    }
}

impl ClusterSettings {
    /// `node_id`, or the host name.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::cluster::host_name)
    }
}

impl Settings {
    /// A server on the PostgreSQL index is a cluster node (`docs/design/cluster.md`).
    pub fn cluster_enabled(&self) -> bool {
        self.index.backend == IndexBackend::Postgres
    }

    /// Cluster nodes share their secrets through configured files: a key generated into
    /// one node's data dir would differ on every other node.
    pub(super) fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.lease_renew.is_zero() || c.takeover_scan.is_zero() || c.lease_ttl < 2 * c.lease_renew {
            return Err(ConfigError::Invalid(
                "cluster.lease_renew and cluster.takeover_scan must be positive and cluster.lease_ttl at least twice cluster.lease_renew".into(),
            ));
        }
        if let Some(id) = &c.node_id {
            crate::model::check_name("cluster.node_id", id, 128)
                .map_err(|e| ConfigError::Invalid(e.message))?;
        }
        if !self.keys.files.contains_key(&self.keys.default_key_id) {
            return Err(ConfigError::Invalid(format!(
                "a cluster node (index.backend = \"postgres\") needs its master key from a shared file: set keys.files.\"{}\" to a file every node reads",
                self.keys.default_key_id
            )));
        }
        if self.keys.session_token_file.is_none() {
            return Err(ConfigError::Invalid(
                "a cluster node (index.backend = \"postgres\") needs keys.session_token_file (STREAMVAULT_KEYS__SESSION_TOKEN_FILE): a 32-byte key file every node reads".into(),
            ));
        }
        Ok(())
    }
}
