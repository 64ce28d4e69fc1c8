//! The encrypted fragment store: the one seam where fragment bytes meet the object store.
//! It owns the object key layout ([`keys`]), envelope encryption ([`crypto`]) and the
//! shared segments fragments are appended to ([`segment`]); nothing else builds a key or
//! touches plaintext at rest. Backends are any `object_store` implementation:
//! `LocalFileSystem` (the embedded default, whose segments are appended to in place) or
//! S3 (one immutable object per flushed segment).

pub mod crypto;
pub mod faults;
pub mod keys;
pub mod segment;
pub mod session_headers;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::{Settings, StoreBackend};
use crate::index::FragmentRecord;
pub use crypto::{BlobKind, CryptoError, DataKey, Keyring};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found: key={0}")]
    NotFound(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(k) => {
                crate::error::Error::not_found(format!("fragment data not found: key={k}"))
            }
            other => crate::error::Error::internal(other.to_string()),
        }
    }
}

/// Where and how big a stored object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
}

/// One object seen in a listing.
#[derive(Debug, Clone)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// Encrypted fragment storage over an object store.
#[derive(Debug, Clone)]
pub struct FragmentStore {
    objects: Arc<dyn ObjectStore>,
    keyring: Arc<Keyring>,
    /// Seals, opens and caches session headers (shared by clones).
    headers: Arc<session_headers::SessionHeaders>,
    /// The local backend's directory, where segments are appended to in place; `None`:
    /// one object per flushed segment.
    local_root: Option<std::path::PathBuf>,
}

impl FragmentStore {
    pub fn new(objects: Arc<dyn ObjectStore>, keyring: Arc<Keyring>) -> Self {
        Self {
            objects,
            keyring,
            headers: Arc::default(),
            local_root: None,
        }
    }

    /// Appends segments in place under `root`, the directory `objects` is rooted at.
    pub fn with_local_segments(mut self, root: std::path::PathBuf) -> Self {
        self.local_root = Some(root);
        self
    }

    /// The writer of new segments (local append or one object per batch).
    pub fn segment_writer(
        &self,
        limits: segment::Limits,
        faults: Option<Arc<faults::Faults>>,
    ) -> segment::SegmentWriter {
        match &self.local_root {
            Some(root) => segment::SegmentWriter::local(root.clone(), limits, faults),
            None => segment::SegmentWriter::objects(self.objects.clone(), faults),
        }
    }

    /// Startup: cuts a segment a previous process left open back to its durable end
    /// (local append only; objects are immutable). Returns the bytes removed.
    pub async fn truncate_segment_tail(
        &self,
        key: &str,
        durable_end: u64,
    ) -> Result<u64, StoreError> {
        match &self.local_root {
            Some(root) => segment::truncate_tail(root, key, durable_end).await,
            None => Ok(0),
        }
    }

    /// Seals one fragment for a segment (AAD: stream, seq, kind).
    pub fn seal_fragment(
        &self,
        key: &DataKey,
        seq: u64,
        plaintext: &[u8],
    ) -> Result<Bytes, StoreError> {
        Ok(Bytes::from(key.seal(BlobKind::Fragment, seq, plaintext)?))
    }

    /// The one home of session headers: sealing, opening, the cache.
    pub fn session_headers(&self) -> &session_headers::SessionHeaders {
        &self.headers
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Encrypts and writes one fragment as its own object: the layout before segments
    /// (migration 4). Ingest no longer writes it; tests use it to make such rows.
    pub async fn put_fragment(
        &self,
        key: &DataKey,
        seq: u64,
        plaintext: &[u8],
    ) -> Result<StoredObject, StoreError> {
        let sealed = key.seal(BlobKind::Fragment, seq, plaintext)?;
        let path = keys::fragment_key(key.stream_id(), seq);
        let size = sealed.len() as u64;
        self.objects.put(&path, PutPayload::from(sealed)).await?;
        Ok(StoredObject {
            key: path.to_string(),
            size,
        })
    }

    /// Reads and decrypts the fragment a row names: a ranged read of its segment, or the
    /// whole legacy object.
    pub async fn get_fragment(
        &self,
        key: &DataKey,
        row: &FragmentRecord,
    ) -> Result<Bytes, StoreError> {
        let sealed = self.get_sealed(row).await?;
        Ok(Bytes::from(key.open(
            BlobKind::Fragment,
            row.seq,
            &sealed,
        )?))
    }

    /// The sealed bytes a row names.
    async fn get_sealed(&self, row: &FragmentRecord) -> Result<Bytes, StoreError> {
        let path = Path::from(row.object_key.as_str());
        let Some(off) = row.object_offset else {
            return self.get_raw(&path).await;
        };
        match self
            .objects
            .get_range(&path, off..off + row.object_size)
            .await
        {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StoreError::NotFound(path.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an object's stored (encrypted) bytes.
    pub async fn get_raw(&self, path: &Path) -> Result<Bytes, StoreError> {
        match self.objects.get(path).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StoreError::NotFound(path.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Size of a stored object, or `None` when it does not exist.
    pub async fn head_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.objects.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes one object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.objects.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists every legacy object of one stream (`Some(id)`) or of all streams.
    pub async fn list(&self, stream_id: Option<&str>) -> Result<Vec<ListedObject>, StoreError> {
        let prefix = match stream_id {
            Some(id) => keys::stream_prefix(id),
            None => keys::all_streams_prefix(),
        };
        self.list_prefix(&prefix).await
    }

    /// Lists every segment object.
    pub async fn list_segments(&self) -> Result<Vec<ListedObject>, StoreError> {
        self.list_prefix(&keys::segments_prefix()).await
    }

    async fn list_prefix(&self, prefix: &Path) -> Result<Vec<ListedObject>, StoreError> {
        let metas: Vec<_> = self.objects.list(Some(prefix)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| ListedObject {
                key: m.location.to_string(),
                size: m.size,
                last_modified_ms: m.last_modified.timestamp_millis(),
            })
            .collect())
    }

    /// Writes a generated image (image generation's `s3://` deliverable), sealed with the
    /// stream's data key like a fragment ([`BlobKind::Image`], bound to its file name), at
    /// `<prefix>/<stream id>/<file name>.sv`, outside the fragments' `streams/` prefix.
    /// Returns the key.
    pub async fn put_image(
        &self,
        key: &DataKey,
        prefix: &str,
        file_name: &str,
        bytes: &[u8],
    ) -> Result<String, StoreError> {
        let sealed = key.seal(BlobKind::Image, keys::image_identity(file_name), bytes)?;
        let path = keys::image_key(prefix, key.stream_id(), file_name);
        self.objects.put(&path, PutPayload::from(sealed)).await?;
        Ok(path.to_string())
    }

    /// Reads and decrypts a generated image (tests and tools).
    pub async fn get_image(
        &self,
        key: &DataKey,
        prefix: &str,
        file_name: &str,
    ) -> Result<Bytes, StoreError> {
        let sealed = self
            .get_raw(&keys::image_key(prefix, key.stream_id(), file_name))
            .await?;
        let identity = keys::image_identity(file_name);
        Ok(Bytes::from(key.open(BlobKind::Image, identity, &sealed)?))
    }

    /// Deletes every object of a stream; returns how many were deleted.
    pub async fn delete_stream_objects(&self, stream_id: &str) -> Result<usize, StoreError> {
        let objs = self.list(Some(stream_id)).await?;
        for o in &objs {
            self.delete(&o.key).await?;
        }
        Ok(objs.len())
    }
}

/// Builds the object store named by the settings.
pub fn object_store_from_settings(settings: &Settings) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match settings.store.backend {
        StoreBackend::Local => {
            let dir = settings.local_store_path();
            std::fs::create_dir_all(&dir)?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Ok(Arc::new(fs))
        }
        StoreBackend::S3 => {
            let s3 = &settings.store.s3;
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_region(s3.region.clone().unwrap_or_else(|| settings.region.clone()))
                .with_allow_http(s3.allow_http);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(k) = &s3.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let store: Arc<dyn ObjectStore> = Arc::new(b.build()?);
            Ok(match &s3.prefix {
                Some(p) => Arc::new(object_store::prefix::PrefixStore::new(store, p.as_str())),
                None => store,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "0123456789abcdef0123456789abcdef";

    fn legacy_row(seq: u64, o: &StoredObject) -> FragmentRecord {
        FragmentRecord {
            stream_id: SID.into(),
            seq,
            session_id: 0,
            producer_ts_ms: 0,
            server_ts_ms: 0,
            duration_ms: 0,
            producer_timecode: 0,
            size: 0,
            object_key: o.key.clone(),
            object_size: o.size,
            content_hash: String::new(),
            metadata: vec![],
            object_offset: None,
        }
    }

    fn local_store(dir: &std::path::Path) -> FragmentStore {
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .unwrap()
            .with_fsync(true);
        FragmentStore::new(Arc::new(fs), Arc::new(Keyring::ephemeral("k")))
    }

    #[tokio::test]
    async fn round_trip_on_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let (dek, _) = store.keyring().new_data_key("k", SID).unwrap();
        let put = store.put_fragment(&dek, 5, b"cluster bytes").await.unwrap();
        assert_eq!(store.head_size(&put.key).await.unwrap(), Some(put.size));
        assert_eq!(
            &store
                .get_fragment(&dek, &legacy_row(5, &put))
                .await
                .unwrap()[..],
            b"cluster bytes"
        );
        let missing = StoredObject {
            key: keys::fragment_key(SID, 6).to_string(),
            size: 1,
        };
        assert!(matches!(
            store.get_fragment(&dek, &legacy_row(6, &missing)).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.list(Some(SID)).await.unwrap().len(), 1);
        assert_eq!(store.delete_stream_objects(SID).await.unwrap(), 1);
        assert!(store.list(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn tampered_or_moved_objects_fail() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let (dek, _) = store.keyring().new_data_key("k", SID).unwrap();
        let a = store.put_fragment(&dek, 1, b"fragment one").await.unwrap();
        let b = store.put_fragment(&dek, 2, b"fragment two").await.unwrap();
        // Move fragment 1's object onto fragment 2's key.
        let pa = dir.path().join(&a.key);
        let pb = dir.path().join(&b.key);
        std::fs::copy(&pa, &pb).unwrap();
        assert!(matches!(
            store.get_fragment(&dek, &legacy_row(2, &b)).await,
            Err(StoreError::Crypto(CryptoError::Integrity(_)))
        ));
        // Flip one bit in the middle of fragment 1.
        let mut bytes = std::fs::read(&pa).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        std::fs::write(&pa, &bytes).unwrap();
        assert!(matches!(
            store.get_fragment(&dek, &legacy_row(1, &a)).await,
            Err(StoreError::Crypto(CryptoError::Integrity(_)))
        ));
    }

    #[tokio::test]
    async fn images_are_sealed_at_rest_and_open_under_their_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let (dek, _) = store.keyring().new_data_key("k", SID).unwrap();
        let jpeg = [&[0xff, 0xd8, 0xff, 0xe0, 0, 16][..], b"JFIF\0", &[7u8; 500]].concat();
        let key = store
            .put_image(&dek, "kvs/img", "1700000000000.jpg", &jpeg)
            .await
            .unwrap();
        assert_eq!(key, format!("kvs/img/{SID}/1700000000000.jpg.sv"));
        let raw = std::fs::read(dir.path().join(&key)).unwrap();
        assert_ne!(raw, jpeg);
        assert!(!raw.starts_with(&[0xff, 0xd8]), "JPEG SOI at rest");
        assert!(!raw.windows(4).any(|w| w == b"JFIF"), "JFIF marker at rest");
        let back = store.get_image(&dek, "kvs/img", "1700000000000.jpg").await;
        assert_eq!(&back.unwrap()[..], &jpeg[..]);
        // Bound to its name: the same object under another name does not open.
        let other = dir
            .path()
            .join(format!("kvs/img/{SID}/1700000000500.jpg.sv"));
        std::fs::copy(dir.path().join(&key), other).unwrap();
        assert!(matches!(
            store.get_image(&dek, "kvs/img", "1700000000500.jpg").await,
            Err(StoreError::Crypto(CryptoError::Integrity(_)))
        ));
    }

    #[tokio::test]
    async fn no_plaintext_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let (dek, _) = store.keyring().new_data_key("k", SID).unwrap();
        let marker = b"STREAMVAULT-PLAINTEXT-MARKER-3f9a1c";
        let mut payload = vec![0u8; 4096];
        payload.extend_from_slice(marker);
        store.put_fragment(&dek, 1, &payload).await.unwrap();
        let status = std::process::Command::new("grep")
            .args(["-r", "-a", "-q", std::str::from_utf8(marker).unwrap()])
            .arg(dir.path())
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(1),
            "grep found the marker (or failed) under the data dir"
        );
    }
}
