//! The object key layout. This is the only code that formats or parses object keys:
//!
//! ```text
//! segments/<retention class>/<created ms, 13 digits>-<16 hex>.seg   (shared segments)
//! streams/<stream id>/fragments/<seq, 20 digits>.mkv.sv  (legacy: one object per fragment)
//! <image prefix>/<stream id>/<epoch ms>.<jpg|png>.sv   (image generation, sealed)
//! ```
//!
//! `<stream id>` is the 32-hex-digit id the index gives each stream incarnation (never a
//! user-chosen name, so any name is a safe key and a re-created stream never sees the old
//! one's objects). Fixed-width sequence numbers keep listings in fragment order. Where a
//! stream name must name a directory (image generation's `file://` sink),
//! [`name_component`] makes it one that cannot climb (`.` and `..` are valid names).

use object_store::path::Path;

const STREAMS: &str = "streams";
const SEGMENTS: &str = "segments";
const SEGMENT_SUFFIX: &str = ".seg";
/// Retention classes: (name, upper bound in hours). A stream's fragments go into the open
/// segment of the first class whose bound is at least its retention, so a long-retention
/// stream never pins the segments of short-retention ones.
pub const RETENTION_CLASSES: &[(&str, i64)] = &[
    ("r1h", 1),
    ("r1d", 24),
    ("r1w", 168),
    ("r30d", 720),
    ("r1y", 8760),
    ("rmax", i64::MAX),
];
const FRAGMENTS: &str = "fragments";
const SUFFIX: &str = ".mkv.sv";
/// Suffix of every sealed object that is not a fragment.
const SEALED: &str = ".sv";

/// Whether `id` is a well-formed stream id (32 lowercase hex digits).
pub fn is_stream_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Prefix holding every object of a stream.
pub fn stream_prefix(stream_id: &str) -> Path {
    debug_assert!(is_stream_id(stream_id));
    Path::from_iter([STREAMS, stream_id])
}

/// Prefix holding every stream.
pub fn all_streams_prefix() -> Path {
    Path::from(STREAMS)
}

/// Key of one fragment object.
pub fn fragment_key(stream_id: &str, seq: u64) -> Path {
    debug_assert!(is_stream_id(stream_id));
    Path::from_iter([STREAMS, stream_id, FRAGMENTS, &format!("{seq:020}{SUFFIX}")])
}

/// The retention class of a stream with `retention_hours`.
pub fn retention_class(retention_hours: i64) -> &'static str {
    RETENTION_CLASSES
        .iter()
        .find(|(_, h)| retention_hours <= *h)
        .map_or("rmax", |(n, _)| n)
}

/// Prefix holding every segment.
pub fn segments_prefix() -> Path {
    Path::from(SEGMENTS)
}

/// Key of a new segment of `class`, created at `created_ms`, told apart from any other
/// by `nonce` (random).
pub fn segment_key(class: &str, created_ms: i64, nonce: u64) -> Path {
    debug_assert!(RETENTION_CLASSES.iter().any(|(n, _)| *n == class));
    Path::from_iter([
        SEGMENTS,
        class,
        &format!("{:013}-{nonce:016x}{SEGMENT_SUFFIX}", created_ms.max(0)),
    ])
}

/// Whether `key` is a well-formed segment key; returns its class.
pub fn parse_segment_key(key: &str) -> Option<&str> {
    let mut parts = key.split('/');
    let (root, class, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || root != SEGMENTS {
        return None;
    }
    RETENTION_CLASSES.iter().find(|(n, _)| *n == class)?;
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (ms, nonce) = stem.split_once('-')?;
    (ms.len() == 13
        && nonce.len() == 16
        && ms.bytes().all(|b| b.is_ascii_digit())
        && nonce.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(class)
}

/// Key of a generated image. `prefix` never starts with `streams` (checked where image
/// generation configurations are accepted), so images never mix with fragments.
pub fn image_key(prefix: &str, stream_id: &str, file_name: &str) -> Path {
    debug_assert!(is_stream_id(stream_id));
    let mut parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
    debug_assert!(parts.first().is_some_and(|p| *p != STREAMS));
    let sealed = format!("{file_name}{SEALED}");
    parts.push(stream_id);
    parts.push(&sealed);
    Path::from_iter(parts)
}

/// The identity a sealed image is bound to: the first 8 bytes of SHA-256 of its file
/// name (which holds its timestamp and format), so an image moved to another name fails
/// to open.
pub fn image_identity(file_name: &str) -> u64 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, file_name.as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

/// A stream name as one file-system path component: `.` and `..` (valid stream names)
/// become `%2E` and `%2E%2E`, as `object_store` encodes them; every other valid name
/// (`[a-zA-Z0-9_.-]`) is already a plain component.
pub fn name_component(name: &str) -> std::borrow::Cow<'_, str> {
    match name {
        "." | ".." => name.replace('.', "%2E").into(),
        _ => name.into(),
    }
}

/// Parses a fragment key back into (stream id, sequence number).
pub fn parse_fragment_key(path: &Path) -> Option<(String, u64)> {
    let parts: Vec<_> = path.parts().collect();
    if parts.len() != 4 || parts[0].as_ref() != STREAMS || parts[2].as_ref() != FRAGMENTS {
        return None;
    }
    let id = parts[1].as_ref();
    let seq = parts[3].as_ref().strip_suffix(SUFFIX)?;
    if !is_stream_id(id) || seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.to_owned(), seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = "0123456789abcdef0123456789abcdef";
        let k = fragment_key(id, 42);
        assert_eq!(
            k.as_ref(),
            "streams/0123456789abcdef0123456789abcdef/fragments/00000000000000000042.mkv.sv"
        );
        assert_eq!(parse_fragment_key(&k), Some((id.to_owned(), 42)));
        assert_eq!(
            parse_fragment_key(&Path::from("streams/x/fragments/1.mkv.sv")),
            None
        );
        assert!(k.prefix_matches(&stream_prefix(id)));
    }

    #[test]
    fn segment_keys_round_trip_and_classes_nest() {
        let k = segment_key("r1d", 1_795_600_000_000, 0xabc);
        assert_eq!(
            k.as_ref(),
            "segments/r1d/1795600000000-0000000000000abc.seg"
        );
        assert_eq!(parse_segment_key(k.as_ref()), Some("r1d"));
        assert_eq!(parse_segment_key("segments/r1d/1.seg"), None);
        assert_eq!(
            parse_segment_key("segments/zz/1795600000000-0000000000000abc.seg"),
            None
        );
        assert!(k.prefix_matches(&segments_prefix()));
        assert_eq!(retention_class(1), "r1h");
        assert_eq!(retention_class(2), "r1d");
        assert_eq!(retention_class(24), "r1d");
        assert_eq!(retention_class(720), "r30d");
        assert_eq!(retention_class(87_600), "rmax");
    }

    #[test]
    fn stream_names_never_climb() {
        for (name, want) in [
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("a..b", "a..b"),
            ("...", "..."),
        ] {
            assert_eq!(name_component(name), want);
        }
        let base = std::path::Path::new("/images/out");
        for name in [".", ".."] {
            let p = base.join(name_component(name).as_ref());
            assert_eq!(p.parent(), Some(base), "{name}");
            assert!(p.components().all(|c| matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )));
        }
    }
}
