//! Admission to a stream: PutMedia connection slots (the newest connection wins), GetMedia
//! reader slots, and the per-stream ingest rate cap (a token bucket). Each slot is a guard
//! released on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Ingest, StreamRuntime};
use crate::error::{Error, ErrorKind, Result};

/// Holds one GetMedia reader slot of a stream; released on drop.
#[derive(Debug)]
pub struct ReaderGuard(Arc<StreamRuntime>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Holds one PutMedia connection slot of a stream; released on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    runtime: Arc<StreamRuntime>,
    id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.runtime
            .uploads
            .lock()
            .expect("uploads")
            .retain(|(id, _)| *id != self.id);
        metrics::gauge!(crate::metrics::INGEST_SESSIONS).decrement(1.0);
    }
}

/// An admitted PutMedia connection.
#[derive(Debug)]
pub struct Connection {
    pub runtime: Arc<StreamRuntime>,
    pub guard: ConnectionGuard,
    /// Cancelled when a newer PutMedia connection for the stream takes this one's place.
    pub superseded: CancellationToken,
}

/// Connection ids (process-wide; only compared within one stream).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

impl Ingest {
    /// Admits a PutMedia connection. The newest connection wins, as on AWS ("the last
    /// connection is accepted"): at `max_connections_per_stream` open connections, the
    /// oldest is superseded (its token is cancelled: it stops reading, persists what it
    /// completed and ends; its open fragment is dropped and the producer re-sends it,
    /// which the re-upload check absorbs). So a camera whose old connection is half-open
    /// behind a NAT can come back at once.
    pub fn connect(&self, stream_id: &str, stream_name: &str) -> Connection {
        self.connect_under(stream_id, stream_name, None)
    }

    /// [`Ingest::connect`] on a cluster node: the connection also ends when `lease`
    /// (the token of the cluster lease the stream was claimed under) is cancelled.
    pub fn connect_under(
        &self,
        stream_id: &str,
        stream_name: &str,
        lease: Option<&CancellationToken>,
    ) -> Connection {
        let runtime = self.runtime(stream_id);
        let max = self.settings.max_connections_per_stream.max(1);
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let superseded = lease.map_or_else(CancellationToken::new, |l| l.child_token());
        let mut evicted = Vec::new();
        {
            let mut uploads = runtime.uploads.lock().expect("uploads");
            while uploads.len() >= max {
                evicted.extend(uploads.pop_front());
            }
            uploads.push_back((id, superseded.clone()));
        }
        for (_, old) in evicted {
            tracing::info!(stream = %stream_name, "a newer PutMedia connection replaces the oldest open one");
            metrics::counter!(crate::metrics::INGEST_SESSIONS_SUPERSEDED).increment(1);
            old.cancel();
        }
        metrics::gauge!(crate::metrics::INGEST_SESSIONS).increment(1.0);
        Connection {
            guard: ConnectionGuard {
                runtime: runtime.clone(),
                id,
            },
            runtime,
            superseded,
        }
    }
}

impl StreamRuntime {
    /// Takes a GetMedia reader slot or fails with `ConnectionLimitExceededException`.
    pub fn add_reader(self: &Arc<Self>, max: usize, stream_name: &str) -> Result<ReaderGuard> {
        let prev = self.readers.fetch_add(1, Ordering::SeqCst);
        let guard = ReaderGuard(self.clone());
        if prev >= max {
            return Err(Error::new(
                ErrorKind::ConnectionLimitExceeded,
                format!(
                    "too many GetMedia connections for this stream: stream={stream_name} max={max}"
                ),
            ));
        }
        Ok(guard)
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
pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes/s (one second of burst); 0 is no cap.
    pub(super) fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate,
            last: None,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IngestSettings;

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
    fn the_newest_connection_wins() {
        let ing = Ingest::new(IngestSettings::default());
        let c1 = ing.connect("s", "cam");
        let c2 = ing.connect("s", "cam");
        assert!(
            c1.superseded.is_cancelled(),
            "the older connection is ended"
        );
        assert!(!c2.superseded.is_cancelled());
        // The superseded one leaving does not end the newer one.
        drop(c1);
        assert!(!c2.superseded.is_cancelled());
        let other = ing.connect("t", "cam2");
        assert!(
            !c2.superseded.is_cancelled(),
            "other streams are unaffected"
        );
        drop(c2);
        let c3 = ing.connect("s", "cam");
        assert!(!c3.superseded.is_cancelled());
        assert!(!other.superseded.is_cancelled());
        // With a limit of 2, the third evicts only the oldest.
        let ing = Ingest::new(IngestSettings {
            max_connections_per_stream: 2,
            ..IngestSettings::default()
        });
        let (a, b, c) = (
            ing.connect("s", "x"),
            ing.connect("s", "x"),
            ing.connect("s", "x"),
        );
        assert!(a.superseded.is_cancelled());
        assert!(!b.superseded.is_cancelled() && !c.superseded.is_cancelled());
    }
}
