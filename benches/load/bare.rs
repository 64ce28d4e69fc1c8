//! The "bare pipeline" baseline: the least work any server must do with the same upload.
//! A receiver thread (a current-thread tokio runtime) accepts the same chunked PutMedia
//! POSTs on a loopback socket, answers `200` at once, strips the chunk framing and cuts
//! the bytes into fragment-sized pieces (the sample's mean cluster size); a disk thread
//! seals each piece with aws-lc-rs AES-256-GCM (in place, tag appended), writes it to one
//! file and `fdatasync`s it. No MKV parsing, no index, no acks.
//!
//! The file is written in a 256 MiB ring (offset wraps), so long runs do not fill the
//! disk. CPU is each thread's own (`CLOCK_THREAD_CPUTIME_ID`), read when it ends.

use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::http::Dechunker;
use crate::stats::thread_cpu_seconds;

const RING: u64 = 256 << 20;

pub struct Bare {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    net: JoinHandle<f64>,
    disk: JoinHandle<(f64, u64, u64)>,
}

/// What the bare pipeline did.
#[derive(Debug, Clone, Copy)]
pub struct BareResult {
    pub cpu_seconds: f64,
    /// Plaintext bytes sealed and written.
    pub bytes: u64,
    pub pieces: u64,
}

impl Bare {
    pub fn start(file: PathBuf, piece: usize) -> anyhow::Result<Bare> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let (stop, stopped) = oneshot::channel::<()>();
        let disk = std::thread::spawn(move || {
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
            let mut f = std::fs::File::create(&file).unwrap();
            let (mut seq, mut bytes, mut off) = (0u64, 0u64, 0u64);
            while let Some(mut p) = rx.blocking_recv() {
                seq += 1;
                bytes += p.len() as u64;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&seq.to_be_bytes());
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(seq.to_be_bytes()),
                    &mut p,
                )
                .unwrap();
                if off + p.len() as u64 > RING {
                    off = 0;
                }
                f.seek(SeekFrom::Start(off)).unwrap();
                f.write_all(&p).unwrap();
                f.sync_data().unwrap();
                off += p.len() as u64;
            }
            let _ = std::fs::remove_file(&file);
            (thread_cpu_seconds(), bytes, seq)
        });
        let net = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut stopped = stopped;
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        a = listener.accept() => {
                            if let Ok((s, _)) = a {
                                tokio::spawn(connection(s, tx.clone(), piece));
                            }
                        }
                    }
                }
            });
            drop(rt);
            thread_cpu_seconds()
        });
        Ok(Bare {
            addr,
            stop,
            net,
            disk,
        })
    }

    /// Stops accepting, lets the disk thread drain, returns the totals.
    pub fn finish(self) -> BareResult {
        let _ = self.stop.send(());
        let net = self.net.join().unwrap_or(0.0);
        let (disk, bytes, pieces) = self.disk.join().unwrap_or((0.0, 0, 0));
        BareResult {
            cpu_seconds: net + disk,
            bytes,
            pieces,
        }
    }
}

async fn connection(mut s: tokio::net::TcpStream, tx: mpsc::Sender<Vec<u8>>, piece: usize) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    // Request head.
    let body_start = loop {
        let Ok(n) = s.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut d = Dechunker::default();
    let mut cur = Vec::with_capacity(piece + 16);
    let mut feed = |data: &[u8], cur: &mut Vec<u8>, out: &mut Vec<Vec<u8>>| {
        d.feed(data, |b| {
            let mut b = b;
            while !b.is_empty() {
                let n = (piece - cur.len()).min(b.len());
                cur.extend_from_slice(&b[..n]);
                b = &b[n..];
                if cur.len() == piece {
                    out.push(std::mem::replace(cur, Vec::with_capacity(piece + 16)));
                }
            }
        });
        d.done
    };
    let mut out = Vec::new();
    let mut done = feed(&head[body_start..], &mut cur, &mut out);
    loop {
        for p in out.drain(..) {
            if tx.send(p).await.is_err() {
                return;
            }
        }
        if done {
            break;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => done = feed(&buf[..n], &mut cur, &mut out),
        }
    }
    if !cur.is_empty() {
        let _ = tx.send(cur).await;
    }
}
