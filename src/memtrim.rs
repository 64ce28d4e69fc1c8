//! Gives freed heap memory back to the operating system on a timer. glibc's allocator
//! keeps what a program frees in its arenas for reuse, so after a burst of fragments the
//! process's RSS stays where the burst left it, well above the ingest memory budget
//! (which counts live bytes, not the allocator's reserve). `malloc_trim(0)` returns the
//! free pages of every arena (and the top of the heap) to the kernel. Run once a second
//! it held the 1,000-camera benchmark at 503–506 MiB peak RSS instead of 641–708 MiB, at
//! no measurable CPU cost (`docs/benchmarks.md`). Other platforms and allocators: a no-op.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Seconds each trim took (histogram).
pub const TRIM_SECONDS: &str = "streamvault_memory_trim_seconds";

/// Starts the trimming thread (an OS thread: a trim walks every arena under its lock,
/// which must not occupy an async worker; `TRIM_SECONDS` shows how long it takes).
/// `interval` zero turns it off.
/// The thread ends when `stop` is cancelled.
pub fn spawn(interval: Duration, stop: CancellationToken) {
    if interval.is_zero() || !supported() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                std::thread::sleep(interval);
                let t = Instant::now();
                trim();
                metrics::histogram!(TRIM_SECONDS).record(t.elapsed().as_secs_f64());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("memory trimming not started: {e}");
    }
}

/// Whether this build can give memory back (Linux with glibc).
pub fn supported() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
}

/// Returns free heap pages to the kernel now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own state under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Memory freed in the middle of the heap (a live allocation above it) stays in the
    /// process until a trim; the trim gives it back.
    #[test]
    fn a_trim_returns_freed_heap_pages() {
        // 100 KiB blocks stay below glibc's mmap threshold, so they come from the heap.
        let mut blocks: Vec<Vec<u8>> = (0..2048).map(|i| vec![i as u8 | 1; 100 << 10]).collect();
        let keep = blocks.pop().expect("the top block stays allocated");
        let before = rss_bytes();
        drop(blocks);
        let freed = rss_bytes();
        trim();
        let after = rss_bytes();
        std::hint::black_box(&keep);
        assert!(
            freed.saturating_sub(after) > 100 << 20,
            "RSS before free {before}, after free {freed}, after trim {after}"
        );
    }
}
