//! Shared bench helpers: a criterion [`Measurement`] that is wall-clock time (the default,
//! like criterion's `WallTime`) or CPU time, chosen with `SV_BENCH_CLOCK=cpu`.
//!
//! CPU time does not count time spent runnable but descheduled, so CPU-bound benches
//! stay comparable on a machine shared with other builds, and it is the unit the issue-9
//! "CPU per GB" goals are stated in. Groups whose work stays on the calling thread use
//! the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`); groups whose work hops to other
//! threads (tokio `spawn_blocking`) use the whole process's (`CLOCK_PROCESS_CPUTIME_ID`).
//! Work that waits on I/O (fsync) must be measured in wall time: use criterion's default.

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

#[cfg(target_os = "linux")]
pub mod sys {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

    /// CPU time consumed by the calling thread (or the whole process), in nanoseconds.
    pub fn cpu_ns(process: bool) -> Option<u64> {
        let clock = if process {
            CLOCK_PROCESS_CPUTIME_ID
        } else {
            CLOCK_THREAD_CPUTIME_ID
        };
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout).
        let rc = unsafe { clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }
}

#[cfg(not(target_os = "linux"))]
pub mod sys {
    pub fn cpu_ns(_process: bool) -> Option<u64> {
        None
    }
}

/// Wall-clock or CPU time; values are `Duration`s either way.
pub struct Clock {
    /// `None`: wall time; `Some(process)`: CPU time of the thread or the process.
    cpu: Option<bool>,
    wall: WallTime,
}

impl Clock {
    /// `SV_BENCH_CLOCK=cpu` selects CPU time (Linux only): the calling thread's, or the
    /// whole process's when `multi_thread` (the measured work runs on other threads).
    /// Anything else: wall time.
    pub fn from_env(multi_thread: bool) -> Self {
        let cpu = (std::env::var("SV_BENCH_CLOCK").is_ok_and(|v| v == "cpu")
            && sys::cpu_ns(multi_thread).is_some())
        .then_some(multi_thread);
        eprintln!(
            "bench clock: {}",
            match cpu {
                Some(true) => "process CPU time (SV_BENCH_CLOCK=cpu, all threads)",
                Some(false) => "thread CPU time (SV_BENCH_CLOCK=cpu)",
                None => "wall time",
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
        match self.cpu {
            Some(p) => Start::Cpu(sys::cpu_ns(p).unwrap_or(0)),
            None => Start::Wall(Instant::now()),
        }
    }

    fn end(&self, i: Start) -> Duration {
        match i {
            Start::Wall(t) => t.elapsed(),
            Start::Cpu(t) => {
                let now = sys::cpu_ns(self.cpu == Some(true)).unwrap_or(t);
                Duration::from_nanos(now.saturating_sub(t))
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
