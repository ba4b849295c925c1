//! Nodes in the pool: registration, authorization, labels, deauthorization, deletion.

use std::collections::BTreeMap;

use qb_api::{LabelChange, NodeState};
use qb_store::{Key, NewNode, NodeFilter};

use crate::{
    TestDb, actor, all_events, all_nodes, assert_invalid_state, assert_name_taken,
    assert_not_found, attach_nodes, by_name, cluster, detach_nodes, labels, node, node_name,
    pending_node, pool_nodes, snapshot, tenant,
};

on_both_backends!(
    node_lifecycle,
    node_names_are_unique_per_tenant,
    node_filters
);

async fn node_lifecycle(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let new = NewNode {
        name: node_name("host-1.rack2"),
        facts: qb_api::NodeFacts {
            hostname: "host-1".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0".into(),
            arch: "x86_64".into(),
            cpus: 8,
            memory_bytes: 16 << 30,
            addresses: vec![
                "192.0.2.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
            interfaces: Vec::new(),
            route_source: None,
        },
        labels: labels(&[("zone", "a")]),
    };
    let created = db.insert_node(t, new.clone(), &actor()).await.unwrap();
    let key = Key::Id(created.id);
    assert_eq!(
        (created.state, created.cluster.clone()),
        (NodeState::Pending, None)
    );
    assert_eq!(
        (&created.name, &created.facts, &created.labels),
        (&new.name, &new.facts, &new.labels)
    );
    assert!(created.created_at >= start && created.updated_at == created.created_at);
    assert_eq!(db.get_node(t, &key).await.unwrap(), created);
    assert_eq!(
        db.get_node(t, &by_name("host-1.rack2")).await.unwrap(),
        created
    );
    // `Key::parse` takes a UUID for an id.
    assert_eq!(
        db.get_node(t, &Key::parse(&created.id.to_string()))
            .await
            .unwrap(),
        created
    );

    let authorized = db.authorize_node(t, &key, &actor()).await.unwrap();
    assert_eq!(authorized.state, NodeState::Authorized);
    assert!(authorized.updated_at >= created.updated_at);

    let before = snapshot(&db, t).await;
    assert_invalid_state(&db.authorize_node(t, &key, &actor()).await, "authorized");
    assert_invalid_state(&db.delete_node(t, &key, &actor()).await, "authorized");
    assert_eq!(snapshot(&db, t).await, before);

    let change = LabelChange {
        set: BTreeMap::from([
            ("gpu".parse().unwrap(), "".parse().unwrap()),
            ("zone".parse().unwrap(), "b".parse().unwrap()),
        ]),
        remove: vec!["absent".parse().unwrap()],
    };
    let labeled = db
        .label_node(t, &by_name("host-1.rack2"), &change, &actor())
        .await
        .unwrap();
    assert_eq!(labeled.labels, labels(&[("gpu", ""), ("zone", "b")]));
    let change = LabelChange {
        set: BTreeMap::new(),
        remove: vec!["zone".parse().unwrap()],
    };
    let labeled = db.label_node(t, &key, &change, &actor()).await.unwrap();
    assert_eq!(labeled.labels, labels(&[("gpu", "")]));
    assert_eq!(labeled, db.get_node(t, &key).await.unwrap());
    assert_eq!(labeled.state, NodeState::Authorized);

    let gone = db.deauthorize_node(t, &key, &actor()).await.unwrap();
    assert_eq!(gone.state, NodeState::Deauthorized);
    assert_invalid_state(
        &db.deauthorize_node(t, &key, &actor()).await,
        "deauthorized",
    );
    assert_invalid_state(&db.authorize_node(t, &key, &actor()).await, "deauthorized");
    db.delete_node(t, &key, &actor()).await.unwrap();
    assert_not_found(&db.get_node(t, &key).await, "node");

    // A pending node can be deleted outright; a pending node can be deauthorized too.
    let p = pending_node(&db, t, "p1", &[]).await;
    db.delete_node(t, &Key::Id(p.id), &actor()).await.unwrap();
    let p2 = pending_node(&db, t, "p2", &[]).await;
    assert_eq!(
        db.deauthorize_node(t, &Key::Id(p2.id), &actor())
            .await
            .unwrap()
            .state,
        NodeState::Deauthorized
    );

    let logged = all_events(&db, t).await;
    let about_host: Vec<_> = logged
        .iter()
        .filter(|e| e.object_id == created.id.to_string())
        .collect();
    assert_eq!(
        about_host
            .iter()
            .map(|e| e.action.as_str())
            .collect::<Vec<_>>(),
        [
            "node.registered",
            "node.authorized",
            "node.labeled",
            "node.labeled",
            "node.deauthorized",
            "node.deleted"
        ]
    );
    assert!(
        about_host
            .iter()
            .all(|e| e.object_kind == "node" && e.object_name == "host-1.rack2")
    );
    assert_eq!(about_host[0].detail["hostname"], "host-1");
    assert_eq!(about_host[2].detail["set"]["zone"], "b");
    assert_eq!(about_host[4].detail["previous_state"], "authorized");
    assert!(
        all_nodes(&db, t)
            .await
            .iter()
            .all(|n| n.name.as_str() == "p2")
    );
}

async fn node_names_are_unique_per_tenant(db: TestDb) {
    let a = tenant(&db, "acme").await;
    let b = tenant(&db, "bolt").await;
    let first = pending_node(&db, a, "web-1", &[]).await;
    let before = snapshot(&db, a).await;
    let new = NewNode {
        name: node_name("web-1"),
        facts: Default::default(),
        labels: Default::default(),
    };
    let refused = db.insert_node(a, new.clone(), &actor()).await;
    assert_name_taken(&refused, "node", "web-1");
    assert_eq!(
        snapshot(&db, a).await,
        before,
        "a refused registration changed something"
    );

    let other = db.insert_node(b, new, &actor()).await.unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(node(&db, a, "web-1").await.id, first.id);
    assert_eq!(node(&db, b, "web-1").await.id, other.id);

    // Deleting frees the name.
    db.delete_node(a, &Key::Id(first.id), &actor())
        .await
        .unwrap();
    pending_node(&db, a, "web-1", &[]).await;
}

async fn node_filters(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pending_node(&db, t, "p", &[]).await;
    pool_nodes(&db, t, &["a", "b", "c", "d"]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    attach_nodes(&db, t, c1.id, &["a", "b"]).await;
    attach_nodes(&db, t, c2.id, &["c"]).await;
    detach_nodes(&db, t, c1.id, &["b"]).await;

    let list = |filter: NodeFilter| {
        let db = &db;
        async move {
            let page = db.list_nodes(t, &filter, None, 100).await.unwrap();
            assert_eq!(page.next, None);
            crate::names(&page.items)
        }
    };
    assert_eq!(list(NodeFilter::default()).await, ["a", "b", "c", "d", "p"]);
    assert_eq!(
        list(NodeFilter {
            state: Some(NodeState::Pending),
            cluster: None
        })
        .await,
        ["p"]
    );
    assert_eq!(
        list(NodeFilter {
            state: Some(NodeState::Authorized),
            cluster: None
        })
        .await,
        ["d"]
    );
    assert_eq!(
        list(NodeFilter {
            state: Some(NodeState::Attached),
            cluster: None
        })
        .await,
        ["a", "c"]
    );
    assert_eq!(
        list(NodeFilter {
            state: None,
            cluster: Some(c1.id)
        })
        .await,
        ["a", "b"]
    );
    assert_eq!(
        list(NodeFilter {
            state: Some(NodeState::Detaching),
            cluster: Some(c1.id)
        })
        .await,
        ["b"]
    );
    assert_eq!(
        list(NodeFilter {
            state: Some(NodeState::Detaching),
            cluster: Some(c2.id)
        })
        .await,
        Vec::<String>::new()
    );
}
