//! Envelope encryption. Master keys (the keyring, named by a stream's `KmsKeyId`) wrap
//! one random AES-256 data key per stream; the data key encrypts every object of that
//! stream with AES-256-GCM (aws-lc-rs).
//!
//! Sealed object layout (all integers big-endian):
//!
//! ```text
//! "SVLT" | version u8 (=1) | kind u8 | key-id length u8 | key id (the stream id) | nonce (12)
//! | ciphertext | GCM tag (16)
//! ```
//!
//! The additional authenticated data is the whole header followed by the object's
//! identity (stream id and, for fragments, the sequence number), so flipping any bit, or
//! moving an object to another stream's or fragment's key, fails authentication.
//! Nonces are random (96 bits); a data key seals at most one object per fragment, far
//! below the 2^32 messages random-nonce GCM allows per key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8; 4] = b"SVLT";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const WRAP_AAD: &[u8] = b"streamvault data key v1:";

/// What a sealed blob holds; part of the authenticated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobKind {
    Fragment = 1,
    SessionHeader = 2,
    /// A generated image; identity from its file name (`keys::image_identity`).
    Image = 3,
}

/// Crypto failures. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("unknown master key: key_id={0}")]
    UnknownKey(String),
    #[error("object failed authentication (tampered, truncated or moved): {0}")]
    Integrity(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("random number generator failed")]
    Rng,
}

/// One AES-256-GCM key. Debug output never shows the key.
pub struct SecretKey(LessSafeKey);

impl SecretKey {
    fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let k = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::Rng)?;
        Ok(Self(LessSafeKey::new(k)))
    }

    fn random() -> Result<(Self, [u8; 32]), CryptoError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| CryptoError::Rng)?;
        Ok((Self::from_bytes(&raw)?, raw))
    }

    fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<[u8; NONCE_LEN], CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Rng)?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| CryptoError::Rng)?;
        out.extend_from_slice(tag.as_ref());
        Ok(nonce)
    }

    fn open(&self, nonce: &[u8], aad: &[u8], ciphertext_and_tag: &mut [u8]) -> Result<usize, ()> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ())?;
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad), ciphertext_and_tag)
            .map_err(|_| ())?;
        Ok(plain.len())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// The master keys, by id.
#[derive(Debug)]
pub struct Keyring {
    keys: BTreeMap<String, SecretKey>,
    default_id: String,
}

/// Outcome of loading the keyring, for the caller to log.
#[derive(Debug, Default)]
pub struct KeyringLoad {
    /// Set when the default key was generated during this load.
    pub generated: Option<PathBuf>,
}

impl Keyring {
    /// Loads `files` and the default key; generates the default key (mode 0600) at
    /// `default_path` when it is not listed in `files` and does not exist yet.
    pub fn load(
        default_id: &str,
        default_path: &Path,
        files: &BTreeMap<String, PathBuf>,
    ) -> Result<(Self, KeyringLoad), CryptoError> {
        let mut keys = BTreeMap::new();
        let mut load = KeyringLoad::default();
        for (id, path) in files {
            keys.insert(id.clone(), read_key_file(path)?);
        }
        if !keys.contains_key(default_id) {
            if !default_path.exists() {
                generate_key_file(default_path)?;
                load.generated = Some(default_path.to_owned());
            }
            keys.insert(default_id.to_owned(), read_key_file(default_path)?);
        }
        Ok((
            Self {
                keys,
                default_id: default_id.to_owned(),
            },
            load,
        ))
    }

    /// A keyring with one random in-memory key; for tests.
    pub fn ephemeral(id: &str) -> Self {
        let (k, _) = SecretKey::random().expect("rng");
        Self {
            keys: BTreeMap::from([(id.to_owned(), k)]),
            default_id: id.to_owned(),
        }
    }

    pub fn default_id(&self) -> &str {
        &self.default_id
    }

    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Creates a data key for `stream_id` and returns it with its wrapped form
    /// (`nonce | ciphertext | tag`), to be stored in the index.
    pub fn new_data_key(
        &self,
        key_id: &str,
        stream_id: &str,
    ) -> Result<(DataKey, Vec<u8>), CryptoError> {
        let master = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.into()))?;
        let (dek, raw) = SecretKey::random()?;
        let mut wrapped = Vec::with_capacity(NONCE_LEN + 32 + TAG_LEN);
        wrapped.extend_from_slice(&[0u8; NONCE_LEN]);
        let aad = [WRAP_AAD, stream_id.as_bytes()].concat();
        let nonce = master.seal(&aad, &raw, &mut wrapped)?;
        wrapped[..NONCE_LEN].copy_from_slice(&nonce);
        Ok((
            DataKey {
                stream_id: stream_id.to_owned(),
                key: dek,
            },
            wrapped,
        ))
    }

    /// Unwraps a stream's data key.
    pub fn unwrap_data_key(
        &self,
        key_id: &str,
        stream_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let master = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.into()))?;
        if wrapped.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(CryptoError::Integrity(format!(
                "wrapped data key has bad length: stream_id={stream_id}"
            )));
        }
        let (nonce, rest) = wrapped.split_at(NONCE_LEN);
        let mut buf = rest.to_vec();
        let aad = [WRAP_AAD, stream_id.as_bytes()].concat();
        let n = master.open(nonce, &aad, &mut buf).map_err(|_| {
            CryptoError::Integrity(format!("data key does not unwrap: stream_id={stream_id}"))
        })?;
        let key = SecretKey::from_bytes(&buf[..n])?;
        Ok(DataKey {
            stream_id: stream_id.to_owned(),
            key,
        })
    }
}

/// A stream's unwrapped data key. Lives only in memory.
#[derive(Debug)]
pub struct DataKey {
    stream_id: String,
    key: SecretKey,
}

impl DataKey {
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Seals `plaintext` as an object of `kind` whose identity is `identity`
    /// (e.g. the fragment sequence number).
    pub fn seal(
        &self,
        kind: BlobKind,
        identity: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let header_len = 7 + self.stream_id.len() + NONCE_LEN;
        let mut out = Vec::with_capacity(header_len + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.push(self.stream_id.len() as u8);
        out.extend_from_slice(self.stream_id.as_bytes());
        out.extend_from_slice(&[0u8; NONCE_LEN]);
        // The nonce is chosen inside `seal`; the header carries it, so authenticate the
        // header without the nonce bytes and the nonce through GCM itself.
        let aad = self.aad(&out[..header_len - NONCE_LEN], identity);
        // Encrypted in place after the header: one copy of the plaintext.
        let nonce = self.key.seal(&aad, plaintext, &mut out)?;
        out[header_len - NONCE_LEN..header_len].copy_from_slice(&nonce);
        Ok(out)
    }

    /// Opens a sealed object; any change to it, or a different identity, fails.
    pub fn open(
        &self,
        kind: BlobKind,
        identity: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let what = || {
            format!(
                "stream_id={} kind={kind:?} identity={identity}",
                self.stream_id
            )
        };
        let bad = |why: &str| CryptoError::Integrity(format!("{why}: {}", what()));
        if sealed.len() < 7 || &sealed[..4] != MAGIC {
            return Err(bad("not a streamvault object (bad magic)"));
        }
        if sealed[4] != VERSION {
            return Err(bad(&format!("unsupported format version {}", sealed[4])));
        }
        if sealed[5] != kind as u8 {
            return Err(bad("object kind does not match"));
        }
        let id_len = sealed[6] as usize;
        let header_len = 7 + id_len + NONCE_LEN;
        if sealed.len() < header_len + TAG_LEN {
            return Err(bad("object is truncated"));
        }
        if &sealed[7..7 + id_len] != self.stream_id.as_bytes() {
            return Err(bad("object belongs to another stream"));
        }
        let aad = self.aad(&sealed[..header_len - NONCE_LEN], identity);
        let nonce = &sealed[header_len - NONCE_LEN..header_len];
        let mut buf = sealed[header_len..].to_vec();
        let n = self
            .key
            .open(nonce, &aad, &mut buf)
            .map_err(|_| bad("authentication failed"))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn aad(&self, header: &[u8], identity: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(header.len() + self.stream_id.len() + 9);
        aad.extend_from_slice(header);
        aad.extend_from_slice(self.stream_id.as_bytes());
        aad.push(b'/');
        aad.extend_from_slice(&identity.to_be_bytes());
        aad
    }
}

/// Bytes a sealed object adds to its plaintext for a stream id of `id_len` bytes.
pub fn sealed_overhead(id_len: usize) -> u64 {
    (7 + id_len + NONCE_LEN + TAG_LEN) as u64
}

fn read_key_file(path: &Path) -> Result<SecretKey, CryptoError> {
    let err = |reason: String| CryptoError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let raw = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    crate::fsperm::warn_if_exposed(path, "master key");
    let trimmed: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let bytes = if raw.len() == 32 {
        raw
    } else if trimmed.len() == 64 {
        hex::decode(&trimmed)
            .map_err(|_| err("expected 32 raw bytes or 64 hex characters".into()))?
    } else {
        return Err(err("expected 32 raw bytes or 64 hex characters".into()));
    };
    SecretKey::from_bytes(&bytes)
}

fn generate_key_file(path: &Path) -> Result<(), CryptoError> {
    use std::io::Write;
    let err = |reason: String| CryptoError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| CryptoError::Rng)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
    f.write_all(hex::encode(raw).as_bytes())
        .map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "0123456789abcdef0123456789abcdef";
    const SID2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn round_trip_and_wrapping() {
        let ring = Keyring::ephemeral("k1");
        let (dek, wrapped) = ring.new_data_key("k1", SID).unwrap();
        let sealed = dek.seal(BlobKind::Fragment, 7, b"hello fragment").unwrap();
        assert_eq!(sealed.len() as u64, 14 + sealed_overhead(SID.len()));
        let dek2 = ring.unwrap_data_key("k1", SID, &wrapped).unwrap();
        assert_eq!(
            dek2.open(BlobKind::Fragment, 7, &sealed).unwrap(),
            b"hello fragment"
        );
        // The wrapped key is bound to its stream.
        assert!(ring.unwrap_data_key("k1", SID2, &wrapped).is_err());
        assert!(matches!(
            ring.new_data_key("nope", SID),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn every_flipped_bit_fails() {
        let ring = Keyring::ephemeral("k1");
        let (dek, _) = ring.new_data_key("k1", SID).unwrap();
        let sealed = dek.seal(BlobKind::Fragment, 1, b"0123456789").unwrap();
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut t = sealed.clone();
                t[i] ^= 1 << bit;
                assert!(
                    dek.open(BlobKind::Fragment, 1, &t).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        assert!(
            dek.open(BlobKind::Fragment, 1, &sealed[..sealed.len() - 1])
                .is_err()
        );
    }

    #[test]
    fn identity_and_kind_are_bound() {
        let ring = Keyring::ephemeral("k1");
        let (dek, _) = ring.new_data_key("k1", SID).unwrap();
        let sealed = dek.seal(BlobKind::Fragment, 1, b"abc").unwrap();
        assert!(dek.open(BlobKind::Fragment, 2, &sealed).is_err());
        assert!(dek.open(BlobKind::SessionHeader, 1, &sealed).is_err());
        let (other, _) = ring.new_data_key("k1", SID2).unwrap();
        assert!(other.open(BlobKind::Fragment, 1, &sealed).is_err());
    }

    #[test]
    fn generated_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys/default.key");
        let (ring, load) = Keyring::load("default", &p, &BTreeMap::new()).unwrap();
        assert_eq!(load.generated.as_deref(), Some(p.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (dek, wrapped) = ring.new_data_key("default", SID).unwrap();
        let sealed = dek.seal(BlobKind::Fragment, 3, b"x").unwrap();
        let (ring2, load2) = Keyring::load("default", &p, &BTreeMap::new()).unwrap();
        assert!(load2.generated.is_none());
        let dek2 = ring2.unwrap_data_key("default", SID, &wrapped).unwrap();
        assert_eq!(dek2.open(BlobKind::Fragment, 3, &sealed).unwrap(), b"x");
    }
}
