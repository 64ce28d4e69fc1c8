//! HLS/DASH session tokens. A token is the session itself, signed by the server: a
//! fixed binary layout of [`Claims`] (session id, stream id, protocol, mode, selector
//! range, container, display options, creation and expiry), then the access key id that
//! asked for the session (length-prefixed, empty without auth), followed by an
//! HMAC-SHA256 (aws-lc-rs) over a domain label and those bytes, base64url-encoded
//! without padding so it needs no escaping in a query string. The HMAC key is 32
//! random bytes generated on first start into `<data_dir>/keys/session-token.key`
//! (mode 0600); deleting that file revokes every session. Tokens are verified in
//! constant time; nothing in a token is trusted before its MAC checks, and no token is
//! accepted past its absolute lifetime (`playback.max_session_lifetime` from its
//! creation), whatever expiry it claims and however often it was renewed. The caller
//! re-checks the key id on every use (a removed or narrowed key's sessions stop).

use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::clock::EpochMillis;

/// Version 2 added the key id; version 1 tokens are refused (clients ask again).
const VERSION: u8 = 2;
const LABEL: &[u8] = b"streamvault playback session v1\0";
const MAC_LEN: usize = 32;
/// The fixed part of the body; the key id (1 length byte + up to [`MAX_KEY_ID`]) follows.
const BODY_LEN: usize = 1 + 1 + 12 + 16 + 1 + 1 + 8 + 8 + 1 + 1 + 1 + 1 + 4 + 8 + 8;
/// Longest access key id a token carries.
pub const MAX_KEY_ID: usize = 128;
/// Largest `Expires` a session can be created with (AWS: 43200 s); a token claiming a
/// longer one is refused even with a valid MAC.
pub const MAX_EXPIRES_MS: i64 = 43_200_000;
/// "No timestamp" in the fixed layout.
const NONE_MS: i64 = i64::MIN;

/// Name of the key file under `<data_dir>/keys/`.
pub const KEY_FILE: &str = "session-token.key";

/// Which packager issued the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Hls = 1,
    Dash = 2,
}

/// `PlaybackMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live = 1,
    LiveReplay = 2,
    OnDemand = 3,
}

/// `FragmentSelectorType` of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    Producer = 1,
    Server = 2,
}

/// `ContainerFormat` (DASH sessions are always fMP4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Fmp4 = 1,
    Ts = 2,
}

/// `DiscontinuityMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discontinuity {
    Always = 1,
    Never = 2,
    OnDiscontinuity = 3,
}

/// What a session token binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub protocol: Protocol,
    /// Random; keys the server's per-session state (live timelines, renewals).
    pub session_id: [u8; 12],
    /// The stream incarnation (32 hex digits).
    pub stream_id: String,
    pub mode: Mode,
    pub selector: Selector,
    pub start_ms: Option<EpochMillis>,
    pub end_ms: Option<EpochMillis>,
    pub container: Container,
    pub discontinuity: Discontinuity,
    pub display_timestamp: bool,
    /// DASH `DisplayFragmentNumber`.
    pub display_number: bool,
    /// Most fragments in a media playlist / manifest.
    pub max_results: u32,
    pub created_ms: EpochMillis,
    pub expires_ms: EpochMillis,
    /// Access key that asked for the session (`None` with auth off).
    pub key_id: Option<String>,
}

impl Claims {
    /// A hex string naming the session in logs and state maps.
    pub fn session_hex(&self) -> String {
        hex::encode(self.session_id)
    }

    fn encode(&self) -> Option<Vec<u8>> {
        let sid = hex::decode(&self.stream_id).ok()?;
        let key = self.key_id.as_deref().unwrap_or("").as_bytes();
        if sid.len() != 16 || key.len() > MAX_KEY_ID {
            return None;
        }
        let mut b = [0u8; BODY_LEN];
        let mut w = Writer { b: &mut b, at: 0 };
        w.put(&[VERSION, self.protocol as u8]);
        w.put(&self.session_id);
        w.put(&sid);
        w.put(&[self.mode as u8, self.selector as u8]);
        w.put(&self.start_ms.unwrap_or(NONE_MS).to_be_bytes());
        w.put(&self.end_ms.unwrap_or(NONE_MS).to_be_bytes());
        w.put(&[
            self.container as u8,
            self.discontinuity as u8,
            self.display_timestamp as u8,
            self.display_number as u8,
        ]);
        w.put(&self.max_results.to_be_bytes());
        w.put(&self.created_ms.to_be_bytes());
        w.put(&self.expires_ms.to_be_bytes());
        debug_assert_eq!(w.at, BODY_LEN);
        let mut out = b.to_vec();
        out.push(key.len() as u8);
        out.extend_from_slice(key);
        Some(out)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < BODY_LEN + 1 || b[0] != VERSION {
            return None;
        }
        let mut r = Reader { b, at: 1 };
        let protocol = match r.u8()? {
            1 => Protocol::Hls,
            2 => Protocol::Dash,
            _ => return None,
        };
        let session_id: [u8; 12] = r.take(12)?.try_into().ok()?;
        let stream_id = hex::encode(r.take(16)?);
        let mode = match r.u8()? {
            1 => Mode::Live,
            2 => Mode::LiveReplay,
            3 => Mode::OnDemand,
            _ => return None,
        };
        let selector = match r.u8()? {
            1 => Selector::Producer,
            2 => Selector::Server,
            _ => return None,
        };
        let opt = |v: i64| (v != NONE_MS).then_some(v);
        let start_ms = opt(r.i64()?);
        let end_ms = opt(r.i64()?);
        let container = match r.u8()? {
            1 => Container::Fmp4,
            2 => Container::Ts,
            _ => return None,
        };
        let discontinuity = match r.u8()? {
            1 => Discontinuity::Always,
            2 => Discontinuity::Never,
            3 => Discontinuity::OnDiscontinuity,
            _ => return None,
        };
        let display_timestamp = r.u8()? == 1;
        let display_number = r.u8()? == 1;
        let max_results = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let created_ms = r.i64()?;
        let expires_ms = r.i64()?;
        let key_len = usize::from(r.u8()?);
        let key = std::str::from_utf8(r.take(key_len)?).ok()?.to_owned();
        if r.at != b.len() {
            return None;
        }
        let key_id = (!key.is_empty()).then_some(key);
        Some(Self {
            protocol,
            session_id,
            stream_id,
            mode,
            selector,
            start_ms,
            end_ms,
            container,
            discontinuity,
            display_timestamp,
            display_number,
            max_results,
            created_ms,
            expires_ms,
            key_id,
        })
    }
}

struct Writer<'a> {
    b: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, v: &[u8]) {
        self.b[self.at..self.at + v.len()].copy_from_slice(v);
        self.at += v.len();
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token this server signed (garbled, truncated, forged, other key).
    Invalid,
    /// Past its absolute lifetime, or claiming an expiry no session can have.
    Expired,
}

/// Signs and verifies session tokens with the server's token key.
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<redacted>)")
    }
}

impl TokenSigner {
    pub fn from_key(raw: &[u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, raw),
        }
    }

    /// A signer with a random key that lives only in memory (tests).
    pub fn ephemeral() -> Self {
        Self::from_key(&random_bytes::<32>())
    }

    /// Loads `<keys_dir>/session-token.key`, generating it (0600) when missing.
    /// Returns the signer and, when generated, the path.
    pub fn load_or_generate(keys_dir: &Path) -> std::io::Result<(Self, Option<PathBuf>)> {
        let path = keys_dir.join(KEY_FILE);
        let mut generated = None;
        if !path.exists() {
            write_new_key(&path)?;
            generated = Some(path.clone());
        }
        Ok((Self::load_file(&path)?, generated))
    }

    /// Loads the key at `path` (`keys.session_token_file`: cluster nodes share it); never
    /// generates one.
    pub fn load_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("session token key {}: {e}", path.display()),
            )
        })?;
        crate::fsperm::warn_if_exposed(path, "session token key");
        let trimmed: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let raw: [u8; 32] = match hex::decode(&trimmed) {
            Ok(v) if v.len() == 32 => v.try_into().expect("32 bytes"),
            _ if text.len() == 32 => text[..].try_into().expect("32 bytes"),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: expected 32 raw bytes or 64 hex characters",
                        path.display()
                    ),
                ));
            }
        };
        Ok(Self::from_key(&raw))
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = claims
            .encode()
            .expect("stream ids are 32 hex digits, key ids at most 128 bytes");
        let tag = hmac::sign(&self.key, &[LABEL, &body[..]].concat());
        let mut out = Vec::with_capacity(body.len() + MAC_LEN);
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        B64.encode(out)
    }

    /// The claims of a token this server signed, if it is within its absolute lifetime
    /// at `now`: at most `max_lifetime_ms` since its creation, with a claimed lifetime of
    /// at most [`MAX_EXPIRES_MS`]. The session's own expiry (which renewal moves) is the
    /// caller's business.
    pub fn verify(
        &self,
        token: &str,
        now: EpochMillis,
        max_lifetime_ms: i64,
    ) -> Result<Claims, TokenError> {
        if token.len() > 512 {
            return Err(TokenError::Invalid);
        }
        let raw = B64.decode(token).map_err(|_| TokenError::Invalid)?;
        if raw.len() < BODY_LEN + 1 + MAC_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = raw.split_at(raw.len() - MAC_LEN);
        hmac::verify(&self.key, &[LABEL, body].concat(), tag).map_err(|_| TokenError::Invalid)?;
        let c = Claims::decode(body).ok_or(TokenError::Invalid)?;
        let lifetime = c.expires_ms.saturating_sub(c.created_ms);
        if !(0..=MAX_EXPIRES_MS).contains(&lifetime)
            || now.saturating_sub(c.created_ms) > max_lifetime_ms
        {
            return Err(TokenError::Expired);
        }
        Ok(c)
    }
}

/// `N` bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("system rng");
    b
}

fn write_new_key(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(hex::encode(random_bytes::<32>()).as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            protocol: Protocol::Hls,
            session_id: [7; 12],
            stream_id: "0123456789abcdef0123456789abcdef".into(),
            mode: Mode::LiveReplay,
            selector: Selector::Producer,
            start_ms: Some(1_700_000_000_000),
            end_ms: None,
            container: Container::Ts,
            discontinuity: Discontinuity::OnDiscontinuity,
            display_timestamp: true,
            display_number: false,
            max_results: 5000,
            created_ms: 1_700_000_100_000,
            expires_ms: 1_700_000_400_000,
            key_id: Some("AKIDREADER".into()),
        }
    }

    const NOW: i64 = 1_700_000_200_000;
    const DAY: i64 = 86_400_000;

    #[test]
    fn round_trip_and_url_safe() {
        let s = TokenSigner::ephemeral();
        let t = s.sign(&claims());
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(s.verify(&t, NOW, DAY).unwrap(), claims());
        let anonymous = Claims {
            key_id: None,
            ..claims()
        };
        assert_eq!(s.verify(&s.sign(&anonymous), NOW, DAY).unwrap(), anonymous);
    }

    #[test]
    fn absolute_lifetime_is_enforced_whatever_the_claimed_expiry() {
        let s = TokenSigner::ephemeral();
        let twelve_h = 12 * 3_600_000;
        // A correctly MACed token that claims a far-future expiry (as a bug or a stolen
        // token key could produce) is refused at once.
        let far = Claims {
            expires_ms: claims().created_ms + 10 * 365 * DAY,
            ..claims()
        };
        assert_eq!(
            s.verify(&s.sign(&far), NOW, twelve_h),
            Err(TokenError::Expired)
        );
        let backwards = Claims {
            expires_ms: claims().created_ms - 1,
            ..claims()
        };
        assert_eq!(
            s.verify(&s.sign(&backwards), NOW, twelve_h),
            Err(TokenError::Expired)
        );
        // A valid token: fine until created + the cap, refused after (renewals or not).
        let t = s.sign(&claims());
        let created = claims().created_ms;
        assert!(s.verify(&t, created + twelve_h, twelve_h).is_ok());
        assert_eq!(
            s.verify(&t, created + twelve_h + 1, twelve_h),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_flipped_or_foreign_tokens_fail() {
        let s = TokenSigner::ephemeral();
        let t = s.sign(&claims());
        let raw = B64.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x01;
            assert_eq!(
                s.verify(&B64.encode(&r), NOW, DAY),
                Err(TokenError::Invalid),
                "{i}"
            );
        }
        assert!(TokenSigner::ephemeral().verify(&t, NOW, DAY).is_err());
        assert!(s.verify("", NOW, DAY).is_err());
        assert!(s.verify(&t[..t.len() - 2], NOW, DAY).is_err());
        assert!(s.verify("!!!", NOW, DAY).is_err());
    }

    #[test]
    fn key_file_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, g) = TokenSigner::load_or_generate(dir.path()).unwrap();
        assert!(g.is_some());
        let (b, g2) = TokenSigner::load_or_generate(dir.path()).unwrap();
        assert!(g2.is_none());
        assert_eq!(b.verify(&a.sign(&claims()), NOW, DAY).unwrap(), claims());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
    }
}
