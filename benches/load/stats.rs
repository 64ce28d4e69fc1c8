//! Measurement helpers for the load generator: latency samples with percentiles (a sorted
//! `Vec`, no histogram crate), and CPU time and peak RSS of a process read from `/proc`
//! (`utime + stime` of `/proc/<pid>/stat`, `VmHWM` of `/proc/<pid>/status`). The
//! generator's own CPU comes from `/proc/self/stat` the same way, so the server, the
//! baselines and the generator are all measured with one clock (kernel ticks, 10 ms).

use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    v: Vec<u64>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.v.push(d.as_micros() as u64);
    }

    pub fn extend(&mut self, o: Samples) {
        self.v.extend(o.v);
    }

    /// `(p50, p99, max)` in milliseconds, `None` without samples.
    pub fn summary(&mut self) -> Option<Summary> {
        if self.v.is_empty() {
            return None;
        }
        self.v.sort_unstable();
        let at = |q: f64| {
            let i = ((self.v.len() as f64 * q).ceil() as usize).clamp(1, self.v.len()) - 1;
            self.v[i] as f64 / 1000.0
        };
        Some(Summary {
            count: self.v.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: *self.v.last().unwrap() as f64 / 1000.0,
        })
    }
}

/// Percentiles of a sample set, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms
        })
    }
}

/// Kernel clock ticks per second for `/proc/*/stat` (fixed at 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system, all threads) used so far by `pid` ("self" for us), and
/// by its reaped children when `children`.
pub fn cpu_seconds(pid: &str, children: bool) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime is field 14 (index 11 here).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let mut t = n(11) + n(12);
    if children {
        t += n(13) + n(14);
    }
    Some(t / TICKS)
}

/// Peak resident set size of `pid` in bytes (`VmHWM`).
pub fn peak_rss(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One-minute load average, to note how busy the shared machine was.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// CPU seconds of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_seconds() -> f64 {
    crate::common::sys::cpu_ns(false).unwrap_or(0) as f64 / 1e9
}
