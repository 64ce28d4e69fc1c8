//! Locating and running the real AWS clients the tests drive (the aws CLI, Python with
//! boto3): `STREAMVAULT_AWS_CLI` / `STREAMVAULT_PYTHON`, else `<repo>/.venv/bin/aws` /
//! `<repo>/.venv/bin/python`, else `aws` / `python3` on `PATH`. When none works a test
//! skips with a message, except under CI (`CI` set), where a missing client is a failure.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Longest any one client call may take (the CLI's start-up alone is about a second).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Candidates in order: the env override, the repo's venv, then a name looked up on PATH.
pub fn candidates(env_var: &str, venv_rel: &str, path_name: &str) -> Vec<OsString> {
    let mut c = Vec::new();
    if let Some(v) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        c.push(v);
    }
    c.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(venv_rel)
            .into_os_string(),
    );
    c.push(OsString::from(path_name));
    c
}

/// First candidate for which `probe` exits 0.
pub async fn first_working(cands: &[OsString], probe: &[&str]) -> Option<OsString> {
    for c in cands {
        let ok = Command::new(c)
            .args(probe)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        if let Ok(Ok(s)) = tokio::time::timeout(CALL_TIMEOUT, ok).await
            && s.success()
        {
            return Some(c.clone());
        }
    }
    None
}

/// `Some(program)`, or `None` after printing why the test is skipped; panics under CI.
pub async fn tool_or_skip(
    what: &str,
    env_var: &str,
    cands: Vec<OsString>,
    probe: &[&str],
) -> Option<OsString> {
    if let Some(p) = first_working(&cands, probe).await {
        return Some(p);
    }
    let tried: Vec<_> = cands
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let msg = format!(
        "{what} not usable (tried {}); set {env_var} or run `bash .ci/run`, which installs it into .venv",
        tried.join(", ")
    );
    if under_ci() {
        panic!("CI is set, so this is a failure: {msg}");
    }
    // Straight to the process's stderr, so libtest's capture does not hide the skip.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    None
}

/// Environment that keeps a developer's own AWS profile, credentials and endpoints out.
pub fn hermetic(cmd: &mut Command) {
    for v in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KINESIS_VIDEO",
        "AWS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDSTREAMVAULTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "testsecretkeytestsecretkey")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
}

pub struct CallResult {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(mut cmd: Command, what: &str) -> CallResult {
    hermetic(&mut cmd);
    let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    CallResult {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Python with boto3, or `None` after printing why the test is skipped.
pub async fn python_or_skip() -> Option<OsString> {
    tool_or_skip(
        "Python with boto3",
        "STREAMVAULT_PYTHON",
        candidates("STREAMVAULT_PYTHON", ".venv/bin/python", "python3"),
        &["-c", "import boto3"],
    )
    .await
}

/// The start of the boto3 scripts: `kv`, a kinesisvideo client for the endpoint in
/// `argv[1]`, and `err(label, f, **kw)`, which calls `f` and records the error code it
/// raised (or `None`) in `errors[label]`.
pub const BOTO3_PRELUDE: &str = r#"
import json, sys
import boto3
kv = boto3.client("kinesisvideo", endpoint_url=sys.argv[1], region_name="us-east-1")
errors = {}
def err(label, f, **kw):
    try:
        f(**kw)
        errors[label] = None
    except kv.exceptions.ClientError as e:
        errors[label] = e.response["Error"]["Code"]
"#;
