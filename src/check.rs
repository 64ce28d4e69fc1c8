//! `streamvault check`: verifies the storage invariants of `docs/design/storage.md` on a
//! data dir, live or stopped. Every segment row must lie within its segment's durable
//! end, which must lie within the segment object (I1, I8); every legacy row must have its
//! object at the key the layout gives its (stream, seq), with the recorded sealed size;
//! every row needs its session header; every stream's number reservation must be above
//! its fragments (I3). With `deep`, every fragment must also decrypt under the stream's
//! key to the recorded size and content hash, and every session header used must decrypt.
//!
//! Objects without rows are not violations (a crash between object write and row commit
//! leaves them; startup recovery removes them) and are reported as garbage awaiting
//! collection, like segment bytes past the durable end (a torn tail, cut at the next
//! start), pending garbage rows, expired fragments awaiting the retention task, and the
//! local backend's interrupted staged writes.
//!
//! **Live data dirs.** The check only reads, and it re-verifies before it reports: an
//! object missing from the listing taken at the start is looked up again (it may have
//! been written since), and a row whose object is gone is read again (retention or
//! DeleteStream may have deleted both since). What remains is a real violation.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aws_lc_rs::digest;

use crate::clock::{Clock, SystemClock};
use crate::index::{FragmentRecord, Index, SegmentRecord, StreamStats, retention_cutoff_ms};
use crate::store::session_headers::SessionHeaders;
use crate::store::{DataKey, FragmentStore, StoreError, keys};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    MissingObject {
        key: String,
    },
    SizeMismatch {
        key: String,
        indexed: u64,
        stored: u64,
    },
    /// The row's object key is not the layout's key for its (stream, seq).
    WrongObjectKey {
        stream_id: String,
        seq: u64,
        key: String,
    },
    UnreadableKey {
        stream_id: String,
        reason: String,
    },
    DecryptFailed {
        key: String,
        reason: String,
    },
    HashMismatch {
        key: String,
    },
    PlaintextSizeMismatch {
        key: String,
        indexed: u64,
        actual: u64,
    },
    /// A segment row names a segment with no index record.
    MissingSegment {
        key: String,
        stream_id: String,
        seq: u64,
    },
    /// A row ends past its segment's durable end (I1, I8).
    PastDurableEnd {
        key: String,
        seq: u64,
        end: u64,
        durable_end: u64,
    },
    /// A segment object is shorter than its durable end: committed bytes are lost.
    SegmentShort {
        key: String,
        durable_end: u64,
        stored: u64,
    },
    /// A fragment's upload session (its header elements) is not in the index.
    MissingSession {
        stream_id: String,
        seq: u64,
        session_id: u64,
    },
    /// A session header does not decrypt (deep).
    SessionUnreadable {
        stream_id: String,
        session_id: u64,
        reason: String,
    },
    /// A stored fragment number is at or above the stream's reservation (I3): a number
    /// could be handed out twice.
    ReservationBehind {
        stream_id: String,
        max_seq: u64,
        seq_reserved: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingObject { key } => {
                write!(f, "indexed fragment has no object: key={key}")
            }
            Problem::SizeMismatch {
                key,
                indexed,
                stored,
            } => {
                write!(
                    f,
                    "object size differs from index: key={key} indexed={indexed} stored={stored}"
                )
            }
            Problem::WrongObjectKey {
                stream_id,
                seq,
                key,
            } => write!(
                f,
                "object key is not the layout's key: stream_id={stream_id} seq={seq} key={key}"
            ),
            Problem::UnreadableKey { stream_id, reason } => {
                write!(
                    f,
                    "stream data key cannot be unwrapped: stream_id={stream_id} reason={reason}"
                )
            }
            Problem::DecryptFailed { key, reason } => {
                write!(f, "object does not decrypt: key={key} reason={reason}")
            }
            Problem::HashMismatch { key } => {
                write!(f, "plaintext hash differs from index: key={key}")
            }
            Problem::PlaintextSizeMismatch {
                key,
                indexed,
                actual,
            } => {
                write!(
                    f,
                    "plaintext size differs from index: key={key} indexed={indexed} actual={actual}"
                )
            }
            Problem::MissingSegment {
                key,
                stream_id,
                seq,
            } => write!(
                f,
                "fragment's segment has no index record: key={key} stream_id={stream_id} seq={seq}"
            ),
            Problem::PastDurableEnd {
                key,
                seq,
                end,
                durable_end,
            } => write!(
                f,
                "fragment ends past its segment's durable end: key={key} seq={seq} end={end} durable_end={durable_end}"
            ),
            Problem::SegmentShort {
                key,
                durable_end,
                stored,
            } => write!(
                f,
                "segment is shorter than its durable end: key={key} durable_end={durable_end} stored={stored}"
            ),
            Problem::MissingSession {
                stream_id,
                seq,
                session_id,
            } => write!(
                f,
                "fragment's session header is missing: stream_id={stream_id} seq={seq} session={session_id}"
            ),
            Problem::SessionUnreadable {
                stream_id,
                session_id,
                reason,
            } => write!(
                f,
                "session header does not decrypt: stream_id={stream_id} session={session_id} reason={reason}"
            ),
            Problem::ReservationBehind {
                stream_id,
                max_seq,
                seq_reserved,
            } => write!(
                f,
                "fragment numbers reach the reservation: stream_id={stream_id} max_seq={max_seq} seq_reserved={seq_reserved}"
            ),
        }
    }
}

/// What `check` found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub fragments_checked: u64,
    pub objects_listed: u64,
    pub fragments_decrypted: u64,
    pub sessions_checked: u64,
    /// Objects no row refers to (awaiting the sweeper), by key.
    pub unreferenced_objects: Vec<String>,
    pub pending_garbage_rows: usize,
    /// Rows past their stream's retention (hidden from reads), awaiting the retention task.
    pub expired_fragments: u64,
    /// Segments with bytes past their durable end (a torn tail, or a batch being
    /// written into the open segment): key and bytes past the end.
    pub segment_tails: Vec<(String, u64)>,
    /// Local backend: staged writes a crash interrupted (invisible to reads).
    pub staging_leftovers: Vec<String>,
    /// Rows deleted while the check ran (live data dir); not problems.
    pub vanished_during_check: u64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The algorithm prefix of [`content_hash`]: BLAKE3 (about 3× faster than SHA-256 with
/// SHA-NI here; the hash runs over every ingested byte, see `docs/design/storage.md`).
const BLAKE3_PREFIX: &str = "b3:";

/// The content hash of a fragment's plaintext as stored in the index: `b3:` and the
/// BLAKE3 digest in hex. Rows written before it hold a bare SHA-256 hex digest; both are
/// verified by [`content_hash_matches`].
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{BLAKE3_PREFIX}{}", blake3::hash(bytes).to_hex())
}

/// Whether `stored` (an index row's `content_hash`, either algorithm) is the hash of
/// `bytes`.
pub fn content_hash_matches(stored: &str, bytes: &[u8]) -> bool {
    match stored.strip_prefix(BLAKE3_PREFIX) {
        Some(hex) => blake3::hash(bytes).to_hex().as_str() == hex,
        None => hex::encode(digest::digest(&digest::SHA256, bytes)) == stored,
    }
}

/// Options of [`check_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Decrypt and hash every object and session header.
    pub deep: bool,
    /// Root directory of the local backend, to report interrupted staged writes.
    pub local_root: Option<PathBuf>,
}

/// Runs the check (see the module docs). `index` must be the raw index.
pub async fn check(index: &dyn Index, store: &FragmentStore, deep: bool) -> anyhow::Result<Report> {
    check_with(
        index,
        store,
        &Options {
            deep,
            local_root: None,
        },
    )
    .await
}

enum KeyState {
    Ok(Arc<DataKey>),
    /// Stream row gone (deleted while we ran): skip its rows.
    Gone,
    Broken,
}

/// Runs the check with options.
pub async fn check_with(
    index: &dyn Index,
    store: &FragmentStore,
    opts: &Options,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let now = SystemClock.now_ms();
    // Stats first: a row inserted after this read has a seq below the reservation read
    // here, because reservations are committed before numbers are used.
    let stats: HashMap<String, StreamStats> = index
        .stream_stats()
        .await?
        .into_iter()
        .map(|s| (s.stream_id.clone(), s))
        .collect();
    for s in stats.values() {
        if let Some(max) = s.max_seq
            && max >= s.seq_reserved
        {
            report.problems.push(Problem::ReservationBehind {
                stream_id: s.stream_id.clone(),
                max_seq: max,
                seq_reserved: s.seq_reserved,
            });
        }
    }
    // Segment records before the listing: a segment in the listing but not here is
    // newer than this read (or an orphan), never a violation.
    let mut segments: HashMap<String, SegmentRecord> = index
        .segments()
        .await?
        .into_iter()
        .map(|s| (s.key.clone(), s))
        .collect();
    let mut listed = store.list(None).await?;
    listed.extend(store.list_segments().await?);
    report.objects_listed = listed.len() as u64;
    let sizes: HashMap<String, u64> = listed.iter().map(|o| (o.key.clone(), o.size)).collect();
    for s in segments.values() {
        if let Some(&size) = sizes.get(&s.key)
            && size > s.durable_end
        {
            report
                .segment_tails
                .push((s.key.clone(), size - s.durable_end));
        }
    }
    report.segment_tails.sort();
    let mut referenced = HashSet::new();
    let mut cursor = None;
    let mut keys_by_stream: HashMap<String, KeyState> = HashMap::new();
    let mut sessions_seen: HashSet<(String, u64)> = HashSet::new();
    loop {
        let page = index.scan_fragments(cursor.clone(), 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.stream_id.clone(), last.seq));
        for f in page {
            report.fragments_checked += 1;
            referenced.insert(f.object_key.clone());
            if let Some(s) = stats.get(&f.stream_id)
                && f.server_ts_ms < retention_cutoff_ms(now, s.retention_hours)
            {
                report.expired_fragments += 1;
            }
            let key_ok = match f.object_offset {
                None => f.object_key == keys::fragment_key(&f.stream_id, f.seq).to_string(),
                Some(_) => keys::parse_segment_key(&f.object_key).is_some(),
            };
            if !key_ok {
                report.problems.push(Problem::WrongObjectKey {
                    stream_id: f.stream_id.clone(),
                    seq: f.seq,
                    key: f.object_key.clone(),
                });
            }
            let state = match f.object_offset {
                None => check_row(index, store, &f, &sizes, &mut report).await?,
                Some(_) => {
                    check_segment_row(index, store, &f, &sizes, &mut segments, &mut report).await?
                }
            };
            match state {
                RowState::Present => {}
                RowState::Vanished => {
                    report.vanished_during_check += 1;
                    continue;
                }
                RowState::Problem => continue,
            }
            let session_key = (f.stream_id.clone(), f.session_id);
            let check_session = !sessions_seen.contains(&session_key);
            if !opts.deep && !check_session {
                continue;
            }
            if opts.deep && !keys_by_stream.contains_key(&f.stream_id) {
                let state = match index.get_stream_by_id(&f.stream_id).await? {
                    Some(s) => match store.keyring().unwrap_data_key(
                        &s.kms_key_id,
                        &s.stream_id,
                        &s.wrapped_key,
                    ) {
                        Ok(k) => KeyState::Ok(Arc::new(k)),
                        Err(e) => {
                            report.problems.push(Problem::UnreadableKey {
                                stream_id: f.stream_id.clone(),
                                reason: e.to_string(),
                            });
                            KeyState::Broken
                        }
                    },
                    None => KeyState::Gone,
                };
                keys_by_stream.insert(f.stream_id.clone(), state);
            }
            let key = match keys_by_stream.get(&f.stream_id) {
                Some(KeyState::Ok(k)) => Some(k.clone()),
                Some(KeyState::Gone) => {
                    report.vanished_during_check += 1;
                    continue;
                }
                Some(KeyState::Broken) | None => None,
            };
            if check_session {
                sessions_seen.insert(session_key);
                report.sessions_checked += 1;
                match index.get_session(&f.stream_id, f.session_id).await? {
                    Some(rec) => {
                        if opts.deep
                            && let Some(k) = &key
                            && let Err(e) =
                                SessionHeaders::open(k, f.session_id, &rec.header_sealed)
                        {
                            report.problems.push(Problem::SessionUnreadable {
                                stream_id: f.stream_id.clone(),
                                session_id: f.session_id,
                                reason: e.to_string(),
                            });
                        }
                    }
                    None => {
                        if still_indexed(index, &f).await? {
                            report.problems.push(Problem::MissingSession {
                                stream_id: f.stream_id.clone(),
                                seq: f.seq,
                                session_id: f.session_id,
                            });
                        } else {
                            report.vanished_during_check += 1;
                        }
                    }
                }
            }
            if !opts.deep {
                continue;
            }
            let Some(key) = key else { continue };
            match store.get_fragment(&key, &f).await {
                Ok(plain) => {
                    report.fragments_decrypted += 1;
                    if plain.len() as u64 != f.size {
                        report.problems.push(Problem::PlaintextSizeMismatch {
                            key: f.object_key.clone(),
                            indexed: f.size,
                            actual: plain.len() as u64,
                        });
                    } else if !content_hash_matches(&f.content_hash, &plain) {
                        report.problems.push(Problem::HashMismatch {
                            key: f.object_key.clone(),
                        });
                    }
                }
                Err(StoreError::NotFound(_)) => {
                    if still_indexed(index, &f).await? {
                        report.problems.push(Problem::MissingObject {
                            key: f.object_key.clone(),
                        });
                    } else {
                        report.vanished_during_check += 1;
                    }
                }
                Err(e) => report.problems.push(Problem::DecryptFailed {
                    key: f.object_key.clone(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    report.unreferenced_objects = listed
        .into_iter()
        .filter(|o| !referenced.contains(&o.key) && !segments.contains_key(&o.key))
        .map(|o| o.key)
        .collect();
    report.unreferenced_objects.sort();
    report.pending_garbage_rows = index.list_garbage(usize::MAX >> 1).await?.len();
    if let Some(root) = &opts.local_root {
        report.staging_leftovers =
            crate::gc::staging_leftovers(root, std::time::Duration::ZERO, i64::MAX)
                .await?
                .into_iter()
                .map(|p| p.display().to_string())
                .collect();
    }
    Ok(report)
}

enum RowState {
    Present,
    Vanished,
    Problem,
}

/// Presence and sealed size of a row's object, re-verified against a live data dir.
async fn check_row(
    index: &dyn Index,
    store: &FragmentStore,
    f: &FragmentRecord,
    sizes: &HashMap<String, u64>,
    report: &mut Report,
) -> anyhow::Result<RowState> {
    let stored = match sizes.get(&f.object_key) {
        Some(&s) => Some(s),
        // Not in the listing: written after it, or really missing.
        None => store.head_size(&f.object_key).await?,
    };
    match stored {
        None => missing_object(index, f, report).await,
        Some(stored) if stored != f.object_size => {
            report.problems.push(Problem::SizeMismatch {
                key: f.object_key.clone(),
                indexed: f.object_size,
                stored,
            });
            Ok(RowState::Problem)
        }
        Some(_) => Ok(RowState::Present),
    }
}

/// A segment row: its segment has a record, the row lies within the durable end, and the
/// segment object holds the durable end. Re-verified against a live data dir: a segment
/// newer than the first read is read again, an object shorter than the listing says (it
/// grew since) is looked up again, and a missing one is a problem only if the row stays.
async fn check_segment_row(
    index: &dyn Index,
    store: &FragmentStore,
    f: &FragmentRecord,
    sizes: &HashMap<String, u64>,
    segments: &mut HashMap<String, SegmentRecord>,
    report: &mut Report,
) -> anyhow::Result<RowState> {
    let end = f.object_offset.unwrap_or(0) + f.object_size;
    let mut seg = segments.get(&f.object_key).cloned();
    if seg.as_ref().is_none_or(|s| s.durable_end < end) {
        seg = index.get_segment(&f.object_key).await?;
        if let Some(s) = &seg {
            segments.insert(s.key.clone(), s.clone());
        }
    }
    let Some(seg) = seg else {
        if !still_indexed(index, f).await? {
            return Ok(RowState::Vanished);
        }
        report.problems.push(Problem::MissingSegment {
            key: f.object_key.clone(),
            stream_id: f.stream_id.clone(),
            seq: f.seq,
        });
        return Ok(RowState::Problem);
    };
    if end > seg.durable_end {
        report.problems.push(Problem::PastDurableEnd {
            key: f.object_key.clone(),
            seq: f.seq,
            end,
            durable_end: seg.durable_end,
        });
        return Ok(RowState::Problem);
    }
    let stored = match sizes.get(&f.object_key) {
        Some(&s) if s >= seg.durable_end => Some(s),
        _ => store.head_size(&f.object_key).await?,
    };
    match stored {
        None => missing_object(index, f, report).await,
        Some(stored) if stored < seg.durable_end => {
            report.problems.push(Problem::SegmentShort {
                key: f.object_key.clone(),
                durable_end: seg.durable_end,
                stored,
            });
            Ok(RowState::Problem)
        }
        Some(_) => Ok(RowState::Present),
    }
}

/// A row's object is missing: a problem if the row is still there, else it vanished.
async fn missing_object(
    index: &dyn Index,
    f: &FragmentRecord,
    report: &mut Report,
) -> anyhow::Result<RowState> {
    if !still_indexed(index, f).await? {
        return Ok(RowState::Vanished);
    }
    report.problems.push(Problem::MissingObject {
        key: f.object_key.clone(),
    });
    Ok(RowState::Problem)
}

/// Whether the row is still in the (raw) index: a row deleted since the scan read it
/// (retention, DeleteStream) explains a missing object or session.
async fn still_indexed(index: &dyn Index, f: &FragmentRecord) -> anyhow::Result<bool> {
    Ok(index.get_fragment(&f.stream_id, f.seq).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_prefixed_blake3_and_legacy_sha256_rows_still_verify() {
        let body = b"a fragment's plaintext";
        let h = content_hash(body);
        assert!(h.starts_with("b3:") && h.len() == 3 + 64, "{h}");
        assert!(content_hash_matches(&h, body));
        assert!(!content_hash_matches(&h, b"another plaintext"));
        // A row written before the BLAKE3 change: bare SHA-256 hex (sha256sum of `body`).
        let legacy = hex::encode(digest::digest(&digest::SHA256, body));
        assert!(!legacy.contains(':'));
        assert!(content_hash_matches(&legacy, body));
        assert!(!content_hash_matches(&legacy, b"another plaintext"));
        // A BLAKE3 digest without its prefix is not taken for SHA-256, and vice versa.
        assert!(!content_hash_matches(&h[3..], body));
        assert!(!content_hash_matches(&format!("b3:{legacy}"), body));
    }
}
