//! `streamvault check`: verifies the storage invariants of `docs/design/storage.md` on a
//! data dir, live or stopped. Every index row must have its object with the recorded
//! sealed size; with `deep`, the object must also decrypt under the stream's key and
//! hash to the recorded SHA-256. Objects without rows are not violations (a crash
//! between object write and row commit leaves them; the sweeper removes them) and are
//! reported as garbage awaiting collection.

use std::collections::HashSet;
use std::fmt;

use aws_lc_rs::digest;

use crate::index::Index;
use crate::store::{FragmentStore, StoreError};

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
        }
    }
}

/// What `check` found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub fragments_checked: u64,
    pub objects_listed: u64,
    pub fragments_decrypted: u64,
    /// Objects no row refers to (awaiting the sweeper), by key.
    pub unreferenced_objects: Vec<String>,
    pub pending_garbage_rows: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// SHA-256 of a fragment's plaintext as stored in the index (hex).
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

/// Runs the check.
pub async fn check(index: &dyn Index, store: &FragmentStore, deep: bool) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let listed = store.list(None).await?;
    report.objects_listed = listed.len() as u64;
    let sizes: std::collections::HashMap<String, u64> =
        listed.iter().map(|o| (o.key.clone(), o.size)).collect();
    let mut referenced = HashSet::new();
    let mut cursor = None;
    let mut key_cache: Option<(
        String,
        Result<std::sync::Arc<crate::store::DataKey>, String>,
    )> = None;
    loop {
        let page = index.scan_fragments(cursor.clone(), 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.stream_id.clone(), last.seq));
        for f in page {
            report.fragments_checked += 1;
            referenced.insert(f.object_key.clone());
            match sizes.get(&f.object_key) {
                None => {
                    report.problems.push(Problem::MissingObject {
                        key: f.object_key.clone(),
                    });
                    continue;
                }
                Some(&stored) if stored != f.object_size => {
                    report.problems.push(Problem::SizeMismatch {
                        key: f.object_key.clone(),
                        indexed: f.object_size,
                        stored,
                    });
                    continue;
                }
                Some(_) => {}
            }
            if !deep {
                continue;
            }
            if key_cache.as_ref().is_none_or(|(id, _)| id != &f.stream_id) {
                let k = match index.get_stream_by_id(&f.stream_id).await? {
                    Some(s) => store
                        .keyring()
                        .unwrap_data_key(&s.kms_key_id, &s.stream_id, &s.wrapped_key)
                        .map(std::sync::Arc::new)
                        .map_err(|e| e.to_string()),
                    None => Err("stream row missing".to_owned()),
                };
                if let Err(reason) = &k {
                    report.problems.push(Problem::UnreadableKey {
                        stream_id: f.stream_id.clone(),
                        reason: reason.clone(),
                    });
                }
                key_cache = Some((f.stream_id.clone(), k));
            }
            let Some((_, Ok(key))) = &key_cache else {
                continue;
            };
            match store.get_fragment(key, f.seq).await {
                Ok(plain) => {
                    report.fragments_decrypted += 1;
                    if plain.len() as u64 != f.size {
                        report.problems.push(Problem::PlaintextSizeMismatch {
                            key: f.object_key.clone(),
                            indexed: f.size,
                            actual: plain.len() as u64,
                        });
                    } else if content_hash(&plain) != f.content_hash {
                        report.problems.push(Problem::HashMismatch {
                            key: f.object_key.clone(),
                        });
                    }
                }
                Err(StoreError::NotFound(_)) => report.problems.push(Problem::MissingObject {
                    key: f.object_key.clone(),
                }),
                Err(e) => report.problems.push(Problem::DecryptFailed {
                    key: f.object_key.clone(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    report.unreferenced_objects = listed
        .into_iter()
        .filter(|o| !referenced.contains(&o.key))
        .map(|o| o.key)
        .collect();
    report.pending_garbage_rows = index.list_garbage(100_000).await?.len();
    report.unreferenced_objects.sort();
    Ok(report)
}
