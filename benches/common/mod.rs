//! Shared bench helpers: a criterion [`Measurement`] that is either wall-clock time (the
//! default, like criterion's `WallTime`) or the calling thread's CPU time, chosen with
//! `SV_BENCH_CLOCK=cpu`.
//!
//! Thread CPU time (`CLOCK_THREAD_CPUTIME_ID`) does not count time spent runnable but
//! descheduled, so CPU-bound single-thread benches stay comparable on a machine shared
//! with other builds, and it is the unit the issue-9 "CPU per GB" goals are stated in.
//! It must not be used for work that runs on other threads (e.g. `spawn_blocking`) or
//! that waits on I/O (fsync): use wall time there.

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

#[cfg(target_os = "linux")]
mod sys {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

    /// CPU time consumed by the calling thread, in nanoseconds.
    pub fn thread_cpu_ns() -> Option<u64> {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn thread_cpu_ns() -> Option<u64> {
        None
    }
}

/// Wall-clock or thread-CPU time; values are `Duration`s either way.
pub struct Clock {
    cpu: bool,
    wall: WallTime,
}

impl Clock {
    /// `SV_BENCH_CLOCK=cpu` selects thread CPU time (Linux only); anything else wall time.
    pub fn from_env() -> Self {
        let cpu = std::env::var("SV_BENCH_CLOCK").is_ok_and(|v| v == "cpu")
            && sys::thread_cpu_ns().is_some();
        eprintln!(
            "bench clock: {}",
            if cpu {
                "thread CPU time (SV_BENCH_CLOCK=cpu)"
            } else {
                "wall time"
            }
        );
        Clock {
            cpu,
            wall: WallTime,
        }
    }
}

pub enum Start {
    Wall(Instant),
    Cpu(u64),
}

impl Measurement for Clock {
    type Intermediate = Start;
    type Value = Duration;

    fn start(&self) -> Start {
        if self.cpu {
            Start::Cpu(sys::thread_cpu_ns().unwrap_or(0))
        } else {
            Start::Wall(Instant::now())
        }
    }

    fn end(&self, i: Start) -> Duration {
        match i {
            Start::Wall(t) => t.elapsed(),
            Start::Cpu(t) => {
                Duration::from_nanos(sys::thread_cpu_ns().unwrap_or(t).saturating_sub(t))
            }
        }
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}
