//! The cluster tables of the PostgreSQL index (`docs/design/cluster.md`): the
//! [`Coordinator`] of [`PostgresIndex`] (node leases, stream ownership, takeovers) and the
//! commit fence every fenced `commit_batch` runs first. Row locks carry the protocol:
//! a commit holds `FOR KEY SHARE` on its node's row, a takeover takes `FOR UPDATE` on the
//! row it retires, so it waits for the commits in flight and every later one fails; a
//! renewal is a non-key `UPDATE`, which never waits for commits. All times are the
//! database's `now()`.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

use super::{MAX_ATTEMPTS, PostgresIndex, TxError, TxResult, db_err};
use crate::cluster::{Claim, Coordinator, NodeInfo};
use crate::index::{BatchRow, Fence, IndexError, IndexResult};

/// The fence: `f`'s node row at `f`'s epoch with a live lease, locked `FOR KEY SHARE`
/// until the transaction ends (a takeover waits for it).
async fn check_lease(c: &mut PgConnection, f: &Fence) -> TxResult<()> {
    let ok: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM cluster_nodes WHERE node_id = $1 AND epoch = $2 AND state = 'live' \
         AND expires_at > now() FOR KEY SHARE",
    )
    .bind(&f.node_id)
    .bind(f.epoch)
    .fetch_optional(&mut *c)
    .await?;
    match ok {
        Some(_) => Ok(()),
        None => Err(IndexError::Fenced(format!(
            "node {} holds no live lease at epoch {}",
            f.node_id, f.epoch
        ))
        .into()),
    }
}

/// The commit fence of a batch: the lease check, then the batch's streams that `f`'s
/// node does not own at its epoch (their rows get `NotOwner`).
pub(super) async fn fence_commit(
    c: &mut PgConnection,
    f: &Fence,
    rows: &[BatchRow],
) -> TxResult<HashSet<String>> {
    check_lease(c, f).await?;
    let ids: Vec<String> = rows
        .iter()
        .map(|b| b.row.stream_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let not_owned: Vec<String> = sqlx::query_scalar(
        "SELECT u.s FROM unnest($1::text[]) AS u(s) WHERE NOT EXISTS \
         (SELECT 1 FROM stream_owners o WHERE o.stream_id = u.s AND o.node_id = $2 AND o.node_epoch = $3)",
    )
    .bind(ids)
    .bind(&f.node_id)
    .bind(f.epoch)
    .fetch_all(&mut *c)
    .await?;
    Ok(not_owned.into_iter().collect())
}

/// Retires the nodes of `ids` whose lease expired: locks their rows `FOR UPDATE` (waiting
/// for their commits in flight; a node that renewed meanwhile no longer matches), raises
/// their epochs, marks them dead and releases their streams. Returns those retired.
async fn take_over(c: &mut PgConnection, ids: &[String]) -> TxResult<Vec<String>> {
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT node_id FROM cluster_nodes WHERE node_id = ANY($1) AND state = 'live' \
         AND expires_at <= now() ORDER BY node_id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *c)
    .await?;
    if locked.is_empty() {
        return Ok(locked);
    }
    sqlx::query(
        "UPDATE cluster_nodes SET epoch = epoch + 1, state = 'dead' WHERE node_id = ANY($1)",
    )
    .bind(&locked)
    .execute(&mut *c)
    .await?;
    sqlx::query("DELETE FROM stream_owners WHERE node_id = ANY($1)")
        .bind(&locked)
        .execute(&mut *c)
        .await?;
    Ok(locked)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn node(r: &sqlx::postgres::PgRow) -> Result<NodeInfo, sqlx::Error> {
    Ok(NodeInfo {
        node_id: r.try_get(0)?,
        url: r.try_get(1)?,
        epoch: r.try_get(2)?,
    })
}

#[async_trait]
impl Coordinator for PostgresIndex {
    async fn join(&self, node_id: &str, url: &str, ttl: Duration) -> IndexResult<i64> {
        transaction!(self.pool, |c| {
            // FOR UPDATE: an earlier incarnation's commits in flight finish first.
            let held = sqlx::query(
                "SELECT url, state = 'live' AND expires_at > now() FROM cluster_nodes \
                 WHERE node_id = $1 FOR UPDATE",
            )
            .bind(node_id)
            .fetch_optional(&mut *c)
            .await?;
            if let Some(r) = held {
                let (held_url, live): (String, bool) = (r.try_get(0)?, r.try_get(1)?);
                if live && held_url != url {
                    return Err(IndexError::Db(format!(
                        "cluster.node_id {node_id} is held by a live node at {held_url}: two nodes share one node id (or wait for its lease to expire)"
                    ))
                    .into());
                }
            }
            let epoch: i64 = sqlx::query_scalar(
                "INSERT INTO cluster_nodes (node_id, url, epoch, expires_at, state) \
                 VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', 'live') \
                 ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, \
                 epoch = cluster_nodes.epoch + 1, expires_at = excluded.expires_at, state = 'live' \
                 RETURNING epoch",
            )
            .bind(node_id)
            .bind(url)
            .bind(ttl_ms(ttl))
            .fetch_one(&mut *c)
            .await?;
            sqlx::query("DELETE FROM stream_owners WHERE node_id = $1")
                .bind(node_id)
                .execute(&mut *c)
                .await?;
            Ok(epoch)
        })
    }

    async fn renew(&self, fence: &Fence, ttl: Duration) -> IndexResult<bool> {
        let n = sqlx::query(
            "UPDATE cluster_nodes SET expires_at = now() + $3 * interval '1 millisecond' \
             WHERE node_id = $1 AND epoch = $2 AND state = 'live'",
        )
        .bind(&fence.node_id)
        .bind(fence.epoch)
        .bind(ttl_ms(ttl))
        .execute(&self.pool)
        .await
        .map_err(db_err)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn leave(&self, fence: &Fence) -> IndexResult<()> {
        transaction!(self.pool, |c| {
            sqlx::query("DELETE FROM stream_owners WHERE node_id = $1 AND node_epoch = $2")
                .bind(&fence.node_id)
                .bind(fence.epoch)
                .execute(&mut *c)
                .await?;
            sqlx::query(
                "UPDATE cluster_nodes SET state = 'left', expires_at = now() \
                 WHERE node_id = $1 AND epoch = $2",
            )
            .bind(&fence.node_id)
            .bind(fence.epoch)
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }

    async fn claim_stream(
        &self,
        fence: &Fence,
        stream_id: &str,
        may_take_over: bool,
    ) -> IndexResult<Claim> {
        transaction!(self.pool, |c| {
            check_lease(c, fence).await?;
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM streams WHERE stream_id = $1 FOR KEY SHARE")
                    .bind(stream_id)
                    .fetch_optional(&mut *c)
                    .await?;
            if exists.is_none() {
                return Err(IndexError::StreamNotFound(stream_id.to_owned()).into());
            }
            let owner = sqlx::query(
                "SELECT o.node_id, n.url, o.node_epoch, n.epoch = o.node_epoch AND n.state = 'live', \
                 n.expires_at > now() FROM stream_owners o JOIN cluster_nodes n USING (node_id) \
                 WHERE o.stream_id = $1 FOR UPDATE OF o",
            )
            .bind(stream_id)
            .fetch_optional(&mut *c)
            .await?;
            if let Some(r) = owner {
                let info = node(&r)?;
                let (current, unexpired): (bool, bool) = (r.try_get(3)?, r.try_get(4)?);
                if info.node_id == fence.node_id {
                    if info.epoch == fence.epoch {
                        return Ok(Claim::Mine);
                    }
                    // An earlier incarnation's row: replaced below.
                } else if current {
                    if unexpired || !may_take_over {
                        return Ok(Claim::Elsewhere(info));
                    }
                    let retired = take_over(c, std::slice::from_ref(&info.node_id)).await?;
                    if retired.is_empty() {
                        // It renewed while we waited for its row.
                        return Ok(Claim::Elsewhere(info));
                    }
                    tracing::warn!(node = %fence.node_id, dead = %info.node_id, "took over a node whose lease expired (claiming one of its streams)");
                }
            }
            sqlx::query(
                "INSERT INTO stream_owners (stream_id, node_id, node_epoch, assigned_at) \
                 VALUES ($1, $2, $3, now()) ON CONFLICT (stream_id) DO UPDATE SET \
                 node_id = excluded.node_id, node_epoch = excluded.node_epoch, assigned_at = now()",
            )
            .bind(stream_id)
            .bind(&fence.node_id)
            .bind(fence.epoch)
            .execute(&mut *c)
            .await?;
            Ok(Claim::Mine)
        })
    }

    async fn stream_owner(&self, stream_id: &str) -> IndexResult<Option<NodeInfo>> {
        let r = sqlx::query(
            "SELECT n.node_id, n.url, n.epoch FROM stream_owners o JOIN cluster_nodes n \
             ON n.node_id = o.node_id AND n.epoch = o.node_epoch \
             WHERE o.stream_id = $1 AND n.state = 'live' AND n.expires_at > now()",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        r.as_ref().map(node).transpose().map_err(db_err)
    }

    async fn live_nodes(&self) -> IndexResult<Vec<NodeInfo>> {
        let rows = sqlx::query(
            "SELECT node_id, url, epoch FROM cluster_nodes \
             WHERE state = 'live' AND expires_at > now() ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(node)
            .collect::<Result<_, _>>()
            .map_err(db_err)
    }

    async fn hold_singleton(&self, fence: &Fence, name: &str, ttl: Duration) -> IndexResult<bool> {
        transaction!(self.pool, |c| {
            check_lease(c, fence).await?;
            let held: Option<i32> = sqlx::query_scalar(
                "INSERT INTO cluster_singletons (name, node_id, epoch, expires_at) \
                 VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id, \
                 epoch = excluded.epoch, expires_at = excluded.expires_at \
                 WHERE cluster_singletons.expires_at <= now() \
                 OR (cluster_singletons.node_id = excluded.node_id \
                     AND cluster_singletons.epoch = excluded.epoch) \
                 RETURNING 1",
            )
            .bind(name)
            .bind(&fence.node_id)
            .bind(fence.epoch)
            .bind(ttl_ms(ttl))
            .fetch_optional(&mut *c)
            .await?;
            Ok(held.is_some())
        })
    }

    async fn take_over_expired(&self, fence: &Fence) -> IndexResult<Vec<String>> {
        transaction!(self.pool, |c| {
            check_lease(c, fence).await?;
            // A commit in flight of the expired node is waited for, not a paused one's
            // (its session ends after idle_in_transaction_session_timeout): give up and
            // scan again rather than hold this transaction.
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *c)
                .await?;
            let expired: Vec<String> = sqlx::query_scalar(
                "SELECT node_id FROM cluster_nodes WHERE state = 'live' AND expires_at <= now() \
                 AND node_id <> $1",
            )
            .bind(&fence.node_id)
            .fetch_all(&mut *c)
            .await?;
            if expired.is_empty() {
                return Ok(expired);
            }
            take_over(c, &expired).await
        })
    }
}
