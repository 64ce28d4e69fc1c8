//! PutMedia ingest: per-stream runtime state shared by upload sessions (connection count,
//! rate cap, the fragment-number allocator, the live hand-off channel), the global
//! ingest memory budget, and the session driver ([`session`]) that runs one upload.

pub mod ack;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, broadcast};

use crate::config::IngestSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::index::Index;

/// How many live events a slow reader may lag before it must catch up from storage.
pub const LIVE_CHANNEL: usize = 4096;
/// Fragment numbers reserved per index write.
const SEQ_BLOCK: u64 = 64;

/// What the live hand-off publishes, in ingestion order.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A new producer session began: its header elements (EBML header + pre-cluster
    /// level-1 elements).
    Session {
        session_id: u64,
        header: Bytes,
        ebml_header_len: usize,
    },
    /// A fragment began (BUFFERING).
    FragmentStart {
        seq: u64,
        session_id: u64,
        cluster_timecode: u64,
        producer_ts_ms: i64,
        server_ts_ms: i64,
    },
    /// One frame of the open fragment, re-based onto its cluster timecode.
    Frame { seq: u64, block: Bytes },
    /// The fragment is complete (RECEIVED), with the producer metadata that follows it.
    FragmentEnd {
        seq: u64,
        metadata: Vec<(String, String)>,
    },
    /// The fragment is durable and listed (PERSISTED).
    FragmentPersisted { seq: u64 },
    /// The fragment was rejected and will never be stored.
    FragmentDropped { seq: u64 },
}

/// Runtime state of one stream.
#[derive(Debug)]
pub struct StreamRuntime {
    connections: AtomicUsize,
    rate: Mutex<TokenBucket>,
    seq: tokio::sync::Mutex<SeqBlock>,
    live: broadcast::Sender<LiveEvent>,
}

#[derive(Debug, Default)]
struct SeqBlock {
    next: u64,
    end: u64,
}

impl StreamRuntime {
    /// Subscribes to the live hand-off.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }

    pub(crate) fn publish(&self, ev: LiveEvent) {
        // No receivers is normal.
        let _ = self.live.send(ev);
    }

    /// Next fragment sequence number; reservations are durable before use.
    pub(crate) async fn next_seq(&self, index: &dyn Index, stream_id: &str) -> Result<u64> {
        let mut b = self.seq.lock().await;
        if b.next == b.end {
            let first = index.reserve_fragment_seqs(stream_id, SEQ_BLOCK).await?;
            b.next = first;
            b.end = first + SEQ_BLOCK;
        }
        let n = b.next;
        b.next += 1;
        Ok(n)
    }

    /// How long to wait before `bytes` more may be ingested under the rate cap.
    pub(crate) fn rate_delay(&self, bytes: usize) -> Duration {
        self.rate
            .lock()
            .expect("rate bucket")
            .take(bytes as f64, std::time::Instant::now())
    }
}

/// Token bucket with one second of burst.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    fn take(&mut self, n: f64, now: std::time::Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        }
        self.last = Some(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Shared ingest state of the server.
#[derive(Debug)]
pub struct Ingest {
    pub settings: IngestSettings,
    streams: Mutex<HashMap<String, Arc<StreamRuntime>>>,
    /// Memory budget in KiB permits.
    memory: Arc<Semaphore>,
    memory_kib: usize,
}

/// Holds one PutMedia connection slot of a stream; released on drop.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<StreamRuntime>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::INGEST_SESSIONS).decrement(1.0);
    }
}

impl Ingest {
    pub fn new(settings: IngestSettings) -> Self {
        let memory_kib = (settings.memory_budget_bytes / 1024).max(1) as usize;
        Self {
            settings,
            streams: Mutex::default(),
            memory: Arc::new(Semaphore::new(memory_kib)),
            memory_kib,
        }
    }

    /// Runtime state of a stream (created on first use).
    pub fn runtime(&self, stream_id: &str) -> Arc<StreamRuntime> {
        let mut m = self.streams.lock().expect("ingest registry");
        m.entry(stream_id.to_owned())
            .or_insert_with(|| {
                Arc::new(StreamRuntime {
                    connections: AtomicUsize::new(0),
                    rate: Mutex::new(TokenBucket {
                        rate: self.settings.max_bytes_per_second as f64,
                        tokens: self.settings.max_bytes_per_second as f64,
                        last: None,
                    }),
                    seq: tokio::sync::Mutex::default(),
                    live: broadcast::channel(LIVE_CHANNEL).0,
                })
            })
            .clone()
    }

    /// Forgets a deleted stream's runtime state.
    pub fn forget(&self, stream_id: &str) {
        self.streams
            .lock()
            .expect("ingest registry")
            .remove(stream_id);
    }

    /// Takes a connection slot or fails with `ConnectionLimitExceededException`.
    pub fn connect(
        &self,
        stream_id: &str,
        stream_name: &str,
    ) -> Result<(Arc<StreamRuntime>, ConnectionGuard)> {
        let rt = self.runtime(stream_id);
        let max = self.settings.max_connections_per_stream;
        let prev = rt.connections.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::INGEST_SESSIONS).increment(1.0);
        let guard = ConnectionGuard(rt.clone());
        if prev >= max {
            return Err(Error::new(
                ErrorKind::ConnectionLimitExceeded,
                format!(
                    "too many PutMedia connections for this stream: stream={stream_name} max={max}"
                ),
            ));
        }
        Ok((rt, guard))
    }

    /// The memory budget (KiB permits) and its size.
    pub(crate) fn memory(&self) -> (&Arc<Semaphore>, usize) {
        (&self.memory, self.memory_kib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_paces_to_the_rate() {
        let mut b = TokenBucket {
            rate: 1000.0,
            tokens: 1000.0,
            last: None,
        };
        let t0 = std::time::Instant::now();
        assert_eq!(b.take(1000.0, t0), Duration::ZERO);
        let d = b.take(500.0, t0);
        assert!((d.as_secs_f64() - 0.5).abs() < 1e-6, "{d:?}");
        // After waiting, the debt is paid.
        assert_eq!(b.take(0.0, t0 + Duration::from_secs(2)), Duration::ZERO);
        let mut off = TokenBucket {
            rate: 0.0,
            tokens: 0.0,
            last: None,
        };
        assert_eq!(off.take(1e12, t0), Duration::ZERO);
    }

    #[test]
    fn connection_limit() {
        let ing = Ingest::new(IngestSettings::default());
        let (_rt, g1) = ing.connect("s", "cam").unwrap();
        let e = ing.connect("s", "cam").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConnectionLimitExceeded);
        drop(g1);
        assert!(ing.connect("s", "cam").is_ok());
    }
}
