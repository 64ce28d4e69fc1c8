//! Time as the service sees it. Every piece of logic that depends on "now" (server
//! timestamps, retention cut-offs, SigV4 skew, idle timers measured in wall time) takes a
//! [`Clock`] instead of calling `SystemTime::now`, so tests can run simulated days in
//! milliseconds with [`ManualClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC. The resolution KVS exposes on the wire.
pub type EpochMillis = i64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Current wall-clock time in milliseconds since the epoch.
    fn now_ms(&self) -> EpochMillis;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> EpochMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: EpochMillis) -> Self {
        Self(Arc::new(AtomicI64::new(start_ms)))
    }
    /// Moves the clock forward (or backward, with a negative delta).
    pub fn advance_ms(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::SeqCst);
    }
    /// Sets the clock to an absolute time.
    pub fn set_ms(&self, ms: EpochMillis) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> EpochMillis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shared handle to the clock in use.
pub type SharedClock = Arc<dyn Clock>;

/// Formats epoch milliseconds as KVS's `secs.mmm` string (MKV tags, CLI output).
pub fn format_epoch_secs(ms: EpochMillis) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

/// Epoch milliseconds as the JSON number (epoch seconds, ≤ 3 decimals) the AWS SDKs parse.
pub fn epoch_secs_json(ms: EpochMillis) -> serde_json::Value {
    match epoch_secs_number(ms) {
        SecsNumber::Int(i) => serde_json::Value::from(i),
        SecsNumber::Float(x) => serde_json::Value::from(x),
    }
}

/// Epoch milliseconds that serialize as the same JSON number as [`epoch_secs_json`], byte
/// for byte, without building a `serde_json::Value` (for `#[derive(Serialize)]` responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSecs(pub EpochMillis);

impl serde::Serialize for EpochSecs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `Value::from(i64)` serializes a non-negative integer as u64 and a negative one
        // as i64, and a finite float through `serialize_f64`: the same calls here.
        match epoch_secs_number(self.0) {
            SecsNumber::Int(i) if i >= 0 => s.serialize_u64(i as u64),
            SecsNumber::Int(i) => s.serialize_i64(i),
            SecsNumber::Float(x) => s.serialize_f64(x),
        }
    }
}

/// The JSON number of an epoch-seconds timestamp: an integer on whole seconds.
enum SecsNumber {
    Int(i64),
    Float(f64),
}

fn epoch_secs_number(ms: EpochMillis) -> SecsNumber {
    if ms % 1000 == 0 {
        SecsNumber::Int(ms / 1000)
    } else {
        // serde_json prints the shortest representation that round-trips. The nearest
        // f64 to `secs.mmm` can sit just below it, and the AWS SDK for Rust floors
        // sub-second nanoseconds to milliseconds, so `.369` would read back as `.368`.
        // Emit the next float up in that case: every client then sees the exact ms.
        let x = ms as f64 / 1000.0;
        let sdk_ms = |v: f64| (((v - v.floor()) * 1e9).round() as i64) / 1_000_000;
        let x = if sdk_ms(x) == ms.rem_euclid(1000) {
            x
        } else {
            x.next_up()
        };
        SecsNumber::Float(x)
    }
}

/// Parses a JSON epoch-seconds number (integer or fractional) into milliseconds,
/// rounding to the nearest millisecond.
pub fn epoch_ms_from_json_secs(v: f64) -> Option<EpochMillis> {
    if !v.is_finite() || v.abs() > 1.0e13 {
        return None;
    }
    Some((v * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_kvs_tag_timestamps() {
        assert_eq!(format_epoch_secs(1_511_852_109_126), "1511852109.126");
        assert_eq!(format_epoch_secs(5), "0.005");
        assert_eq!(format_epoch_secs(0), "0.000");
    }

    #[test]
    fn json_seconds_are_numbers_with_ms_precision() {
        assert!(
            epoch_secs_json(1_700_000_000_123)
                .to_string()
                .starts_with("1700000000.123")
        );
        // Every millisecond of a second reads back exactly the way the Rust SDK and
        // botocore convert it (floor of rounded nanoseconds).
        for ms in 1_795_632_709_000i64..1_795_632_710_000 {
            let v = epoch_secs_json(ms).as_f64().unwrap();
            let back =
                v.floor() as i64 * 1000 + (((v - v.floor()) * 1e9).round() as i64) / 1_000_000;
            assert_eq!(back, ms);
            assert_eq!(epoch_ms_from_json_secs(v), Some(ms));
        }
        assert_eq!(epoch_secs_json(1_700_000_000_000).to_string(), "1700000000");
        assert_eq!(
            epoch_ms_from_json_secs(1700000000.25),
            Some(1_700_000_000_250)
        );
        assert_eq!(epoch_ms_from_json_secs(f64::NAN), None);
    }

    #[test]
    fn epoch_secs_serializes_like_the_json_value() {
        let mut cases: Vec<i64> = (1_795_632_709_000i64..1_795_632_711_001).collect();
        cases.extend([0, 5, -5, -1000, -1_500, 1_700_000_000_000, i64::MAX / 2]);
        for ms in cases {
            assert_eq!(
                serde_json::to_string(&EpochSecs(ms)).unwrap(),
                epoch_secs_json(ms).to_string(),
                "ms={ms}"
            );
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now_ms(), 1000);
        c.advance_ms(3_600_000);
        assert_eq!(c.now_ms(), 3_601_000);
    }
}
