//! Clusters: their spec, detaching nodes, and deleting them.

use std::collections::BTreeMap;

use qb_api::{ClusterState, CreateCluster, KubernetesVersion, MasterCount, NodeRole, NodeState};
use qb_store::{ClusterSpec, Drain, Key, SpecError, StoreError};

use crate::{
    TestDb, actor, all_clusters, all_events, assert_invalid_state, assert_name_taken,
    assert_not_found, assert_pool_exhausted, attach_nodes, by_name, cluster, cluster_detail,
    detach_nodes, events_with_action, name, named, names, node, node_name, pool_node, pool_nodes,
    snapshot, spec, tenant,
};

on_both_backends!(
    cluster_spec_is_stored_as_given,
    cluster_names_are_unique_per_tenant,
    detach_then_finish_returns_nodes_to_the_pool,
    detach_only_moves_members,
    a_leaving_nodes_drain_is_kept_until_it_left,
    deauthorizing_a_node_in_a_cluster_is_refused_until_it_left,
    a_node_in_a_cluster_keeps_its_address_label,
    deleting_a_cluster_with_nodes_needs_force,
    pod_subnets_are_given_once_and_freed_when_a_node_leaves,
    state_since_moves_with_the_state_not_with_the_message,
    engine_state_reads_back_typed_and_a_corrupt_row_is_an_error,
    invariants_hold_and_broken_rows_are_named,
);

async fn cluster_spec_is_stored_as_given(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let custom = |service_cidr: &str| {
        ClusterSpec::try_from(CreateCluster {
            name: name("custom"),
            kubernetes_version: Some("1.21.3".parse().unwrap()),
            pod_cidr: Some("172.16.0.0/16".parse().unwrap()),
            service_cidr: Some(service_cidr.parse().unwrap()),
            masters: MasterCount::Count(3),
            roles: BTreeMap::from([
                (node_name("h1.rack"), NodeRole::Master),
                (node_name("h2"), NodeRole::Worker),
            ]),
            taint_masters: true,
        })
    };
    // Mixed IP families are refused before anything is stored.
    let given = custom("fd00::/108");
    assert!(matches!(given, Err(SpecError::Invalid(_))), "{given:?}");

    let given = custom("172.17.0.0/20").unwrap();
    let created = db.create_cluster(t, &given, &actor()).await.unwrap();
    assert_eq!(created.name, given.name);
    assert_eq!(created.kubernetes_version, given.kubernetes_version);
    assert_eq!(created.pod_cidr, given.pod_cidr);
    assert_eq!(created.service_cidr, given.service_cidr);
    assert_eq!(created.masters, given.masters);
    assert_eq!(created.roles, given.roles);
    assert!(created.taint_masters);
    assert_eq!(
        (created.state, created.node_count),
        (ClusterState::Empty, 0)
    );
    let stored = db.get_cluster(t, &by_name("custom")).await.unwrap();
    assert_eq!(stored.cluster, created);
    assert!(stored.nodes.is_empty());
    assert_eq!(all_clusters(&db, t).await, std::slice::from_ref(&created));

    let defaults = cluster(&db, t, "plain").await;
    assert!(
        !defaults.taint_masters,
        "masters run workloads unless asked"
    );
    assert_eq!(
        defaults.kubernetes_version,
        KubernetesVersion::default_version()
    );
    assert_eq!(
        defaults.pod_cidr.to_string(),
        CreateCluster::DEFAULT_POD_CIDR
    );
    assert_eq!(
        defaults.service_cidr.to_string(),
        CreateCluster::DEFAULT_SERVICE_CIDR
    );
    assert_eq!(defaults.masters, MasterCount::Auto);

    let logged = events_with_action(&db, t, "cluster.created").await;
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[0].object_id, created.id.to_string());
    assert_eq!(logged[0].object_name, "custom");
    assert_eq!(logged[0].detail["masters"], "3");
    assert_eq!(logged[0].detail["roles"]["h1.rack"], "master");
}

async fn cluster_names_are_unique_per_tenant(db: TestDb) {
    let a = tenant(&db, "acme").await;
    let b = tenant(&db, "bolt").await;
    let first = cluster(&db, a, "web").await;
    let before = snapshot(&db, a).await;
    let refused = db.create_cluster(a, &spec("web"), &actor()).await;
    assert_name_taken(&refused, "cluster", "web");
    assert_eq!(snapshot(&db, a).await, before);

    let other = cluster(&db, b, "web").await;
    assert_ne!(other.id, first.id);
    assert_eq!(
        db.get_cluster(a, &by_name("web")).await.unwrap().cluster.id,
        first.id
    );
    assert_eq!(
        db.get_cluster(b, &by_name("web")).await.unwrap().cluster.id,
        other.id
    );

    // The name is free again once the cluster is gone.
    db.delete_cluster(a, &by_name("web"), false, &actor())
        .await
        .unwrap();
    let again = cluster(&db, a, "web").await;
    assert_ne!(again.id, first.id);
}

async fn detach_then_finish_returns_nodes_to_the_pool(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1", "n2"]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    attach_nodes(&db, t, c1.id, &["n1", "n2"]).await;
    let before = all_events(&db, t).await.len();

    let moved = db
        .detach(t, &by_name("c1"), &[node_name("n1")], false, &actor())
        .await
        .unwrap();
    assert_eq!(moved.cluster.id, c1.id);
    assert_eq!(names(&moved.nodes), ["n1"]);
    let n1 = &moved.nodes[0];
    assert_eq!(n1.state, NodeState::Detaching);
    assert_eq!(
        n1.cluster.as_ref().map(|c| c.id),
        Some(c1.id),
        "a detaching node is still in its cluster"
    );
    assert_eq!(*n1, node(&db, t, "n1").await);
    let detail = cluster_detail(&db, t, c1.id).await;
    assert_eq!(detail.cluster.node_count, 2);
    assert_eq!(names(&detail.nodes), ["n1", "n2"]);
    assert_eq!(crate::detaching(&db, t).await, std::slice::from_ref(n1));

    // Not yet in the pool.
    assert_invalid_state(
        &db.attach(t, &Key::Id(c2.id), &named(&["n1"]), &actor())
            .await,
        "detaching",
    );
    assert_pool_exhausted(
        &db.attach(t, &Key::Id(c2.id), &crate::from_pool(1, None), &actor())
            .await,
        1,
        0,
        false,
    );

    let back = db
        .finish_detach(t, n1.id, &qb_store::Actor::controller())
        .await
        .unwrap();
    assert_eq!(back.state, NodeState::Authorized);
    assert_eq!(back.cluster, None);
    assert_eq!(back, node(&db, t, "n1").await);
    assert_eq!(cluster_detail(&db, t, c1.id).await.cluster.node_count, 1);
    assert!(crate::detaching(&db, t).await.is_empty());

    let new = all_events(&db, t).await.split_off(before);
    assert_eq!(
        crate::actions(&new),
        ["node.detaching", "cluster.nodes_detached", "node.detached"]
    );
    assert_eq!(new[0].object_id, n1.id.to_string());
    assert_eq!(new[0].detail["cluster"], "c1");
    assert_eq!(new[1].object_id, c1.id.to_string());
    assert_eq!(new[1].detail["nodes"], serde_json::json!(["n1"]));
    assert_eq!(new[2].object_id, n1.id.to_string());
    assert_eq!(new[2].actor, "controller");
    assert_eq!(new[2].detail["cluster"], "c1");

    // Finishing twice, or finishing an attached node, is refused and changes nothing.
    let before = snapshot(&db, t).await;
    assert_invalid_state(&db.finish_detach(t, n1.id, &actor()).await, "authorized");
    let n2 = node(&db, t, "n2").await;
    assert_invalid_state(&db.finish_detach(t, n2.id, &actor()).await, "attached");
    assert_eq!(snapshot(&db, t).await, before);

    // Back in the pool, it can join another cluster.
    let moved = db
        .attach(t, &Key::Id(c2.id), &crate::from_pool(1, None), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["n1"]);
}

/// A restarted controller finds a drain where the last one left it: when it began (it gives up
/// some time after) and whether it is done. A node that leaves again starts a new drain.
async fn a_leaving_nodes_drain_is_kept_until_it_left(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_node(&db, t, "n1", &[]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    let drain_of = |cluster: qb_api::ClusterId| {
        let db = &db;
        async move {
            let ec = db.engine_cluster(t, cluster).await.unwrap();
            ec.nodes[0].drain
        }
    };
    attach_nodes(&db, t, c1.id, &["n1"]).await;
    let n1 = node(&db, t, "n1").await;
    detach_nodes(&db, t, c1.id, &["n1"]).await;
    assert_eq!(drain_of(c1.id).await, Drain::NotStarted);

    let before = all_events(&db, t).await.len();
    let began = db.start_drain(t, n1.id).await.unwrap();
    assert_eq!(drain_of(c1.id).await, Drain::Since(began));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(db.start_drain(t, n1.id).await.unwrap(), began, "begun once");
    db.finish_drain(t, n1.id, true).await.unwrap();
    assert_eq!(drain_of(c1.id).await, Drain::Done);
    let new = all_events(&db, t).await.split_off(before);
    assert_eq!(crate::actions(&new), ["node.draining", "node.drained"]);
    assert_eq!(new[0].detail["cluster"], "c1");
    assert_eq!(new[1].detail["gave_up"], true);

    // It leaves; in another cluster, leaving again drains again.
    db.finish_detach(t, n1.id, &qb_store::Actor::controller())
        .await
        .unwrap();
    attach_nodes(&db, t, c2.id, &["n1"]).await;
    detach_nodes(&db, t, c2.id, &["n1"]).await;
    assert_eq!(drain_of(c2.id).await, Drain::NotStarted);
}

/// The engine's own state (the cluster PKI, a node's etcd membership and certificates) reads
/// back as the types it was stored from; a row that does not parse is an error naming it, never
/// taken for a missing value; and none of it prints a private key.
async fn engine_state_reads_back_typed_and_a_corrupt_row_is_an_error(db: TestDb) {
    use qb_plan::membership::Membership;
    use qb_plan::pki::{CertPurpose, ClusterPki, KeyCert, NodeCerts};
    use qb_plan::render::{EtcdBootstrap, InitialClusterState};

    let t = tenant(&db, "acme").await;
    pool_node(&db, t, "n1", &[]).await;
    let c1 = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c1.id, &["n1"]).await;
    let ec = db.engine_cluster(t, c1.id).await.unwrap();
    assert!(ec.pki.is_none() && ec.nodes[0].etcd.is_none() && ec.nodes[0].certs.is_none());

    // The first PKI stored wins (another replica's, say).
    let pki = ClusterPki::generate("c1").unwrap();
    assert_eq!(db.init_cluster_pki(t, c1.id, &pki).await.unwrap(), pki);
    let other = ClusterPki::generate("c1").unwrap();
    assert_eq!(db.init_cluster_pki(t, c1.id, &other).await.unwrap(), pki);

    let membership = Membership {
        bootstrap: EtcdBootstrap {
            initial_cluster: vec![("n1".to_owned(), "10.0.0.1".parse().unwrap())],
            state: InitialClusterState::New,
        },
        learner: false,
        member_id: Some(7),
    };
    let certs = NodeCerts {
        certs: [(
            CertPurpose::EtcdServer,
            KeyCert {
                cert_pem: "a certificate".to_owned(),
                key_pem: "-----BEGIN PRIVATE KEY----- the node's".to_owned(),
            },
        )]
        .into(),
    };
    let n1 = ec.nodes[0].node.id;
    db.set_node_engine(
        t,
        n1,
        c1.id,
        Some(NodeRole::Master),
        Some(&membership),
        Some(&certs),
    )
    .await
    .unwrap();
    let ec = db.engine_cluster(t, c1.id).await.unwrap();
    assert_eq!(ec.pki.as_ref(), Some(&pki));
    assert_eq!(ec.nodes[0].etcd.as_ref(), Some(&membership));
    assert_eq!(ec.nodes[0].certs.as_ref(), Some(&certs));
    let printed = format!("{ec:?}");
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");

    // A membership of the wrong shape: the cluster cannot be read, and the error says why.
    sqlx::query("UPDATE nodes SET etcd = $1 WHERE id = $2")
        .bind(r#"{"bootstrap": 1}"#)
        .bind(n1.to_string())
        .execute(&db.raw().await)
        .await
        .unwrap();
    match db.engine_cluster(t, c1.id).await {
        Err(StoreError::Corrupt { what, .. }) => assert_eq!(what, "etcd membership"),
        other => panic!("expected a corrupt row, got {other:?}"),
    }
    // A damaged key row: the error says where, never what the row holds.
    sqlx::query("UPDATE nodes SET etcd = NULL, certs = $1 WHERE id = $2")
        .bind(r#"{"certs": {"etcd_server": "-----BEGIN PRIVATE KEY----- secret"}}"#)
        .bind(n1.to_string())
        .execute(&db.raw().await)
        .await
        .unwrap();
    let e = db.engine_cluster(t, c1.id).await.unwrap_err();
    let chain = format!("{:?} {}", e, qb_api::error_chain(&e));
    assert!(chain.contains("node certificates"), "{chain}");
    assert!(
        !chain.contains("secret") && !chain.contains("PRIVATE"),
        "{chain}"
    );
}

async fn detach_only_moves_members(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["mine", "mine-too", "theirs", "free"]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    attach_nodes(&db, t, c1.id, &["mine", "mine-too"]).await;
    attach_nodes(&db, t, c2.id, &["theirs"]).await;
    detach_nodes(&db, t, c1.id, &["mine-too"]).await;
    let before = snapshot(&db, t).await;

    for (list, not_member) in [
        (vec!["theirs"], "theirs"),
        (vec!["mine", "theirs"], "theirs"),
        (vec!["free"], "free"),
    ] {
        let list: Vec<_> = list.into_iter().map(node_name).collect();
        let err = db
            .detach(t, &Key::Id(c1.id), &list, false, &actor())
            .await
            .unwrap_err();
        match &err {
            StoreError::NodeNotInCluster { node, cluster } => {
                assert_eq!((node.as_str(), cluster.as_str()), (not_member, "c1"));
            }
            other => panic!("{list:?}: expected NodeNotInCluster, got {other:?}"),
        }
        assert_eq!(
            snapshot(&db, t).await,
            before,
            "refusing {list:?} changed something"
        );
    }
    assert_invalid_state(
        &db.detach(
            t,
            &Key::Id(c1.id),
            &[node_name("mine"), node_name("mine-too")],
            false,
            &actor(),
        )
        .await,
        "detaching",
    );
    assert_not_found(
        &db.detach(t, &Key::Id(c1.id), &[node_name("nosuch")], false, &actor())
            .await,
        "node",
    );
    assert_not_found(
        &db.detach(t, &by_name("nosuch"), &[node_name("mine")], false, &actor())
            .await,
        "cluster",
    );
    assert_eq!(snapshot(&db, t).await, before);

    let moved = detach_nodes(&db, t, c2.id, &["theirs"]).await;
    assert_eq!(moved.nodes[0].state, NodeState::Detaching);
}

async fn deauthorizing_a_node_in_a_cluster_is_refused_until_it_left(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1", "n2"]).await;
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1", "n2"]).await;
    let before = snapshot(&db, t).await;

    // Attached: refused with the way out, and nothing changes.
    let err = db
        .deauthorize_node(t, &by_name("n1"), &actor())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::NodeInCluster {
                action: "deauthorized",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("qb cluster detach c1 n1"),
        "the error says how to go on: {err}"
    );
    assert_eq!(snapshot(&db, t).await, before);

    // Detaching: still in the cluster until its components are gone.
    db.detach(t, &Key::Id(c.id), &[node_name("n1")], true, &actor())
        .await
        .unwrap();
    let err = db
        .deauthorize_node(t, &by_name("n1"), &actor())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NodeInCluster { .. }), "{err:?}");

    // Back in the pool: revoked.
    let n1 = db
        .finish_detach(
            t,
            db.get_node(t, &by_name("n1")).await.unwrap().id,
            &actor(),
        )
        .await
        .unwrap();
    let n1 = db
        .deauthorize_node(t, &Key::Id(n1.id), &actor())
        .await
        .unwrap();
    assert_eq!((n1.state, n1.cluster), (NodeState::Deauthorized, None));
    let last = all_events(&db, t).await.pop().unwrap();
    assert_eq!(last.action, "node.deauthorized");
    assert_eq!(last.detail["previous_state"], "authorized");

    // A deauthorized node is not in the pool and cannot be detached or finished.
    let err = db
        .detach(t, &Key::Id(c.id), &[node_name("n1")], false, &actor())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NodeNotInCluster { .. }),
        "{err:?}"
    );
    assert_invalid_state(&db.finish_detach(t, n1.id, &actor()).await, "deauthorized");
}

async fn a_node_in_a_cluster_keeps_its_address_label(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_node(&db, t, "n1", &[]).await;
    let change = |set: &[(&str, &str)]| qb_api::LabelChange {
        set: set
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect(),
        remove: Vec::new(),
    };
    // In the pool: any label.
    db.label_node(
        t,
        &by_name("n1"),
        &change(&[(qb_api::ADDRESS_LABEL, "10.0.0.1")]),
        &actor(),
    )
    .await
    .unwrap();
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1"]).await;
    // In a cluster: other labels change, the address label does not.
    db.label_node(
        t,
        &by_name("n1"),
        &change(&[("zone", "a"), (qb_api::ADDRESS_LABEL, "10.0.0.1")]),
        &actor(),
    )
    .await
    .unwrap();
    let before = snapshot(&db, t).await;
    let err = db
        .label_node(
            t,
            &by_name("n1"),
            &change(&[(qb_api::ADDRESS_LABEL, "10.0.0.2")]),
            &actor(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NodeInCluster {
                action: "given another address",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(snapshot(&db, t).await, before);

    // The engine records the address once; a second choice does not replace it.
    let id = db.get_node(t, &by_name("n1")).await.unwrap().id;
    let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(db.set_node_address(t, id, c.id, ip).await.unwrap(), ip);
    let other: std::net::IpAddr = "10.0.0.9".parse().unwrap();
    assert_eq!(db.set_node_address(t, id, c.id, other).await.unwrap(), ip);
    let node = db.get_node(t, &Key::Id(id)).await.unwrap();
    assert_eq!(node.address, Some(ip));
    // Leaving the cluster forgets it.
    detach_nodes(&db, t, c.id, &["n1"]).await;
    let node = db.finish_detach(t, id, &actor()).await.unwrap();
    assert_eq!(node.address, None);
}

async fn deleting_a_cluster_with_nodes_needs_force(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1", "n2", "n3"]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    attach_nodes(&db, t, c1.id, &["n1", "n2"]).await;
    detach_nodes(&db, t, c1.id, &["n2"]).await;
    let before = snapshot(&db, t).await;

    // Even a cluster whose only nodes are leaving is not empty.
    let err = db
        .delete_cluster(t, &Key::Id(c1.id), false, &actor())
        .await
        .unwrap_err();
    match &err {
        StoreError::ClusterNotEmpty { cluster, nodes } => {
            assert_eq!((cluster.as_str(), *nodes), ("c1", 2))
        }
        other => panic!("expected ClusterNotEmpty, got {other:?}"),
    }
    assert_eq!(
        snapshot(&db, t).await,
        before,
        "a refused delete changed something"
    );

    let returned = db
        .delete_cluster(t, &by_name("c1"), true, &actor())
        .await
        .unwrap();
    assert_eq!(names(&returned), ["n1", "n2"]);
    for n in &returned {
        assert_eq!(
            (n.state, n.cluster.clone()),
            (NodeState::Authorized, None),
            "{}",
            n.name
        );
        assert_eq!(*n, node(&db, t, n.name.as_str()).await);
    }
    assert_not_found(&db.get_cluster(t, &Key::Id(c1.id)).await, "cluster");
    assert_eq!(
        all_clusters(&db, t)
            .await
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        [c2.id]
    );

    let new = all_events(&db, t).await.split_off(before.events.len());
    assert_eq!(
        crate::actions(&new),
        ["node.detached", "node.detached", "cluster.deleted"]
    );
    assert_eq!(new[0].object_name, "n1");
    assert_eq!(new[1].object_name, "n2");
    assert!(
        new[..2]
            .iter()
            .all(|e| e.detail["reason"] == "cluster deleted" && e.detail["cluster"] == "c1")
    );
    assert_eq!(new[2].object_id, c1.id.to_string());
    assert_eq!(new[2].detail["force"], true);
    assert_eq!(
        new[2].detail["returned_to_pool"],
        serde_json::json!(["n1", "n2"])
    );

    // The nodes are back in the pool: all three can go to c2.
    let moved = db
        .attach(t, &Key::Id(c2.id), &crate::from_pool(3, None), &actor())
        .await
        .unwrap();
    assert_eq!(names(&moved.nodes), ["n1", "n2", "n3"]);

    // An empty cluster needs no force; a deleted one is gone.
    let c3 = cluster(&db, t, "c3").await;
    assert!(
        db.delete_cluster(t, &Key::Id(c3.id), false, &actor())
            .await
            .unwrap()
            .is_empty()
    );
    let last = all_events(&db, t).await.pop().unwrap();
    assert_eq!(
        (last.action.as_str(), &last.detail["force"]),
        ("cluster.deleted", &serde_json::json!(false))
    );
    assert_not_found(
        &db.delete_cluster(t, &Key::Id(c3.id), true, &actor()).await,
        "cluster",
    );
}

#[test]
fn specs_are_checked_before_anything_is_stored() {
    let request = |pod: &str, masters: MasterCount, roles: &[(&str, NodeRole)]| CreateCluster {
        name: name("c"),
        kubernetes_version: None,
        pod_cidr: Some(pod.parse().unwrap()),
        service_cidr: Some("10.21.0.0/16".parse().unwrap()),
        masters,
        roles: roles.iter().map(|(n, r)| (node_name(n), *r)).collect(),
        taint_masters: false,
    };
    // At most 64 explicit roles, whether or not they name masters.
    let many: Vec<(String, NodeRole)> = (0..65)
        .map(|i| {
            (
                format!("h{i}"),
                if i == 0 {
                    NodeRole::Master
                } else {
                    NodeRole::Worker
                },
            )
        })
        .collect();
    let many: Vec<(&str, NodeRole)> = many.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let outcome = |spec: &Result<ClusterSpec, SpecError>| match spec {
        Ok(_) => "accepted",
        Err(SpecError::CidrOverlap { .. }) => "overlap",
        Err(SpecError::Invalid(_)) => "invalid",
    };
    let two_masters = [("a", NodeRole::Master), ("b", NodeRole::Master)];
    let master_and_worker = [("a", NodeRole::Master), ("b", NodeRole::Worker)];
    let (auto, one, three) = (
        MasterCount::Auto,
        MasterCount::Count(1),
        MasterCount::Count(3),
    );
    let disjoint = "10.20.0.0/16";
    let cases = [
        ("10.0.0.0/8", auto, &[][..], "overlap"),
        (disjoint, one, &two_masters[..], "invalid"),
        (disjoint, three, &master_and_worker[..], "accepted"),
        (disjoint, auto, &many[..], "invalid"),
        (disjoint, auto, &many[1..], "accepted"),
    ];
    for (pod, masters, roles, expected) in cases {
        let spec = ClusterSpec::try_from(request(pod, masters, roles));
        assert_eq!(outcome(&spec), expected, "{} roles: {spec:?}", roles.len());
    }
}

async fn pod_subnets_are_given_once_and_freed_when_a_node_leaves(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1", "n2", "n3", "n4"]).await;
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1", "n2", "n3"]).await;
    let id = |name: &'static str| {
        let db = &db;
        async move { node(db, t, name).await.id }
    };
    let (n1, n2, n3, n4) = (
        id("n1").await,
        id("n2").await,
        id("n3").await,
        id("n4").await,
    );

    let given = db.assign_pod_subnets(t, c.id, 256).await.unwrap();
    assert_eq!(given, BTreeMap::from([(n1, 0), (n2, 1), (n3, 2)]));
    // Asking again changes nothing.
    assert_eq!(db.assign_pod_subnets(t, c.id, 256).await.unwrap(), given);

    // n1 leaves: n2 and n3 keep theirs, and n4 gets the subnet n1 freed.
    detach_nodes(&db, t, c.id, &["n1"]).await;
    assert_eq!(db.assign_pod_subnets(t, c.id, 256).await.unwrap(), given);
    db.finish_detach(t, n1, &qb_store::Actor::controller())
        .await
        .unwrap();
    attach_nodes(&db, t, c.id, &["n4"]).await;
    assert_eq!(
        db.assign_pod_subnets(t, c.id, 256).await.unwrap(),
        BTreeMap::from([(n2, 1), (n3, 2), (n4, 0)])
    );

    // With no subnet left, a newcomer gets none and the others keep theirs.
    pool_node(&db, t, "n5", &[]).await;
    attach_nodes(&db, t, c.id, &["n5"]).await;
    assert_eq!(
        db.assign_pod_subnets(t, c.id, 3).await.unwrap(),
        BTreeMap::from([(n2, 1), (n3, 2), (n4, 0)])
    );
}

/// `state_since` is when the cluster entered the state the API shows: set on creation, on the
/// first attach (`empty` becomes `pending`) and on every change of state; a new message alone
/// keeps it.
async fn state_since_moves_with_the_state_not_with_the_message(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1"]).await;
    let created = cluster(&db, t, "c1").await;
    assert_eq!(created.state_since, created.created_at);
    let shown = || async { cluster_detail(&db, t, created.id).await.cluster };
    // Timestamps are kept in milliseconds: let each step happen in a later one.
    let later = || tokio::time::sleep(std::time::Duration::from_millis(5));

    later().await;
    attach_nodes(&db, t, created.id, &["n1"]).await;
    let pending = shown().await;
    assert_eq!(pending.state, ClusterState::Pending);
    assert!(pending.state_since > created.state_since, "{pending:?}");

    // The engine writing `empty` while the cluster has nodes leaves it `pending`, since then.
    later().await;
    let set =
        |state, message: Option<&'static str>| db.set_cluster_state(t, created.id, state, message);
    assert!(!set(ClusterState::Empty, None).await.unwrap());
    assert_eq!(shown().await, pending);

    later().await;
    assert!(
        set(ClusterState::Preflight, Some("checking 1 nodes"))
            .await
            .unwrap()
    );
    let preflight = shown().await;
    assert_eq!(preflight.state, ClusterState::Preflight);
    assert!(preflight.state_since > pending.state_since, "{preflight:?}");

    later().await;
    let waiting = "waiting for the agents of n1 to connect";
    assert!(set(ClusterState::Preflight, Some(waiting)).await.unwrap());
    let still = shown().await;
    assert_eq!(still.state_message.as_deref(), Some(waiting));
    assert_eq!(still.state_since, preflight.state_since);
    assert!(!set(ClusterState::Preflight, Some(waiting)).await.unwrap());
    assert_eq!(shown().await, still);

    later().await;
    assert!(set(ClusterState::Installing, Some(waiting)).await.unwrap());
    let installing = shown().await;
    assert_eq!(installing.state, ClusterState::Installing);
    assert!(installing.state_since > still.state_since, "{installing:?}");
    assert_eq!(
        events_with_action(&db, t, "cluster.state_changed")
            .await
            .len(),
        2,
        "one event per change of state"
    );

    // A ready cluster is ready no longer once a node is attached, in the same transaction:
    // no crash before the engine's next pass leaves it shown ready with a node not in yet.
    later().await;
    assert!(set(ClusterState::Ready, None).await.unwrap());
    let ready = shown().await;
    later().await;
    pool_nodes(&db, t, &["n2"]).await;
    attach_nodes(&db, t, created.id, &["n2"]).await;
    let attaching = shown().await;
    assert_eq!(attaching.state, ClusterState::Installing);
    assert_eq!(attaching.state_message.as_deref(), Some("attaching n2"));
    assert!(attaching.state_since > ready.state_since, "{attaching:?}");
    // So is one a node leaves.
    assert!(set(ClusterState::Ready, None).await.unwrap());
    detach_nodes(&db, t, created.id, &["n1"]).await;
    let detaching = shown().await;
    assert_eq!(detaching.state, ClusterState::Installing);
    assert_eq!(detaching.state_message.as_deref(), Some("detaching n1"));
    assert_eq!(
        events_with_action(&db, t, "cluster.state_changed")
            .await
            .len(),
        6
    );
}

/// The store's rules hold after every operation, and a row broken behind its back is named.
async fn invariants_hold_and_broken_rows_are_named(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_nodes(&db, t, &["n1", "n2", "free"]).await;
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1", "n2"]).await;
    detach_nodes(&db, t, c.id, &["n2"]).await;
    assert_eq!(
        db.invariant_violations().await.unwrap(),
        Vec::<String>::new()
    );

    let raw = db.raw().await;
    for sql in [
        "UPDATE nodes SET role = 'worker', etcd = '{}' WHERE name = 'n1'",
        "UPDATE nodes SET role = 'worker' WHERE name = 'free'",
    ] {
        sqlx::query(sql).execute(&raw).await.unwrap();
    }
    assert_eq!(
        db.invariant_violations().await.unwrap(),
        [
            "in no cluster but holding a cluster's role, etcd membership, certificates or pod subnet: free",
            "an etcd member that is not a master: n1",
        ]
    );
}
