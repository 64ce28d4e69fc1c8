//! `streamvault put` — a PutMedia client (AWS ships none outside its producer SDKs) —
//! and `streamvault presign`, which mints presigned URLs for producers that cannot sign.
//!
//! `put` reads MKV from a file or standard input, finds where to send it as the KVS
//! SDKs do (GetDataEndpoint with `APIName` `PUT_MEDIA` at `--endpoint`, again before every
//! reconnection, so a producer follows a stream whose owner changed), signs like the KVS C
//! producer, shows progress (bytes, rate, fragments persisted, ack latency; on a terminal only, see
//! `cli::progress`) and ERROR acks, and survives a dropped connection: it reconnects, re-sends
//! the header elements, then every cluster not yet covered by a PERSISTED ack. A
//! PERSISTED ack for a fragment starting at timecode T covers every cluster whose
//! timecode is ≤ T (fragments persist in order). Where the server cut a cluster into
//! several fragments, a resend may repeat an already persisted part; the server's
//! re-upload de-duplication recognises identical fragments.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::consume::{ApiError, Endpoint, host_of};
use crate::auth::sigv4;
use crate::mkv::{self, Event};

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Stream name.
    #[arg(long)]
    stream: String,
    /// MKV input file; `-` for standard input.
    #[arg(default_value = "-")]
    input: String,
    /// Cluster timecodes are epoch time (`ABSOLUTE`), or offsets from the start
    /// timestamp (`RELATIVE`, the default; start = now unless `--start-timestamp`).
    #[arg(long, value_enum, default_value = "relative")]
    timecodes: Timecodes,
    /// Producer start time for RELATIVE timecodes (epoch seconds).
    #[arg(long)]
    start_timestamp: Option<f64>,
    /// Send clusters no faster than their timecodes (replay a file like a camera).
    #[arg(long)]
    realtime: bool,
    /// PEM certificate to trust for https endpoints (e.g. a self-signed server).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Reconnect attempts in a row before giving up.
    #[arg(long, default_value = "30")]
    retries: u32,
    /// Reconnect when no ack arrives for this long while clusters wait for PERSISTED (a
    /// paused or cut-off server), like the KVS C producer's connection staleness check.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Timecodes {
    Absolute,
    Relative,
}

#[derive(Args, Debug)]
pub struct PresignArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    #[arg(long)]
    stream: String,
    /// `PUT_MEDIA` (the only API a presigned URL can bind: JSON APIs sign their body).
    #[arg(long, default_value = "PUT_MEDIA")]
    api: String,
    /// Validity, e.g. `15m`, `1h` (at most 7 days).
    #[arg(long, default_value = "1h")]
    expires: humantime::Duration,
    /// PutMedia: also carry `x-amzn-fragment-timecode-type` (and the start timestamp).
    #[arg(long, value_enum)]
    timecodes: Option<Timecodes>,
    #[arg(long)]
    start_timestamp: Option<f64>,
}

/// `streamvault presign`.
pub fn presign(a: PresignArgs) -> anyhow::Result<()> {
    let key = a
        .endpoint
        .key()?
        .context("presign needs credentials (--access-key-id/--secret-access-key or AWS_*)")?;
    let path = match a.api.as_str() {
        "PUT_MEDIA" => "/putMedia",
        "GET_MEDIA" => bail!(
            "GET_MEDIA cannot be presigned: a presigned URL does not sign GetMedia's JSON body, so the server refuses it; use `streamvault get-media`, which signs"
        ),
        other => bail!("--api must be PUT_MEDIA, not {other}"),
    };
    let mut q = vec![("x-amzn-stream-name".to_owned(), a.stream.clone())];
    if let Some(t) = a.timecodes {
        q.push((
            "x-amzn-fragment-timecode-type".into(),
            if t == Timecodes::Absolute {
                "ABSOLUTE"
            } else {
                "RELATIVE"
            }
            .into(),
        ));
    }
    if let Some(s) = a.start_timestamp {
        q.push(("x-amzn-producer-start-timestamp".into(), format!("{s:.3}")));
    }
    let url = sigv4::presign(
        &a.endpoint.endpoint,
        path,
        &q,
        &key,
        &a.endpoint.region,
        SystemTime::now(),
        a.expires.into(),
    )
    .map_err(|e| anyhow::anyhow!("cannot presign: {e}"))?;
    println!("{url}");
    Ok(())
}

/// One cluster (with the producer Tags that followed it), as sent.
struct Unit {
    timecode: u64,
    bytes: Vec<u8>,
}

/// Splits the input into header elements and clusters as it is read.
struct Splitter {
    reader: mkv::Reader,
    header: Vec<u8>,
    header_done: bool,
    current: Option<Unit>,
    ready: VecDeque<Unit>,
}

impl Splitter {
    fn new() -> Self {
        Self {
            reader: mkv::Reader::new(mkv::Limits::default()),
            header: Vec::new(),
            header_done: false,
            current: None,
            ready: VecDeque::new(),
        }
    }

    fn push(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.reader.push(data);
        while let Some(ev) = self.reader.next_event().context("input is not valid MKV")? {
            self.on(ev)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        while let Some(ev) = self
            .reader
            .finish()
            .context("input ended in the middle of an element")?
        {
            self.on(ev)?;
        }
        if let Some(u) = self.current.take() {
            self.ready.push_back(u);
        }
        Ok(())
    }

    fn on(&mut self, ev: Event) -> anyhow::Result<()> {
        match ev {
            Event::EbmlHeader { raw, .. } => {
                if self.header_done {
                    bail!("the input holds more than one MKV session; send them separately");
                }
                self.header.extend_from_slice(&raw);
            }
            Event::SegmentStart { .. } => mkv::writer::segment_header_unknown(&mut self.header),
            Event::TopLevel { raw, .. } => match (&mut self.current, self.header_done) {
                (_, false) => self.header.extend_from_slice(&raw),
                (Some(u), true) => u.bytes.extend_from_slice(&raw),
                (None, true) => {
                    if let Some(last) = self.ready.back_mut() {
                        last.bytes.extend_from_slice(&raw);
                    }
                }
            },
            Event::ClusterStart { raw_header, .. } => {
                self.header_done = true;
                if let Some(u) = self.current.take() {
                    self.ready.push_back(u);
                }
                self.current = Some(Unit {
                    timecode: 0,
                    bytes: raw_header.to_vec(),
                });
            }
            Event::ClusterTimecode { raw, value, .. } => {
                if let Some(u) = self.current.as_mut() {
                    u.timecode = value;
                    u.bytes.extend_from_slice(&raw);
                }
            }
            Event::Block(b) => {
                if let Some(u) = self.current.as_mut() {
                    u.bytes.extend_from_slice(&b.raw);
                }
            }
            Event::ClusterChild { raw, .. } => {
                if let Some(u) = self.current.as_mut() {
                    u.bytes.extend_from_slice(&raw);
                }
            }
            Event::ClusterEnd { .. } | Event::SegmentEnd { .. } | Event::Skipped { .. } => {}
        }
        // A cluster stays open until the next top-level element; Tags after it are kept
        // with it (fragment metadata, END_OF_FRAGMENT).
        Ok(())
    }
}

struct Progress {
    bytes: u64,
    persisted: u64,
    last_latency_ms: Option<u128>,
    display: super::progress::Progress,
}

impl Progress {
    /// Updates the display (drawn on a terminal only).
    fn show(&self) {
        let lat = self
            .last_latency_ms
            .map(|l| format!("{l} ms"))
            .unwrap_or_else(|| "-".into());
        self.display.set_position(self.bytes);
        self.display.set_message(format!(
            "{} fragments persisted, ack latency {lat}",
            self.persisted
        ));
    }
}

/// `streamvault put`.
pub async fn put(a: PutArgs) -> anyhow::Result<()> {
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &a.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("{}", ca.display()))?;
        client = client
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).context("bad --ca-file")?);
    }
    let client = client.build()?;
    let key = a.endpoint.key()?;
    let start = a.start_timestamp.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    });

    // The input is read by its own task into the splitter; units wait in `pending`
    // until a PERSISTED ack covers them.
    let (unit_tx, mut unit_rx) = tokio::sync::mpsc::channel::<Unit>(64);
    let (header_tx, header_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let input = a.input.clone();
    let realtime = a.realtime;
    let reader =
        tokio::spawn(async move { read_input(&input, unit_tx, header_tx, realtime).await });
    let header = match header_rx.await {
        Ok(h) => h,
        Err(_) => {
            return reader
                .await?
                .and_then(|()| bail!("the input has no cluster"));
        }
    };

    let mut pending: VecDeque<Unit> = VecDeque::new();
    let mut input_done = false;
    let mut failures = 0;
    let mut progress = Progress {
        bytes: 0,
        persisted: 0,
        last_latency_ms: None,
        display: super::progress::Progress::upload(),
    };
    let mut data_endpoint: Option<String> = None;
    loop {
        let outcome = match resolve(&client, &a).await {
            Ok(url) => {
                if let Some(old) = data_endpoint.as_deref().filter(|old| *old != url) {
                    // A move (the stream's owner changed): worth a line; the first
                    // answer is not (piped output stays the summary alone).
                    progress
                        .display
                        .println(&format!("data endpoint moved: {old} -> {url}"));
                }
                data_endpoint = Some(url);
                session(
                    &client,
                    &a,
                    data_endpoint.as_deref().expect("set"),
                    key.as_ref(),
                    start,
                    &header,
                    &mut pending,
                    &mut unit_rx,
                    &mut input_done,
                    &mut progress,
                )
                .await
            }
            Err(e)
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|e| !e.is_retriable()) =>
            {
                return Err(e);
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) if input_done && pending.is_empty() => break,
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                progress
                    .display
                    .println(&format!("upload interrupted: {e:#}"));
                if failures > a.retries {
                    bail!("giving up after {} attempts", failures);
                }
            }
        }
        let wait = Duration::from_millis(500 * u64::from(failures.clamp(1, 10)));
        progress.display.println(&format!(
            "reconnecting in {wait:?}; resending {} clusters not yet persisted",
            pending.len()
        ));
        tokio::time::sleep(wait).await;
    }
    progress.display.finish();
    eprintln!(
        "done: {} fragments persisted, {} bytes sent",
        progress.persisted, progress.bytes
    );
    reader.await??;
    Ok(())
}

async fn read_input(
    input: &str,
    tx: tokio::sync::mpsc::Sender<Unit>,
    header_tx: tokio::sync::oneshot::Sender<Vec<u8>>,
    realtime: bool,
) -> anyhow::Result<()> {
    let mut src: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if input == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(input)
                .await
                .with_context(|| input.to_owned())?,
        )
    };
    let mut sp = Splitter::new();
    let mut header_tx = Some(header_tx);
    let mut buf = vec![0u8; 64 * 1024];
    let mut clock: Option<(Instant, u64)> = None;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            sp.finish()?;
        } else {
            sp.push(&buf[..n])?;
        }
        if sp.header_done
            && let Some(h) = header_tx.take()
        {
            let _ = h.send(sp.header.clone());
        }
        while let Some(u) = sp.ready.pop_front() {
            if realtime {
                let (t0, tc0) = *clock.get_or_insert((Instant::now(), u.timecode));
                let due = t0 + Duration::from_millis(u.timecode.saturating_sub(tc0));
                tokio::time::sleep_until(due.into()).await;
            }
            if tx.send(u).await.is_err() {
                return Ok(());
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// The base URL to send the stream's PutMedia to: GetDataEndpoint's answer.
async fn resolve(client: &reqwest::Client, a: &PutArgs) -> anyhow::Result<String> {
    let body = serde_json::json!({"StreamName": a.stream, "APIName": "PUT_MEDIA"});
    let resp = super::consume::post(client, &a.endpoint, "getDataEndpoint", &body).await?;
    let text = resp.text().await.context("GetDataEndpoint answer")?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("GetDataEndpoint answered {text}"))?;
    let url = v["DataEndpoint"]
        .as_str()
        .context("GetDataEndpoint answered no DataEndpoint")?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("GetDataEndpoint answered an endpoint that is not an http(s) URL: {url}");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// One connection to `data_endpoint`: sends the header and the pending clusters, then
/// new ones, reading acks as they come. Returns when the server ends the response.
#[allow(clippy::too_many_arguments)]
async fn session(
    client: &reqwest::Client,
    a: &PutArgs,
    data_endpoint: &str,
    key: Option<&(String, String)>,
    start: f64,
    header: &[u8],
    pending: &mut VecDeque<Unit>,
    units: &mut tokio::sync::mpsc::Receiver<Unit>,
    input_done: &mut bool,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let url = format!("{data_endpoint}/putMedia");
    let tc_type = if a.timecodes == Timecodes::Absolute {
        "ABSOLUTE"
    } else {
        "RELATIVE"
    };
    let start_s = format!("{start:.3}");
    // Moves on every ack, and when a cluster is queued while nothing waited: past it with
    // clusters still unacknowledged, the connection is stale.
    let mut stale_at = tokio::time::Instant::now() + a.stale_after;
    let stale = || anyhow::anyhow!("no ack for {:?}: the connection is stale", a.stale_after);
    let ua = format!("streamvault-put/{}", env!("CARGO_PKG_VERSION"));
    let params: Vec<(&str, &str)> = vec![
        ("user-agent", ua.as_str()),
        ("x-amzn-fragment-acknowledgment-required", "1"),
        ("x-amzn-fragment-timecode-type", tc_type),
        ("x-amzn-producer-start-timestamp", start_s.as_str()),
        ("x-amzn-stream-name", a.stream.as_str()),
    ];
    let mut req = client.post(&url);
    for (k, v) in &params {
        req = req.header(*k, *v);
    }
    if let Some(key) = key {
        // Signed as the KVS C producer signs: over the empty payload.
        for (k, v) in sigv4::sign_headers(
            "POST",
            &host_of(data_endpoint)?,
            "/putMedia",
            &params,
            sigv4::EMPTY_SHA256,
            key,
            &a.endpoint.region,
            SystemTime::now(),
        )
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?
        {
            req = req.header(k, v);
        }
    }
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    let send = tokio::spawn(req.body(body).send());

    body_tx.send(Ok(header.to_vec())).await.ok();
    let mut sent: u64 = 0;
    for u in pending.iter() {
        tokio::time::timeout_at(stale_at, body_tx.send(Ok(u.bytes.clone())))
            .await
            .map_err(|_| stale())?
            .context("connection closed")?;
        sent += u.bytes.len() as u64;
    }
    progress.bytes += sent;
    // A paused server accepts the connection and never answers: the same staleness rule.
    let resp = tokio::time::timeout_at(
        stale_at.min(tokio::time::Instant::now() + Duration::from_secs(30)),
        send,
    )
    .await
    .map_err(|_| stale())???;
    stale_at = tokio::time::Instant::now() + a.stale_after;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        bail!("PutMedia refused: {status}: {text}");
    }
    let mut acks = resp.bytes_stream();
    let mut line = Vec::new();
    let mut buffering: std::collections::HashMap<String, Instant> = Default::default();
    let mut body_tx = Some(body_tx);
    loop {
        tokio::select! {
            u = units.recv(), if !*input_done && body_tx.is_some() => match u {
                Some(u) => {
                    let tx = body_tx.as_ref().expect("checked");
                    if pending.is_empty() {
                        stale_at = tokio::time::Instant::now() + a.stale_after;
                    }
                    match tokio::time::timeout_at(stale_at, tx.send(Ok(u.bytes.clone()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            pending.push_back(u);
                            bail!("connection closed while sending");
                        }
                        Err(_) => {
                            pending.push_back(u);
                            return Err(stale());
                        }
                    }
                    progress.bytes += u.bytes.len() as u64;
                    pending.push_back(u);
                }
                None => {
                    *input_done = true;
                    body_tx = None; // ends the request body
                }
            },
            _ = tokio::time::sleep_until(stale_at), if !pending.is_empty() => return Err(stale()),
            chunk = acks.next() => {
                stale_at = tokio::time::Instant::now() + a.stale_after;
                let Some(chunk) = chunk else {
                    return if *input_done { Ok(()) } else { Err(anyhow::anyhow!("server ended the response")) };
                };
                let chunk = chunk.context("ack stream failed")?;
                for b in chunk {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    let Ok(ack) = serde_json::from_slice::<serde_json::Value>(&line) else { line.clear(); continue };
                    line.clear();
                    let number = ack["FragmentNumber"].as_str().unwrap_or("").to_owned();
                    match ack["EventType"].as_str().unwrap_or("") {
                        "BUFFERING" => {
                            buffering.insert(number, Instant::now());
                        }
                        "PERSISTED" => {
                            progress.persisted += 1;
                            if let Some(t) = buffering.remove(&number) {
                                progress.last_latency_ms = Some(t.elapsed().as_millis());
                            }
                            let tc = ack["FragmentTimecode"].as_u64().unwrap_or(0);
                            while pending.front().is_some_and(|u| u.timecode <= tc) {
                                pending.pop_front();
                            }
                        }
                        "ERROR" => progress.display.println(&format!(
                            "ERROR ack: ErrorId {} for fragment {} (timecode {})",
                            ack["ErrorId"], if number.is_empty() { "-" } else { &number }, ack["FragmentTimecode"]
                        )),
                        _ => {}
                    }
                    progress.show();
                }
            }
        }
    }
}
