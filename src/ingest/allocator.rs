//! The per-stream fragment-number allocator: numbers come from blocks reserved durably in
//! the index before any number of a block is used (storage invariant I3), shared by every
//! session of the stream, so numbers increase in ingestion order and are never reused.

use super::StreamRuntime;
use crate::error::Result;
use crate::index::Index;

/// Fragment numbers reserved per index write.
const SEQ_BLOCK: u64 = 64;

#[derive(Debug, Default)]
pub(super) struct SeqBlock {
    next: u64,
    end: u64,
}

impl StreamRuntime {
    /// Next fragment sequence number; reservations are durable before use.
    pub(crate) async fn next_seq(&self, index: &dyn Index, stream_id: &str) -> Result<u64> {
        let mut b = self.seq.lock().await;
        if b.next == b.end {
            let first = index.reserve_fragment_seqs(stream_id, SEQ_BLOCK).await?;
            b.next = first;
            b.end = first + SEQ_BLOCK;
        }
        let n = b.next;
        b.next += 1;
        Ok(n)
    }
}
