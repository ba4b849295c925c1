//! Moving nodes from the pool into clusters: all or nothing, only pool nodes, never one node in
//! two clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use qb_api::{AttachTarget, ClusterId, NodeId, NodeState};
use qb_store::{Key, StoreError};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::{
    TestDb, actor, all_clusters, all_events, all_nodes, assert_invalid_state, assert_not_found,
    assert_pool_exhausted, attach_nodes, by_name, cluster, cluster_detail, detach_nodes,
    events_with_action, from_pool, named, names, node, pending_node, pool_node, pool_nodes,
    snapshot, tenant,
};

on_both_backends!(
    attach_moves_nodes_and_records_it,
    pool_exhausted_changes_nothing,
    only_pool_nodes_can_be_attached,
    selectors_choose_from_the_pool,
    concurrent_attaches_never_share_a_node,
);

async fn attach_moves_nodes_and_records_it(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1", "n2", "n3", "n4"]).await;
    let c = cluster(&db, t, "c1").await;
    assert_eq!((c.node_count, c.state), (0, qb_api::ClusterState::Empty));
    let before = all_events(&db, t).await.len();

    let moved = attach_nodes(&db, t, c.id, &["n3", "n1"]).await;
    assert_eq!(moved.cluster.id, c.id);
    assert_eq!(moved.cluster.name.as_str(), "c1");
    assert_eq!(
        moved
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["n3", "n1"]
    );
    for n in &moved.nodes {
        assert_eq!(n.state, NodeState::Attached);
        assert_eq!(n.cluster.as_ref().map(|c| c.id), Some(c.id));
        assert_eq!(
            *n,
            node(&db, t, n.name.as_str()).await,
            "the returned node is what is stored"
        );
    }

    // By name this time; the pool hands out nodes in name order.
    let moved = db
        .attach(t, &by_name("c1"), &from_pool(1, None), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["n2"]);

    let detail = cluster_detail(&db, t, c.id).await;
    assert_eq!(detail.cluster.node_count, 3);
    assert_eq!(detail.cluster.state, qb_api::ClusterState::Pending);
    assert_eq!(names(&detail.nodes), ["n1", "n2", "n3"]);
    assert_eq!(node(&db, t, "n4").await.state, NodeState::Authorized);
    assert_eq!(node(&db, t, "n4").await.cluster, None);

    let new = all_events(&db, t).await.split_off(before);
    assert_eq!(
        crate::actions(&new),
        [
            "node.attached",
            "node.attached",
            "cluster.nodes_attached",
            "node.attached",
            "cluster.nodes_attached"
        ]
    );
    assert_eq!(new[0].object_name, "n3");
    assert_eq!(new[1].object_name, "n1");
    assert_eq!(new[0].detail["cluster"], "c1");
    assert_eq!(new[2].object_id, c.id.to_string());
    assert_eq!(new[2].detail["nodes"], serde_json::json!(["n3", "n1"]));
    assert_eq!(new[3].object_name, "n2");
    assert!(new.iter().all(|e| e.actor == "user:alice"));
}

async fn pool_exhausted_changes_nothing(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["free-1", "free-2"]).await;
    pending_node(&db, t, "waiting", &[]).await;
    let gone = pool_node(&db, t, "gone", &[]).await;
    db.deauthorize_node(t, &Key::Id(gone.id), &actor())
        .await
        .unwrap();
    pool_node(&db, t, "busy", &[]).await;
    let other = cluster(&db, t, "other").await;
    attach_nodes(&db, t, other.id, &["busy"]).await;
    let c = cluster(&db, t, "c1").await;
    let before = snapshot(&db, t).await;

    assert_pool_exhausted(
        &db.attach(t, &Key::Id(c.id), &from_pool(3, None), &actor())
            .await,
        3,
        2,
        false,
    );
    assert_eq!(
        snapshot(&db, t).await,
        before,
        "a refused attach changed something"
    );

    // Exactly what the pool holds is fine.
    let moved = db
        .attach(t, &Key::Id(c.id), &from_pool(2, None), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["free-1", "free-2"]);
    assert_pool_exhausted(
        &db.attach(t, &Key::Id(c.id), &from_pool(1, None), &actor())
            .await,
        1,
        0,
        false,
    );
}

async fn only_pool_nodes_can_be_attached(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_node(&db, t, "free", &[]).await;
    pending_node(&db, t, "waiting", &[]).await;
    let gone = pool_node(&db, t, "gone", &[]).await;
    db.deauthorize_node(t, &Key::Id(gone.id), &actor())
        .await
        .unwrap();
    pool_nodes(&db, t, &["mine", "theirs", "leaving"]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    attach_nodes(&db, t, c1.id, &["mine", "leaving"]).await;
    detach_nodes(&db, t, c1.id, &["leaving"]).await;
    attach_nodes(&db, t, c2.id, &["theirs"]).await;
    let before = snapshot(&db, t).await;

    let refused = [
        (vec!["free", "waiting"], NodeState::Pending),
        (vec!["gone"], NodeState::Deauthorized),
        (vec!["free", "mine"], NodeState::Attached),
        (vec!["theirs", "free"], NodeState::Attached),
        (vec!["leaving"], NodeState::Detaching),
    ];
    for (list, state) in refused {
        let result = db.attach(t, &Key::Id(c1.id), &named(&list), &actor()).await;
        assert_invalid_state(&result, state.as_str());
        assert_eq!(
            snapshot(&db, t).await,
            before,
            "refusing {list:?} changed something"
        );
    }

    assert_not_found(
        &db.attach(t, &Key::Id(c1.id), &named(&["free", "nosuch"]), &actor())
            .await,
        "node",
    );
    assert_not_found(
        &db.attach(t, &by_name("nosuch"), &named(&["free"]), &actor())
            .await,
        "cluster",
    );
    assert_eq!(snapshot(&db, t).await, before);

    // The pool never offers them either: only `free` is there.
    assert_pool_exhausted(
        &db.attach(t, &Key::Id(c1.id), &from_pool(2, None), &actor())
            .await,
        2,
        1,
        false,
    );
    let moved = attach_nodes(&db, t, c1.id, &["free"]).await;
    assert_eq!(names(&moved.nodes), ["free"]);
}

async fn selectors_choose_from_the_pool(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_node(&db, t, "a1", &[("zone", "a")]).await;
    pool_node(&db, t, "a2", &[("zone", "a"), ("gpu", "")]).await;
    pool_node(&db, t, "a3", &[("zone", "a"), ("gpu", "1"), ("maint", "")]).await;
    pool_node(&db, t, "b1", &[("zone", "b"), ("gpu", "")]).await;
    pool_node(&db, t, "b2", &[("zone", "b")]).await;
    let c = cluster(&db, t, "c1").await;
    let key = Key::Id(c.id);

    let moved = db
        .attach(t, &key, &from_pool(1, Some("gpu,!maint")), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["a2"]);

    let before = snapshot(&db, t).await;
    let refused = db
        .attach(t, &key, &from_pool(3, Some("zone=a")), &actor())
        .await;
    assert_pool_exhausted(&refused, 3, 2, true);
    let err = refused.unwrap_err();
    assert!(err.to_string().contains("matching the selector"), "{err}");
    assert_eq!(snapshot(&db, t).await, before);

    let moved = db
        .attach(t, &key, &from_pool(2, Some("zone!=a")), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["b1", "b2"]);

    // Labels change what matches.
    assert_pool_exhausted(
        &db.attach(t, &key, &from_pool(2, Some("zone=a,!maint")), &actor())
            .await,
        2,
        1,
        true,
    );
    let change = qb_api::LabelChange {
        set: BTreeMap::new(),
        remove: vec!["maint".parse().unwrap()],
    };
    db.label_node(t, &by_name("a3"), &change, &actor())
        .await
        .unwrap();
    let moved = db
        .attach(t, &key, &from_pool(2, Some("zone=a,!maint")), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["a1", "a3"]);
    assert_eq!(cluster_detail(&db, t, c.id).await.cluster.node_count, 5);
}

/// Many clusters grab overlapping nodes at once, by name and from the pool, through two stores
/// opened separately (two controller replicas on PostgreSQL; on SQLite, the controller and an
/// operator command writing the same file). No node may end up moved twice, and the event log
/// must tell exactly what happened.
async fn concurrent_attaches_never_share_a_node(db: TestDb) {
    const NODES: usize = 30;
    const CLUSTERS: usize = 8;
    const ROUNDS: usize = 3;
    let t = tenant(&db, "acme").await;
    for i in 0..NODES {
        pool_node(
            &db,
            t,
            &format!("n{i:02}"),
            &[("zone", if i % 2 == 0 { "a" } else { "b" })],
        )
        .await;
    }
    let mut clusters = Vec::new();
    for i in 0..CLUSTERS {
        clusters.push(cluster(&db, t, &format!("c{i}")).await);
    }
    let events_before = all_events(&db, t).await;
    let second = db.open_again().await;

    let mut requests = Vec::new();
    for round in 0..ROUNDS {
        for (i, c) in clusters.iter().enumerate() {
            // Windows of three names; neighbouring clusters share two of them.
            let window: Vec<String> = (0..3)
                .map(|k| format!("n{:02}", (i + k + round * 7) % NODES))
                .collect();
            let window: Vec<&str> = window.iter().map(String::as_str).collect();
            requests.push((c.id, named(&window)));
            requests.push((c.id, from_pool(2, None)));
            requests.push((c.id, from_pool(1, Some("zone=a"))));
        }
    }
    let barrier = Arc::new(Barrier::new(requests.len()));
    let mut tasks = JoinSet::new();
    for (i, (cluster, target)) in requests.into_iter().enumerate() {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            second.clone()
        };
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let result = store
                .attach(t, &Key::Id(cluster), &target, &crate::actor())
                .await;
            (cluster, target, result)
        });
    }

    // What the callers were told.
    let mut moved_to: BTreeMap<NodeId, ClusterId> = BTreeMap::new();
    let mut moves: Vec<(ClusterId, BTreeSet<String>)> = Vec::new();
    let mut refused = 0;
    while let Some(joined) = tasks.join_next().await {
        let (cluster, target, result) = joined.unwrap();
        match result {
            Ok(mv) => {
                assert_eq!(mv.cluster.id, cluster);
                match &target {
                    AttachTarget::Named(wanted) => {
                        let got: Vec<_> = mv.nodes.iter().map(|n| n.name.clone()).collect();
                        assert_eq!(&got, wanted);
                    }
                    AttachTarget::FromPool { count, selector } => {
                        assert_eq!(mv.nodes.len(), *count as usize);
                        if let Some(selector) = selector {
                            assert!(mv.nodes.iter().all(|n| selector.matches(&n.labels)));
                        }
                    }
                }
                for n in &mv.nodes {
                    assert_eq!(n.state, NodeState::Attached);
                    assert_eq!(n.cluster.as_ref().map(|c| c.id), Some(cluster));
                    let earlier = moved_to.insert(n.id, cluster);
                    assert_eq!(earlier, None, "node {} was attached twice", n.name);
                }
                moves.push((
                    cluster,
                    mv.nodes.iter().map(|n| n.name.to_string()).collect(),
                ));
            }
            Err(StoreError::InvalidNodeState { state, .. }) => {
                assert!(matches!(target, AttachTarget::Named(_)), "{target:?}");
                // Losing the race shows as "attached"; anything else means two requests moved
                // the same node at the same time.
                assert_eq!(state, "attached", "{target:?}");
                refused += 1;
            }
            Err(StoreError::PoolExhausted {
                wanted, available, ..
            }) => {
                assert!(
                    matches!(target, AttachTarget::FromPool { .. }),
                    "{target:?}"
                );
                assert!(available < wanted);
                refused += 1;
            }
            Err(other) => panic!("{target:?}: unexpected error {other:?}"),
        }
    }
    assert!(
        !moves.is_empty() && refused > 0,
        "the requests should both win and lose"
    );

    // What is stored agrees with what they were told.
    let nodes = all_nodes(&db, t).await;
    assert_eq!(nodes.len(), NODES);
    for n in &nodes {
        match moved_to.get(&n.id) {
            Some(c) => {
                assert_eq!(n.state, NodeState::Attached, "{}", n.name);
                assert_eq!(n.cluster.as_ref().map(|r| r.id), Some(*c), "{}", n.name);
            }
            None => {
                assert_eq!(n.state, NodeState::Authorized, "{}", n.name);
                assert_eq!(n.cluster, None, "{}", n.name);
            }
        }
    }
    let listed = all_clusters(&db, t).await;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for c in &clusters {
        let detail = cluster_detail(&db, t, c.id).await;
        let expected: BTreeSet<NodeId> = moved_to
            .iter()
            .filter(|(_, cl)| **cl == c.id)
            .map(|(n, _)| *n)
            .collect();
        let members: BTreeSet<NodeId> = detail.nodes.iter().map(|n| n.id).collect();
        assert_eq!(members, expected, "members of {}", c.name);
        assert_eq!(detail.cluster.node_count as usize, expected.len());
        let in_list = listed.iter().find(|l| l.id == c.id).unwrap();
        assert_eq!(in_list.node_count, detail.cluster.node_count);
        for m in members {
            assert!(seen.insert(m), "a node is listed in two clusters");
        }
        total += detail.cluster.node_count as usize;
    }
    assert_eq!(total, moved_to.len());

    // One `node.attached` per attachment, naming the cluster it went to; one
    // `cluster.nodes_attached` per successful request; nothing for the refused ones.
    let cluster_names: BTreeMap<ClusterId, String> = clusters
        .iter()
        .map(|c| (c.id, c.name.to_string()))
        .collect();
    let attached = events_with_action(&db, t, "node.attached").await;
    let mut logged: Vec<(String, String)> = attached
        .iter()
        .map(|e| {
            (
                e.object_id.clone(),
                e.detail["cluster"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    logged.sort();
    let mut expected: Vec<(String, String)> = moved_to
        .iter()
        .map(|(n, c)| (n.to_string(), cluster_names[c].clone()))
        .collect();
    expected.sort();
    assert_eq!(logged, expected);

    let batches = events_with_action(&db, t, "cluster.nodes_attached").await;
    let mut logged: Vec<(String, BTreeSet<String>)> = batches
        .iter()
        .map(|e| {
            let nodes = e.detail["nodes"].as_array().unwrap();
            (
                e.object_id.clone(),
                nodes
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    logged.sort();
    let mut expected: Vec<(String, BTreeSet<String>)> = moves
        .iter()
        .map(|(c, n)| (c.to_string(), n.clone()))
        .collect();
    expected.sort();
    assert_eq!(logged, expected);

    let all = all_events(&db, t).await;
    assert_eq!(
        all.len(),
        events_before.len() + moved_to.len() + moves.len()
    );
    assert_eq!(all[..events_before.len()], events_before[..]);
}
