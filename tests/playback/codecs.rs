//! Codec coverage of the packagers, bit for bit: streams made at test time by the real
//! producers (GStreamer `x264enc ! h264parse`, whose avcC omits the High-profile
//! extension; `x265enc ! h265parse`; ffmpeg libx264 High 4:4:4 and 4:2:2 10-bit and
//! High with B-frames and AAC) are uploaded, and the decoded video frames of GetClip,
//! HLS (fMP4 and MPEG-TS) and DASH are compared with ffmpeg's decode of the source
//! (`framemd5` hashes, in presentation order). Also: complete avcC records reach the MP4
//! unchanged, and fragment durations are presentation spans (ListFragments, `#EXTINF`,
//! DASH `d`) with B-frames.

use std::process::Command;

use serde_json::{Value, json};

use super::*;

/// Runs a generator writing `out.mkv` in a temp dir (`{out}` in `args`); its bytes.
fn generate(tool: &str, args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mkv");
    let out = out.to_str().unwrap();
    let args: Vec<String> = args.iter().map(|a| a.replace("{out}", out)).collect();
    let o = Command::new(tool).args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

/// `gst-launch-1.0 -q` of `pipeline` (a `!`-separated string) into `{out}`.
fn gst(pipeline: &str) -> Option<Vec<u8>> {
    if !have_tool("gst-launch-1.0") || !have_tool("ffmpeg") {
        eprintln!("SKIPPED: gst-launch-1.0 or ffmpeg not installed");
        return None;
    }
    let mut args = vec!["-q"];
    args.extend(pipeline.split_whitespace());
    Some(generate("gst-launch-1.0", &args))
}

/// lavfi's moving test picture, 320x240 at 30 fps.
const PICTURE: &str = "-f lavfi -i testsrc2=size=320x240:rate=30";
/// libx264 in closed 1 s GOPs (30 frames).
const X264_GOP_1S: &str = "-c:v libx264 -g 30 -keyint_min 30 -sc_threshold 0";

/// A bit-exact, single-threaded ffmpeg encode (`inputs`, then output `codec` options)
/// into a live-style MKV (clusters cut only at keyframes).
fn ffmpeg(inputs: &str, codec: &str) -> Option<Vec<u8>> {
    if !have_tool("ffmpeg") {
        eprintln!("SKIPPED: ffmpeg not installed");
        return None;
    }
    let args = format!(
        "-nostdin -v error -y {inputs} -fflags +bitexact -flags:v +bitexact -flags:a +bitexact \
         -threads 1 {codec} -f matroska -live 1 -cluster_time_limit 10000 \
         -cluster_size_limit 10000000 {{out}}"
    );
    Some(generate(
        "ffmpeg",
        &args.split_whitespace().collect::<Vec<_>>(),
    ))
}

async fn framemd5_of_url(url: String) -> Vec<String> {
    tokio::task::spawn_blocking(move || framemd5(&url))
        .await
        .unwrap()
}

/// The first video track's CodecPrivate of an MKV.
fn codec_private_of(mkv: &[u8]) -> Vec<u8> {
    use streamvault::mkv::{self, Event, ids};
    let mut r = mkv::Reader::new(mkv::Limits::default());
    r.push(mkv);
    while let Ok(Some(ev)) = r.next_event() {
        if let Event::TopLevel { id, raw, .. } = ev
            && id == ids::TRACKS
        {
            let tracks = mkv::parse_tracks(&raw).unwrap();
            let t = tracks.iter().find(|t| t.track_type == 1).unwrap();
            return t.codec_private.clone().unwrap().to_vec();
        }
    }
    panic!("no Tracks");
}

/// The payload of the first `kind` box (found by its type bytes) in `mp4`.
fn box_payload(mp4: &[u8], kind: &[u8; 4]) -> Vec<u8> {
    let at = mp4
        .windows(4)
        .position(|w| w == kind)
        .unwrap_or_else(|| panic!("no {} box", String::from_utf8_lossy(kind)));
    let size = u32::from_be_bytes(mp4[at - 4..at].try_into().unwrap()) as usize;
    mp4[at + 4..at - 4 + size].to_vec()
}

/// Uploads `mkv` as stream `name` at producer time `T0`; the number of fragments.
async fn upload(srv: &TestServer, name: &str, mkv: &[u8]) -> usize {
    create(srv, name, 24).await;
    upload_at(srv, name, mkv, T0)
        .await
        .events("PERSISTED")
        .len()
}

/// An ON_DEMAND DASH session over the first minute after `T0`.
fn dash_body(name: &str) -> Value {
    json!({"StreamName": name, "PlaybackMode": "ON_DEMAND",
        "DASHFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T0 + 60}}})
}

/// GetClip, HLS (fMP4 and TS) and DASH of stream `name` decode to exactly the source's
/// frames. Returns the clip.
async fn bit_exact_everywhere(srv: &TestServer, name: &str, source: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source.mkv");
    std::fs::write(&src, source).unwrap();
    let want = framemd5(src.to_str().unwrap());
    assert!(want.len() > 30, "source decodes to {} frames", want.len());

    let (ct, clip) = get_clip_sdk(srv, name, T0, T0 + 60).await;
    assert_eq!(ct.as_deref(), Some("video/mp4"));
    let clip_path = dir.path().join("clip.mp4");
    std::fs::write(&clip_path, &clip).unwrap();
    assert_eq!(
        framemd5(clip_path.to_str().unwrap()),
        want,
        "{name}: GetClip frames differ from the source"
    );

    let hls = |container: &str| hls_body(name, "ON_DEMAND", container, Some(T0 + 60));
    let fmp4 = session_url(srv, "/getHLSStreamingSessionURL", hls("FRAGMENTED_MP4")).await;
    let ts = session_url(srv, "/getHLSStreamingSessionURL", hls("MPEG_TS")).await;
    let dash = session_url(srv, "/getDASHStreamingSessionURL", dash_body(name)).await;
    let (a, b, c) = tokio::join!(
        framemd5_of_url(fmp4),
        framemd5_of_url(ts),
        framemd5_of_url(dash)
    );
    assert_eq!(a, want, "{name}: HLS fMP4 frames differ from the source");
    assert_eq!(b, want, "{name}: HLS MPEG-TS frames differ from the source");
    assert_eq!(c, want, "{name}: DASH frames differ from the source");
    eprintln!(
        "{name}: GetClip, HLS fMP4/TS and DASH give the source's {} frames bit for bit",
        want.len()
    );
    clip
}

/// GStreamer's avcC (no High-profile extension) plays everywhere, and the clip's avcC is
/// the producer's record plus the extension derived from the SPS.
async fn gst_h264_bit_exact(format: &str, extension: [u8; 4]) {
    let Some(mkv) = gst(&format!(
        "videotestsrc num-buffers=90 pattern=ball ! video/x-raw,format={format},width=640,height=360,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=2 option-string=scenecut=0 ! h264parse \
         ! matroskamux streamable=true ! filesink location={{out}}"
    )) else {
        return;
    };
    let record = codec_private_of(&mkv);
    assert_ne!(record[1], 66, "not a High-profile stream");
    let srv = TestServer::start().await;
    assert_eq!(upload(&srv, "gst", &mkv).await, 3);
    let clip = bit_exact_everywhere(&srv, "gst", &mkv).await;
    let mut want = record.clone();
    want.extend_from_slice(&extension);
    assert_eq!(
        box_payload(&clip, b"avcC"),
        want,
        "avcC = record + extension"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_high_profile_h264_plays_bit_exact() {
    // chroma_format 1 (4:2:0), 8-bit luma and chroma, no SPS-ext.
    gst_h264_bit_exact("I420", [0xFD, 0xF8, 0xF8, 0x00]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_high444_10bit_h264_plays_bit_exact() {
    // chroma_format 3 (4:4:4), 10-bit luma and chroma, no SPS-ext.
    gst_h264_bit_exact("Y444_10LE", [0xFF, 0xFA, 0xFA, 0x00]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_h265_plays_bit_exact() {
    let Some(mkv) = gst(
        "videotestsrc num-buffers=90 pattern=ball ! video/x-raw,format=I420,width=640,height=360,framerate=30/1 \
         ! x265enc key-int-max=30 ! h265parse ! matroskamux streamable=true ! filesink location={out}",
    ) else {
        return;
    };
    let srv = TestServer::start().await;
    assert!(upload(&srv, "hevc", &mkv).await >= 3);
    bit_exact_everywhere(&srv, "hevc", &mkv).await;
}

/// ffmpeg's complete High 4:4:4 / 4:2:2 10-bit avcC records are remuxed untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_10bit_444_and_422_remux_bit_exact_with_record_unchanged() {
    let srv = TestServer::start().await;
    for (name, pix, profile) in [
        ("h444", "yuv444p10le", "high444"),
        ("h422", "yuv422p10le", "high422"),
    ] {
        let Some(mkv) = ffmpeg(
            &format!("{PICTURE} -t 3"),
            &format!("{X264_GOP_1S} -preset veryfast -pix_fmt {pix} -profile:v {profile}"),
        ) else {
            return;
        };
        assert_eq!(upload(&srv, name, &mkv).await, 3);
        let clip = bit_exact_everywhere(&srv, name, &mkv).await;
        assert_eq!(
            box_payload(&clip, b"avcC"),
            codec_private_of(&mkv),
            "{name}"
        );
    }
}

/// ffmpeg libx264 High with B-frames (has_b_frames 2) and AAC, 6 s in 1 s GOPs, 30 fps:
/// bit exact everywhere, and every fragment lasts exactly 1,000 ms (its video frames
/// span 29 × 33.3 ms plus the last frame's DefaultDuration; ffmpeg's AAC blocks lead
/// each cluster by up to 83 ms, which is not presentation time of the fragment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_bframes_bit_exact_and_fragment_durations_are_presentation_spans() {
    let Some(mkv) = ffmpeg(
        &format!(
            "{PICTURE} -f lavfi -i sine=frequency=1000:sample_rate=48000 -t 6 -map 0:v -map 1:a"
        ),
        &format!("{X264_GOP_1S} -profile:v high -pix_fmt yuv420p -c:a aac"),
    ) else {
        return;
    };
    let srv = TestServer::start().await;
    assert_eq!(upload(&srv, "bf", &mkv).await, 6);
    let clip = bit_exact_everywhere(&srv, "bf", &mkv).await;
    assert_eq!(box_payload(&clip, b"avcC"), codec_private_of(&mkv));

    let (status, _, body) = srv
        .post_raw(
            "/listFragments",
            &json!({"StreamName": "bf", "FragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": T0 - 100, "EndTimestamp": T0 + 100}}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut listed: Vec<(f64, i64)> = v["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["ProducerTimestamp"].as_f64().unwrap(),
                f["FragmentLengthInMilliseconds"].as_i64().unwrap(),
            )
        })
        .collect();
    listed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let lengths: Vec<i64> = listed.iter().map(|f| f.1).collect();
    eprintln!("ListFragments lengths: {lengths:?}");
    assert_eq!(lengths, [1000; 6]);

    let url = session_url(
        &srv,
        "/getHLSStreamingSessionURL",
        hls_body("bf", "ON_DEMAND", "FRAGMENTED_MP4", Some(T0 + 60)),
    )
    .await;
    let media = text(&media_of(&url)).await;
    let extinf: Vec<&str> = media
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .collect();
    assert_eq!(extinf.len(), 6, "{media}");
    assert!(
        extinf.iter().all(|e| e.starts_with("1.000,") || *e == "1,"),
        "{media}"
    );
    assert!(media.contains("#EXT-X-TARGETDURATION:1\n"), "{media}");
    let mpd = text(&session_url(&srv, "/getDASHStreamingSessionURL", dash_body("bf")).await).await;
    assert_eq!(mpd.matches(r#" d="1000""#).count(), 12, "{mpd}");
}
