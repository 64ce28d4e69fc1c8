//! Which fragments a playlist or manifest lists, and the in-memory state of live
//! sessions. ON_DEMAND windows are computed from the index on every request. LIVE and
//! LIVE_REPLAY sessions keep a small timeline per session ([`Sessions`]) so media
//! sequence and discontinuity sequence numbers stay consistent between playlist
//! reloads even when fragment numbers skip; the timeline is rebuilt lazily after a
//! restart (LIVE numbering then jumps forward, which players treat as new segments).
//!
//! Bounds: at most `playback.max_sessions` sessions and `playback.max_session_entries`
//! timeline entries over all sessions (least recently used sessions are dropped first);
//! expired sessions are forgotten by a periodic purge ([`Sessions::purge`]).
//!
//! Renewal: a LIVE or LIVE_REPLAY session that is used stays valid. Every request
//! extends its validity to `now + Expires` (the `Expires` it was created with); the
//! signed expiry in the token is the floor. Renewals live in memory, so after a server
//! restart a session is valid until its signed expiry again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::token::{Claims, Discontinuity, Mode, Selector};
use super::{Dedup, MediaConfig, Playback, select_fragments, ts_of};
use crate::clock::EpochMillis;
use crate::error::Result;
use crate::index::{FragmentRecord, StreamRecord, TimestampKind};
use crate::media::demux::FragmentLoader;
use crate::streams::Catalog;

/// Gap or overlap between fragments above which ON_DISCONTINUITY marks a discontinuity.
const GAP_MS: i64 = 50;
const PAGE: usize = 1000;

/// One listed fragment.
#[derive(Debug, Clone)]
pub struct Entry {
    pub row: FragmentRecord,
    /// Media sequence number.
    pub msn: u64,
    /// A discontinuity precedes this entry.
    pub discontinuity: bool,
    /// Discontinuities up to and including this entry since the timeline began.
    pub cc: u64,
    /// Upload session whose codec configuration the entry's init segment carries.
    pub init: u64,
    pub config: Arc<MediaConfig>,
}

/// What a playlist shows.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub entries: Vec<Entry>,
    /// No more entries will be added (`#EXT-X-ENDLIST`, static MPD).
    pub ended: bool,
    /// LIVE_REPLAY: producer time of the first replayed fragment.
    pub replay_origin_ms: Option<EpochMillis>,
}

impl Window {
    /// `#EXT-X-DISCONTINUITY-SEQUENCE` of the first entry.
    pub fn discontinuity_sequence(&self) -> u64 {
        self.entries
            .first()
            .map_or(0, |e| e.cc - u64::from(e.discontinuity))
    }
}

/// Assigns sequence numbers, discontinuities and init sessions to fragments in order.
#[derive(Debug, Clone)]
struct Builder {
    mode: Discontinuity,
    next_msn: u64,
    cc: u64,
    last: Option<Entry>,
}

impl Builder {
    fn new(mode: Discontinuity, first_msn: u64) -> Self {
        Self {
            mode,
            next_msn: first_msn,
            cc: 0,
            last: None,
        }
    }

    fn push(&mut self, row: FragmentRecord, config: Arc<MediaConfig>, force_break: bool) -> Entry {
        let (discontinuity, init) = match &self.last {
            None => (false, row.session_id),
            Some(prev) => {
                let changed = !Arc::ptr_eq(&prev.config, &config) && *prev.config != *config;
                let gap = row.producer_ts_ms - (prev.row.producer_ts_ms + prev.row.duration_ms);
                let by_mode = match self.mode {
                    Discontinuity::Always => true,
                    Discontinuity::Never => false,
                    Discontinuity::OnDiscontinuity => gap.abs() > GAP_MS,
                };
                (
                    by_mode || changed || force_break,
                    if changed { row.session_id } else { prev.init },
                )
            }
        };
        self.cc += u64::from(discontinuity);
        let e = Entry {
            row,
            msn: self.next_msn,
            discontinuity,
            cc: self.cc,
            init,
            config,
        };
        self.next_msn += 1;
        self.last = Some(e.clone());
        e
    }
}

fn kind(s: Selector) -> TimestampKind {
    match s {
        Selector::Producer => TimestampKind::Producer,
        Selector::Server => TimestampKind::Server,
    }
}

/// The ON_DEMAND window: every fragment of the range, up to `max_results`.
pub async fn on_demand(
    pb: &Playback,
    catalog: &Catalog,
    loader: &mut FragmentLoader,
    c: &Claims,
) -> Result<Window> {
    let rows = select_fragments(
        catalog,
        loader.stream(),
        kind(c.selector),
        c.start_ms.unwrap_or(i64::MIN),
        c.end_ms.unwrap_or(i64::MAX),
        c.max_results as usize,
        Dedup::Newest,
    )
    .await?;
    let mut b = Builder::new(c.discontinuity, 0);
    let mut entries = Vec::with_capacity(rows.len());
    for r in rows {
        let config = pb.config(loader, r.session_id).await?;
        entries.push(b.push(r, config, false));
    }
    Ok(Window {
        entries,
        ended: true,
        replay_origin_ms: None,
    })
}

/// Where a live timeline continues reading.
#[derive(Debug, Clone)]
enum Cursor {
    /// LIVE: fragments after this number (ingestion order).
    Seq(u64),
    /// LIVE_REPLAY: fragments after this (timestamp, number) in the selector's order.
    Range(Option<(EpochMillis, u64)>),
}

/// The timeline of one LIVE or LIVE_REPLAY session.
#[derive(Debug)]
pub struct Live {
    builder: Builder,
    entries: VecDeque<Entry>,
    cursor: Cursor,
    /// LIVE_REPLAY: selector timestamp of the first fragment (replay clock origin).
    origin: Option<EpochMillis>,
    /// LIVE_REPLAY: producer time of the first fragment.
    origin_producer: Option<EpochMillis>,
    ended: bool,
    counted: Counted,
}

/// Live sessions with state (gauge).
pub const SESSIONS_METRIC: &str = "streamvault_playback_sessions";
/// Timeline entries held by all live sessions (gauge).
pub const ENTRIES_METRIC: &str = "streamvault_playback_session_entries";
/// Approximate bytes of those entries (gauge).
pub const ENTRY_BYTES_METRIC: &str = "streamvault_playback_session_entry_bytes";
/// Sessions dropped because a cap was reached (counter).
pub const EVICTED_METRIC: &str = "streamvault_playback_sessions_evicted_total";

/// Entries (and their approximate bytes) of all timelines together.
#[derive(Debug, Default)]
struct Totals {
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

/// A timeline's share of [`Totals`], given back when the timeline is dropped.
#[derive(Debug)]
struct Counted {
    totals: Arc<Totals>,
    entries: usize,
    bytes: usize,
}

impl Counted {
    fn new(totals: &Arc<Totals>) -> Self {
        Self {
            totals: totals.clone(),
            entries: 0,
            bytes: 0,
        }
    }

    fn set(&mut self, entries: &VecDeque<Entry>) {
        let bytes = entries.iter().map(entry_bytes).sum();
        let t = &self.totals;
        t.entries.fetch_add(entries.len(), Ordering::AcqRel);
        t.entries.fetch_sub(self.entries, Ordering::AcqRel);
        t.bytes.fetch_add(bytes, Ordering::AcqRel);
        t.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        metrics::gauge!(ENTRIES_METRIC).increment(entries.len() as f64 - self.entries as f64);
        metrics::gauge!(ENTRY_BYTES_METRIC).increment(bytes as f64 - self.bytes as f64);
        self.entries = entries.len();
        self.bytes = bytes;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.set(&VecDeque::new());
    }
}

/// Approximate memory of one timeline entry (the row's heap parts included).
fn entry_bytes(e: &Entry) -> usize {
    let r = &e.row;
    std::mem::size_of::<Entry>()
        + r.stream_id.capacity()
        + r.object_key.capacity()
        + r.content_hash.capacity()
        + r.metadata
            .iter()
            .map(|(k, v)| 48 + k.capacity() + v.capacity())
            .sum::<usize>()
}

/// In-memory state of one session.
#[derive(Debug)]
struct Slot {
    valid_until: EpochMillis,
    last_access: EpochMillis,
    live: Arc<tokio::sync::Mutex<Option<Live>>>,
}

/// Live-session state of the server, bounded to `max` sessions (least recently used
/// sessions are dropped first; a dropped LIVE session is rebuilt on its next request).
#[derive(Debug)]
pub struct Sessions {
    max: usize,
    max_entries: usize,
    map: Mutex<HashMap<[u8; 12], Slot>>,
    totals: Arc<Totals>,
}

/// A session outlived its validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl Sessions {
    pub fn new(max: usize, max_entries: usize) -> Self {
        Self {
            max: max.max(1),
            max_entries: max_entries.max(1),
            map: Mutex::new(HashMap::new()),
            totals: Arc::default(),
        }
    }

    /// Drops the least recently used session other than `keep`.
    fn evict_one(map: &mut HashMap<[u8; 12], Slot>, keep: Option<&[u8; 12]>) -> bool {
        let Some(oldest) = map
            .iter()
            .filter(|(k, _)| Some(*k) != keep)
            .min_by_key(|(_, s)| s.last_access)
            .map(|(k, _)| *k)
        else {
            return false;
        };
        map.remove(&oldest);
        metrics::counter!(EVICTED_METRIC).increment(1);
        metrics::gauge!(SESSIONS_METRIC).decrement(1.0);
        true
    }

    /// Drops least recently used sessions (never `keep`) while the timelines hold more
    /// than `max_entries` entries. A dropped timeline's entries are given back once no
    /// request uses it any more.
    fn enforce_entries(&self, keep: &[u8; 12]) {
        let mut map = self.map.lock().expect("sessions");
        while self.totals.entries.load(Ordering::Acquire) > self.max_entries
            && Self::evict_one(&mut map, Some(keep))
        {}
    }

    /// Forgets every session expired at `now` (run periodically).
    pub fn purge(&self, now: EpochMillis) -> usize {
        let mut map = self.map.lock().expect("sessions");
        let before = map.len();
        map.retain(|_, s| s.valid_until >= now);
        let purged = before - map.len();
        metrics::gauge!(SESSIONS_METRIC).decrement(purged as f64);
        purged
    }

    /// (entries, approximate bytes) held by all timelines.
    pub fn entries(&self) -> (usize, usize) {
        (
            self.totals.entries.load(Ordering::Acquire),
            self.totals.bytes.load(Ordering::Acquire),
        )
    }

    /// Checks validity at `now` and renews live sessions. Returns the session's
    /// timeline slot for LIVE/LIVE_REPLAY sessions.
    pub fn access(
        &self,
        c: &Claims,
        now: EpochMillis,
        renew: bool,
    ) -> Result<Option<Arc<tokio::sync::Mutex<Option<Live>>>>, Expired> {
        let live = matches!(c.mode, Mode::Live | Mode::LiveReplay);
        let mut map = self.map.lock().expect("sessions");
        let renewed = map.get(&c.session_id).map(|s| s.valid_until);
        let valid_until = c.expires_ms.max(renewed.unwrap_or(i64::MIN));
        if now > valid_until {
            if map.remove(&c.session_id).is_some() {
                metrics::gauge!(SESSIONS_METRIC).decrement(1.0);
            }
            return Err(Expired);
        }
        if !live {
            return Ok(None);
        }
        let lifetime = (c.expires_ms - c.created_ms).max(0);
        let until = if renew {
            valid_until.max(now.saturating_add(lifetime))
        } else {
            valid_until
        };
        if !map.contains_key(&c.session_id) {
            if map.len() >= self.max {
                let before = map.len();
                map.retain(|_, s| s.valid_until >= now);
                metrics::gauge!(SESSIONS_METRIC).decrement((before - map.len()) as f64);
                while map.len() >= self.max && Self::evict_one(&mut map, None) {}
            }
            metrics::gauge!(SESSIONS_METRIC).increment(1.0);
        }
        let slot = map.entry(c.session_id).or_insert_with(|| Slot {
            valid_until: until,
            last_access: now,
            live: Arc::default(),
        });
        slot.valid_until = slot.valid_until.max(until);
        slot.last_access = now;
        Ok(Some(slot.live.clone()))
    }

    /// Number of sessions with state (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Skips fragments that arrive out of producer-time order; a same-time fragment of a
/// later number replaces the previous one (same sequence number), as AWS keeps the
/// highest fragment number among duplicates.
fn accept(entries: &mut VecDeque<Entry>, b: &mut Builder, r: &FragmentRecord) -> bool {
    if let Some(last) = entries.back_mut() {
        if r.producer_ts_ms == last.row.producer_ts_ms {
            if r.seq > last.row.seq {
                last.row = r.clone();
                if let Some(bl) = b.last.as_mut() {
                    bl.row = r.clone();
                }
            }
            return false;
        }
        if r.producer_ts_ms < last.row.producer_ts_ms {
            return false;
        }
    }
    true
}

async fn push_rows(
    pb: &Playback,
    loader: &mut FragmentLoader,
    t: &mut Live,
    rows: Vec<FragmentRecord>,
    keep: usize,
    force_first: bool,
) -> Result<()> {
    let mut force = force_first;
    for r in rows {
        if !accept(&mut t.entries, &mut t.builder, &r) {
            continue;
        }
        let config = pb.config(loader, r.session_id).await?;
        let e = t.builder.push(r, config, force);
        force = false;
        t.entries.push_back(e);
        while t.entries.len() > keep {
            t.entries.pop_front();
        }
    }
    Ok(())
}

/// The newest `n` fragments of the stream (ingestion order) and the last number seen.
async fn newest(
    catalog: &Catalog,
    s: &StreamRecord,
    n: usize,
) -> Result<(Vec<FragmentRecord>, u64)> {
    let Some(last) = catalog.index().last_fragment(&s.stream_id).await? else {
        return Ok((Vec::new(), 0));
    };
    let from = last.seq.saturating_sub((n as u64) * 2 + 64);
    let mut rows = catalog
        .index()
        .fragments_after(&s.stream_id, from.checked_sub(1), PAGE)
        .await?;
    let end = rows.iter().map(|r| r.seq).max().unwrap_or(last.seq);
    let skip = rows.len().saturating_sub(n);
    rows.drain(..skip);
    Ok((rows, end))
}

/// Brings a live session's timeline up to date and returns its window.
pub async fn live(
    pb: &Playback,
    catalog: &Catalog,
    loader: &mut FragmentLoader,
    c: &Claims,
    slot: &tokio::sync::Mutex<Option<Live>>,
    now: EpochMillis,
) -> Result<Window> {
    let keep = c.max_results.max(1) as usize;
    let mut guard = slot.lock().await;
    match c.mode {
        Mode::Live => {
            let stream = loader.stream().clone();
            let (rows, fresh, force) = match guard.as_ref().map(|t| t.cursor.clone()) {
                Some(Cursor::Seq(after)) => {
                    let rows = catalog
                        .index()
                        .fragments_after(&stream.stream_id, Some(after), PAGE)
                        .await?;
                    if rows.len() == PAGE {
                        // Far behind: jump to the live edge.
                        let (rows, end) = newest(catalog, &stream, keep).await?;
                        (rows, end, true)
                    } else {
                        let end = rows.last().map_or(after, |r| r.seq);
                        (rows, end, false)
                    }
                }
                _ => {
                    let (rows, end) = newest(catalog, &stream, keep).await?;
                    let first = rows.first().map_or(0, |r| r.seq);
                    *guard = Some(Live {
                        builder: Builder::new(c.discontinuity, first),
                        entries: VecDeque::new(),
                        cursor: Cursor::Seq(end),
                        origin: None,
                        origin_producer: None,
                        ended: false,
                        counted: Counted::new(&pb.sessions.totals),
                    });
                    (rows, end, false)
                }
            };
            let t = guard.as_mut().expect("timeline");
            t.cursor = Cursor::Seq(fresh);
            push_rows(pb, loader, t, rows, keep, force).await?;
        }
        Mode::LiveReplay => {
            let k = kind(c.selector);
            let start = c.start_ms.unwrap_or(i64::MIN);
            let end = c.end_ms.unwrap_or(i64::MAX);
            if guard.is_none() {
                let first =
                    select_fragments(catalog, loader.stream(), k, start, end, 1, Dedup::Newest)
                        .await?;
                *guard = Some(Live {
                    builder: Builder::new(c.discontinuity, 0),
                    entries: VecDeque::new(),
                    cursor: Cursor::Range(None),
                    origin: first.first().map(|r| ts_of(r, k)),
                    origin_producer: first.first().map(|r| r.producer_ts_ms),
                    ended: false,
                    counted: Counted::new(&pb.sessions.totals),
                });
            }
            let t = guard.as_mut().expect("timeline");
            if t.origin.is_none() {
                let first =
                    select_fragments(catalog, loader.stream(), k, start, end, 1, Dedup::Newest)
                        .await?;
                t.origin = first.first().map(|r| ts_of(r, k));
                t.origin_producer = first.first().map(|r| r.producer_ts_ms);
            }
            if let Some(origin) = t.origin
                && !t.ended
            {
                let cutoff = origin.saturating_add((now - c.created_ms).max(0)).min(end);
                loop {
                    let after = match t.cursor {
                        Cursor::Range(a) => a,
                        Cursor::Seq(_) => None,
                    };
                    let rows = catalog
                        .index()
                        .fragments_in_range(
                            &loader.stream().stream_id,
                            k,
                            start,
                            cutoff,
                            after,
                            PAGE,
                        )
                        .await?;
                    let full = rows.len() == PAGE;
                    if let Some(last) = rows.last() {
                        t.cursor = Cursor::Range(Some((ts_of(last, k), last.seq)));
                    }
                    push_rows(pb, loader, t, rows, keep, false).await?;
                    if !full {
                        break;
                    }
                }
                t.ended = c.end_ms.is_some() && cutoff >= end;
            }
        }
        Mode::OnDemand => return on_demand(pb, catalog, loader, c).await,
    }
    let t = guard.as_mut().expect("timeline");
    t.counted.set(&t.entries);
    pb.sessions.enforce_entries(&c.session_id);
    Ok(Window {
        entries: t.entries.iter().cloned().collect(),
        ended: t.ended,
        replay_origin_ms: t.origin_producer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playback::token::{Container, Protocol};

    fn cfg() -> Arc<MediaConfig> {
        Arc::new(MediaConfig {
            video: None,
            audio: None,
        })
    }

    fn row(seq: u64, ts: i64, dur: i64) -> FragmentRecord {
        FragmentRecord {
            stream_id: "s".into(),
            seq,
            session_id: 7,
            producer_ts_ms: ts,
            server_ts_ms: ts,
            duration_ms: dur,
            producer_timecode: ts,
            size: 1,
            object_key: String::new(),
            object_size: 1,
            content_hash: String::new(),
            object_offset: None,
            metadata: Vec::new(),
        }
    }

    #[test]
    fn discontinuity_modes_and_sequence() {
        let c = cfg();
        let mut b = Builder::new(Discontinuity::OnDiscontinuity, 10);
        let e1 = b.push(row(1, 0, 1000), c.clone(), false);
        let e2 = b.push(row(2, 1000, 1000), c.clone(), false);
        let e3 = b.push(row(5, 41_000, 1000), c.clone(), false);
        assert_eq!((e1.msn, e2.msn, e3.msn), (10, 11, 12));
        assert_eq!(
            (e1.discontinuity, e2.discontinuity, e3.discontinuity),
            (false, false, true)
        );
        let w = Window {
            entries: vec![e3.clone()],
            ..Window::default()
        };
        assert_eq!(w.discontinuity_sequence(), 0);
        assert_eq!(e3.cc, 1);
        let mut a = Builder::new(Discontinuity::Always, 0);
        a.push(row(1, 0, 1000), c.clone(), false);
        assert!(a.push(row(2, 1000, 1000), c.clone(), false).discontinuity);
        let mut n = Builder::new(Discontinuity::Never, 0);
        n.push(row(1, 0, 1000), c.clone(), false);
        assert!(!n.push(row(2, 99_000, 1000), c, false).discontinuity);
    }

    fn claims(mode: Mode, created: i64, expires: i64) -> Claims {
        Claims {
            protocol: Protocol::Hls,
            session_id: [1; 12],
            stream_id: "0123456789abcdef0123456789abcdef".into(),
            mode,
            selector: Selector::Server,
            start_ms: None,
            end_ms: None,
            container: Container::Fmp4,
            discontinuity: Discontinuity::Always,
            display_timestamp: false,
            display_number: false,
            max_results: 5,
            created_ms: created,
            expires_ms: expires,
            key_id: None,
        }
    }

    #[test]
    fn live_sessions_renew_while_used_on_demand_ones_expire() {
        let s = Sessions::new(10, 1000);
        let live = claims(Mode::Live, 0, 300_000);
        assert!(s.access(&live, 200_000, true).unwrap().is_some());
        // Past the signed expiry but renewed by the access at 200 s.
        assert!(s.access(&live, 450_000, true).is_ok());
        assert!(s.access(&live, 740_000, true).is_ok());
        // Unused for longer than Expires: gone.
        assert!(s.access(&live, 1_100_000, true).is_err());
        let od = claims(Mode::OnDemand, 0, 300_000);
        assert!(s.access(&od, 299_000, true).unwrap().is_none());
        assert!(s.access(&od, 300_001, true).is_err());
    }

    #[test]
    fn session_state_is_bounded() {
        let s = Sessions::new(3, 1000);
        for i in 0..10u8 {
            let mut c = claims(Mode::Live, 0, 300_000);
            c.session_id = [i; 12];
            s.access(&c, i64::from(i), true).unwrap();
        }
        assert_eq!(s.len(), 3);
    }
}
