//! Who may call what. Access keys come from the settings (a root key with every right,
//! and keys limited to actions and stream-name patterns, like an IAM policy); when none
//! is configured the first start generates a root key pair into the data dir (0600) and
//! prints it once, on a terminal only. Verification of the SigV4 signature itself is in
//! [`sigv4`]; the HTTP middleware that applies both is `api::auth`.

pub mod access;
pub mod sigv4;

pub use access::Access;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{AuthSettings, KeySpec, Secret, Settings};
use crate::error::{Error, ErrorKind, Result};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
}

/// What a key may do, like an IAM policy: actions on streams whose names match.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `kinesisvideo:<Operation>` names, or `*` / `kinesisvideo:*`.
    pub actions: Vec<String>,
    /// Stream-name glob patterns (`*` matches any run of characters).
    pub streams: Vec<String>,
}

impl Policy {
    fn root() -> Self {
        Self {
            actions: vec!["*".into()],
            streams: vec!["*".into()],
        }
    }

    /// `action` is `kinesisvideo:<Operation>`.
    pub fn allows_action(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|a| a == "*" || a == "kinesisvideo:*" || a.eq_ignore_ascii_case(action))
    }

    pub fn allows_stream(&self, name: &str) -> bool {
        self.streams.iter().any(|p| glob_match(p, name))
    }
}

#[derive(Debug, Clone)]
struct Key {
    secret: Secret,
    policy: Arc<Policy>,
}

/// The configured keys and their rights.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    keys: HashMap<String, Key>,
}

/// A root key generated on first start.
#[derive(Debug)]
pub struct GeneratedRoot {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub path: std::path::PathBuf,
}

impl GeneratedRoot {
    /// Tells the operator about the new key. The secret is printed once, and only when
    /// stderr is a terminal: never into a log file, a pipe or a journal. Otherwise a
    /// warning names the file that holds it.
    pub fn announce(&self) {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            eprintln!(
                "\nstreamvault generated a root access key (saved in {}, mode 0600):\n  access key id:     {}\n  secret access key: {}\nUse them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for clients.\n",
                self.path.display(),
                self.access_key_id,
                self.secret_access_key.0
            );
        } else {
            tracing::warn!(
                path = %self.path.display(),
                access_key_id = %self.access_key_id,
                "generated a root access key; its secret is not logged (stderr is not a terminal): read it from the file"
            );
        }
    }
}

/// Matches a glob with `*` wildcards.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

impl KeyStore {
    /// Builds the key store from settings; generates (or reads back) a root key in the
    /// data dir when auth is on and no key is configured at all.
    pub fn load(settings: &Settings) -> anyhow::Result<(Self, Option<GeneratedRoot>)> {
        let mut keys = HashMap::new();
        let root = |secret: Secret| Key {
            secret,
            policy: Arc::new(Policy::root()),
        };
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            keys.insert(id.clone(), root(secret.clone()));
        } else if settings.access_key_id.is_some() || settings.secret_access_key.is_some() {
            anyhow::bail!("access_key_id and secret_access_key must be set together");
        }
        for k in &settings.auth.keys {
            let KeySpec {
                access_key_id,
                secret_access_key,
                actions,
                streams,
            } = k.clone();
            keys.insert(
                access_key_id,
                Key {
                    secret: secret_access_key,
                    policy: Arc::new(Policy { actions, streams }),
                },
            );
        }
        let mut generated = None;
        if settings.auth.enabled && keys.is_empty() {
            if settings.cluster_enabled() {
                anyhow::bail!(
                    "a cluster node (index.backend = \"postgres\") with auth on needs configured access keys (access_key_id and secret_access_key, or auth.keys): a generated root key would differ per node"
                );
            }
            let path = settings.data_dir.join("credentials");
            let (id, secret, fresh) = read_or_generate(&path)?;
            if fresh {
                generated = Some(GeneratedRoot {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    path: path.clone(),
                });
            }
            keys.insert(id, root(secret));
        }
        Ok((Self { keys }, generated))
    }

    /// A store with one root key; for tests.
    pub fn with_root(id: &str, secret: &str) -> Self {
        let mut keys = HashMap::new();
        keys.insert(
            id.to_owned(),
            Key {
                secret: Secret(secret.to_owned()),
                policy: Arc::new(Policy::root()),
            },
        );
        Self { keys }
    }

    /// The secret of a key.
    pub fn secret(&self, access_key_id: &str) -> Option<&str> {
        self.keys.get(access_key_id).map(|k| k.secret.0.as_str())
    }

    /// The policy of a key.
    pub fn policy(&self, access_key_id: &str) -> Option<Arc<Policy>> {
        self.keys.get(access_key_id).map(|k| k.policy.clone())
    }

    /// Checks that `who` may run `operation` (e.g. `GetMedia`) on `stream`, or, with
    /// `None`, the operation itself (requests go through [`Access`] instead; this is for
    /// credentials presented later, like a session token's issuing key).
    pub fn authorize(&self, who: &Principal, operation: &str, stream: Option<&str>) -> Result<()> {
        let Some(policy) = self.policy(&who.access_key_id) else {
            return Err(Error::new(
                ErrorKind::UnrecognizedClient,
                "unknown access key",
            ));
        };
        let access = Access::for_key(who.clone(), policy, operation, access::Method::Header);
        match stream {
            Some(s) => access.check_stream(s),
            None => access.check_action(),
        }
    }
}

fn random_chars(n: usize, alphabet: &[u8]) -> anyhow::Result<String> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut raw = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    Ok(raw
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect())
}

fn read_or_generate(path: &Path) -> anyhow::Result<(String, Secret, bool)> {
    if path.exists() {
        let text = std::fs::read_to_string(path)?;
        crate::fsperm::warn_if_exposed(path, "credentials");
        let t: toml::Table = text.parse()?;
        let get = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        match (get("access_key_id"), get("secret_access_key")) {
            (Some(id), Some(s)) => return Ok((id, Secret(s), false)),
            _ => anyhow::bail!(
                "{} must hold access_key_id and secret_access_key",
                path.display()
            ),
        }
    }
    let id = format!(
        "SV{}",
        random_chars(18, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")?
    );
    let secret = random_chars(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    )?;
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
    use std::io::Write;
    let mut f = opts.open(path)?;
    writeln!(
        f,
        "access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\""
    )?;
    f.sync_all()?;
    Ok((id, Secret(secret), true))
}

/// Auth as configured for a running server.
#[derive(Debug, Clone)]
pub struct Auth {
    pub enabled: bool,
    pub keys: KeyStore,
    pub max_skew: std::time::Duration,
}

impl Auth {
    pub fn new(settings: &AuthSettings, keys: KeyStore) -> Self {
        Self {
            enabled: settings.enabled,
            keys,
            max_skew: settings.max_clock_skew,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("cam-*", "cam-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("cam-*", "door-1"));
        assert!(!glob_match("cam", "cam-1"));
        assert!(glob_match("*-1", "door-1"));
    }

    #[test]
    fn policies() {
        let mut s = Settings::default();
        s.auth.keys.push(KeySpec {
            access_key_id: "READER".into(),
            secret_access_key: Secret("x".into()),
            actions: vec!["kinesisvideo:GetMedia".into()],
            streams: vec!["cam-*".into()],
        });
        let (ks, gen_root) = KeyStore::load(&s).unwrap();
        assert!(
            gen_root.is_none(),
            "a configured key means no generated root"
        );
        let who = Principal {
            access_key_id: "READER".into(),
        };
        assert!(ks.authorize(&who, "GetMedia", Some("cam-1")).is_ok());
        assert_eq!(
            ks.authorize(&who, "GetMedia", Some("door-1"))
                .unwrap_err()
                .kind,
            ErrorKind::NotAuthorized
        );
        assert_eq!(
            ks.authorize(&who, "PutMedia", Some("cam-1"))
                .unwrap_err()
                .kind,
            ErrorKind::NotAuthorized
        );
        let nobody = Principal {
            access_key_id: "NOPE".into(),
        };
        assert_eq!(
            ks.authorize(&nobody, "GetMedia", None).unwrap_err().kind,
            ErrorKind::UnrecognizedClient
        );
    }

    #[test]
    fn root_key_is_generated_once_privately() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings {
            data_dir: dir.path().to_owned(),
            ..Settings::default()
        };
        let (ks, g) = KeyStore::load(&s).unwrap();
        let g = g.expect("generated");
        assert_eq!(
            ks.secret(&g.access_key_id),
            Some(g.secret_access_key.0.as_str())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&g.path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (ks2, g2) = KeyStore::load(&s).unwrap();
        assert!(g2.is_none(), "printed only on first start");
        assert_eq!(
            ks2.secret(&g.access_key_id),
            Some(g.secret_access_key.0.as_str())
        );
        assert!(!format!("{g:?}").contains(&g.secret_access_key.0));
    }
}
