//! A fault-injecting [`ObjectStore`] wrapper for tests and soak runs: injected failures
//! per operation, latency, torn and "lost acknowledgement" puts, and multipart uploads
//! that fail part-way. Inject it with `Server::builder(..).with_object_store(..)`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use streamvault::store::faults::{FaultyStore, Op};
//! # let inner: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
//! let store = FaultyStore::new(inner);
//! let faults = store.faults();
//! faults.fail_next(Op::Put, 1); // the next put fails, nothing is written
//! faults.set_latency(Op::Put, std::time::Duration::from_millis(200));
//! ```
//!
//! The same plan also drives the local segment backend and the group commit
//! (`Op::Append`, `Op::Sync`, `Op::IndexCommit`; `Server::builder(..).with_segment_faults`);
//! a latency on `Op::Append` or `Op::Sync` makes the local segment writes slow (a slow disk).
//!
//! Faults never corrupt an object that was written successfully: every fault happens
//! in place of (or after) one call, the way a network or disk failure does.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// An operation faults can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    Head,
    Delete,
    List,
    /// Parts and completion of multipart uploads.
    Multipart,
    /// Local segment backend: one batch's append to the open segment file
    /// ([`PutFault::Torn`] writes half of it, then fails).
    Append,
    /// Local segment backend: the `fdatasync` that makes a batch durable.
    Sync,
    /// The group commit's index transaction (fails before it runs: the batch's bytes
    /// are durable, its rows are not committed).
    IndexCommit,
}

/// How a faulty put fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutFault {
    /// Nothing is written; the call fails.
    Fail,
    /// The first half of the payload is written at the key (a non-atomic backend torn by
    /// a crash); the call fails.
    Torn,
    /// The whole object is written, then the call fails (the acknowledgement was lost:
    /// a timeout after the store committed).
    Lost,
}

#[derive(Debug, Default)]
struct State {
    /// Faults for the next calls of each operation, consumed in order.
    next: HashMap<Op, Vec<PutFault>>,
    /// Fail every call of these operations.
    always: HashMap<Op, bool>,
    latency: HashMap<Op, Duration>,
    /// Multipart uploads fail from this part index (0-based) on, and never complete.
    multipart_fail_from_part: Option<usize>,
    calls: HashMap<Op, u64>,
    injected: u64,
}

/// The fault plan shared by a [`FaultyStore`] and the test driving it.
#[derive(Debug, Default)]
pub struct Faults(Mutex<State>);

impl Faults {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` calls of `op` fail (puts write nothing).
    pub fn fail_next(&self, op: Op, n: usize) {
        self.state()
            .next
            .entry(op)
            .or_default()
            .extend(std::iter::repeat_n(PutFault::Fail, n));
    }

    /// The next `n` calls of `op` fail the given way (`Op::Put` and `Op::Append` know
    /// `Torn`; `Op::Put` knows `Lost`).
    pub fn fault_next(&self, op: Op, fault: PutFault, n: usize) {
        self.state()
            .next
            .entry(op)
            .or_default()
            .extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` puts fail the given way.
    pub fn put_fault_next(&self, fault: PutFault, n: usize) {
        self.state()
            .next
            .entry(Op::Put)
            .or_default()
            .extend(std::iter::repeat_n(fault, n));
    }

    /// Every call of `op` fails while `on`.
    pub fn fail_always(&self, op: Op, on: bool) {
        self.state().always.insert(op, on);
    }

    /// Every call of `op` first waits `d`.
    pub fn set_latency(&self, op: Op, d: Duration) {
        self.state().latency.insert(op, d);
    }

    /// Multipart uploads accept parts `0..n`, then every further part and the completion
    /// fail (`None`: multipart uploads work).
    pub fn fail_multipart_from_part(&self, n: Option<usize>) {
        self.state().multipart_fail_from_part = n;
    }

    /// Clears every fault and latency (counters stay).
    pub fn clear(&self) {
        let mut s = self.state();
        s.next.clear();
        s.always.clear();
        s.latency.clear();
        s.multipart_fail_from_part = None;
    }

    /// Calls of `op` so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// Counts a call of `op` and returns (latency, fault). The store wrapper calls it for
    /// its operations; the segment writer and the committer for `Append`, `Sync` and
    /// `IndexCommit`.
    pub fn enter(&self, op: Op) -> (Duration, Option<PutFault>) {
        let mut s = self.state();
        *s.calls.entry(op).or_default() += 1;
        let latency = s.latency.get(&op).copied().unwrap_or_default();
        let fault = if s.always.get(&op).copied().unwrap_or(false) {
            Some(PutFault::Fail)
        } else {
            match s.next.get_mut(&op) {
                Some(q) if !q.is_empty() => Some(q.remove(0)),
                _ => None,
            }
        };
        if fault.is_some() {
            s.injected += 1;
        }
        (latency, fault)
    }
}

fn injected(op: Op, key: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: format!("injected failure: op={op:?} key={key}").into(),
    }
}

/// The wrapper. Operations not listed in [`Op`] (copy, rename, delimited listing) pass
/// through unchanged.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<Faults>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// The fault plan (shared: change it while the store is in use).
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    async fn enter(&self, op: Op) -> Option<PutFault> {
        let (latency, fault) = self.faults.enter(op);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        fault
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.enter(Op::Put).await {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(PutFault::Fail) => Err(injected(Op::Put, location.as_ref())),
            Some(PutFault::Torn) => {
                let bytes = Bytes::from(payload);
                let half = bytes.slice(..bytes.len() / 2);
                let _ = self.inner.put_opts(location, half.into(), opts).await;
                Err(injected(Op::Put, location.as_ref()))
            }
            Some(PutFault::Lost) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(Op::Put, location.as_ref()))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.enter(Op::Multipart).await.is_some() {
            return Err(injected(Op::Multipart, location.as_ref()));
        }
        let fail_from = self.faults.state().multipart_fail_from_part;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner: upload,
            faults: self.faults.clone(),
            key: location.to_string(),
            parts: 0,
            fail_from,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        if self.enter(op).await.is_some() {
            return Err(injected(op, location.as_ref()));
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if self.enter(Op::Get).await.is_some() {
            return Err(injected(Op::Get, location.as_ref()));
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |p| {
                let this = this.clone();
                async move {
                    let p = p?;
                    if this.enter(Op::Delete).await.is_some() {
                        return Err(injected(Op::Delete, p.as_ref()));
                    }
                    let mut out = this
                        .inner
                        .delete_stream(futures::stream::once(async move { Ok(p) }).boxed());
                    match out.next().await {
                        Some(r) => r,
                        None => Err(object_store::Error::Generic {
                            store: "faults",
                            source: "inner delete_stream yielded nothing".into(),
                        }),
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            if this.enter(Op::List).await.is_some() {
                let key = prefix.map(|p| p.to_string()).unwrap_or_default();
                return futures::stream::once(async move { Err(injected(Op::List, &key)) }).boxed();
            }
            this.inner.list(prefix.as_ref())
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if self.enter(Op::List).await.is_some() {
            return Err(injected(
                Op::List,
                prefix.map(|p| p.as_ref()).unwrap_or_default(),
            ));
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload that fails from a given part on (the completed parts are never
/// visible: the upload cannot complete, and abort cleans up).
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<Faults>,
    key: String,
    parts: usize,
    fail_from: Option<usize>,
}

impl FaultyUpload {
    fn failing(&self) -> bool {
        self.fail_from.is_some_and(|n| self.parts >= n)
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let fail = self.failing();
        self.parts += 1;
        self.faults.enter(Op::Multipart);
        if fail {
            self.faults.state().injected += 1;
            let e = injected(Op::Multipart, &self.key);
            return Box::pin(async move { Err(e) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        if self.failing() {
            self.faults.state().injected += 1;
            return Err(injected(Op::Multipart, &self.key));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    fn store(dir: &std::path::Path) -> FaultyStore {
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .unwrap()
            .with_fsync(true);
        FaultyStore::new(Arc::new(fs))
    }

    async fn exists(s: &FaultyStore, k: &str) -> Option<u64> {
        match s.head(&Path::from(k)).await {
            Ok(m) => Some(m.size),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn put_faults_fail_tear_or_lose_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let f = s.faults();
        f.fail_next(Op::Put, 1);
        f.put_fault_next(PutFault::Torn, 1);
        f.put_fault_next(PutFault::Lost, 1);
        let data = PutPayload::from(vec![7u8; 1000]);
        assert!(s.put(&Path::from("a"), data.clone()).await.is_err());
        assert_eq!(exists(&s, "a").await, None, "Fail writes nothing");
        assert!(s.put(&Path::from("b"), data.clone()).await.is_err());
        assert_eq!(exists(&s, "b").await, Some(500), "Torn leaves half");
        assert!(s.put(&Path::from("c"), data.clone()).await.is_err());
        assert_eq!(exists(&s, "c").await, Some(1000), "Lost writes it all");
        s.put(&Path::from("d"), data).await.unwrap();
        assert_eq!(f.calls(Op::Put), 4);
        assert_eq!(f.injected(), 3);
    }

    #[tokio::test]
    async fn always_latency_and_other_operations() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let f = s.faults();
        s.put(&Path::from("x/a"), vec![1u8; 10].into())
            .await
            .unwrap();
        f.fail_always(Op::Get, true);
        assert!(s.get(&Path::from("x/a")).await.is_err());
        assert!(
            s.head(&Path::from("x/a")).await.is_ok(),
            "head is its own op"
        );
        f.fail_always(Op::Get, false);
        assert!(s.get(&Path::from("x/a")).await.is_ok());
        f.fail_next(Op::List, 1);
        assert!(s.list(None).try_collect::<Vec<_>>().await.is_err());
        assert_eq!(s.list(None).try_collect::<Vec<_>>().await.unwrap().len(), 1);
        f.fail_next(Op::Delete, 1);
        assert!(s.delete(&Path::from("x/a")).await.is_err());
        assert!(exists(&s, "x/a").await.is_some());
        s.delete(&Path::from("x/a")).await.unwrap();
        f.set_latency(Op::Put, Duration::from_millis(150));
        let t = std::time::Instant::now();
        s.put(&Path::from("y"), vec![1u8].into()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn partial_multipart_never_becomes_visible() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.faults().fail_multipart_from_part(Some(2));
        let mut up = s.put_multipart(&Path::from("big")).await.unwrap();
        up.put_part(vec![1u8; 100].into()).await.unwrap();
        up.put_part(vec![2u8; 100].into()).await.unwrap();
        assert!(up.put_part(vec![3u8; 100].into()).await.is_err());
        assert!(up.complete().await.is_err());
        up.abort().await.unwrap();
        assert_eq!(exists(&s, "big").await, None);
        s.faults().fail_multipart_from_part(None);
        let mut up = s.put_multipart(&Path::from("big")).await.unwrap();
        up.put_part(vec![1u8; 100].into()).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(exists(&s, "big").await, Some(100));
    }
}
