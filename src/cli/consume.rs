//! Consumer commands of the `streamvault` CLI, talking to a server over HTTP like any
//! AWS client would: `get-media` (save or follow a stream as MKV) and `list-fragments`
//! (a table or JSON).

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::clock::format_epoch_secs;
use crate::media::chunk;
use crate::mkv;

/// Where the server is and how to sign for it.
#[derive(Args, Debug)]
pub struct Endpoint {
    /// Server base URL.
    #[arg(
        long,
        env = "STREAMVAULT_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub endpoint: String,
    /// Access key id to sign with (default: `AWS_ACCESS_KEY_ID`). Without a key the
    /// request is sent unsigned (for servers run with `--no-auth`).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<String>,
    /// Secret access key (default: `AWS_SECRET_ACCESS_KEY`).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<String>,
    /// Region for the signature scope (any region is accepted by the server).
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
}

impl Endpoint {
    /// The signing key, if one was given.
    pub fn key(&self) -> anyhow::Result<Option<(String, String)>> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(a), Some(s)) => Ok(Some((a.clone(), s.clone()))),
            (None, None) => Ok(None),
            _ => bail!("give both an access key id and a secret access key, or neither"),
        }
    }

    /// Host (with port) of the endpoint, as sent in the Host header.
    pub fn host(&self) -> anyhow::Result<String> {
        host_of(&self.endpoint)
    }
}

/// Host (with port) of a base URL, as sent in the Host header (and signed).
pub fn host_of(url: &str) -> anyhow::Result<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!("endpoint has no host: {url}");
    }
    Ok(host.to_owned())
}

/// A KVS API call the server refused: its HTTP status, the exception name of
/// `x-amzn-ErrorType` and the message.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {status} {kind}: {message}")]
pub struct ApiError {
    pub op: String,
    pub status: reqwest::StatusCode,
    pub kind: String,
    pub message: String,
}

impl ApiError {
    /// Whether calling again could succeed: server errors and throttling; not a
    /// missing stream, a refused signature or a bad parameter.
    pub fn is_retriable(&self) -> bool {
        self.status.is_server_error()
            || self.status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || self.kind.contains("LimitExceeded")
    }
}

#[derive(Args, Debug)]
pub struct GetMediaArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Stream name.
    #[arg(long)]
    stream: String,
    /// `now`, `earliest`, a fragment number (start after it), or a server time
    /// (RFC 3339 like 2026-11-25T10:00:00Z, or epoch seconds).
    #[arg(long, default_value = "earliest")]
    start: String,
    /// Keep reading at the live edge until interrupted. Without it, stop once no data
    /// has arrived for two seconds after the last complete fragment.
    #[arg(long)]
    follow: bool,
    /// Output file (default: standard output).
    #[arg(short, long)]
    output: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Selector {
    Server,
    Producer,
}

#[derive(Args, Debug)]
pub struct ListFragmentsArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    #[arg(long)]
    stream: String,
    /// Range start (RFC 3339 or epoch seconds), inclusive.
    #[arg(long)]
    from: String,
    /// Range end (RFC 3339 or epoch seconds), inclusive.
    #[arg(long)]
    to: String,
    /// Which timestamp the range applies to.
    #[arg(long, value_enum, default_value = "server")]
    selector: Selector,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses RFC 3339 or epoch seconds into epoch seconds.
pub fn parse_time(s: &str) -> anyhow::Result<f64> {
    if let Ok(v) = s.parse::<f64>() {
        return Ok(v);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("not a time (RFC 3339 or epoch seconds): {s}"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0))
}

fn start_selector(start: &str) -> anyhow::Result<Value> {
    Ok(match start {
        "now" => json!({"StartSelectorType": "NOW"}),
        "earliest" => json!({"StartSelectorType": "EARLIEST"}),
        s if s.len() > 20 && s.bytes().all(|b| b.is_ascii_digit()) => {
            json!({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": s})
        }
        s => json!({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": parse_time(s)?}),
    })
}

pub(crate) async fn post(
    client: &reqwest::Client,
    ep: &Endpoint,
    op: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    let url = format!("{}/{op}", ep.endpoint.trim_end_matches('/'));
    let body = body.to_string();
    let mut req = client.post(&url).header("content-type", "application/json");
    if let Some(key) = ep.key()? {
        let hash = crate::auth::sigv4::payload_hash(body.as_bytes());
        let path = format!("/{op}");
        let signed = crate::auth::sigv4::sign_headers(
            "POST",
            &ep.host()?,
            &path,
            &[("content-type", "application/json")],
            &hash,
            &key,
            &ep.region,
            std::time::SystemTime::now(),
        )
        .map_err(|e| anyhow::anyhow!("cannot sign the request: {e}"))?;
        for (k, v) in signed {
            req = req.header(k, v);
        }
    }
    let resp = req
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("error")
            .to_owned();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["Message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(ApiError {
            op: op.to_owned(),
            status,
            kind,
            message,
        }
        .into());
    }
    Ok(resp)
}

/// `streamvault get-media`.
pub async fn get_media(a: GetMediaArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let body = json!({"StreamName": a.stream, "StartSelector": start_selector(&a.start)?});
    let resp = post(&client, &a.endpoint, "getMedia", &body).await?;
    let mut out: Box<dyn Write + Send> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut counter = ChunkCounter::default();
    let mut body = resp.bytes_stream();
    let idle = Duration::from_secs(2);
    loop {
        let next = if a.follow {
            body.next().await
        } else {
            match tokio::time::timeout(idle, body.next()).await {
                Ok(n) => n,
                Err(_) if counter.open == 0 => break,
                Err(_) => continue,
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.context("GetMedia stream failed")?;
        out.write_all(&chunk)?;
        for line in counter.push(&chunk) {
            eprintln!("{line}");
        }
        if let Some(e) = &counter.error {
            out.flush()?;
            bail!("server reported an error: {e}");
        }
    }
    out.flush()?;
    eprintln!("{} fragments written", counter.complete);
    Ok(())
}

/// Counts GetMedia chunks as bytes pass through, for progress lines.
#[derive(Default)]
struct ChunkCounter {
    reader: Option<mkv::Reader>,
    complete: u64,
    /// Chunks started but not yet closed by their trailing tags.
    open: u64,
    error: Option<String>,
}

impl ChunkCounter {
    fn push(&mut self, b: &[u8]) -> Vec<String> {
        let r = self
            .reader
            .get_or_insert_with(|| mkv::Reader::new(mkv::Limits::default()));
        r.push(b);
        let mut lines = Vec::new();
        while let Ok(Some(ev)) = r.next_event() {
            match ev {
                mkv::Event::EbmlHeader { .. } => self.open += 1,
                mkv::Event::TopLevel {
                    id: mkv::ids::TAGS,
                    raw,
                    ..
                } => {
                    let tags = mkv::parse_tags(&raw).unwrap_or_default();
                    let get = |n: &str| {
                        tags.iter()
                            .find(|t| t.name == n)
                            .and_then(|t| t.as_str().map(str::to_owned))
                    };
                    if let Some(code) = get(chunk::ERROR_CODE) {
                        self.error = Some(format!(
                            "{code} (ErrorId {})",
                            get(chunk::ERROR_ID).unwrap_or_default()
                        ));
                    }
                    if let Some(token) = get(chunk::CONTINUATION_TOKEN) {
                        self.complete += 1;
                        self.open = self.open.saturating_sub(1);
                        lines.push(format!(
                            "fragment {token} ({} ms behind now)",
                            get(chunk::MILLIS_BEHIND_NOW).unwrap_or_default()
                        ));
                    }
                }
                _ => {}
            }
        }
        lines
    }
}

/// `streamvault list-fragments`.
pub async fn list_fragments(a: ListFragmentsArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let kind = match a.selector {
        Selector::Server => "SERVER_TIMESTAMP",
        Selector::Producer => "PRODUCER_TIMESTAMP",
    };
    let mut body = json!({
        "StreamName": a.stream,
        "MaxResults": 1000,
        "FragmentSelector": {"FragmentSelectorType": kind, "TimestampRange": {
            "StartTimestamp": parse_time(&a.from)?, "EndTimestamp": parse_time(&a.to)?}},
    });
    let mut all = Vec::new();
    loop {
        let v: Value = serde_json::from_slice(
            &post(&client, &a.endpoint, "listFragments", &body)
                .await?
                .bytes()
                .await?,
        )?;
        all.extend(v["Fragments"].as_array().cloned().unwrap_or_default());
        match v["NextToken"].as_str() {
            Some(t) => {
                body = json!({"StreamName": a.stream, "MaxResults": 1000, "NextToken": t});
            }
            None => break,
        }
    }
    let ms = |v: &Value| (v.as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
    all.sort_by_key(|f| {
        (
            ms(&f["ProducerTimestamp"]),
            f["FragmentNumber"].as_str().unwrap_or("").to_owned(),
        )
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:<47}  {:>16}  {:>16}  {:>8}  {:>10}",
        "FRAGMENT NUMBER", "PRODUCER TS", "SERVER TS", "MS", "BYTES"
    );
    for f in &all {
        println!(
            "{:<47}  {:>16}  {:>16}  {:>8}  {:>10}",
            f["FragmentNumber"].as_str().unwrap_or(""),
            format_epoch_secs(ms(&f["ProducerTimestamp"])),
            format_epoch_secs(ms(&f["ServerTimestamp"])),
            f["FragmentLengthInMilliseconds"],
            f["FragmentSizeInBytes"]
        );
    }
    eprintln!("{} fragments", all.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_selectors() {
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000.5);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000.0);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(start_selector("now").unwrap()["StartSelectorType"], "NOW");
        let n = "91".to_string() + &"0".repeat(45);
        assert_eq!(
            start_selector(&n).unwrap()["AfterFragmentNumber"],
            n.as_str()
        );
        assert_eq!(
            start_selector("1700000000").unwrap()["StartSelectorType"],
            "SERVER_TIMESTAMP"
        );
    }
}
