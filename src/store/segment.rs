//! Shared segments (`docs/design/storage.md`, "Pieces" and I8): the writer that appends
//! sealed fragments of all streams into one open segment per retention class. Two
//! backends with one format (a plain concatenation of sealed blobs; the index is the
//! map): *local append*, a file under the local root appended to by this writer alone
//! and made durable by one `fdatasync` per batch, closed when it is too big or too old
//! and after any failed write or sync (no write ever follows a failed sync); and
//! *objects*, where every batch is one new immutable segment object written with one
//! PUT. The writer only handles sealed bytes: sealing is `FragmentStore::seal_fragment`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::faults::{Faults, Op, PutFault};
use super::{StoreError, keys};

/// A batch share of one class, written and durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub key: String,
    pub class: &'static str,
    pub created_ms: i64,
    /// Offset of each blob, in the order given.
    pub offsets: Vec<u64>,
    /// End of the durable bytes of the segment after this write.
    pub durable_end: u64,
    /// The segment is immutable from now on (objects backend).
    pub sealed: bool,
}

/// A failed batch write. `closed` names the local segment the failure closed (its index
/// record, if any, is to be sealed).
#[derive(Debug)]
pub struct WriteFailed {
    pub closed: Option<String>,
    pub error: StoreError,
}

#[derive(Debug)]
struct OpenSegment {
    key: String,
    path: PathBuf,
    created_ms: i64,
    file: Arc<File>,
    len: u64,
}

#[derive(Debug)]
enum Backend {
    Local { root: PathBuf },
    Objects { objects: Arc<dyn ObjectStore> },
}

/// Limits of an open local segment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age_ms: i64,
}

/// The segment writer (one per node, owned by the committer).
#[derive(Debug)]
pub struct SegmentWriter {
    backend: Backend,
    open: HashMap<&'static str, OpenSegment>,
    limits: Limits,
    faults: Option<Arc<Faults>>,
}

fn nonce() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    u64::from_be_bytes(b)
}

fn io_err(path: &FsPath, e: std::io::Error) -> StoreError {
    StoreError::Backend(object_store::Error::Generic {
        store: "segments",
        source: format!("{}: {e}", path.display()).into(),
    })
}

fn injected(op: Op, key: &str) -> StoreError {
    StoreError::Backend(object_store::Error::Generic {
        store: "faults",
        source: format!("injected failure: op={op:?} key={key}").into(),
    })
}

/// fsyncs a directory so an entry created in it survives a crash.
fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl SegmentWriter {
    /// Local append under `root` (the local backend's directory).
    pub fn local(root: PathBuf, limits: Limits, faults: Option<Arc<Faults>>) -> Self {
        Self {
            backend: Backend::Local { root },
            open: HashMap::new(),
            limits,
            faults,
        }
    }

    /// One immutable object per batch.
    pub fn objects(objects: Arc<dyn ObjectStore>, faults: Option<Arc<Faults>>) -> Self {
        Self {
            backend: Backend::Objects { objects },
            open: HashMap::new(),
            limits: Limits {
                max_bytes: 0,
                max_age_ms: 0,
            },
            faults,
        }
    }

    /// Whether this writer appends to local files (one `fdatasync` per batch).
    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Local { .. })
    }

    /// Appends `blobs` (sealed fragments) to the open segment of `class` and makes them
    /// durable; on the objects backend writes them as one new segment object.
    pub async fn write(
        &mut self,
        class: &'static str,
        now_ms: i64,
        blobs: Vec<Bytes>,
    ) -> Result<Written, WriteFailed> {
        let mut offsets = Vec::with_capacity(blobs.len());
        let mut end = 0u64;
        match &self.backend {
            Backend::Objects { objects } => {
                for b in &blobs {
                    offsets.push(end);
                    end += b.len() as u64;
                }
                let key = keys::segment_key(class, now_ms, nonce());
                let fail = |error| WriteFailed {
                    closed: None,
                    error,
                };
                objects
                    .put(&key, PutPayload::from_iter(blobs))
                    .await
                    .map_err(|e| fail(e.into()))?;
                Ok(Written {
                    key: key.to_string(),
                    class,
                    created_ms: now_ms,
                    offsets,
                    durable_end: end,
                    sealed: true,
                })
            }
            Backend::Local { root } => {
                if !self.open.contains_key(class) {
                    let seg = create_local(root.clone(), class, now_ms)
                        .await
                        .map_err(|error| WriteFailed {
                            closed: None,
                            error,
                        })?;
                    self.open.insert(class, seg);
                }
                let seg = self.open.get(class).expect("just opened");
                let (file, path, key, start) =
                    (seg.file.clone(), seg.path.clone(), seg.key.clone(), seg.len);
                end = start;
                for b in &blobs {
                    offsets.push(end);
                    end += b.len() as u64;
                }
                let faults = self.faults.clone();
                // A fault plan's latency for the op is slept here, on the blocking thread (a slow disk).
                let fault = move |op| {
                    faults.as_ref().and_then(|f| {
                        let (latency, fault) = f.enter(op);
                        if !latency.is_zero() {
                            std::thread::sleep(latency);
                        }
                        fault
                    })
                };
                let k = key.clone();
                let r = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                    let mut f: &File = &file;
                    if let Some(fault) = fault(Op::Append) {
                        if fault == PutFault::Torn
                            && let Some(b) = blobs.first()
                        {
                            let _ = f.write_all(&b[..b.len() / 2]);
                        }
                        return Err(injected(Op::Append, &k));
                    }
                    for b in &blobs {
                        f.write_all(b).map_err(|e| io_err(&path, e))?;
                    }
                    if fault(Op::Sync).is_some() {
                        return Err(injected(Op::Sync, &k));
                    }
                    file.sync_data().map_err(|e| io_err(&path, e))
                })
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Backend(object_store::Error::JoinError {
                        source: e,
                    }))
                });
                match r {
                    Ok(()) => {
                        let seg = self.open.get_mut(class).expect("open");
                        seg.len = end;
                        Ok(Written {
                            key,
                            class,
                            created_ms: seg.created_ms,
                            offsets,
                            durable_end: end,
                            sealed: false,
                        })
                    }
                    Err(error) => {
                        // Never write again after a failed write or sync (I8).
                        self.open.remove(class);
                        Err(WriteFailed {
                            closed: Some(key),
                            error,
                        })
                    }
                }
            }
        }
    }

    /// Closes the open segments that reached the size or age limit (or all, with
    /// `all`); returns their keys for the index to seal.
    pub fn close_due(&mut self, now_ms: i64, all: bool) -> Vec<String> {
        let limits = self.limits;
        let due: Vec<&'static str> = self
            .open
            .iter()
            .filter(|(_, s)| {
                all || s.len >= limits.max_bytes || now_ms - s.created_ms >= limits.max_age_ms
            })
            .map(|(c, _)| *c)
            .collect();
        due.into_iter()
            .filter_map(|c| self.open.remove(c).map(|s| s.key))
            .collect()
    }
}

/// Creates a local segment file and makes its directory entry durable.
async fn create_local(
    root: PathBuf,
    class: &'static str,
    now_ms: i64,
) -> Result<OpenSegment, StoreError> {
    let key = keys::segment_key(class, now_ms, nonce()).to_string();
    tokio::task::spawn_blocking(move || {
        let path = root.join(&key);
        let dir = path
            .parent()
            .expect("segment keys have a directory")
            .to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let file = File::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // The new entry, and the class directory itself, must survive a crash before
        // any row names the file.
        for d in [dir.as_path(), dir.parent().unwrap_or(&dir), root.as_path()] {
            sync_dir(d).map_err(|e| io_err(d, e))?;
        }
        Ok(OpenSegment {
            key,
            path,
            created_ms: now_ms,
            file: Arc::new(file),
            len: 0,
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(StoreError::Backend(object_store::Error::JoinError {
            source: e,
        }))
    })
}

/// Startup (local): cuts a segment left open by a previous process back to its durable
/// end, removing a torn tail (I8). A missing file is left to `check`.
pub async fn truncate_tail(root: &FsPath, key: &str, durable_end: u64) -> Result<u64, StoreError> {
    let path = root.join(key);
    tokio::task::spawn_blocking(move || {
        let f = match File::options().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&path, e)),
        };
        let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
        if len <= durable_end {
            return Ok(0);
        }
        f.set_len(durable_end).map_err(|e| io_err(&path, e))?;
        f.sync_all().map_err(|e| io_err(&path, e))?;
        Ok(len - durable_end)
    })
    .await
    .unwrap_or_else(|e| {
        Err(StoreError::Backend(object_store::Error::JoinError {
            source: e,
        }))
    })
}
