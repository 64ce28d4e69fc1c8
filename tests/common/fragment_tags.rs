//! Producer fragment metadata in test uploads: MKV `Tags` elements inserted after chosen
//! clusters, the way a KVS producer sends `AWS_KINESISVIDEO_*` tags.

use super::clusters_of;

/// Inserts a Tags element (fragment metadata) after each cluster whose timecode is listed.
pub fn tag_clusters(src: &[u8], timecodes: &[u64], tags: &[(&str, &str)]) -> Vec<u8> {
    let mut out = src.to_vec();
    let mut inserts: Vec<(usize, Vec<u8>)> = Vec::new();
    for (tc, bytes) in clusters_of(src) {
        if !timecodes.contains(&tc) {
            continue;
        }
        let at = src
            .windows(bytes.len().min(4096))
            .position(|w| w == &bytes[..bytes.len().min(4096)])
            .unwrap()
            + bytes.len();
        let mut t = Vec::new();
        streamvault::mkv::writer::write_tags(&mut t, tags);
        inserts.push((at, t));
    }
    inserts.sort_by_key(|i| std::cmp::Reverse(i.0));
    for (at, t) in inserts {
        out.splice(at..at, t);
    }
    out
}
