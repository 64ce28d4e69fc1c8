//! Tests of the cluster tables and the commit fence against a real PostgreSQL
//! (`docs/design/cluster.md`, C1 and C2). Each test plays two or more nodes on one test
//! database and tries to get around the fence: commits under a lost lease, commits for a
//! stream another node took over, a takeover racing a commit in flight, a second process
//! under the same node id.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::cluster::{Claim, Coordinator, Lease, Membership, Ownership};
use crate::config::ClusterSettings;
use crate::index::conformance::{B, frag};

const SHORT: Duration = Duration::from_millis(1500);

fn fence(node: &str, epoch: i64) -> Fence {
    Fence {
        node_id: node.into(),
        epoch,
    }
}

fn row(stream: &str, seq: u64) -> BatchRow {
    let mut f = frag(stream, seq, 1_000 * seq as i64);
    f.content_hash = format!("{seq:02x}");
    BatchRow {
        row: f,
        dedupe_since_ms: None,
    }
}

async fn setup(test: &str) -> Option<(TestDb, PostgresIndex)> {
    let db = TestDb::create(test).await?;
    let idx = db.open().await;
    idx.create_stream(new_stream("cam-a", A), 10).await.unwrap();
    idx.create_stream(new_stream("cam-b", B), 10).await.unwrap();
    Some((db, idx))
}

async fn seqs(idx: &PostgresIndex, stream: &str) -> Vec<u64> {
    idx.fragments_after(stream, None, 1000)
        .await
        .unwrap()
        .iter()
        .map(|f| f.seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_stream_cannot_commit_and_numbers_keep_increasing() {
    let Some((_db, idx)) = setup("fence_takeover").await else {
        return;
    };
    let a = idx.join("node-a", "http://a", SHORT).await.unwrap();
    let b = idx
        .join("node-b", "http://b", Duration::from_secs(60))
        .await
        .unwrap();
    let (fa, fb) = (fence("node-a", a), fence("node-b", b));
    assert_eq!(idx.claim_stream(&fa, A, true).await.unwrap(), Claim::Mine);
    // A live owner keeps its stream, whatever the claimant may do.
    match idx.claim_stream(&fb, A, true).await.unwrap() {
        Claim::Elsewhere(n) => {
            assert_eq!((n.node_id.as_str(), n.url.as_str()), ("node-a", "http://a"))
        }
        c => panic!("claimed a live node's stream: {c:?}"),
    }
    assert_eq!(
        idx.stream_owner(A).await.unwrap().unwrap().node_id,
        "node-a"
    );

    let first = idx.reserve_fragment_seqs(A, 64).await.unwrap();
    let out = idx
        .commit_batch(Some(&fa), vec![], vec![row(A, first), row(A, first + 1)])
        .await
        .unwrap();
    assert_eq!(out, vec![RowOutcome::Inserted, RowOutcome::Inserted]);
    // Node B cannot commit A's stream: not its owner.
    let out = idx
        .commit_batch(Some(&fb), vec![], vec![row(A, first + 2)])
        .await
        .unwrap();
    assert_eq!(out, vec![RowOutcome::NotOwner]);

    // A stops renewing. Until its lease expires nobody may take it; then B may.
    assert!(matches!(
        idx.claim_stream(&fb, A, true).await.unwrap(),
        Claim::Elsewhere(_)
    ));
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    // Not allowed to take over yet (outage grace): the expired owner is still answered.
    assert!(matches!(
        idx.claim_stream(&fb, A, false).await.unwrap(),
        Claim::Elsewhere(_)
    ));
    assert!(
        idx.stream_owner(A).await.unwrap().is_none(),
        "an expired owner is not live"
    );
    assert_eq!(idx.claim_stream(&fb, A, true).await.unwrap(), Claim::Mine);

    // The old owner wakes up: every write under its old epoch is refused whole.
    let late = idx
        .commit_batch(Some(&fa), vec![], vec![row(A, first + 2), row(B, 7)])
        .await;
    assert!(matches!(late, Err(IndexError::Fenced(_))), "{late:?}");
    assert!(
        !idx.renew(&fa, SHORT).await.unwrap(),
        "a taken-over lease renews"
    );
    assert!(matches!(
        idx.claim_stream(&fa, B, true).await,
        Err(IndexError::Fenced(_))
    ));
    // The new owner's numbers start above everything the old one reserved (C2).
    let next = idx.reserve_fragment_seqs(A, 64).await.unwrap();
    assert!(
        next >= first + 64,
        "new block {next} overlaps the old owner's {first}.."
    );
    let out = idx
        .commit_batch(Some(&fb), vec![], vec![row(A, next)])
        .await
        .unwrap();
    assert_eq!(out, vec![RowOutcome::Inserted]);
    assert_eq!(seqs(&idx, A).await, vec![first, first + 1, next]);

    // Re-joining gives the old node a new epoch; the stream stays with B.
    let a2 = idx.join("node-a", "http://a", SHORT).await.unwrap();
    assert!(a2 > a);
    assert!(matches!(
        idx.claim_stream(&fence("node-a", a2), A, true)
            .await
            .unwrap(),
        Claim::Elsewhere(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_commit_in_flight_and_fences_every_later_one() {
    let Some((db, idx)) = setup("fence_in_flight").await else {
        return;
    };
    let a = idx.join("node-a", "http://a", SHORT).await.unwrap();
    let b = idx
        .join("node-b", "http://b", Duration::from_secs(60))
        .await
        .unwrap();
    let fa = fence("node-a", a);
    idx.claim_stream(&fa, A, true).await.unwrap();
    // A commit of node A in flight: its transaction holds the fence's key-share lock.
    let mut inflight = PgConnection::connect_with(&db.opts).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut inflight).await.unwrap();
    sqlx::query("SELECT 1 FROM cluster_nodes WHERE node_id = 'node-a' FOR KEY SHARE")
        .execute(&mut inflight)
        .await
        .unwrap();
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    let taker = idx.clone();
    let takeover = tokio::spawn(async move { taker.take_over_expired(&fence("node-b", b)).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !takeover.is_finished(),
        "the takeover went ahead while a commit of the old owner was in flight"
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut inflight)
        .await
        .unwrap();
    let taken = tokio::time::timeout(Duration::from_secs(10), takeover)
        .await
        .expect("the takeover finishes once the commit ended")
        .unwrap()
        .unwrap();
    assert_eq!(taken, vec!["node-a".to_owned()]);
    assert!(idx.stream_owner(A).await.unwrap().is_none());
    let late = idx.commit_batch(Some(&fa), vec![], vec![row(A, 1)]).await;
    assert!(matches!(late, Err(IndexError::Fenced(_))), "{late:?}");
    assert!(seqs(&idx, A).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_a_lease_and_a_node_id_cannot_be_shared() {
    let Some((_db, idx)) = setup("lease_renewal").await else {
        return;
    };
    let a = idx.join("node-a", "http://a", SHORT).await.unwrap();
    let b = idx
        .join("node-b", "http://b", Duration::from_secs(60))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(idx.renew(&fence("node-a", a), SHORT).await.unwrap());
    }
    // 2.4 s after joining with a 1.5 s TTL, still live: nothing to take over.
    assert!(
        idx.take_over_expired(&fence("node-b", b))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(idx.live_nodes().await.unwrap().len(), 2);
    // Another process under the same id, elsewhere, while the lease is live: refused.
    let e = idx.join("node-a", "http://other", SHORT).await.unwrap_err();
    assert!(e.to_string().contains("two nodes share one node id"), "{e}");
    // A node without a live lease may not take others over.
    assert!(matches!(
        idx.take_over_expired(&fence("node-b", b + 1)).await,
        Err(IndexError::Fenced(_))
    ));
    // Leaving releases its streams at once and it no longer counts as live.
    idx.claim_stream(&fence("node-a", a), A, true)
        .await
        .unwrap();
    idx.leave(&fence("node-a", a)).await.unwrap();
    assert!(idx.stream_owner(A).await.unwrap().is_none());
    assert_eq!(idx.live_nodes().await.unwrap().len(), 1);
    assert_eq!(
        idx.claim_stream(&fence("node-b", b), A, true)
            .await
            .unwrap(),
        Claim::Mine
    );
    // Deleting the stream removes its ownership with it.
    idx.delete_stream(A, None, 0).await.unwrap();
    assert!(idx.stream_owner(A).await.unwrap().is_none());
    assert!(matches!(
        idx.claim_stream(&fence("node-b", b), A, true).await,
        Err(IndexError::StreamNotFound(_))
    ));
}

fn mine(o: Ownership) -> Lease {
    match o {
        Ownership::Mine(l) => l,
        o => panic!("not claimed: {o:?}"),
    }
}

fn settings(node: &str) -> ClusterSettings {
    ClusterSettings {
        node_id: Some(node.into()),
        lease_ttl: SHORT,
        lease_renew: Duration::from_millis(500),
        takeover_scan: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_fences_itself_and_a_live_one_takes_its_streams() {
    let Some((_db, idx)) = setup("membership").await else {
        return;
    };
    let coord = idx.coordinator().unwrap();
    let a = Membership::join(coord.clone(), &settings("node-a"), "http://a")
        .await
        .unwrap();
    let b = Membership::join(coord.clone(), &settings("node-b"), "http://b")
        .await
        .unwrap();
    let lease_a = mine(a.claim(A).await.unwrap());
    assert_eq!(a.data_endpoint(A).await.unwrap(), "http://a");
    match b.claim(A).await.unwrap() {
        Ownership::Elsewhere(n) => assert_eq!(n.url, "http://a"),
        o => panic!("claimed a live node's stream: {o:?}"),
    }
    // B renews and scans; A's task never runs (a paused process).
    let stop = CancellationToken::new();
    let task_b = b.clone().spawn(stop.clone());
    tokio::time::sleep(SHORT).await;
    // Past TTL − renew interval without a renewal, A stops committing on its own.
    assert!(
        a.lease().is_none(),
        "a node past its self-fencing limit still commits"
    );
    assert!(a.fence_for(lease_a.epoch).is_none());
    // Within the TTL plus a scan or two (and B's one-TTL grace), B takes A over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while coord.live_nodes().await.unwrap().len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!lease_a.token.is_cancelled(), "A has not noticed yet");
    let lease_b = mine(b.claim(A).await.unwrap());
    assert_eq!(b.data_endpoint(A).await.unwrap(), "http://b");
    // A continues: its first renewal finds the lease gone, ends its sessions and joins
    // again under a new epoch; the stream stays with B.
    let task_a = a.clone().spawn(stop.clone());
    tokio::time::timeout(Duration::from_secs(5), lease_a.token.cancelled())
        .await
        .expect("A's sessions end once it sees the lease lost");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let again = loop {
        if let Some(l) = a.lease() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "A did not join again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(again.epoch > lease_a.epoch);
    assert!(
        matches!(a.claim(A).await.unwrap(), Ownership::Elsewhere(_)),
        "B's live stream moved back to A"
    );
    assert!(!lease_b.token.is_cancelled());
    stop.cancel();
    let _ = tokio::join!(task_a, task_b);
    b.leave().await;
    assert!(
        lease_b.token.is_cancelled(),
        "leaving ends the sessions under the lease"
    );
    assert!(coord.stream_owner(A).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_runs_on_one_node_and_moves_when_its_holder_stops() {
    let Some((_db, idx)) = setup("singletons").await else {
        return;
    };
    let a = idx
        .join("node-a", "http://a", Duration::from_secs(60))
        .await
        .unwrap();
    let b = idx
        .join("node-b", "http://b", Duration::from_secs(60))
        .await
        .unwrap();
    let (fa, fb) = (fence("node-a", a), fence("node-b", b));
    let ttl = Duration::from_millis(800);
    assert!(idx.hold_singleton(&fa, "retention", ttl).await.unwrap());
    assert!(
        !idx.hold_singleton(&fb, "retention", ttl).await.unwrap(),
        "two holders"
    );
    // Another singleton is independent; the holder extends its own.
    assert!(idx.hold_singleton(&fb, "gc", ttl).await.unwrap());
    assert!(idx.hold_singleton(&fa, "retention", ttl).await.unwrap());
    // The holder stops extending it: after its TTL the other node takes it, and the old
    // holder (same node, same epoch) no longer holds it.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert!(idx.hold_singleton(&fb, "retention", ttl).await.unwrap());
    assert!(!idx.hold_singleton(&fa, "retention", ttl).await.unwrap());
    // A node that lost its lease cannot hold one, even an expired one.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let a2 = idx
        .join("node-a", "http://a", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        idx.hold_singleton(&fa, "retention", ttl).await,
        Err(IndexError::Fenced(_))
    ));
    assert!(
        idx.hold_singleton(&fence("node-a", a2), "retention", ttl)
            .await
            .unwrap()
    );
}
