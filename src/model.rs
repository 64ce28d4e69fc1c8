//! Domain values that cross module boundaries, validated once at parse time: stream
//! names, stream ARNs, fragment numbers, tag maps, media types. Anything holding one of
//! these types is known to be well-formed, so the rest of the code never re-checks.

use std::collections::BTreeMap;
use std::fmt;

use crate::clock::EpochMillis;
use crate::error::{Error, ErrorKind, Result};

/// Largest retention the API accepts: 10 years.
pub const MAX_RETENTION_HOURS: i64 = 87_600;
/// Most tags a stream may carry.
pub const MAX_TAGS: usize = 50;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// Checks `[a-zA-Z0-9_.-]+` with a length range; `what` names the member in errors.
pub fn check_name(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(Error::invalid(format!(
            "{what} must be 1 to {max} characters: length={}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| !is_name_char(*c)) {
        return Err(Error::invalid(format!(
            "{what} may contain only a-z, A-Z, 0-9, '_', '.', '-': found={c:?}"
        )));
    }
    Ok(())
}

/// A validated stream name: 1–256 of `[a-zA-Z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    pub fn parse(s: &str) -> Result<Self> {
        check_name("StreamName", s, 256)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The ARN partition of a region, as AWS assigns them: `aws-cn` for `cn-*`,
/// `aws-us-gov` for `us-gov-*`, the ISO partitions for theirs, `aws` for the rest.
pub fn partition(region: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 6] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-iso-", "aws-iso"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-isof-", "aws-iso-f"),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| region.starts_with(p))
        .map_or("aws", |(_, part)| part)
}

/// A parsed stream ARN: `arn:<partition>:kinesisvideo:<region>:<account>:stream/<name>/<creation ms>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamArn {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub name: StreamName,
    pub creation_ms: EpochMillis,
}

impl StreamArn {
    /// Formats the ARN of a stream; the partition follows the region ([`partition`]).
    pub fn format(
        region: &str,
        account: &str,
        name: &StreamName,
        creation_ms: EpochMillis,
    ) -> String {
        let partition = partition(region);
        format!("arn:{partition}:kinesisvideo:{region}:{account}:stream/{name}/{creation_ms}")
    }

    /// Parses an ARN; errors carry `kind` so tag operations can answer
    /// `InvalidResourceFormatException` and the rest `InvalidArgumentException`.
    pub fn parse(s: &str, kind: ErrorKind) -> Result<Self> {
        let bad = |why: &str| Error::new(kind, format!("malformed stream ARN ({why}): arn={s}"));
        if s.is_empty() || s.len() > 1024 {
            return Err(bad("length must be 1 to 1024"));
        }
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "kinesisvideo" {
            return Err(bad(
                "expected arn:<partition>:kinesisvideo:<region>:<account>:stream/<name>/<n>",
            ));
        }
        let (partition, region, account, resource) = (parts[1], parts[3], parts[4], parts[5]);
        let ok_lower = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !ok_lower(partition) || !ok_lower(region) {
            return Err(bad("partition and region must be [a-z0-9-]+"));
        }
        if account.is_empty() || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad("account must be digits"));
        }
        let mut res = resource.split('/');
        let (Some(rtype), Some(name), Some(num), None) =
            (res.next(), res.next(), res.next(), res.next())
        else {
            return Err(bad("resource must be stream/<name>/<number>"));
        };
        if rtype != "stream" {
            return Err(bad("resource type must be stream"));
        }
        let name = StreamName::parse(name).map_err(|e| Error::new(kind, e.message))?;
        let creation_ms = num
            .parse::<i64>()
            .map_err(|_| bad("the trailing part must be a number"))?;
        Ok(Self {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            name,
            creation_ms,
        })
    }
}

/// A fragment number: a per-stream sequence number rendered as a fixed-width
/// 47-digit decimal string, `"91"` + 13-digit stream creation time (ms) + 32-digit
/// sequence. Fixed width keeps lexical order equal to numeric order (some clients
/// compare them as strings); the creation-time part makes numbers from a deleted and
/// re-created stream of the same name never match the new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentNumber {
    pub stream_creation_ms: EpochMillis,
    pub seq: u64,
}

impl FragmentNumber {
    pub const DIGITS: usize = 47;

    pub fn new(stream_creation_ms: EpochMillis, seq: u64) -> Self {
        Self {
            stream_creation_ms,
            seq,
        }
    }

    /// Parses a fragment number string. `Ok(None)` means well-formed digits that this
    /// server never issued (so: not found); `Err` means not a fragment number at all.
    pub fn parse(s: &str) -> Result<Option<Self>> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(format!(
                "fragment number must be 1 to 128 decimal digits: value={s}"
            )));
        }
        if s.len() != Self::DIGITS || !s.starts_with("91") {
            return Ok(None);
        }
        let creation = s[2..15].parse::<i64>().ok();
        let seq = s[15..].parse::<u64>().ok();
        Ok(match (creation, seq) {
            (Some(c), Some(q)) => Some(Self::new(c, q)),
            _ => None,
        })
    }
}

impl fmt::Display for FragmentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "91{:013}{:032}",
            self.stream_creation_ms.max(0),
            self.seq
        )
    }
}

/// The first character of `s` outside the model's tag class `[\p{L}\p{Z}\p{N}_.:/=+\-@]`
/// (letters, space separators, numbers and `_.:/=+-@`; control characters, tabs and
/// newlines are not in it).
fn bad_tag_char(s: &str) -> Option<char> {
    static OUTSIDE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"[^\p{L}\p{Z}\p{N}_.:/=+\-@]").expect("tag class regex")
    });
    OUTSIDE.find(s).and_then(|m| m.as_str().chars().next())
}

/// Validates one tag key (1–128 chars) from the allowed character set.
pub fn check_tag_key(key: &str) -> Result<()> {
    let n = key.chars().count();
    if n == 0 || n > 128 {
        return Err(Error::invalid(format!(
            "tag key must be 1 to 128 characters: key={key:?}"
        )));
    }
    if let Some(c) = bad_tag_char(key) {
        return Err(Error::invalid(format!(
            "tag key may contain only letters, numbers, spaces and _.:/=+-@: key={key:?} found={c:?}"
        )));
    }
    Ok(())
}

/// Validates one tag value (0–256 chars) from the allowed character set.
pub fn check_tag_value(key: &str, value: &str) -> Result<()> {
    if value.chars().count() > 256 {
        return Err(Error::invalid(format!(
            "tag value must be at most 256 characters: key={key:?}"
        )));
    }
    if let Some(c) = bad_tag_char(value) {
        return Err(Error::invalid(format!(
            "tag value may contain only letters, numbers, spaces and _.:/=+-@: key={key:?} found={c:?}"
        )));
    }
    Ok(())
}

/// Validates a whole tag map as sent in CreateStream/TagStream: 1–50 entries.
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.is_empty() {
        return Err(Error::invalid("Tags must hold at least one tag"));
    }
    if tags.len() > MAX_TAGS {
        return Err(Error::new(
            ErrorKind::TagsPerResourceExceededLimit,
            format!(
                "a stream can have at most {MAX_TAGS} tags: requested={}",
                tags.len()
            ),
        ));
    }
    for (k, v) in tags {
        check_tag_key(k)?;
        check_tag_value(k, v)?;
    }
    Ok(())
}

/// Validates a MediaType: 1–128 chars, `type/subtype` items separated by commas.
pub fn check_media_type(s: &str) -> Result<()> {
    let item_ok = |item: &str| {
        let mut it = item.splitn(2, '/');
        let part_ok = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
            })
        };
        part_ok(it.next()) && part_ok(it.next())
    };
    if s.is_empty() || s.len() > 128 || !s.split(',').all(item_ok) {
        return Err(Error::invalid(format!(
            "MediaType must be 1 to 128 characters of type/subtype items separated by commas: value={s}"
        )));
    }
    Ok(())
}

/// Validates a `Version`/`CurrentVersion` token: 1–64 alphanumerics.
pub fn check_version(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(format!(
            "CurrentVersion must be 1 to 64 letters and digits: value={s}"
        )));
    }
    Ok(())
}

/// The `DefaultStorageTier` values of the model. streamvault keeps every fragment in one
/// tier; the value is stored and described back.
pub const STORAGE_TIERS: [&str; 2] = ["HOT", "WARM"];

/// Validates a `StreamStorageConfiguration.DefaultStorageTier`.
pub fn check_storage_tier(tier: Option<&str>) -> Result<String> {
    match tier {
        Some(t) if STORAGE_TIERS.contains(&t) => Ok(t.to_owned()),
        Some(t) => Err(Error::invalid(format!(
            "DefaultStorageTier must be HOT or WARM: value={t}"
        ))),
        None => Err(Error::invalid(
            "StreamStorageConfiguration.DefaultStorageTier is required",
        )),
    }
}

/// Validates a retention value in hours.
pub fn check_retention(hours: i64) -> Result<()> {
    if !(0..=MAX_RETENTION_HOURS).contains(&hours) {
        return Err(Error::invalid(format!(
            "DataRetentionInHours must be between 0 and {MAX_RETENTION_HOURS}: value={hours}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert!(StreamName::parse("cam-1_a.b").is_ok());
        assert!(StreamName::parse("").is_err());
        assert!(StreamName::parse("a b").is_err());
        assert!(StreamName::parse(&"x".repeat(256)).is_ok());
        assert!(StreamName::parse(&"x".repeat(257)).is_err());
    }

    #[test]
    fn arns_round_trip() {
        let name = StreamName::parse("cam1").unwrap();
        let s = StreamArn::format("us-west-2", "123456789012", &name, 1_700_000_000_123);
        let a = StreamArn::parse(&s, ErrorKind::InvalidArgument).unwrap();
        assert_eq!(a.name, name);
        assert_eq!(a.creation_ms, 1_700_000_000_123);
        assert_eq!(a.region, "us-west-2");
        assert_eq!(a.partition, "aws");
        let cn = StreamArn::format("cn-north-1", "1", &name, 5);
        assert_eq!(cn, "arn:aws-cn:kinesisvideo:cn-north-1:1:stream/cam1/5");
        let gov = StreamArn::format("us-gov-west-1", "1", &name, 5);
        assert!(gov.starts_with("arn:aws-us-gov:kinesisvideo:us-gov-west-1:"));
        assert_eq!(partition("us-isob-east-1"), "aws-iso-b");
        assert_eq!(partition("us-iso-east-1"), "aws-iso");
        assert_eq!(partition("eu-west-1"), "aws");
        let e =
            StreamArn::parse("arn:aws:s3:::bucket", ErrorKind::InvalidResourceFormat).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidResourceFormat);
        assert!(
            StreamArn::parse(
                "arn:aws:kinesisvideo:us-west-2:1:channel/x/1",
                ErrorKind::InvalidArgument
            )
            .is_err()
        );
    }

    #[test]
    fn fragment_numbers_are_fixed_width_and_ordered() {
        let a = FragmentNumber::new(1_700_000_000_123, 9).to_string();
        let b = FragmentNumber::new(1_700_000_000_123, 10).to_string();
        assert_eq!(a.len(), 47);
        assert!(a < b);
        assert_eq!(
            FragmentNumber::parse(&b).unwrap(),
            Some(FragmentNumber::new(1_700_000_000_123, 10))
        );
        assert_eq!(FragmentNumber::parse("123").unwrap(), None);
        assert!(FragmentNumber::parse("12a").is_err());
    }

    #[test]
    fn tags() {
        let mut t = BTreeMap::new();
        t.insert("owner".to_string(), "team a/b@c".to_string());
        assert!(check_tags(&t).is_ok());
        t.insert("bad*".to_string(), "x".to_string());
        assert!(check_tags(&t).is_err());
        // The model's classes: letters, numbers and space separators of any script.
        assert!(check_tag_key("Kamera Süd 東京 ٣\u{00A0}x").is_ok());
        assert!(check_tag_value("k", "").is_ok());
        for bad in [
            "a\tb",
            "a\nb",
            "a\u{0}b",
            "a\u{7f}",
            "a\u{200B}b",
            "e\u{301}",
        ] {
            assert!(check_tag_key(bad).is_err(), "{bad:?}");
            assert!(check_tag_value("k", bad).is_err(), "{bad:?}");
        }
        let many: BTreeMap<_, _> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(
            check_tags(&many).unwrap_err().kind,
            ErrorKind::TagsPerResourceExceededLimit
        );
    }

    #[test]
    fn media_types() {
        assert!(check_media_type("video/h264,audio/aac").is_ok());
        assert!(check_media_type("video").is_err());
        assert!(check_media_type("video/h264,").is_err());
    }
}
