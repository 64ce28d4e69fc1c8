//! Assembling and running the server. [`run`] is what `streamvault serve` and the tests
//! call: it builds the components from settings (or takes injected ones through
//! [`Server::builder`]), serves on a listener the caller bound, and on shutdown stops
//! accepting, lets in-flight requests finish and PutMedia sessions persist what they
//! received (up to `http.shutdown_drain_timeout`), stops background tasks and closes the
//! index cleanly.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Settings, StoreBackend};
use crate::gc::{Sweeper, Trigger};
use crate::index::Index;
use crate::ingest::Ingest;
use crate::playback::Playback;
use crate::retention::Retention;
use crate::store::{self, FragmentStore, Keyring};
use crate::streams::Catalog;

/// Builds a [`Server`] from settings plus optional injected components.
#[derive(Debug)]
pub struct ServerBuilder {
    settings: Settings,
    clock: Option<SharedClock>,
    objects: Option<Arc<dyn ObjectStore>>,
    keyring: Option<Keyring>,
    segment_faults: Option<Arc<crate::store::faults::Faults>>,
}

impl ServerBuilder {
    /// Injects faults into the local segment backend and the group commit (`Op::Append`,
    /// `Op::Sync`, `Op::IndexCommit`; tests).
    pub fn with_segment_faults(mut self, faults: Arc<crate::store::faults::Faults>) -> Self {
        self.segment_faults = Some(faults);
        self
    }

    /// Uses this clock instead of the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Uses this object store instead of the one named in the settings.
    pub fn with_object_store(mut self, objects: Arc<dyn ObjectStore>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Uses this keyring instead of loading the configured key files.
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Opens the index (the backend `index.backend` names), the store and the keyring.
    pub async fn build(self) -> anyhow::Result<Server> {
        let settings = self.settings;
        std::fs::create_dir_all(&settings.data_dir)?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let keyring = match self.keyring {
            Some(k) => k,
            None => {
                let default_path = settings
                    .data_dir
                    .join("keys")
                    .join(format!("{}.key", settings.keys.default_key_id));
                let (ring, load) = Keyring::load(
                    &settings.keys.default_key_id,
                    &default_path,
                    &settings.keys.files,
                )?;
                if let Some(p) = load.generated {
                    tracing::warn!(
                        path = %p.display(),
                        "generated a new master key; back it up: without it no stored fragment can be read"
                    );
                }
                ring
            }
        };
        let (objects, local_root) = match self.objects {
            Some(o) => (o, None),
            None => (
                store::object_store_from_settings(&settings)?,
                (settings.store.backend == StoreBackend::Local)
                    .then(|| settings.local_store_path()),
            ),
        };
        let (keys, generated) = crate::auth::KeyStore::load(&settings)?;
        if let Some(g) = generated {
            g.announce();
        }
        let auth = Arc::new(crate::auth::Auth::new(&settings.auth, keys));
        if !auth.enabled {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--no-auth): anyone who can reach this server can read, write and delete every stream"
            );
        }
        let index = crate::index::open(&settings).await?;
        let mut store = FragmentStore::new(objects, Arc::new(keyring));
        if let Some(root) = &local_root {
            store = store.with_local_segments(root.clone());
        }
        // Every API reads through the retention view: expired fragments are invisible
        // before the retention task deletes them.
        let view = index.retention_view(clock.clone());
        let catalog = Catalog::new(&settings, view, store.clone(), clock.clone());
        let signer = match &settings.keys.session_token_file {
            Some(path) => crate::playback::token::TokenSigner::load_file(path)?,
            None => {
                let (signer, generated) = crate::playback::token::TokenSigner::load_or_generate(
                    &settings.data_dir.join("keys"),
                )?;
                if let Some(p) = generated {
                    tracing::info!(path = %p.display(), "generated the HLS/DASH session token key");
                }
                signer
            }
        };
        let playback = Arc::new(Playback::new(
            settings.playback.clone(),
            signer,
            catalog.clone(),
        ));
        Ok(Server {
            settings: Arc::new(settings),
            index,
            catalog,
            clock,
            auth,
            local_root,
            gc: Trigger::default(),
            playback,
            segment_faults: self.segment_faults,
        })
    }
}

/// A built server, ready to serve.
#[derive(Debug)]
pub struct Server {
    settings: Arc<Settings>,
    /// The raw index (no retention view): background tasks and shutdown.
    index: Arc<dyn Index>,
    catalog: Catalog,
    clock: SharedClock,
    auth: Arc<crate::auth::Auth>,
    /// The local backend's directory, when the store was built from the settings.
    local_root: Option<PathBuf>,
    gc: Trigger,
    playback: Arc<Playback>,
    segment_faults: Option<Arc<crate::store::faults::Faults>>,
}

impl Server {
    pub fn builder(settings: Settings) -> ServerBuilder {
        ServerBuilder {
            settings,
            clock: None,
            objects: None,
            keyring: None,
            segment_faults: None,
        }
    }

    /// Wakes the garbage sweeper; [`Trigger::run_now`] waits for a whole sweep.
    pub fn gc_trigger(&self) -> Trigger {
        self.gc.clone()
    }

    /// Wakes the retention task; [`Trigger::run_now`] waits for a whole pass.
    pub fn retention_trigger(&self) -> Trigger {
        self.catalog.retention_trigger().clone()
    }

    /// Serves on `listener` until `shutdown` completes. Startup recovery of the object
    /// store (orphans, interrupted staged writes from before this start) runs in the
    /// background while requests are served; pending garbage rows are completed by the
    /// sweeper right after.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let gc_wake = self.gc.notify_handle();
        let stop = CancellationToken::new();
        let sessions = tokio_util::task::TaskTracker::new();
        let images = crate::images::ImageService::new(&self.settings);
        let ingest = Arc::new(Ingest::new(self.settings.ingest.clone()));
        let notifier = crate::notify::Notifier::new(
            self.catalog.clone(),
            self.settings.notifications.clone(),
            stop.clone(),
        );
        // Segments a crash left open are sealed and their torn tails cut before anything
        // is appended (I8).
        let store = self.catalog.store().clone();
        crate::ingest::commit::recover_open_segments(
            &store,
            self.index.as_ref(),
            crate::clock::Clock::now_ms(self.clock.as_ref()),
        )
        .await?;
        let public_url: Arc<str> = self.settings.public_base_url(addr).into();
        // A node on the shared index takes its lease before it ingests anything.
        let cluster = if self.settings.cluster_enabled() {
            let coord = self.index.coordinator().ok_or_else(|| {
                anyhow::anyhow!("index.backend = \"postgres\" did not give a cluster coordinator")
            })?;
            if self.settings.store.backend == StoreBackend::Local {
                tracing::warn!(
                    "cluster node on the local store: other nodes read this node's fragments only if they share store.local_path; use store.backend = \"s3\" for more than one machine"
                );
            }
            Some(
                crate::cluster::Membership::join(coord, &self.settings.cluster, &public_url)
                    .await?,
            )
        } else {
            None
        };
        let lease_stop = CancellationToken::new();
        let lease_task = cluster.clone().map(|m| m.spawn(lease_stop.clone()));
        let commit_stop = CancellationToken::new();
        let (committer, commit_task) = crate::ingest::commit::Committer::spawn(
            store,
            self.index.clone(),
            self.clock.clone(),
            &self.settings.store,
            self.segment_faults.clone(),
            cluster.clone(),
            commit_stop.clone(),
        )
        .await;
        ingest.set_committer(committer);
        crate::images::generation::Generator {
            catalog: self.catalog.clone(),
            images: images.clone(),
            settings: self.settings.clone(),
            notifier: notifier.clone(),
        }
        .spawn(ingest.persisted_events(), stop.clone());
        notifier.follow(ingest.persisted_events(), stop.clone());
        let state = AppState {
            public_url,
            settings: self.settings.clone(),
            catalog: self.catalog.clone(),
            metrics: crate::metrics::handle(),
            gc_wake: gc_wake.clone(),
            ingest,
            shutdown: stop.clone(),
            sessions: sessions.clone(),
            auth: self.auth.clone(),
            playback: self.playback.clone(),
            images,
            cluster: cluster.clone(),
        };
        let sweeper = Sweeper {
            index: self.index.clone(),
            store: self.catalog.store().clone(),
            orphan_min_age: self.settings.gc.orphan_min_age,
            local_root: self.local_root.clone(),
            cluster: cluster.clone(),
        };
        // Recovery runs in the background, so a large store does not delay start-up; it
        // only touches objects from before this moment (see `Sweeper::recover`).
        let started_ms = crate::clock::Clock::now_ms(&SystemClock);
        let gc_task = tokio::spawn(sweeper.run(
            Some(started_ms),
            self.settings.gc.interval,
            self.gc.clone(),
            stop.clone(),
        ));
        let retention = Retention {
            index: self.index.clone(),
            store: self.catalog.store().clone(),
            clock: self.clock.clone(),
            settings: self.settings.retention.clone(),
            cluster: cluster.clone(),
        };
        let retention_task =
            tokio::spawn(retention.run(self.catalog.retention_trigger().clone(), stop.clone()));
        tokio::spawn(self.playback.clone().purge_expired(stop.clone()));
        crate::memtrim::spawn(self.settings.ingest.memory_trim_interval, stop.clone());

        let app = api::router(state);
        let scheme = if self.settings.tls.enabled() {
            "https"
        } else {
            "http"
        };
        let fd_limit = crate::listener::raise_fd_limit();
        tracing::info!(
            max_connections = self.settings.http.max_connections,
            open_files_limit = fd_limit,
            "listening on {scheme}://{addr}"
        );
        let graceful = stop.clone();
        let began = Arc::new(std::sync::OnceLock::<Instant>::new());
        let began_at = began.clone();
        let signal = async move {
            shutdown.await;
            let _ = began_at.set(Instant::now());
            tracing::info!(
                "shutting down: no new connections; open uploads finish their open fragment and persist what they received"
            );
            graceful.cancel();
        };
        let tls = if self.settings.tls.enabled() {
            Some(crate::tls::acceptor(&self.settings.tls)?)
        } else {
            None
        };
        tokio::spawn(signal);
        let drain = self.settings.http.shutdown_drain_timeout;
        crate::listener::serve(
            listener,
            tls,
            app,
            self.settings.http.clone(),
            stop.clone(),
            drain,
        )
        .await;
        // Connections are closed or timed out; a session whose client went away may still
        // be persisting. Wait for those within what is left of the drain time.
        sessions.close();
        let left = drain.saturating_sub(began.get().map_or(drain, |t| t.elapsed()));
        if tokio::time::timeout(left, sessions.wait()).await.is_err() {
            tracing::warn!(
                sessions = sessions.len(),
                "PutMedia sessions still persisting after http.shutdown_drain_timeout; exiting without them"
            );
        }
        stop.cancel();
        // Uploads have ended: the committer closes its open segments.
        commit_stop.cancel();
        let _ = commit_task.await;
        // After the last commit: the streams move to other nodes at once.
        lease_stop.cancel();
        if let Some(t) = lease_task {
            let _ = t.await;
        }
        if let Some(m) = &cluster {
            m.leave().await;
        }
        let _ = gc_task.await;
        let _ = retention_task.await;
        self.index.close().await;
        tracing::info!("index closed; stopped");
        Ok(())
    }
}

/// Builds the server from `settings` and serves on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::builder(settings)
        .build()
        .await?
        .serve(listener, shutdown)
        .await
}
