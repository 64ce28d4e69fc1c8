//! Unit tests of what needs no database: the rendezvous choice. The lease protocol is
//! tested against PostgreSQL in `src/index/postgres_cluster_tests.rs`.

use super::*;

fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
    ids.iter()
        .map(|id| NodeInfo {
            node_id: (*id).into(),
            url: format!("http://{id}"),
            epoch: 1,
        })
        .collect()
}

#[test]
fn rendezvous_agrees_spreads_and_moves_only_a_leaving_nodes_streams() {
    let three = nodes(&["n1", "n2", "n3"]);
    let mut reversed = three.clone();
    reversed.reverse();
    let streams: Vec<String> = (0..3000).map(|i| format!("{i:032x}")).collect();
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for s in &streams {
        let a = rendezvous(s, &three).unwrap();
        // Every caller with the same live set picks the same node, in any order.
        assert_eq!(a, rendezvous(s, &reversed).unwrap());
        *per_node.entry(a.node_id.clone()).or_default() += 1;
    }
    for (n, c) in &per_node {
        assert!((800..1200).contains(c), "{n} got {c} of 3000 streams");
    }
    // n2 leaves: its streams spread over the others, no other stream moves.
    let two = nodes(&["n1", "n3"]);
    for s in &streams {
        let before = rendezvous(s, &three).unwrap();
        let after = rendezvous(s, &two).unwrap();
        if before.node_id != "n2" {
            assert_eq!(before.node_id, after.node_id);
        }
    }
    assert!(rendezvous("x", &[]).is_none());
}

#[test]
fn the_node_id_defaults_to_the_host_name() {
    let s = ClusterSettings::default();
    assert_eq!(s.node_id(), host_name());
    assert!(!host_name().is_empty());
    let named = ClusterSettings {
        node_id: Some("cam-node-7".into()),
        ..ClusterSettings::default()
    };
    assert_eq!(named.node_id(), "cam-node-7");
}
