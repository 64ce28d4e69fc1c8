//! Settings: defaults, file and environment layering, validation.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(s.default_retention_hours, 24);
    assert_eq!(s.ingest.max_fragment_bytes, 50_000_000);
    assert_eq!(s.listen.port(), 8080);
}

#[test]
fn file_then_env_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "region = \"eu-west-1\"\n[ingest]\nmax_tracks = 2\nidle_timeout = \"10s\"\n",
    )
    .unwrap();
    let s = Settings::load(
        Some(&f),
        env(&[
            ("STREAMVAULT_INGEST__MAX_TRACKS", "3"),
            ("STREAMVAULT_DEFAULT_RETENTION_HOURS", "0"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(s.region, "eu-west-1");
    assert_eq!(s.ingest.max_tracks, 3);
    assert_eq!(s.ingest.idle_timeout, Duration::from_secs(10));
    assert_eq!(s.default_retention_hours, 0);
}

#[test]
fn unknown_keys_are_rejected() {
    let e = Settings::load(None, env(&[("STREAMVAULT_NO_SUCH_THING", "1")])).unwrap_err();
    assert!(e.to_string().contains("no_such_thing"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[ingest]\nmax_trakcs = 2\n").unwrap();
    assert!(Settings::load(Some(&f), env(&[])).is_err());
}

#[test]
fn digit_strings_and_tool_variables_from_env() {
    let s = Settings::load(
        None,
        env(&[
            ("STREAMVAULT_ACCOUNT_ID", "123456789012"),
            ("STREAMVAULT_AWS_CLI", "/x/aws"),
            ("STREAMVAULT_PYTHON", "/x/py"),
        ]),
    )
    .unwrap();
    assert_eq!(s.account_id, "123456789012");
}

#[test]
fn bad_values_are_rejected() {
    assert!(
        Settings::load(
            None,
            env(&[("STREAMVAULT_DEFAULT_RETENTION_HOURS", "87601")])
        )
        .is_err()
    );
    assert!(Settings::load(None, env(&[("STREAMVAULT_ACCOUNT_ID", "12")])).is_err());
}

#[test]
fn image_settings_from_env_and_their_rules() {
    let s = Settings::load(
        None,
        env(&[
            ("STREAMVAULT_IMAGES__MAX_RANGE", "60s"),
            ("STREAMVAULT_IMAGES__MAX_PAGE_SIZE", "10"),
            ("STREAMVAULT_IMAGES__WEBHOOK_URL", "http://127.0.0.1:1/hook"),
        ]),
    )
    .unwrap();
    assert_eq!(s.images.max_range, Duration::from_secs(60));
    assert_eq!(s.images.max_page_size, 10);
    assert_eq!(s.images.min_sampling_interval, Duration::from_millis(200));
    assert_eq!(s.images_local_dir(), s.data_dir.join("images"));
    for bad in [
        ("STREAMVAULT_IMAGES__MAX_PAGE_SIZE", "0"),
        ("STREAMVAULT_IMAGES__DEFAULT_SAMPLING_INTERVAL", "100ms"),
        ("STREAMVAULT_IMAGES__WEBHOOK_URL", "ftp://x"),
    ] {
        assert!(Settings::load(None, env(&[bad])).is_err(), "{bad:?}");
    }
}

#[test]
fn index_backend_from_env_and_its_rules() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(s.index.backend, IndexBackend::Sqlite);
    assert_eq!(s.index.postgres.max_connections, 10);
    let s = Settings::load(
        None,
        env(&[
            ("STREAMVAULT_INDEX__BACKEND", "postgres"),
            (
                "STREAMVAULT_INDEX__POSTGRES__URL",
                "postgres://sv:hunter2@db.example:5433/video",
            ),
            ("STREAMVAULT_INDEX__POSTGRES__MAX_CONNECTIONS", "4"),
            ("STREAMVAULT_KEYS__DEFAULT_KEY_ID", "shared"),
            ("STREAMVAULT_KEYS__FILES__SHARED", "/etc/sv/master.key"),
            ("STREAMVAULT_KEYS__SESSION_TOKEN_FILE", "/etc/sv/token.key"),
            ("STREAMVAULT_ACCESS_KEY_ID", "AKIDCLUSTER"),
            ("STREAMVAULT_SECRET_ACCESS_KEY", "cluster-secret"),
            // The test suite's server addresses are no settings.
            (
                "STREAMVAULT_TEST_POSTGRES_URL",
                "postgres://x@127.0.0.1/postgres",
            ),
            ("STREAMVAULT_TEST_S3_ENDPOINT", "http://127.0.0.1:9000"),
        ]),
    )
    .unwrap();
    assert_eq!(s.index.backend, IndexBackend::Postgres);
    assert_eq!(s.index.postgres.max_connections, 4);
    assert!(!format!("{s:?}").contains("hunter2"));
    let e = Settings::load(None, env(&[("STREAMVAULT_INDEX__BACKEND", "postgres")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("index.postgres.url"), "{e}");
    for bad in [
        ("STREAMVAULT_INDEX__BACKEND", "mysql"),
        ("STREAMVAULT_INDEX__POSTGRES__MAX_CONNECTIONS", "0"),
    ] {
        assert!(Settings::load(None, env(&[bad])).is_err(), "{bad:?}");
    }
}

#[test]
fn a_cluster_node_reads_shared_secrets_and_never_generates_them() {
    let base = [
        ("STREAMVAULT_INDEX__BACKEND", "postgres"),
        ("STREAMVAULT_INDEX__POSTGRES__URL", "postgres://x@db/sv"),
        ("STREAMVAULT_KEYS__DEFAULT_KEY_ID", "shared"),
        ("STREAMVAULT_KEYS__FILES__SHARED", "/etc/sv/master.key"),
        ("STREAMVAULT_KEYS__SESSION_TOKEN_FILE", "/etc/sv/token.key"),
        ("STREAMVAULT_ACCESS_KEY_ID", "AKIDCLUSTER"),
        ("STREAMVAULT_SECRET_ACCESS_KEY", "cluster-secret"),
        ("STREAMVAULT_CLUSTER__NODE_ID", "node-7"),
        ("STREAMVAULT_CLUSTER__LEASE_TTL", "9s"),
    ];
    let s = Settings::load(None, env(&base)).unwrap();
    assert!(s.cluster_enabled());
    assert_eq!(s.cluster.node_id(), "node-7");
    assert_eq!(s.cluster.lease_ttl, std::time::Duration::from_secs(9));
    assert_eq!(s.cluster.lease_renew, std::time::Duration::from_secs(2));
    assert!(!Settings::default().cluster_enabled());
    // Each missing shared secret is refused, naming the setting to set.
    for (drop, names) in [
        ("STREAMVAULT_KEYS__FILES__SHARED", "keys.files"),
        (
            "STREAMVAULT_KEYS__SESSION_TOKEN_FILE",
            "keys.session_token_file",
        ),
    ] {
        let pairs: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
        let e = Settings::load(None, env(&pairs)).unwrap_err().to_string();
        assert!(e.contains(names), "without {drop}: {e}");
    }
    // No access key configured: the key store refuses to generate a per-node root key
    // (access keys may also come from the command line, after the settings).
    let no_keys = Settings::load(None, env(&base[..5])).unwrap();
    let e = crate::auth::KeyStore::load(&no_keys)
        .unwrap_err()
        .to_string();
    assert!(e.contains("access_key_id"), "{e}");
    assert!(!no_keys.data_dir.join("credentials").exists());
    let mut short = base.to_vec();
    short.push(("STREAMVAULT_CLUSTER__LEASE_RENEW", "5s"));
    let e = Settings::load(None, env(&short)).unwrap_err().to_string();
    assert!(e.contains("cluster.lease_ttl"), "{e}");
}

#[test]
fn secrets_are_not_in_debug_output() {
    let mut s = Settings::default();
    s.store.s3.secret_access_key = Some("SUPERSECRETVALUE".into());
    s.secret_access_key = Some(Secret("ROOTSECRETVALUE".into()));
    s.auth.keys.push(KeySpec {
        access_key_id: "K".into(),
        secret_access_key: Secret("KEYSECRETVALUE".into()),
        actions: vec![],
        streams: vec![],
    });
    let d = format!("{s:?}");
    assert!(
        !d.contains("SUPERSECRETVALUE")
            && !d.contains("ROOTSECRETVALUE")
            && !d.contains("KEYSECRETVALUE")
    );
}
