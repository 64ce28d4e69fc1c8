//! HLS/DASH session tokens. A token is the session itself, signed by the server: a
//! fixed binary layout of [`Claims`] (session id, stream id, protocol, mode, selector
//! range, container, display options, creation and expiry) followed by an
//! HMAC-SHA256 (aws-lc-rs) over a domain label and those bytes, base64url-encoded
//! without padding so it needs no escaping in a query string. The HMAC key is 32
//! random bytes generated on first start into `<data_dir>/keys/session-token.key`
//! (mode 0600); deleting that file revokes every session. Tokens are verified in
//! constant time; nothing in a token is trusted before its MAC checks.

use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::clock::EpochMillis;

const VERSION: u8 = 1;
const LABEL: &[u8] = b"streamvault playback session v1\0";
const MAC_LEN: usize = 32;
const BODY_LEN: usize = 1 + 1 + 12 + 16 + 1 + 1 + 8 + 8 + 1 + 1 + 1 + 1 + 4 + 8 + 8;
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
}

impl Claims {
    /// A hex string naming the session in logs and state maps.
    pub fn session_hex(&self) -> String {
        hex::encode(self.session_id)
    }

    fn encode(&self) -> Option<[u8; BODY_LEN]> {
        let sid = hex::decode(&self.stream_id).ok()?;
        if sid.len() != 16 {
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
        Some(b)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != BODY_LEN || b[0] != VERSION {
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
        let text = std::fs::read(&path)?;
        crate::fsperm::warn_if_exposed(&path, "session token key");
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
        Ok((Self::from_key(&raw), generated))
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = claims.encode().expect("stream ids are 32 hex digits");
        let tag = hmac::sign(&self.key, &[LABEL, &body[..]].concat());
        let mut out = Vec::with_capacity(BODY_LEN + MAC_LEN);
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        B64.encode(out)
    }

    /// The claims of a token this server signed. Expiry is the caller's business
    /// (sessions can be renewed past the signed expiry).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > 512 {
            return Err(TokenError::Invalid);
        }
        let raw = B64.decode(token).map_err(|_| TokenError::Invalid)?;
        if raw.len() != BODY_LEN + MAC_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = raw.split_at(BODY_LEN);
        hmac::verify(&self.key, &[LABEL, body].concat(), tag).map_err(|_| TokenError::Invalid)?;
        Claims::decode(body).ok_or(TokenError::Invalid)
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
        }
    }

    #[test]
    fn round_trip_and_url_safe() {
        let s = TokenSigner::ephemeral();
        let t = s.sign(&claims());
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(s.verify(&t).unwrap(), claims());
    }

    #[test]
    fn forged_flipped_or_foreign_tokens_fail() {
        let s = TokenSigner::ephemeral();
        let t = s.sign(&claims());
        let raw = B64.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x01;
            assert_eq!(s.verify(&B64.encode(&r)), Err(TokenError::Invalid), "{i}");
        }
        assert!(TokenSigner::ephemeral().verify(&t).is_err());
        assert!(s.verify("").is_err());
        assert!(s.verify(&t[..t.len() - 2]).is_err());
        assert!(s.verify("!!!").is_err());
    }

    #[test]
    fn key_file_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, g) = TokenSigner::load_or_generate(dir.path()).unwrap();
        assert!(g.is_some());
        let (b, g2) = TokenSigner::load_or_generate(dir.path()).unwrap();
        assert!(g2.is_none());
        assert_eq!(b.verify(&a.sign(&claims())).unwrap(), claims());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
    }
}
