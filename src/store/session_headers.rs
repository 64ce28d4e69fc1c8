//! Session headers behind the store seam: the one place that seals an upload session's
//! header (the EBML header and the pre-cluster elements every fragment of the session
//! is served with) and opens it again, with one bounded cache per server shared by every
//! reader (GetMedia, playback, GetMediaForFragmentList, images). The sealed header lives
//! in the index's session record (AAD: stream, session id, kind `SessionHeader`); `check`
//! opens the stored record itself ([`SessionHeaders::open`]), bypassing the cache, since
//! it verifies what is on disk.
//!
//! The cache holds at most [`CACHE_ENTRIES`] headers (a few hundred bytes to a few KiB
//! each), oldest inserted evicted first. Entries are keyed by (stream id, session id):
//! stream ids are never reused, and a deleted stream's readers fail on its data key before
//! they ask for a header, so entries of deleted streams are only dead weight until evicted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::crypto::CryptoError;
use super::{BlobKind, DataKey, StoreError};
use crate::index::Index;

/// Headers cached at most.
pub const CACHE_ENTRIES: usize = 4096;

/// A session header in the clear.
#[derive(Debug)]
pub struct SessionHeaderBytes {
    pub session_id: u64,
    /// EBML header followed by the pre-cluster level-1 elements.
    pub bytes: Bytes,
    pub ebml_header_len: usize,
}

/// Why a header could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("session header missing: session={0}")]
    Missing(u64),
    #[error("session header unreadable: session={session_id}: {reason}")]
    Unreadable { session_id: u64, reason: String },
    #[error("index: {0}")]
    Index(String),
}

type Key = (String, u64);

#[derive(Debug, Default)]
struct Cache {
    map: HashMap<Key, Arc<SessionHeaderBytes>>,
    order: VecDeque<Key>,
}

/// Seals, opens and caches session headers (one per server; cloning a
/// [`super::FragmentStore`] shares it).
#[derive(Debug, Default)]
pub struct SessionHeaders {
    cache: Mutex<Cache>,
}

impl SessionHeaders {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, stream_id: &str, h: Arc<SessionHeaderBytes>) {
        let mut c = self.cache();
        let key = (stream_id.to_owned(), h.session_id);
        if c.map.insert(key.clone(), h).is_none() {
            c.order.push_back(key);
        }
        while c.order.len() > CACHE_ENTRIES {
            if let Some(old) = c.order.pop_front() {
                c.map.remove(&old);
            }
        }
    }

    /// Seals a new session's header for its index record and caches it in the clear.
    pub fn seal(
        &self,
        key: &DataKey,
        session_id: u64,
        header: Bytes,
        ebml_header_len: usize,
    ) -> Result<(Vec<u8>, Arc<SessionHeaderBytes>), StoreError> {
        let sealed = key.seal(BlobKind::SessionHeader, session_id, &header)?;
        let h = Arc::new(SessionHeaderBytes {
            session_id,
            bytes: header,
            ebml_header_len,
        });
        self.insert(key.stream_id(), h.clone());
        Ok((sealed, h))
    }

    /// Opens a stored sealed header (no cache).
    pub fn open(key: &DataKey, session_id: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        key.open(BlobKind::SessionHeader, session_id, sealed)
    }

    /// The header of a stored session: from the cache, or read from the index and
    /// opened (then cached).
    pub async fn get(
        &self,
        index: &dyn Index,
        key: &DataKey,
        session_id: u64,
    ) -> Result<Arc<SessionHeaderBytes>, HeaderError> {
        let stream_id = key.stream_id();
        if let Some(h) = self.cache().map.get(&(stream_id.to_owned(), session_id)) {
            return Ok(h.clone());
        }
        let rec = index
            .get_session(stream_id, session_id)
            .await
            .map_err(|e| HeaderError::Index(e.to_string()))?
            .ok_or(HeaderError::Missing(session_id))?;
        let bytes = Self::open(key, session_id, &rec.header_sealed).map_err(|e| {
            HeaderError::Unreadable {
                session_id,
                reason: e.to_string(),
            }
        })?;
        let h = Arc::new(SessionHeaderBytes {
            session_id,
            ebml_header_len: crate::media::chunk::ebml_header_len(&bytes),
            bytes: Bytes::from(bytes),
        });
        self.insert(stream_id, h.clone());
        Ok(h)
    }
}
