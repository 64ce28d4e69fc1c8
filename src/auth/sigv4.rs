//! AWS Signature Version 4, both ways. Verification re-signs the request as received
//! with the `aws-sigv4` crate — same method, path, query, the headers named in
//! `SignedHeaders` with their received values, the payload hash the client used — and
//! compares the signatures in constant time. Signing (for `streamvault put`,
//! `streamvault presign` and tests) uses the same crate.
//!
//! Accepted forms: the `Authorization` header (any region, service `kinesisvideo`), and
//! presigned query strings (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
//! `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`, unsigned payload).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// SigV4 service name of every KVS API.
pub const SERVICE: &str = "kinesisvideo";
/// SHA-256 of the empty string: the payload hash the KVS C producer signs for PutMedia.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The payload hash SigV4 signs: SHA-256 of the body, lowercase hex.
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body))
}

/// A parsed signature (from the header or the query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub access_key_id: String,
    pub scope_date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `X-Amz-Date` as sent.
    pub amz_date: String,
    /// Presigned: `X-Amz-Expires` seconds.
    pub expires: Option<u64>,
}

/// Why a signature was not accepted. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    Missing,
    Malformed(String),
    Expired(String),
    Mismatch,
}

fn malformed(s: impl Into<String>) -> SigError {
    SigError::Malformed(s.into())
}

fn parse_credential(cred: &str) -> Result<(String, String, String, String), SigError> {
    let p: Vec<&str> = cred.split('/').collect();
    if p.len() != 5 || p[4] != "aws4_request" || p[0].is_empty() {
        return Err(malformed(
            "Credential must be <key>/<yyyymmdd>/<region>/<service>/aws4_request",
        ));
    }
    Ok((
        p[0].to_owned(),
        p[1].to_owned(),
        p[2].to_owned(),
        p[3].to_owned(),
    ))
}

/// Parses an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
pub fn parse_authorization(value: &str, amz_date: Option<&str>) -> Result<Presented, SigError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| malformed("only AWS4-HMAC-SHA256 is supported"))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let (cred, signed, sig) = match (cred, signed, sig) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => {
            return Err(malformed(
                "Authorization needs Credential, SignedHeaders and Signature",
            ));
        }
    };
    let (access_key_id, scope_date, region, service) = parse_credential(cred)?;
    Ok(Presented {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers: signed
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: sig.to_owned(),
        amz_date: amz_date
            .ok_or_else(|| malformed("X-Amz-Date header is required"))?
            .to_owned(),
        expires: None,
    })
}

/// The presigned signature of a query string, and the query without the `X-Amz-*`
/// signing parameters (which the re-signing adds back).
pub fn parse_presigned(
    query: &str,
) -> Result<Option<(Presented, Vec<(String, String)>)>, SigError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(alg) = get("X-Amz-Algorithm") else {
        return Ok(None);
    };
    if alg != "AWS4-HMAC-SHA256" {
        return Err(malformed("X-Amz-Algorithm must be AWS4-HMAC-SHA256"));
    }
    let need =
        |k: &str| get(k).ok_or_else(|| malformed(format!("{k} is required in a presigned URL")));
    let (access_key_id, scope_date, region, service) =
        parse_credential(&need("X-Amz-Credential")?)?;
    let expires = need("X-Amz-Expires")?
        .parse::<u64>()
        .map_err(|_| malformed("X-Amz-Expires must be a number of seconds"))?;
    if expires == 0 || expires > 7 * 24 * 3600 {
        return Err(malformed("X-Amz-Expires must be 1 to 604800 seconds"));
    }
    let presented = Presented {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers: need("X-Amz-SignedHeaders")?
            .split(';')
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        signature: need("X-Amz-Signature")?,
        amz_date: need("X-Amz-Date")?,
        expires: Some(expires),
    };
    let rest = pairs
        .into_iter()
        .filter(|(k, _)| !k.starts_with("X-Amz-"))
        .collect();
    Ok(Some((presented, rest)))
}

/// Parses `YYYYMMDD'T'HHMMSS'Z'`.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Formats a time as `X-Amz-Date`.
pub fn format_amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// What the verifier needs from the request.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Path as received (already percent-encoded).
    pub path: &'a str,
    /// Query parameters that take part in the signature (for presigned URLs: all but
    /// the `X-Amz-*` signing parameters).
    pub query: &'a [(String, String)],
    /// Every received header (name lower-case).
    pub headers: &'a [(String, String)],
    /// The payload hash to sign with (hex SHA-256, `UNSIGNED-PAYLOAD`, …).
    pub payload_hash: &'a str,
}

fn settings(
    location: SignatureLocation,
    expires: Option<u64>,
    token_signed: bool,
) -> SigningSettings {
    let mut s = SigningSettings::default();
    // Sign exactly what the client named, hop-by-hop and user-agent included (the KVS
    // C producer signs `connection`, `transfer-encoding` and `user-agent`).
    s.excluded_headers = Some(Vec::new());
    s.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    s.signature_location = location;
    s.expires_in = expires.map(Duration::from_secs);
    s.session_token_mode = if token_signed {
        SessionTokenMode::Include
    } else {
        SessionTokenMode::Exclude
    };
    s
}

fn build_uri(host: &str, path: &str, query: &[(String, String)]) -> String {
    let mut uri = format!("http://{host}{path}");
    if !query.is_empty() {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        uri.push('?');
        uri.push_str(&q);
    }
    uri
}

/// Verifies `p` against the request with `secret`. Returns the expected signature's
/// comparison result; the caller checks key, scope and time first.
pub fn verify(p: &Presented, req: &RequestParts<'_>, secret: &str) -> Result<(), SigError> {
    let time = parse_amz_date(&p.amz_date)
        .ok_or_else(|| malformed("X-Amz-Date must be YYYYMMDD'T'HHMMSS'Z'"))?;
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let host = header("host").ok_or_else(|| malformed("Host header is required"))?;
    let token_signed = p.signed_headers.iter().any(|h| h == "x-amz-security-token");
    let token = if token_signed {
        header("x-amz-security-token").map(str::to_owned)
    } else {
        None
    };
    // The headers the client signed, as received; x-amz-date and the token are added by
    // the signer itself (header form only).
    let mut signed: Vec<(&str, &str)> = Vec::new();
    for name in &p.signed_headers {
        if p.expires.is_none() && (name == "x-amz-date" || name == "x-amz-security-token") {
            continue;
        }
        let v = header(name)
            .ok_or_else(|| malformed(format!("signed header missing from the request: {name}")))?;
        signed.push((name.as_str(), v));
    }
    let location = if p.expires.is_some() {
        SignatureLocation::QueryParams
    } else {
        SignatureLocation::Headers
    };
    let identity: Identity =
        Credentials::new(&p.access_key_id, secret, token, None, "streamvault").into();
    let settings = settings(location, p.expires, token_signed);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&p.region)
        .name(&p.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| malformed(e.to_string()))?
        .into();
    let uri = build_uri(host, req.path, req.query);
    let body = SignableBody::Precomputed(req.payload_hash.to_owned());
    let signable = SignableRequest::new(req.method, uri, signed.into_iter(), body)
        .map_err(|e| malformed(e.to_string()))?;
    let out = sign(signable, &params).map_err(|e| malformed(e.to_string()))?;
    let expected = out.signature();
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), p.signature.as_bytes())
        .map_err(|_| SigError::Mismatch)
}

/// Signs a request in the header form; returns the headers to add
/// (`authorization`, `x-amz-date`, and `x-amz-security-token` when a token is given and
/// `sign_token`).
#[allow(clippy::too_many_arguments)]
pub fn sign_headers(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload_hash: &str,
    key: &(String, String),
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity: Identity = Credentials::new(&key.0, &key.1, None, None, "streamvault").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings(SignatureLocation::Headers, None, false))
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let mut all: Vec<(&str, &str)> = vec![("host", host)];
    all.extend(headers.iter().copied());
    let signable = SignableRequest::new(
        method,
        build_uri(host, path, &[]),
        all.into_iter(),
        SignableBody::Precomputed(payload_hash.to_owned()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// A presigned URL: `base` + `path` with `query` plus the signing parameters, valid for
/// `expires` from `time`.
#[allow(clippy::too_many_arguments)]
pub fn presign(
    scheme_host: &str,
    path: &str,
    query: &[(String, String)],
    key: &(String, String),
    region: &str,
    time: SystemTime,
    expires: Duration,
) -> Result<String, String> {
    let host = scheme_host
        .split_once("://")
        .map(|(_, h)| h)
        .unwrap_or(scheme_host)
        .trim_end_matches('/');
    let identity: Identity = Credentials::new(&key.0, &key.1, None, None, "streamvault").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings(
            SignatureLocation::QueryParams,
            Some(expires.as_secs()),
            false,
        ))
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        "POST",
        build_uri(host, path, query),
        std::iter::once(("host", host)),
        SignableBody::UnsignedPayload,
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut all: Vec<(String, String)> = query.to_vec();
    all.extend(
        instructions
            .params()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&all)
        .finish();
    Ok(format!("{}{path}?{q}", scheme_host.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_round_trip() {
        for secs in [
            0u64,
            951_782_400,
            1_700_000_000,
            1_795_633_659,
            4_102_444_800,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let s = format_amz_date(t);
            assert_eq!(parse_amz_date(&s), Some(t), "{s}");
        }
        assert_eq!(
            format_amz_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "20231114T221320Z"
        );
        assert_eq!(parse_amz_date("2023-11-14"), None);
        assert_eq!(parse_amz_date("20231314T221320Z"), None);
    }

    #[test]
    fn parses_authorization_with_either_separator() {
        let a = "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-west-2/kinesisvideo/aws4_request, SignedHeaders=host;x-amz-date,Signature=abc";
        let p = parse_authorization(a, Some("20240101T000000Z")).unwrap();
        assert_eq!(
            (
                p.access_key_id.as_str(),
                p.region.as_str(),
                p.service.as_str()
            ),
            ("AKID", "us-west-2", "kinesisvideo")
        );
        assert_eq!(p.signed_headers, vec!["host", "x-amz-date"]);
        assert!(parse_authorization("Basic x", None).is_err());
        assert!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=AKID/x/aws4_request, SignedHeaders=h, Signature=s",
                Some("x")
            )
            .is_err()
        );
    }

    fn key() -> (String, String) {
        (
            "AKIDEXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        )
    }

    #[test]
    fn header_signature_verifies_and_any_change_breaks_it() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hdrs = [
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
            ("user-agent", "AWS-SDK-KVS/3"),
            ("x-amzn-stream-name", "cam1"),
        ];
        let added = sign_headers(
            "POST",
            "kvs.local",
            "/putMedia",
            &hdrs,
            EMPTY_SHA256,
            &key(),
            "us-west-2",
            t,
        )
        .unwrap();
        let mut received: Vec<(String, String)> = hdrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        received.push(("host".into(), "kvs.local".into()));
        received.extend(
            added
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
        );
        let auth = received
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1
            .clone();
        let date = received
            .iter()
            .find(|(k, _)| k == "x-amz-date")
            .unwrap()
            .1
            .clone();
        let p = parse_authorization(&auth, Some(&date)).unwrap();
        assert!(
            p.signed_headers.contains(&"transfer-encoding".to_string())
                && p.signed_headers.contains(&"user-agent".to_string())
        );
        let req = |h: &[(String, String)]| {
            let r = RequestParts {
                method: "POST",
                path: "/putMedia",
                query: &[],
                headers: h,
                payload_hash: EMPTY_SHA256,
            };
            verify(&p, &r, &key().1)
        };
        assert_eq!(req(&received), Ok(()));
        let mut changed = received.clone();
        changed
            .iter_mut()
            .find(|(k, _)| k == "x-amzn-stream-name")
            .unwrap()
            .1 = "cam2".into();
        assert_eq!(req(&changed), Err(SigError::Mismatch));
        let r = RequestParts {
            method: "POST",
            path: "/putMedia",
            query: &[],
            headers: &received,
            payload_hash: EMPTY_SHA256,
        };
        assert_eq!(verify(&p, &r, "wrong secret"), Err(SigError::Mismatch));
    }

    #[test]
    fn presigned_urls_verify_and_tampering_breaks_them() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let q = vec![("x-amzn-stream-name".to_string(), "cam1".to_string())];
        let url = presign(
            "http://127.0.0.1:8080",
            "/putMedia",
            &q,
            &key(),
            "us-east-1",
            t,
            Duration::from_secs(3600),
        )
        .unwrap();
        let query = url.split_once('?').unwrap().1;
        let (p, rest) = parse_presigned(query).unwrap().unwrap();
        assert_eq!(p.expires, Some(3600));
        assert_eq!(rest, q);
        let headers = vec![("host".to_string(), "127.0.0.1:8080".to_string())];
        let ok = RequestParts {
            method: "POST",
            path: "/putMedia",
            query: &rest,
            headers: &headers,
            payload_hash: UNSIGNED_PAYLOAD,
        };
        assert_eq!(verify(&p, &ok, &key().1), Ok(()));
        let other = vec![("x-amzn-stream-name".to_string(), "cam2".to_string())];
        let bad = RequestParts {
            query: &other,
            ..ok
        };
        assert_eq!(verify(&p, &bad, &key().1), Err(SigError::Mismatch));
    }
}
