//! The per-stream fragment-number allocator: numbers come from blocks reserved durably in
//! the index before any number of a block is used (storage invariant I3), shared by every
//! session of the stream, so numbers increase in ingestion order and are never reused.
//! On a cluster node a block belongs to the lease epoch the stream was claimed under: a
//! session under another epoch never takes a number from it, so after the stream moved
//! to another owner and back, numbering resumes above everything the other owner
//! reserved (`docs/design/cluster.md`, C2).

use super::StreamRuntime;
use crate::error::Result;
use crate::index::Index;

/// Fragment numbers reserved per index write.
const SEQ_BLOCK: u64 = 64;

#[derive(Debug, Default)]
pub(super) struct SeqBlock {
    next: u64,
    end: u64,
    epoch: Option<i64>,
}

impl StreamRuntime {
    /// Next fragment sequence number; reservations are durable before use.
    pub(crate) async fn next_seq(
        &self,
        index: &dyn Index,
        stream_id: &str,
        epoch: Option<i64>,
    ) -> Result<u64> {
        let mut b = self.seq.lock().await;
        if b.next == b.end || b.epoch != epoch {
            let first = index.reserve_fragment_seqs(stream_id, SEQ_BLOCK).await?;
            b.next = first;
            b.end = first + SEQ_BLOCK;
            b.epoch = epoch;
        }
        let n = b.next;
        b.next += 1;
        Ok(n)
    }
}
