//! Which fragments a playlist or manifest lists, and the in-memory state of live
//! sessions. ON_DEMAND windows are computed from the index on every request. LIVE and
//! LIVE_REPLAY sessions keep a small timeline per session ([`Sessions`]) so media
//! sequence and discontinuity sequence numbers stay consistent between playlist
//! reloads even when fragment numbers skip; the timeline is rebuilt lazily after a
//! restart (LIVE numbering then jumps forward, which players treat as new segments).
//!
//! Renewal: a LIVE or LIVE_REPLAY session that is used stays valid. Every request
//! extends its validity to `now + Expires` (the `Expires` it was created with); the
//! signed expiry in the token is the floor. Renewals live in memory, so after a server
//! restart a session is valid until its signed expiry again.

use std::collections::{HashMap, VecDeque};
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
    map: Mutex<HashMap<[u8; 12], Slot>>,
}

/// A session outlived its validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl Sessions {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
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
            map.remove(&c.session_id);
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
        if !map.contains_key(&c.session_id) && map.len() >= self.max {
            map.retain(|_, s| s.valid_until >= now);
            while map.len() >= self.max {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, s)| s.last_access)
                    .map(|(k, _)| *k)
                    .expect("non-empty");
                map.remove(&oldest);
            }
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
    let t = guard.as_ref().expect("timeline");
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
        }
    }

    #[test]
    fn live_sessions_renew_while_used_on_demand_ones_expire() {
        let s = Sessions::new(10);
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
        let s = Sessions::new(3);
        for i in 0..10u8 {
            let mut c = claims(Mode::Live, 0, 300_000);
            c.session_id = [i; 12];
            s.access(&c, i64::from(i), true).unwrap();
        }
        assert_eq!(s.len(), 3);
    }
}
