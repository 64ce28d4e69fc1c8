//! The ingest memory budget: one byte counter for everything a stream holds in memory —
//! the upload's parser buffer and open fragment, the live copies of its frames (the
//! stream's live state and the live hand-off buffer, shared by the readers' snapshots),
//! complete fragments waiting in the persist queue, the sealed copy being written, and
//! every GetMedia reader's output queue. Memory is held through [`Reservation`] guards
//! that give their bytes back when dropped, so no path can forget to release.
//!
//! Only producers wait ([`Budget::reserve`]): the upload stops reading its socket while
//! the budget is exhausted, and a complete fragment is handed to persistence only once
//! its whole footprint there (its plaintext and its sealed copy) is reserved. What the
//! persisters hold is *draining* ([`Reservation::set_draining`]): it is released by
//! progress that never waits on the budget. Everything else downstream is
//! [`Budget::charge`]d at once, even past the limit, because it is already bounded by
//! its own cap (live buffer, reader queue) and must not wait (readers never wait on the
//! budget). A producer waits only while something is draining: when nothing is, waiting
//! could not end (every byte is held by open fragments or readers), so it goes past the
//! limit instead, counted in [`OVERSHOOTS_METRIC`]. A release wakes one waiter (FIFO), and
//! a waiter that leaves with its bytes wakes the next, so a release costs O(1) however
//! many producers wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes in use under the budget (gauge).
pub const USED_METRIC: &str = "streamvault_memory_budget_used_bytes";
/// Times an upload had to wait for the budget (counter).
pub const WAITS_METRIC: &str = "streamvault_memory_budget_waits_total";
/// Times a producer went past the limit because nothing was draining (counter).
pub const OVERSHOOTS_METRIC: &str = "streamvault_memory_budget_overshoots_total";
/// Most bytes ever in use under the budget since start (gauge).
pub const PEAK_METRIC: &str = "streamvault_memory_budget_peak_bytes";
/// Bytes the budget is over its limit at most since start (gauge): what the charges
/// that must not wait added on top of the limit.
pub const OVER_METRIC: &str = "streamvault_memory_budget_peak_over_limit_bytes";

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// The part of `used` held by draining reservations.
    draining: AtomicUsize,
    peak: AtomicUsize,
    freed: Notify,
}

/// A shared byte budget; cloning shares it.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Inner>);

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Inner {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            draining: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            freed: Notify::new(),
        }))
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    /// Bytes held by draining reservations now.
    pub fn draining(&self) -> usize {
        self.0.draining.load(Ordering::Acquire)
    }

    /// Most bytes ever held at once.
    pub fn peak(&self) -> usize {
        self.0.peak.load(Ordering::Acquire)
    }

    fn add(&self, bytes: usize) {
        let now = self.0.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.note_peak(now);
        metrics::gauge!(USED_METRIC).increment(bytes as f64);
    }

    fn note_peak(&self, now: usize) {
        if self.0.peak.fetch_max(now, Ordering::AcqRel) < now {
            metrics::gauge!(PEAK_METRIC).set(now as f64);
            metrics::gauge!(OVER_METRIC).set(now.saturating_sub(self.0.limit) as f64);
        }
    }

    /// Counts `bytes` at once, past the limit if need be (memory that exists already
    /// or must not wait).
    pub fn charge(&self, bytes: usize) -> Reservation {
        self.add(bytes);
        Reservation {
            budget: self.clone(),
            bytes,
            draining: false,
        }
    }

    /// Takes `bytes` if they fit under the limit now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut cur = self.0.used.load(Ordering::Acquire);
        loop {
            if cur.saturating_add(bytes) > self.0.limit && !(cur == 0 && bytes > 0) {
                return None;
            }
            match self.0.used.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.note_peak(cur + bytes);
                    metrics::gauge!(USED_METRIC).increment(bytes as f64);
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes,
                        draining: false,
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Waits until `bytes` fit under the limit, then takes them. `on_wait` runs once,
    /// before the first wait (a caller can shed memory there). While nothing is draining
    /// no release is coming: the bytes are taken past the limit instead.
    pub async fn reserve(&self, bytes: usize, on_wait: impl FnOnce()) -> Reservation {
        let mut on_wait = Some(on_wait);
        loop {
            let freed = self.0.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(r) = self.try_reserve(bytes) {
                if on_wait.is_none() {
                    // Pass the wake-up on: what was freed may fit the next waiter too.
                    self.0.freed.notify_one();
                }
                return r;
            }
            if let Some(f) = on_wait.take() {
                metrics::counter!(WAITS_METRIC).increment(1);
                f();
                continue;
            }
            if self.draining() == 0 {
                metrics::counter!(OVERSHOOTS_METRIC).increment(1);
                // The next waiter must see this too: nothing else may wake it.
                self.0.freed.notify_one();
                return self.charge(bytes);
            }
            freed.await;
        }
    }
}

/// Bytes held under a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    bytes: usize,
    /// Counted in the budget's draining bytes too.
    draining: bool,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts `more` bytes in this reservation (at once, like [`Budget::charge`]).
    pub fn grow(&mut self, more: usize) {
        self.budget.add(more);
        if self.draining {
            self.budget.0.draining.fetch_add(more, Ordering::AcqRel);
        }
        self.bytes += more;
    }

    /// Marks the bytes as draining: released by progress that never waits on the budget
    /// (a fragment handed to persistence), so producers may wait for them.
    pub fn set_draining(&mut self) {
        if !self.draining {
            self.draining = true;
            self.budget
                .0
                .draining
                .fetch_add(self.bytes, Ordering::AcqRel);
        }
    }

    /// Moves up to `n` bytes into a new reservation (draining if this one is).
    pub fn split(&mut self, n: usize) -> Reservation {
        let n = n.min(self.bytes);
        self.bytes -= n;
        Reservation {
            budget: self.budget.clone(),
            bytes: n,
            draining: self.draining,
        }
    }

    /// Takes over `other`'s bytes (they become draining if this reservation is).
    pub fn merge(&mut self, mut other: Reservation) {
        let n = std::mem::take(&mut other.bytes);
        match (self.draining, other.draining) {
            (true, false) => {
                self.budget.0.draining.fetch_add(n, Ordering::AcqRel);
            }
            (false, true) => {
                self.budget.0.draining.fetch_sub(n, Ordering::AcqRel);
                // A waiter that saw these bytes draining must look again.
                self.budget.0.freed.notify_one();
            }
            _ => {}
        }
        self.bytes += n;
    }

    /// Gives back everything above `n` bytes.
    pub fn shrink_to(&mut self, n: usize) {
        if self.bytes > n {
            drop(self.split(self.bytes - n));
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        self.budget.0.used.fetch_sub(self.bytes, Ordering::AcqRel);
        if self.draining {
            self.budget
                .0
                .draining
                .fetch_sub(self.bytes, Ordering::AcqRel);
        }
        metrics::gauge!(USED_METRIC).decrement(self.bytes as f64);
        // One waiter at a time (FIFO): a woken waiter that gets its bytes, or goes past
        // the limit, wakes the next one; one that does not fit waits for the next release.
        // Waking every waiter on every release cost ~15 % of server CPU with 1,000
        // producers waiting (benchmarks.md).
        self.budget.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_release_on_drop_split_and_merge() {
        let b = Budget::new(1000);
        let mut r = b.try_reserve(600).unwrap();
        assert!(b.try_reserve(500).is_none());
        let part = r.split(200);
        assert_eq!((r.bytes(), part.bytes(), b.used()), (400, 200, 600));
        drop(part);
        assert_eq!(b.used(), 400);
        let c = b.charge(900);
        assert_eq!(b.used(), 1300, "charges go past the limit");
        r.merge(c);
        r.shrink_to(100);
        assert_eq!(b.used(), 100);
        r.grow(50);
        drop(r);
        assert_eq!((b.used(), b.peak()), (0, 1300));
        // An empty budget always admits one request, however large.
        assert!(b.try_reserve(5000).is_some());
    }

    #[tokio::test]
    async fn reserve_waits_for_a_release_and_sheds_first() {
        let b = Budget::new(100);
        let mut held = b.charge(100);
        held.set_draining();
        let b2 = b.clone();
        let shed = Arc::new(AtomicUsize::new(0));
        let s2 = shed.clone();
        let waiter = tokio::spawn(async move {
            b2.reserve(60, move || {
                s2.fetch_add(1, Ordering::SeqCst);
            })
            .await
            .bytes()
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), 60);
        assert_eq!(shed.load(Ordering::SeqCst), 1);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn draining_bytes_follow_split_merge_grow_and_drop() {
        let b = Budget::new(1000);
        let mut r = b.charge(300);
        r.set_draining();
        assert_eq!(b.draining(), 300);
        r.grow(100);
        let part = r.split(150);
        assert_eq!(b.draining(), 400);
        drop(part);
        assert_eq!(b.draining(), 250);
        let mut plain = b.charge(50);
        plain.merge(r);
        assert_eq!(
            (b.draining(), b.used()),
            (0, 300),
            "merged into a non-draining one"
        );
        let mut d = b.charge(0);
        d.set_draining();
        d.merge(plain);
        assert_eq!(b.draining(), 300);
        drop(d);
        assert_eq!((b.draining(), b.used()), (0, 0));
    }

    #[tokio::test]
    async fn reserve_waits_only_while_something_drains() {
        let b = Budget::new(100);
        // Held by something that is not draining (an open fragment, a reader queue):
        // waiting could not end, so the reservation goes past the limit.
        let held = b.charge(100);
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), b.reserve(60, || {}))
            .await
            .expect("no wait while nothing drains");
        assert_eq!(b.used(), 160);
        drop((held, r));
        // Held by a persister: the producer waits for it.
        let mut draining = b.charge(100);
        draining.set_draining();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(60, || {}).await.bytes() });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "went past the limit while a release was coming"
        );
        drop(draining);
        assert_eq!(waiter.await.unwrap(), 60);
        assert!(b.peak() <= 160);
    }

    /// Releases wake one waiter at a time; each waiter that gets its bytes (or goes
    /// past the limit because nothing drains any more) must wake the next, or the
    /// rest would sleep with room available.
    #[tokio::test]
    async fn one_release_reaches_every_waiter_that_fits() {
        let b = Budget::new(1000);
        let mut held = b.charge(1000);
        held.set_draining();
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.reserve(100, || {}).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        drop(held);
        let mut got = Vec::new();
        for w in waiters {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("every waiter fits after the one release")
                .unwrap();
            got.push(r);
        }
        assert_eq!(b.used(), 1000);

        // Waiters behind non-draining memory once the last draining bytes become
        // non-draining (merged into an open fragment): they all go past the limit.
        let mut draining = b.charge(10);
        draining.set_draining();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.reserve(100, || {}).await.bytes() })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        got[0].merge(draining);
        assert_eq!(b.draining(), 0);
        for w in waiters {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("no waiter sleeps while nothing drains")
                .unwrap();
            assert_eq!(n, 100);
        }
    }
}
