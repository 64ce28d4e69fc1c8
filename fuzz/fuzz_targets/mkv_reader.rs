//! Fuzz target for the incremental MKV reader: the first input byte chooses a split
//! point, the rest is the stream, pushed in two pieces. Events are drained after each
//! piece and then with `finish()`. Checks: no panic, `buffered()` stays within the
//! limits plus one element header after every drain, the event sequence equals the one
//! from a single push, and the element parsers survive every buffered element.

#![no_main]

use libfuzzer_sys::fuzz_target;
use streamvault::mkv;

use mkv::{Event, Limits, Reader};

const LIMITS: Limits = Limits {
    max_element_size: 1 << 16,
    max_header_element_size: 1 << 12,
};

fn drain(r: &mut Reader, out: &mut Vec<Result<Event, mkv::Error>>, finish: bool) {
    if matches!(out.last(), Some(Err(_))) {
        return; // errors are sticky; record them once
    }
    loop {
        let next = if finish { r.finish() } else { r.next_event() };
        match next {
            Ok(Some(ev)) => out.push(Ok(ev)),
            Ok(None) => return,
            Err(e) => {
                out.push(Err(e));
                return;
            }
        }
    }
}

fn check(ev: &Event) {
    match ev {
        Event::TopLevel { id, raw, .. } => {
            let _ = mkv::parse_info(raw);
            let _ = mkv::parse_tracks(raw);
            if let Ok(tags) = mkv::parse_tags(raw) {
                let mut out = Vec::new();
                mkv::writer::write_simple_tags_raw(&mut out, &tags);
                if !tags.is_empty() {
                    assert_eq!(mkv::parse_tags(&out).ok(), Some(tags), "tags {id:#X}");
                }
            }
        }
        Event::EbmlHeader { raw, .. } => {
            assert!(mkv::parse_ebml_header(raw).is_ok());
        }
        Event::Block(b) => {
            assert!(b.frame_offset >= 4 && b.frame_offset <= b.frame_end);
            assert!(b.frame_end <= b.raw.len());
            let rebased = mkv::writer::rebase_block(b, b.timecode.wrapping_add(1));
            let p = mkv::parse_block_header(rebased).expect("rebased block parses");
            assert_eq!(p.timecode, b.timecode.wrapping_add(1));
            assert_eq!(p.frame(), b.frame());
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let split = usize::from(first).min(stream.len());
    let bound = LIMITS.max_element_size as usize + mkv::reader::MAX_HEADER_LEN;

    let mut r = Reader::new(LIMITS);
    let mut evs = Vec::new();
    for piece in [&stream[..split], &stream[split..]] {
        r.push(piece);
        drain(&mut r, &mut evs, false);
        assert!(r.buffered() <= bound, "buffered {} > {bound}", r.buffered());
    }
    drain(&mut r, &mut evs, true);
    let mut last = 0;
    for ev in evs.iter().flatten() {
        assert!(ev.offset() >= last, "offsets go backwards");
        last = ev.offset();
        check(ev);
    }

    let mut one = Reader::new(LIMITS);
    let mut evs1 = Vec::new();
    one.push(stream);
    drain(&mut one, &mut evs1, false);
    drain(&mut one, &mut evs1, true);
    assert!(evs == evs1, "chunking changed the events");
});
