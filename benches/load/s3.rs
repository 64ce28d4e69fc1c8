//! The `--s3` mode's object store: an S3-compatible server (s3s-fs, files under a temp
//! dir, SigV4 checked) run in the generator's process on a loopback port, with every
//! request counted by operation kind before it reaches s3s. The counts give the object
//! writes per camera-hour that decide an S3 bill (`../shared/docs/scale-out.md` §2).
//! s3s-fs's CPU is the generator's, not the server's: the streamvault CPU figures of an
//! `--s3` run leave the store out, as they would with a remote S3.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::service::Service;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const BUCKET: &str = "streamvault-load";
const KEY: (&str, &str) = ("AKIDS3LOAD", "s3loadsecrets3loadsecrets3loadsecret");

/// Requests seen, by kind.
#[derive(Debug, Default)]
pub struct Counts {
    /// PUT of an object or of a multipart part, and multipart completion (POST).
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub deletes: AtomicU64,
    pub lists: AtomicU64,
    pub other: AtomicU64,
}

impl Counts {
    fn count(&self, method: &http::Method, uri: &http::Uri) {
        let q = uri.query().unwrap_or("");
        let c = match *method {
            http::Method::PUT | http::Method::POST => &self.writes,
            http::Method::GET
                if q.contains("list-type")
                    || uri.path().trim_end_matches('/') == format!("/{BUCKET}") =>
            {
                &self.lists
            }
            http::Method::GET | http::Method::HEAD => &self.reads,
            http::Method::DELETE => &self.deletes,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "writes": g(&self.writes), "reads": g(&self.reads), "deletes": g(&self.deletes),
            "lists": g(&self.lists), "other": g(&self.other),
        })
    }
}

/// A running in-process S3 server.
pub struct S3Server {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Serves the bucket [`BUCKET`] from `root` (created here).
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root.join(BUCKET))?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(KEY.0, KEY.1));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let (service, c) = (service.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            c.count(req.method(), req.uri());
                            Service::call(&service, req)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, counts, task })
    }

    /// The server settings that point streamvault at this store.
    pub fn server_env(&self) -> Vec<(String, String)> {
        [
            ("STREAMVAULT_STORE__BACKEND", "s3".to_owned()),
            ("STREAMVAULT_STORE__S3__BUCKET", BUCKET.to_owned()),
            (
                "STREAMVAULT_STORE__S3__ENDPOINT",
                format!("http://{}", self.addr),
            ),
            ("STREAMVAULT_STORE__S3__ALLOW_HTTP", "true".to_owned()),
            ("STREAMVAULT_STORE__S3__REGION", "us-east-1".to_owned()),
            ("STREAMVAULT_STORE__S3__ACCESS_KEY_ID", KEY.0.to_owned()),
            ("STREAMVAULT_STORE__S3__SECRET_ACCESS_KEY", KEY.1.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
