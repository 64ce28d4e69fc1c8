//! The `streamvault` command line: `serve` (run the server), `check` (verify a data
//! dir), the consumer commands in [`consume`] (`get-media`, `list-fragments`) and
//! [`images`] (`images`). Logging goes to stderr, filtered by `STREAMVAULT_LOG` or `RUST_LOG`
//! (default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

pub mod consume;
pub mod images;
pub mod progress;
pub mod put;

use crate::config::Settings;

/// `--version`: the package version and the git commit it was built from (`build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "streamvault",
    version = VERSION,
    about = "Self-hosted, wire-compatible Kinesis Video Streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded default: local disk + embedded index under --data-dir).
    Serve(ServeArgs),
    /// Verify index ↔ store invariants of a data dir, live or stopped (exit 1 on any
    /// violation, 2 when the check cannot run).
    Check(CheckArgs),
    /// Read a stream as MKV (GetMedia), to a file or standard output.
    GetMedia(consume::GetMediaArgs),
    /// List a stream's fragments in a time range (ListFragments).
    ListFragments(consume::ListFragmentsArgs),
    /// Upload MKV from a file or standard input (PutMedia), resuming after failures.
    Put(put::PutArgs),
    /// Print a presigned PutMedia URL for producers that cannot sign.
    Presign(put::PresignArgs),
    /// Save still images of a time range (GetImages) as numbered files plus index.json.
    Images(images::ImagesArgs),
}

/// Options every command that reads settings takes.
#[derive(Args, Debug)]
struct Common {
    /// TOML settings file (see docs/config.md).
    #[arg(long, env = "STREAMVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (index, local objects, generated keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Root access key id (also `STREAMVAULT_ACCESS_KEY_ID`).
    #[arg(long)]
    access_key_id: Option<String>,
    /// Root secret access key (also `STREAMVAULT_SECRET_ACCESS_KEY`).
    #[arg(long)]
    secret_access_key: Option<String>,
    /// Accept unsigned requests. For throwaway local use only.
    #[arg(long)]
    no_auth: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Also decrypt every fragment and compare its content hash with the index.
    #[arg(long)]
    deep: bool,
}

fn load_settings(c: &Common) -> anyhow::Result<Settings> {
    let mut s = Settings::load(c.config.as_deref(), std::env::vars())?;
    if let Some(path) = c.config.as_deref()
        && (s.secret_access_key.is_some() || !s.auth.keys.is_empty())
    {
        crate::fsperm::warn_if_exposed(path, "settings (with secret access keys)");
    }
    if let Some(d) = &c.data_dir {
        s.data_dir = d.clone();
    }
    Ok(s)
}

fn init_logging() {
    let filter = std::env::var("STREAMVAULT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    // Colour only for a terminal: escape codes in a log file or journal are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve(a).await,
            Command::Check(a) => check(a).await,
            Command::GetMedia(a) => consume::get_media(a).await.map(|()| ExitCode::SUCCESS),
            Command::ListFragments(a) => {
                consume::list_fragments(a).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Put(a) => put::put(a).await.map(|()| ExitCode::SUCCESS),
            Command::Presign(a) => put::presign(a).map(|()| ExitCode::SUCCESS),
            Command::Images(a) => images::images(a).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(&a.common)?;
    if let Some(l) = a.listen {
        settings.listen = l;
    }
    if let Some(k) = a.access_key_id {
        settings.access_key_id = Some(k);
    }
    if let Some(k) = a.secret_access_key {
        settings.secret_access_key = Some(crate::config::Secret(k));
    }
    if a.no_auth {
        settings.auth.enabled = false;
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    crate::server::run(listener, settings, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `check`: exit 0 when clean, 1 when an invariant is broken, 2 when the check could
/// not run (no index, no key, unreadable store).
async fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    match run_check(a).await {
        Ok(clean) => Ok(ExitCode::from(if clean { 0 } else { 1 })),
        Err(e) => {
            eprintln!("error: check could not run: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn run_check(a: CheckArgs) -> anyhow::Result<bool> {
    let settings = load_settings(&a.common)?;
    // Read-only: `check` may run beside a live server and must not make its commits
    // wait or fail (a checkpoint or migration would take the write lock). Opened first:
    // a missing SQLite index is the likeliest mistake (a wrong --data-dir).
    let index = crate::index::open_read_only(&settings).await?;
    let default_path = settings
        .data_dir
        .join("keys")
        .join(format!("{}.key", settings.keys.default_key_id));
    let mut files = settings.keys.files.clone();
    if !files.contains_key(&settings.keys.default_key_id) {
        if !default_path.exists() {
            anyhow::bail!("master key {} not found", default_path.display());
        }
        files.insert(settings.keys.default_key_id.clone(), default_path.clone());
    }
    let (keyring, _) =
        crate::store::Keyring::load(&settings.keys.default_key_id, &default_path, &files)?;
    let objects = crate::store::object_store_from_settings(&settings)?;
    let store = crate::store::FragmentStore::new(objects, Arc::new(keyring));
    let opts = crate::check::Options {
        deep: a.deep,
        local_root: (settings.store.backend == crate::config::StoreBackend::Local)
            .then(|| settings.local_store_path()),
    };
    let report = crate::check::check_with(index.as_ref(), &store, &opts).await?;
    println!(
        "checked {} fragments ({} decrypted), {} sessions, {} objects listed",
        report.fragments_checked,
        report.fragments_decrypted,
        report.sessions_checked,
        report.objects_listed,
    );
    println!(
        "awaiting collection (not problems): {} unreferenced objects, {} garbage rows, {} expired fragments, {} interrupted staged writes, {} segment tails past the durable end",
        report.unreferenced_objects.len(),
        report.pending_garbage_rows,
        report.expired_fragments,
        report.staging_leftovers.len(),
        report.segment_tails.len(),
    );
    if report.vanished_during_check > 0 {
        println!(
            "{} fragments were deleted while the check ran (live data dir)",
            report.vanished_during_check
        );
    }
    for k in &report.unreferenced_objects {
        println!("unreferenced: {k}");
    }
    for p in &report.staging_leftovers {
        println!("staged write: {p}");
    }
    for (k, n) in &report.segment_tails {
        println!("segment tail: {k} ({n} bytes past the durable end)");
    }
    for p in &report.problems {
        println!("PROBLEM: {p}");
    }
    if report.is_clean() {
        println!("clean");
    } else {
        println!("{} problems", report.problems.len());
    }
    Ok(report.is_clean())
}
