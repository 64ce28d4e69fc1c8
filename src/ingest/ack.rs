//! PutMedia acknowledgements, byte-compatible with the KVS producer SDK's parser: one
//! flat JSON object per line, keys `EventType`, `FragmentTimecode` (integer),
//! `FragmentNumber` (quoted digits), `ErrorId` (integer, ERROR only). Each ack is sent
//! as its own HTTP chunk. Sending never blocks ingest: when the client does not read
//! (ffmpeg never does), acks beyond a bounded queue are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::model::FragmentNumber;

/// Acks beyond this many unread ones are dropped.
pub const QUEUE: usize = 256;

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Buffering {
        timecode: u64,
        number: FragmentNumber,
    },
    Received {
        timecode: u64,
        number: FragmentNumber,
    },
    Persisted {
        timecode: u64,
        number: FragmentNumber,
    },
    Error {
        timecode: Option<u64>,
        number: Option<FragmentNumber>,
        error_id: u32,
    },
    Idle,
}

impl Ack {
    /// The JSON line, newline-terminated.
    pub fn to_line(&self) -> Bytes {
        let (kind, tc, num) = match self {
            Ack::Buffering { timecode, number } => ("BUFFERING", Some(*timecode), Some(number)),
            Ack::Received { timecode, number } => ("RECEIVED", Some(*timecode), Some(number)),
            Ack::Persisted { timecode, number } => ("PERSISTED", Some(*timecode), Some(number)),
            Ack::Error {
                timecode, number, ..
            } => ("ERROR", *timecode, number.as_ref()),
            Ack::Idle => return Bytes::from_static(b"{\"EventType\":\"IDLE\"}\n"),
        };
        let mut s = format!("{{\"EventType\":\"{kind}\"");
        if let Some(tc) = tc {
            s.push_str(&format!(",\"FragmentTimecode\":{tc}"));
        }
        if let Some(n) = num {
            s.push_str(&format!(",\"FragmentNumber\":\"{n}\""));
        }
        if let Ack::Error { error_id, .. } = self {
            s.push_str(&format!(",\"ErrorId\":{error_id}"));
        }
        s.push_str("}\n");
        Bytes::from(s)
    }
}

/// Sending half of a session's ack stream.
#[derive(Debug, Clone)]
pub struct AckSender {
    tx: mpsc::Sender<Bytes>,
    quiet: bool,
    tally: Arc<AckTally>,
}

/// What a session acknowledged, counted whether or not the acks reach the client (for
/// the log line at the end of a PutMedia session).
#[derive(Debug, Default)]
pub struct AckTally {
    pub received: AtomicU64,
    pub persisted: AtomicU64,
    pub errors: AtomicU64,
    /// `ErrorId` of the last ERROR ack (0: none).
    pub last_error_id: AtomicU64,
}

impl AckTally {
    fn count(&self, ack: &Ack) {
        match ack {
            Ack::Received { .. } => self.received.fetch_add(1, Ordering::Relaxed),
            Ack::Persisted { .. } => self.persisted.fetch_add(1, Ordering::Relaxed),
            Ack::Error { error_id, .. } => {
                self.last_error_id
                    .store(u64::from(*error_id), Ordering::Relaxed);
                self.errors.fetch_add(1, Ordering::Relaxed)
            }
            Ack::Buffering { .. } | Ack::Idle => 0,
        };
    }
}

impl AckSender {
    /// An ack stream; with `quiet`, acks are counted but never written (the response
    /// stays open and empty until the upload ends).
    ///
    /// Quiet mode exists for clients that never read the response (ffmpeg's HTTP
    /// client): such a client closes its socket with our acks unread, its kernel then
    /// answers with a TCP reset, and a reset makes our kernel discard whatever part of the
    /// upload we had not read yet — the end of the last fragment. ffmpeg drains up to
    /// 1 KiB of response before closing, which covers the response head alone.
    pub fn channel(quiet: bool) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let tally = Arc::default();
        (Self { tx, quiet, tally }, rx)
    }

    /// The counts of what this stream of acks has acknowledged so far.
    pub fn tally(&self) -> Arc<AckTally> {
        self.tally.clone()
    }

    /// Queues an ack; drops it when the client is not reading or is gone.
    pub fn send(&self, ack: Ack) {
        self.tally.count(&ack);
        if self.quiet {
            return;
        }
        if self.tx.try_send(ack.to_line()).is_err() {
            metrics::counter!(crate::metrics::ACKS_DROPPED).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_even_in_quiet_mode() {
        let (a, _rx) = AckSender::channel(true);
        let n = FragmentNumber::new(1, 1);
        a.send(Ack::Received {
            timecode: 1,
            number: n,
        });
        a.send(Ack::Persisted {
            timecode: 1,
            number: n,
        });
        a.send(Ack::Error {
            timecode: None,
            number: None,
            error_id: 4002,
        });
        a.send(Ack::Idle);
        let t = a.tally();
        assert_eq!(t.received.load(Ordering::Relaxed), 1);
        assert_eq!(t.persisted.load(Ordering::Relaxed), 1);
        assert_eq!(t.errors.load(Ordering::Relaxed), 1);
        assert_eq!(t.last_error_id.load(Ordering::Relaxed), 4002);
    }

    #[test]
    fn lines_match_the_sdk_format() {
        let n = FragmentNumber::new(1_700_000_000_000, 7);
        let l = Ack::Buffering {
            timecode: 1_700_000_000_000,
            number: n,
        }
        .to_line();
        assert_eq!(
            std::str::from_utf8(&l).unwrap(),
            format!(
                "{{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":1700000000000,\"FragmentNumber\":\"{n}\"}}\n"
            )
        );
        let e = Ack::Error {
            timecode: Some(5),
            number: None,
            error_id: 4006,
        }
        .to_line();
        assert_eq!(
            &e[..],
            b"{\"EventType\":\"ERROR\",\"FragmentTimecode\":5,\"ErrorId\":4006}\n"
        );
        assert_eq!(&Ack::Idle.to_line()[..], b"{\"EventType\":\"IDLE\"}\n");
        // Every ack fits the C SDK's 1024-byte read limit and is flat JSON.
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert!(
            v.as_object()
                .unwrap()
                .values()
                .all(|v| !v.is_object() && !v.is_array())
        );
        assert!(l.len() < 1024);
    }
}
