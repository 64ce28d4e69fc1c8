//! Shared segments (`docs/design/storage.md`, "Pieces" and I8): the writer that appends
//! sealed fragments of all streams into one open segment per retention class. Two
//! backends with one format (a plain concatenation of sealed blobs; the index is the
//! map): *local append*, a file under the local root appended to by this writer alone
//! and made durable by one `fdatasync` per batch, closed when it is too big or too old
//! and after any failed write or sync (no write ever follows a failed sync); and
//! *objects*, where every batch is one new immutable segment object written with one
//! PUT. The writer only handles sealed bytes: sealing is `FragmentStore::seal_fragment`.
//!
//! Local appends use direct I/O (`store.direct_io`): a batch is copied into a 4 MiB
//! aligned staging buffer and written with `O_DIRECT`, its end padded with zeros to a
//! 4 KiB boundary, so every batch starts aligned. This skips the kernel's copy into the
//! page cache, which was a quarter of the server's CPU at 1,000 cameras. The padding is
//! part of the durable end; no row names it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::ptr::NonNull;
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
    /// Opened with `O_DIRECT`: written through the staging buffer, at aligned offsets.
    direct: bool,
}

/// The unit of direct I/O: buffer address, file offset and length are multiples of it
/// (the largest logical block size in use).
const DIRECT_ALIGN: usize = 4096;
/// Size of the direct-I/O staging buffer: one `pwrite` each.
const STAGING_BYTES: usize = 4 << 20;

/// A heap buffer aligned to [`DIRECT_ALIGN`], the staging area of direct appends.
struct Staging {
    ptr: NonNull<u8>,
}

// SAFETY: `Staging` owns its allocation exclusively (like a `Box<[u8]>`), and hands
// out its bytes only through `&mut self`.
unsafe impl Send for Staging {}
// SAFETY: as above; a shared `&Staging` gives access to nothing.
unsafe impl Sync for Staging {}

impl Staging {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(STAGING_BYTES, DIRECT_ALIGN).expect("layout")
    }

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout()));
        Self { ptr }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, initialised (zeroed) allocation of STAGING_BYTES that
        // only `self` refers to.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), STAGING_BYTES) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Staging")
    }
}

/// Writes `blobs` back to back at `start` (a multiple of [`DIRECT_ALIGN`]) of a file
/// opened with `O_DIRECT`, through `staging`, and pads the end with zeros to the next
/// multiple of [`DIRECT_ALIGN`]. Returns the end of what was written (padding included).
fn write_direct(
    file: &File,
    start: u64,
    blobs: &[Bytes],
    staging: &mut Staging,
) -> std::io::Result<u64> {
    debug_assert_eq!(start % DIRECT_ALIGN as u64, 0);
    let buf = staging.as_mut_slice();
    let (mut fill, mut at) = (0usize, start);
    for b in blobs {
        let mut rest = &b[..];
        while !rest.is_empty() {
            let n = rest.len().min(buf.len() - fill);
            buf[fill..fill + n].copy_from_slice(&rest[..n]);
            fill += n;
            rest = &rest[n..];
            if fill == buf.len() {
                file.write_all_at(buf, at)?;
                at += fill as u64;
                fill = 0;
            }
        }
    }
    if fill > 0 {
        let padded = fill.next_multiple_of(DIRECT_ALIGN);
        buf[fill..padded].fill(0);
        file.write_all_at(&buf[..padded], at)?;
        at += padded as u64;
    }
    Ok(at)
}

#[derive(Debug)]
enum Backend {
    Local {
        root: PathBuf,
    },
    Objects {
        objects: Arc<dyn ObjectStore>,
        /// Whether the store refuses to overwrite an object on a conditional create
        /// (`If-None-Match: *`); probed before the first segment write.
        create_only: Option<bool>,
    },
}

/// Probes whether `objects` honours conditional creation: a second create of one key
/// must fail with "already exists". A store that overwrites (ignores the header) or
/// refuses the request gets plain PUTs.
pub async fn probe_conditional_create(objects: &dyn ObjectStore) -> bool {
    let key = object_store::path::Path::from(format!("probes/create-{:016x}", nonce()));
    let create = || object_store::PutOptions::from(object_store::PutMode::Create);
    let first = objects
        .put_opts(&key, Bytes::from_static(b"1").into(), create())
        .await;
    let supported = match first {
        Ok(_) => matches!(
            objects
                .put_opts(&key, Bytes::from_static(b"2").into(), create())
                .await,
            Err(object_store::Error::AlreadyExists { .. })
        ),
        Err(_) => false,
    };
    let _ = objects.delete(&key).await;
    supported
}

/// Limits of an open local segment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age_ms: i64,
    /// Append with direct I/O where the file system allows it (`store.direct_io`).
    pub direct_io: bool,
}

/// The segment writer (one per node, owned by the committer).
#[derive(Debug)]
pub struct SegmentWriter {
    backend: Backend,
    open: HashMap<&'static str, OpenSegment>,
    limits: Limits,
    faults: Option<Arc<Faults>>,
    /// The direct-I/O staging buffer (taken by the blocking write while it runs).
    staging: Option<Staging>,
    /// Whether the last segment opened got direct I/O (to log a change once).
    direct: Option<bool>,
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
            staging: None,
            direct: None,
        }
    }

    /// One immutable object per batch.
    pub fn objects(objects: Arc<dyn ObjectStore>, faults: Option<Arc<Faults>>) -> Self {
        Self {
            backend: Backend::Objects {
                objects,
                create_only: None,
            },
            open: HashMap::new(),
            limits: Limits {
                max_bytes: 0,
                max_age_ms: 0,
                direct_io: false,
            },
            faults,
            staging: None,
            direct: None,
        }
    }

    /// Before the first write (the committer's start): probes the object store for
    /// conditional creation, so that the probe's requests never mix with a batch's.
    pub async fn prepare(&mut self) {
        if let Backend::Objects {
            objects,
            create_only: create_only @ None,
        } = &mut self.backend
        {
            let c = probe_conditional_create(objects.as_ref()).await;
            if c {
                tracing::info!("segment objects are written with If-None-Match: *");
            } else {
                tracing::warn!(
                    "the object store does not refuse overwrites (If-None-Match): segment objects are plain PUTs"
                );
            }
            *create_only = Some(c);
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
        match &mut self.backend {
            Backend::Objects {
                objects,
                create_only,
            } => {
                for b in &blobs {
                    offsets.push(end);
                    end += b.len() as u64;
                }
                let key = keys::segment_key(class, now_ms, nonce());
                let fail = |error| WriteFailed {
                    closed: None,
                    error,
                };
                // Every segment object is new: where the store can refuse an overwrite,
                // it must (a second fence besides the index's: no two writers ever share
                // an object, `docs/design/cluster.md`). Unprobed (no `prepare`): plain.
                let create = create_only.unwrap_or(false);
                let opts = if create {
                    object_store::PutOptions::from(object_store::PutMode::Create)
                } else {
                    object_store::PutOptions::default()
                };
                objects
                    .put_opts(&key, PutPayload::from_iter(blobs), opts)
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
                    let seg = create_local(root.clone(), class, now_ms, self.limits.direct_io)
                        .await
                        .map_err(|error| WriteFailed {
                            closed: None,
                            error,
                        })?;
                    if self.direct != Some(seg.direct) {
                        tracing::info!(
                            direct_io = seg.direct,
                            "segment appends {}",
                            if seg.direct {
                                "use direct I/O (O_DIRECT)"
                            } else {
                                "go through the page cache"
                            }
                        );
                        self.direct = Some(seg.direct);
                    }
                    self.open.insert(class, seg);
                }
                let seg = self.open.get(class).expect("just opened");
                let (file, path, key, start, direct) = (
                    seg.file.clone(),
                    seg.path.clone(),
                    seg.key.clone(),
                    seg.len,
                    seg.direct,
                );
                let mut staging = if direct {
                    Some(self.staging.take().unwrap_or_else(Staging::new))
                } else {
                    None
                };
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
                let r = tokio::task::spawn_blocking(move || {
                    // Buffered: appended in place. Direct: through the staging buffer,
                    // padded; the durable end is the padded end.
                    let append = |blobs: &[Bytes], staging: Option<&mut Staging>| match staging {
                        Some(st) => write_direct(&file, start, blobs, st),
                        None => {
                            let mut f: &File = &file;
                            blobs.iter().try_for_each(|b| f.write_all(b)).map(|()| end)
                        }
                    };
                    let r = (|| -> Result<u64, StoreError> {
                        if let Some(fault) = fault(Op::Append) {
                            if fault == PutFault::Torn
                                && let Some(b) = blobs.first()
                            {
                                let _ = append(&[b.slice(..b.len() / 2)], staging.as_mut());
                            }
                            return Err(injected(Op::Append, &k));
                        }
                        let written =
                            append(&blobs, staging.as_mut()).map_err(|e| io_err(&path, e))?;
                        if fault(Op::Sync).is_some() {
                            return Err(injected(Op::Sync, &k));
                        }
                        file.sync_data().map_err(|e| io_err(&path, e))?;
                        Ok(written)
                    })();
                    (r, staging)
                })
                .await
                .unwrap_or_else(|e| {
                    let e = StoreError::Backend(object_store::Error::JoinError { source: e });
                    (Err(e), None)
                });
                let (r, staging) = r;
                if staging.is_some() {
                    self.staging = staging;
                }
                match r {
                    Ok(end) => {
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
    direct_io: bool,
) -> Result<OpenSegment, StoreError> {
    let key = keys::segment_key(class, now_ms, nonce()).to_string();
    tokio::task::spawn_blocking(move || {
        let path = root.join(&key);
        let dir = path
            .parent()
            .expect("segment keys have a directory")
            .to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        // Direct I/O writes at explicit offsets (no O_APPEND); a file system that
        // refuses O_DIRECT (EINVAL, possibly after creating the file) gets a buffered
        // append handle on the same new file.
        let direct = direct_io.then(|| {
            File::options()
                .create_new(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
        });
        let (file, direct) = match direct {
            Some(Ok(f)) => (f, true),
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => (
                File::options()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?,
                false,
            ),
            Some(Err(e)) => return Err(io_err(&path, e)),
            None => (
                File::options()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?,
                false,
            ),
        };
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
            direct,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn object_segments_are_created_never_overwritten_where_the_store_can_refuse() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        assert!(probe_conditional_create(store.as_ref()).await);
        // The probe leaves nothing behind.
        assert!(
            store
                .list_with_delimiter(None)
                .await
                .unwrap()
                .objects
                .is_empty()
        );
        let mut w = SegmentWriter::objects(store.clone(), None);
        w.prepare().await;
        let written = w
            .write("r1d", 1_700_000_000_000, vec![Bytes::from_static(b"abc")])
            .await
            .unwrap();
        assert!(written.sealed);
        // What the writer relies on: a second create of that key is refused.
        let again = store
            .put_opts(
                &written.key.as_str().into(),
                Bytes::from_static(b"zzz").into(),
                object_store::PutMode::Create.into(),
            )
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{again:?}"
        );
        assert!(matches!(
            w.backend,
            Backend::Objects {
                create_only: Some(true),
                ..
            }
        ));
    }

    fn blobs() -> Vec<Bytes> {
        // Odd sizes, one larger than the staging buffer (it is written in several pieces).
        [1usize, 4095, 4097, STAGING_BYTES + 12_345, 777]
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from((0..n).map(|j| (i * 31 + j * 7) as u8).collect::<Vec<_>>()))
            .collect()
    }

    async fn appended(direct_io: bool) -> (Vec<Written>, Vec<u8>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: u64::MAX,
            max_age_ms: i64::MAX,
            direct_io,
        };
        let mut w = SegmentWriter::local(dir.path().to_owned(), limits, None);
        let mut out = Vec::new();
        for round in 0..2 {
            let mut b = blobs();
            b.rotate_left(round);
            out.push(w.write("r1d", 1_700_000_000_000, b).await.unwrap());
        }
        let direct = w.open["r1d"].direct;
        let bytes = std::fs::read(dir.path().join(&out[0].key)).unwrap();
        (out, bytes, direct)
    }

    #[tokio::test]
    async fn direct_appends_start_aligned_pad_to_the_block_and_read_back_exactly() {
        let (written, file, direct) = appended(true).await;
        assert_eq!(written[0].key, written[1].key, "one open segment");
        for (round, w) in written.iter().enumerate() {
            let mut b = blobs();
            b.rotate_left(round);
            for (blob, &off) in b.iter().zip(&w.offsets) {
                let off = off as usize;
                assert_eq!(
                    &file[off..off + blob.len()],
                    &blob[..],
                    "round {round} at {off}"
                );
            }
        }
        let data: u64 = blobs().iter().map(|b| b.len() as u64).sum();
        assert_eq!(
            file.len() as u64,
            written[1].durable_end,
            "the file ends at the durable end"
        );
        if direct {
            // Every batch starts on a block and the durable end is padded with zeros.
            assert_eq!(written[0].offsets[0], 0);
            assert_eq!(written[1].offsets[0], written[0].durable_end);
            for w in &written {
                assert_eq!(w.durable_end % DIRECT_ALIGN as u64, 0);
            }
            let end0 = written[1].offsets[0] as usize;
            assert_eq!(end0 as u64, data.next_multiple_of(DIRECT_ALIGN as u64));
            assert!(
                file[data as usize..end0].iter().all(|&b| b == 0),
                "zero padding"
            );
        } else {
            eprintln!("the temp dir's file system refused O_DIRECT: checked buffered appends only");
            assert_eq!(written[1].durable_end, 2 * data);
        }
    }

    #[tokio::test]
    async fn buffered_appends_are_back_to_back_without_padding() {
        let (written, file, direct) = appended(false).await;
        assert!(!direct);
        let data: u64 = blobs().iter().map(|b| b.len() as u64).sum();
        assert_eq!(written[0].durable_end, data);
        assert_eq!(written[1].offsets[0], data);
        assert_eq!(file.len() as u64, 2 * data);
    }
}
