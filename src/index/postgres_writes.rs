//! The transaction bodies of the PostgreSQL index's stream and fragment writes (the
//! segment side is `postgres_segments.rs`): creating a stream under the global creation
//! lock, version-checked updates and DeleteStream (crypto-shred first) on the locked
//! stream row, tags and configuration documents, and single fragment inserts with their
//! dedupe check under the stream lock. Each function runs inside the caller's
//! transaction (the `transaction!` macro of `postgres.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{PgConnection, Row};

use super::sql::*;
use super::{CREATE_LOCK, TxResult, segments};
use crate::clock::EpochMillis;
use crate::index::{FragmentRecord, IndexError, NewStream, StreamRecord, StreamUpdate};

/// The stream row `sql` selects by id, with its tags.
pub(super) async fn stream_where(
    c: &mut PgConnection,
    sql: &'static str,
    id: &str,
) -> TxResult<Option<StreamRecord>> {
    let row = sqlx::query(sql).bind(id).fetch_optional(&mut *c).await?;
    Ok(row.as_ref().map(stream_from_row).transpose()?)
}

/// Locks the rows of `ids` (see [`LOCK_STREAMS`]); returns those that exist with their
/// retention hours.
pub(super) async fn lock_streams(
    c: &mut PgConnection,
    ids: Vec<String>,
) -> TxResult<HashMap<String, i64>> {
    let rows = sqlx::query(LOCK_STREAMS)
        .bind(ids)
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

pub(super) async fn create_stream_tx(
    c: &mut PgConnection,
    s: &NewStream,
    max_streams: u64,
) -> TxResult<()> {
    // Creations queue here: the count below stays true until this one commits.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK)
        .execute(&mut *c)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM streams")
        .fetch_one(&mut *c)
        .await?;
    if count as u64 >= max_streams {
        return Err(IndexError::StreamLimit(max_streams).into());
    }
    let exists: Option<String> =
        sqlx::query_scalar("SELECT stream_id FROM streams WHERE name = $1")
            .bind(s.name.as_str())
            .fetch_optional(&mut *c)
            .await?;
    if exists.is_some() {
        return Err(IndexError::StreamExists(s.name.to_string()).into());
    }
    sqlx::query(INSERT_STREAM)
        .bind(&s.stream_id)
        .bind(s.name.as_str())
        .bind(&s.device_name)
        .bind(&s.media_type)
        .bind(&s.kms_key_id)
        .bind(&s.version)
        .bind(s.creation_ms)
        .bind(s.retention_hours)
        .bind(&s.wrapped_key)
        .execute(&mut *c)
        .await?;
    set_tags(c, &s.stream_id, &s.tags).await
}

pub(super) async fn set_tags(
    c: &mut PgConnection,
    id: &str,
    tags: &BTreeMap<String, String>,
) -> TxResult<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let (keys, values): (Vec<String>, Vec<String>) =
        tags.iter().map(|(k, v)| (k.clone(), v.clone())).unzip();
    sqlx::query(UPSERT_TAGS)
        .bind(id)
        .bind(keys)
        .bind(values)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Sets or removes one configuration document of a stream.
pub(super) async fn set_config(
    c: &mut PgConnection,
    id: &str,
    kind: &str,
    body: Option<&str>,
) -> TxResult<()> {
    match body {
        Some(b) => sqlx::query(
            "INSERT INTO stream_configs (stream_id, kind, body) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_id, kind) DO UPDATE SET body = excluded.body",
        )
        .bind(id)
        .bind(kind)
        .bind(b),
        None => sqlx::query("DELETE FROM stream_configs WHERE stream_id = $1 AND kind = $2")
            .bind(id)
            .bind(kind),
    }
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub(super) async fn update_stream_tx(
    c: &mut PgConnection,
    id: &str,
    expected: Option<&str>,
    update: &StreamUpdate,
    new_version: &str,
) -> TxResult<StreamRecord> {
    let cur = stream_where(c, STREAM_BY_ID_FOR_UPDATE, id)
        .await?
        .ok_or_else(|| IndexError::StreamNotFound(id.to_owned()))?;
    super::check_version(&cur, expected)?;
    match update {
        StreamUpdate::Metadata {
            device_name,
            media_type,
        } => {
            sqlx::query(
                "UPDATE streams SET device_name = COALESCE($2, device_name), \
                 media_type = COALESCE($3, media_type) WHERE stream_id = $1",
            )
            .bind(id)
            .bind(device_name)
            .bind(media_type)
            .execute(&mut *c)
            .await?;
        }
        StreamUpdate::Retention { hours } => {
            sqlx::query("UPDATE streams SET retention_hours = $2 WHERE stream_id = $1")
                .bind(id)
                .bind(hours)
                .execute(&mut *c)
                .await?;
        }
        StreamUpdate::Tags { set, remove } => {
            if !remove.is_empty() {
                sqlx::query(
                    "DELETE FROM stream_tags WHERE stream_id = $1 AND tag_key = ANY($2::text[])",
                )
                .bind(id)
                .bind(remove)
                .execute(&mut *c)
                .await?;
            }
            set_tags(c, id, set).await?;
        }
        StreamUpdate::Config { kind, body } => set_config(c, id, kind, body.as_deref()).await?,
    }
    sqlx::query("UPDATE streams SET version = $2 WHERE stream_id = $1")
        .bind(id)
        .bind(new_version)
        .execute(&mut *c)
        .await?;
    Ok(stream_where(c, STREAM_BY_ID, id)
        .await?
        .ok_or_else(|| IndexError::StreamNotFound(id.to_owned()))?)
}

pub(super) async fn delete_stream_tx(
    c: &mut PgConnection,
    id: &str,
    expected: Option<&str>,
    now_ms: EpochMillis,
) -> TxResult<()> {
    let cur = stream_where(c, STREAM_BY_ID_FOR_UPDATE, id)
        .await?
        .ok_or_else(|| IndexError::StreamNotFound(id.to_owned()))?;
    super::check_version(&cur, expected)?;
    let touched: BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT object_key FROM fragments WHERE stream_id = $1 AND object_offset IS NOT NULL",
    )
    .bind(id)
    .fetch_all(&mut *c)
    .await?
    .into_iter()
    .collect();
    // Crypto-shred first: the wrapped data key is overwritten before the row goes (see
    // docs/design/index-postgres.md for what PostgreSQL keeps of older row versions).
    sqlx::query(
        "UPDATE streams SET wrapped_key = decode(repeat('00', octet_length(wrapped_key)), 'hex') \
         WHERE stream_id = $1",
    )
    .bind(id)
    .execute(&mut *c)
    .await?;
    sqlx::query("INSERT INTO garbage (stream_id, object_key, created_ms) VALUES ($1, NULL, $2)")
        .bind(id)
        .bind(now_ms)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM streams WHERE stream_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    segments::retire_dead_segments(c, &touched, now_ms).await?;
    Ok(())
}

/// One fragment row, after locking its stream: `StreamNotFound` when the stream is
/// gone, `DuplicateFragment` when its number is taken.
pub(super) async fn insert_fragment_locked(
    c: &mut PgConnection,
    f: &FragmentRecord,
) -> TxResult<()> {
    let mut cols = FragmentColumns::default();
    cols.push(f)?;
    let n = cols.insert().execute(&mut *c).await?.rows_affected();
    if n == 0 {
        return Err(IndexError::DuplicateFragment {
            stream_id: f.stream_id.clone(),
            seq: f.seq,
        }
        .into());
    }
    Ok(())
}

pub(super) async fn lock_stream(c: &mut PgConnection, id: &str) -> TxResult<()> {
    if lock_streams(c, vec![id.to_owned()]).await?.is_empty() {
        return Err(IndexError::StreamNotFound(id.to_owned()).into());
    }
    Ok(())
}

pub(super) async fn find_by_content(
    c: &mut PgConnection,
    f: &FragmentRecord,
    since_ms: EpochMillis,
    now: Option<EpochMillis>,
) -> TxResult<Option<FragmentRecord>> {
    let row = sqlx::query(FIND_BY_CONTENT)
        .bind(&f.stream_id)
        .bind(f.producer_ts_ms)
        .bind(&f.content_hash)
        .bind(since_ms)
        .bind(now)
        .fetch_optional(&mut *c)
        .await?;
    Ok(row.as_ref().map(fragment_from_row).transpose()?)
}
