//! Tests of the PostgreSQL index: the conformance suite (`conformance.rs`) run against
//! it, and what only PostgreSQL has: migrations under concurrent opens, the read-only
//! open, the URL (never in an error or a log line) and the factory. The server comes from
//! `STREAMVAULT_TEST_POSTGRES_URL` (`.ci/run` starts one); each test creates a database
//! of its own there and drops it at the end, so tests run in parallel. Without the
//! variable a test prints `SKIPPED: ...` and passes, except under CI (`CI` set), where
//! that is a failure.
//!
//! The databases use an ICU `en-US` default collation where the server has ICU, so the
//! suite also proves the schema's `COLLATE "C"` columns keep SQLite's bytewise order.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Connection};

use super::*;
use crate::index::conformance::{A, Backend, new_stream};

const URL_VAR: &str = "STREAMVAULT_TEST_POSTGRES_URL";

fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The test server's URL; `None` (after a `SKIPPED` line) when it is not configured,
/// a panic under CI.
fn server_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            let msg = format!(
                "{test}: {URL_VAR} is not set (a PostgreSQL server to create test databases on, \
                 e.g. postgres://postgres@127.0.0.1:5432/postgres; `bash .ci/run` starts one)"
            );
            if under_ci() {
                panic!("CI is set, so this is a failure: {msg}");
            }
            // Straight to the process's stderr, so libtest's capture does not hide it.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
            None
        }
    }
}

/// A database of one test's own, dropped (with whatever connections are left) when
/// this goes, also when the test panics.
struct TestDb {
    server: PgConnectOptions,
    name: String,
    opts: PgConnectOptions,
}

impl TestDb {
    async fn create(test: &str) -> Option<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = connect_options(&server_url(test)?).unwrap();
        let mut name = format!(
            "sv_{}_{}_{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        name.truncate(63);
        let mut c = PgConnection::connect_with(&server)
            .await
            .unwrap_or_else(|e| panic!("{URL_VAR}: cannot connect: {e}"));
        let icu = format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        );
        if sqlx::raw_sql(AssertSqlSafe(icu))
            .execute(&mut c)
            .await
            .is_err()
        {
            let plain = format!("CREATE DATABASE \"{name}\"");
            sqlx::raw_sql(AssertSqlSafe(plain))
                .execute(&mut c)
                .await
                .unwrap();
        }
        let _ = c.close().await;
        let opts = server.clone().database(&name);
        Some(Self { server, name, opts })
    }

    async fn open(&self) -> PostgresIndex {
        PostgresIndex::open_with(self.opts.clone(), 5)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread
        // of its own with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut c = PgConnection::connect_with(&server).await?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await?;
                c.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

#[async_trait]
impl Backend for TestDb {
    async fn open(&self) -> Arc<dyn Index> {
        Arc::new(TestDb::open(self).await)
    }
}

async fn postgres_backend(test: &str) -> Option<TestDb> {
    TestDb::create(test).await
}

crate::index::conformance::run_conformance_suite!(postgres_backend);

#[path = "postgres_cluster_tests.rs"]
mod cluster;

async fn schema_versions(db: &TestDb) -> Vec<i32> {
    let mut c = PgConnection::connect_with(&db.opts).await.unwrap();
    sqlx::query_scalar("SELECT version FROM streamvault_schema ORDER BY version")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_when_processes_open_one_database_at_once() {
    let Some(db) =
        TestDb::create("migrations_run_once_when_processes_open_one_database_at_once").await
    else {
        return;
    };
    let opens = (0..6).map(|_| {
        let opts = db.opts.clone();
        tokio::spawn(async move { PostgresIndex::open_with(opts, 1).await })
    });
    let opened: Vec<PostgresIndex> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let want: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
    assert_eq!(schema_versions(&db).await, want);
    // Each sees the one schema; opening again changes nothing.
    opened[0]
        .create_stream(new_stream("cam1", A), 10)
        .await
        .unwrap();
    assert_eq!(opened[5].stream_count().await.unwrap(), 1);
    for ix in &opened {
        ix.close().await;
    }
    let again = db.open().await;
    assert_eq!(schema_versions(&db).await, want);
    assert_eq!(again.stream_count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let Some(db) = TestDb::create("a_schema_newer_than_the_binary_is_refused").await else {
        return;
    };
    db.open().await.close().await;
    let mut c = PgConnection::connect_with(&db.opts).await.unwrap();
    sqlx::query("INSERT INTO streamvault_schema (version) VALUES (999)")
        .execute(&mut c)
        .await
        .unwrap();
    let e = PostgresIndex::open_with(db.opts.clone(), 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("newer than this binary"), "{e}");
    let e = PostgresIndex::open_read_only_with(db.opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema version 999"), "{e}");
}

#[tokio::test]
async fn the_read_only_open_reads_and_never_writes() {
    let Some(db) = TestDb::create("the_read_only_open_reads_and_never_writes").await else {
        return;
    };
    // Nothing there yet: no schema is created.
    let e = PostgresIndex::open_read_only_with(db.opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("run `serve` once"), "{e}");
    let rw = db.open().await;
    rw.create_stream(new_stream("cam1", A), 10).await.unwrap();
    let ro = PostgresIndex::open_read_only_with(db.opts.clone())
        .await
        .unwrap();
    assert_eq!(ro.stream_ids().await.unwrap(), vec![A.to_owned()]);
    assert!(ro.get_stream_by_id(A).await.unwrap().is_some());
    let e = ro
        .reserve_fragment_seqs(A, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("read-only"), "{e}");
    assert!(matches!(
        ro.create_stream(new_stream("cam2", "0000000000000000000000000000000c"), 10)
            .await,
        Err(IndexError::Db(_))
    ));
    assert_eq!(rw.reserve_fragment_seqs(A, 1).await.unwrap(), 0);
}

#[tokio::test]
async fn the_url_and_its_password_never_show() {
    // A URL that does not parse: the message names the setting, not the URL.
    let e = connect_options("postgres://sv:pw-Secret-1@db.example:notaport/video")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("index.postgres.url") && !e.contains("pw-Secret-1"),
        "{e}"
    );
    // Nothing listens on port 1: host, port and database only.
    let e = PostgresIndex::open("postgres://sv:pw-Secret-1@127.0.0.1:1/video", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("127.0.0.1:1/video") && !e.contains("pw-Secret-1"),
        "{e}"
    );
    // A live index: its Debug output (logged with the server's state) has no password.
    let Some(db) = TestDb::create("the_url_and_its_password_never_show").await else {
        return;
    };
    let ix = PostgresIndex::open_with(db.opts.clone().password("pw-Secret-1"), 1)
        .await
        .unwrap();
    let d = format!("{ix:?}");
    assert!(d.contains(&db.name) && !d.contains("pw-Secret-1"), "{d}");
}

#[tokio::test]
async fn the_factory_opens_the_backend_the_settings_name() {
    let Some(db) = TestDb::create("the_factory_opens_the_backend_the_settings_name").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::config::Settings {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    // Check (read-only) before anything was created: SQLite names the missing file.
    let e = crate::index::open_read_only(&settings)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is --data-dir right?"), "{e}");
    crate::index::open(&settings).await.unwrap();
    assert!(settings.index_path().exists());
    // PostgreSQL: the URL of the test database; no file appears in the data dir.
    let url = std::env::var(URL_VAR).unwrap();
    let (url, query) = url.split_once('?').unwrap_or((&url, ""));
    let authority_end = url.find("://").map_or(0, |i| i + 3);
    let base = match url[authority_end..].find('/') {
        Some(i) => &url[..authority_end + i],
        None => url,
    };
    let url = format!("{base}/{}?{query}", db.name);
    settings.data_dir = dir.path().join("pg");
    settings.index.backend = crate::config::IndexBackend::Postgres;
    settings.index.postgres.url = Some(crate::config::Secret(url));
    let ix = crate::index::open(&settings).await.unwrap();
    assert!(format!("{ix:?}").contains("PostgresIndex"));
    ix.create_stream(new_stream("cam1", A), 10).await.unwrap();
    let ro = crate::index::open_read_only(&settings).await.unwrap();
    assert_eq!(ro.stream_count().await.unwrap(), 1);
    assert!(!settings.index_path().exists());
    settings.index.postgres.url = None;
    let e = crate::index::open(&settings).await.unwrap_err().to_string();
    assert!(e.contains("index.postgres.url"), "{e}");
}
