//! Pictures out of one fragment: which frame each instant shows, and decoding just far
//! enough to get it.
//!
//! **Which frame.** For an instant `t` (producer time, ms) the chosen frame is the video
//! frame with the greatest presentation time `≤ t`: the one on screen at `t`. When `t`
//! lies before the fragment's first video frame (the fragment's range starts at its
//! cluster time, which audio may open), it is the first frame. Frames before the
//! fragment's first keyframe cannot be decoded and are never chosen.
//!
//! **How far to decode.** Frames are grouped into GOPs (a keyframe and the frames up to
//! the next one, in stored = decode order). Each GOP that holds a chosen frame is fed to
//! the decoder in decode order from its keyframe up to its last chosen frame (with
//! B-frames the frames a chosen frame references come before it in decode order), then
//! the decoder is drained of its reorder delay: the chosen pictures it still holds come
//! out, the rest is dropped. One decoder serves the whole fragment: consecutive instants
//! of one GOP share the decoding, so each frame is decoded at most once, and an instant
//! that shows the keyframe itself decodes only the keyframe.
//!
//! **Which picture is which.** Each frame goes to the decoder tagged with its index in
//! the fragment, and every picture comes back with the index of its frame
//! ([`decode::Sink`]), whatever order the decoder outputs them in. Only the chosen
//! pictures are converted to RGB and encoded, as they come out; nothing else is kept.
//!
//! **Errors.** A decoder error inside a GOP makes every not-yet-produced instant of that
//! GOP a media error (concealed pictures are never returned); later GOPs are unaffected.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use super::convert::{self, OutputSpec};
use super::decode::{self, DecodeError, DecoderPool, Picture};

/// One video frame of a fragment, in stored order.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// Presentation time, epoch ms (producer time).
    pub ms: i64,
    pub keyframe: bool,
    pub data: Bytes,
}

/// The frame index (into `frames`) each instant shows, or `None` when no decodable
/// frame exists.
pub fn choose_frames(frames: &[VideoFrame], instants: &[i64]) -> Vec<Option<usize>> {
    let Some(first_key) = frames.iter().position(|f| f.keyframe) else {
        return vec![None; instants.len()];
    };
    instants
        .iter()
        .map(|&t| {
            let usable = (first_key..frames.len()).map(|i| (frames[i].ms, i));
            usable
                .clone()
                .filter(|(ms, _)| *ms <= t)
                .max()
                .or_else(|| usable.min())
                .map(|(_, i)| i)
        })
        .collect()
}

/// Renders one picture per instant. `Err` carries why the media could not be decoded.
pub fn render_fragment(
    pool: &DecoderPool,
    codec_id: &str,
    codec_private: &Bytes,
    frames: &[VideoFrame],
    instants: &[i64],
    spec: &OutputSpec,
) -> Vec<Result<Bytes, String>> {
    let chosen = choose_frames(frames, instants);
    let mut by_frame: HashMap<usize, Result<Bytes, String>> = HashMap::new();
    // GOP start (index of its keyframe) → chosen frame indices in it.
    let mut gops: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &i in chosen.iter().flatten() {
        let start = (0..=i)
            .rev()
            .find(|&k| frames[k].keyframe)
            .expect("chosen frames follow a keyframe");
        gops.entry(start).or_default().insert(i);
    }
    if !gops.is_empty() {
        match pool.take(codec_id, codec_private) {
            Ok(mut dec) => {
                let mut healthy = true;
                for (start, wanted) in &gops {
                    let ok = render_gop(dec.as_mut(), frames, *start, wanted, spec, &mut by_frame);
                    healthy &= ok;
                }
                if healthy {
                    pool.give(codec_id, codec_private.clone(), dec);
                }
            }
            Err(e) => {
                for &i in chosen.iter().flatten() {
                    by_frame.insert(i, Err(e.to_string()));
                }
            }
        }
    }
    chosen
        .iter()
        .map(|c| match c {
            None => Err("no decodable video frame in the fragment".to_owned()),
            Some(i) => by_frame
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err("the decoder did not output the frame".to_owned())),
        })
        .collect()
}

/// Decodes the GOP whose keyframe is `frames[start]` far enough for the `wanted` frames
/// (fragment indices, all in that GOP). Returns whether the decoder finished cleanly
/// (reusable).
fn render_gop(
    dec: &mut dyn decode::VideoDecoder,
    frames: &[VideoFrame],
    start: usize,
    wanted: &BTreeSet<usize>,
    spec: &OutputSpec,
    out: &mut HashMap<usize, Result<Bytes, String>>,
) -> bool {
    let left = Cell::new(wanted.len());
    let mut sink = |id: u64, p: &dyn Picture| {
        let Ok(i) = usize::try_from(id) else { return };
        if wanted.contains(&i) && !out.contains_key(&i) {
            let r = p
                .to_rgb()
                .map_err(|e| e.to_string())
                .and_then(|rgb| convert::encode(rgb, spec));
            out.insert(i, r);
            left.set(left.get() - 1);
        }
    };
    let mut error: Option<DecodeError> = None;
    // Every frame a chosen frame references comes before it in decode order: feeding stops
    // at the last chosen frame, and the flush below brings out what is still held.
    let last = wanted.last().copied().unwrap_or(start);
    for (i, f) in frames.iter().enumerate().take(last + 1).skip(start) {
        if let Err(e) = dec.decode(&f.data, i as u64, f.ms, &mut sink) {
            error = Some(e);
            break;
        }
        if left.get() == 0 {
            break;
        }
    }
    if error.is_none()
        && left.get() > 0
        && let Err(e) = dec.flush(&mut sink)
    {
        error = Some(e);
    }
    // Leave the decoder empty for the next GOP; what it still holds is not wanted.
    let flushed = dec.flush(&mut |_, _| {}).is_ok();
    if let Some(e) = &error {
        // Pictures output before the failing frame came from intact frames and stay.
        for w in wanted {
            out.entry(*w).or_insert_with(|| Err(e.to_string()));
        }
    }
    error.is_none() && flushed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ms: i64, key: bool) -> VideoFrame {
        VideoFrame {
            ms,
            keyframe: key,
            data: Bytes::new(),
        }
    }

    #[test]
    fn the_frame_on_screen_is_chosen() {
        let frames = [f(1000, true), f(1033, false), f(1067, false), f(1100, true)];
        assert_eq!(
            choose_frames(&frames, &[900, 1000, 1034, 1099, 1100, 5000]),
            vec![Some(0), Some(0), Some(1), Some(2), Some(3), Some(3)]
        );
        // Frames before the first keyframe are never chosen.
        let frames = [f(1000, false), f(1033, true), f(1067, false)];
        assert_eq!(
            choose_frames(&frames, &[1000, 1040]),
            vec![Some(1), Some(1)]
        );
        assert_eq!(choose_frames(&[f(0, false)], &[0]), vec![None]);
        // B-frames: stored order differs from display order.
        let frames = [f(0, true), f(100, false), f(33, false), f(67, false)];
        assert_eq!(choose_frames(&frames, &[50, 99]), vec![Some(2), Some(3)]);
    }

    /// Outputs pictures in presentation order after holding `delay` of them, as a
    /// decoder with a reorder buffer does; each picture is one grey pixel of its id.
    struct Reordering {
        delay: usize,
        held: Vec<(i64, u64)>,
        fed: Vec<u64>,
    }

    struct Grey(u8);

    impl Picture for Grey {
        fn to_rgb(&self) -> Result<super::super::convert::Rgb, DecodeError> {
            Ok(super::super::convert::Rgb {
                width: 1,
                height: 1,
                data: vec![self.0; 3],
            })
        }
    }

    impl decode::VideoDecoder for Reordering {
        fn decode(
            &mut self,
            _: &[u8],
            id: u64,
            pts: i64,
            sink: &mut decode::Sink<'_>,
        ) -> Result<(), DecodeError> {
            self.fed.push(id);
            self.held.push((pts, id));
            self.held.sort_unstable();
            if self.held.len() > self.delay {
                let (_, id) = self.held.remove(0);
                sink(id, &Grey(id as u8));
            }
            Ok(())
        }

        fn flush(&mut self, sink: &mut decode::Sink<'_>) -> Result<(), DecodeError> {
            for (_, id) in std::mem::take(&mut self.held) {
                sink(id, &Grey(id as u8));
            }
            Ok(())
        }
    }

    #[test]
    fn b_frames_are_picked_by_presentation_time_and_fed_no_further_than_needed() {
        // Decode order I0 P3 B1 B2 P6 B4 B5 (ms = 100 × display position).
        let frames: Vec<VideoFrame> = [(0, true), (300, false), (100, false), (200, false)]
            .into_iter()
            .chain([(600, false), (400, false), (500, false)])
            .map(|(ms, key)| f(ms, key))
            .collect();
        let spec = OutputSpec::default();
        let grey = |id: u8| convert::encode(Grey(id).to_rgb().unwrap(), &spec).unwrap();
        // 250 ms shows B2 (index 3); 450 ms shows B4 (index 5).
        let chosen = choose_frames(&frames, &[250, 450]);
        assert_eq!(chosen, vec![Some(3), Some(5)]);
        let mut dec = Reordering {
            delay: 2,
            held: Vec::new(),
            fed: Vec::new(),
        };
        let mut out = HashMap::new();
        let wanted: BTreeSet<usize> = [3, 5].into();
        assert!(render_gop(&mut dec, &frames, 0, &wanted, &spec, &mut out));
        assert_eq!(out[&3], Ok(grey(3)));
        assert_eq!(out[&5], Ok(grey(5)));
        // B5 (index 6) follows the last chosen frame in decode order: never fed.
        assert_eq!(dec.fed, vec![0, 1, 2, 3, 4, 5]);
        // A keyframe alone is fed alone and comes out of the drain.
        dec.fed.clear();
        let mut out = HashMap::new();
        assert!(render_gop(
            &mut dec,
            &frames,
            0,
            &[0].into(),
            &spec,
            &mut out
        ));
        assert_eq!((dec.fed.as_slice(), &out[&0]), (&[0u64][..], &Ok(grey(0))));
    }
}
