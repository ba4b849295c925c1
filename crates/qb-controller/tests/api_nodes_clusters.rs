//! The node and cluster rules through the API, including racing attach requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use qb_store::Store;
use serde_json::{Value, json};

use crate::support::{App, items, on_both_stores, pluck};

on_both_stores!(
    lifecycle_through_the_api,
    impossible_attaches_change_nothing,
    delete_refuses_non_empty_clusters_unless_forced,
    racing_attaches_never_share_a_node,
    lists_page_through_everything_once,
    health_says_why_a_cluster_api_cannot_be_read,
);

/// A cluster's health is read from its own API: before it has one, the answer says so (the
/// lab tests read a real one).
async fn health_says_why_a_cluster_api_cannot_be_read(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
    app.post(op, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    let (status, problem) = app.get(op, "/api/v1/clusters/c1/health").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("cluster_api_unavailable")),
        "{problem}"
    );
    assert_eq!(
        problem["detail"],
        "cannot read the API of cluster c1: cluster c1 has no API server yet"
    );
    let (status, problem) = app.get(op, "/api/v1/clusters/nope/health").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // Another tenant's cluster is not found either.
    let other = app.tenant("b").await;
    assert_eq!(
        app.get(other.viewer.as_str(), "/api/v1/clusters/c1/health")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

async fn lifecycle_through_the_api(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
    let (attach, detach) = (
        "/api/v1/clusters/clus100/attach",
        "/api/v1/clusters/clus100/detach",
    );
    app.pending_nodes(t.id, "n", 4).await;
    for name in ["n-0", "n-1", "n-2"] {
        let (status, node) = app
            .call(
                op,
                Method::POST,
                &format!("/api/v1/nodes/{name}/authorize"),
                None,
            )
            .await;
        assert_eq!(
            (status, node["state"].as_str()),
            (StatusCode::OK, Some("authorized"))
        );
    }
    let (_, node) = app
        .post(
            op,
            "/api/v1/nodes/n-1/labels",
            json!({"set": {"topology.kubernetes.io/zone": "b", "gpu": ""}}),
        )
        .await;
    assert_eq!(
        node["labels"],
        json!({"gpu": "", "topology.kubernetes.io/zone": "b"})
    );
    let (_, node) = app
        .post(op, "/api/v1/nodes/n-1/labels", json!({"remove": ["gpu"]}))
        .await;
    assert_eq!(node["labels"], json!({"topology.kubernetes.io/zone": "b"}));

    let (status, cluster) = app
        .post(
            op,
            "/api/v1/clusters",
            json!({"name": "clus100", "masters": 1, "roles": {"n-0": "master"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cluster}");
    assert_eq!(
        (cluster["state"].as_str(), cluster["node_count"].as_u64()),
        (Some("empty"), Some(0))
    );
    assert_eq!(cluster["pod_cidr"], "10.20.0.0/16");

    // By selector from the pool, then by name.
    let (status, moved) = app
        .post(
            op,
            attach,
            json!({"count": 1, "selector": "topology.kubernetes.io/zone=b"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(pluck(&moved["nodes"], "name"), ["n-1"]);
    let (_, moved) = app.post(op, attach, json!({"nodes": ["n-0"]})).await;
    assert_eq!(moved["nodes"][0]["state"], "attached");
    assert_eq!(moved["nodes"][0]["cluster"]["name"], "clus100");
    let (_, detail) = app.get(&t.viewer, "/api/v1/clusters/clus100").await;
    assert_eq!(
        (detail["state"].as_str(), detail["node_count"].as_u64()),
        (Some("pending"), Some(2))
    );
    assert_eq!(pluck(&detail["nodes"], "name"), ["n-0", "n-1"]);
    let (_, listed) = app.get(&t.viewer, "/api/v1/nodes?cluster=clus100").await;
    assert_eq!(items(&listed).len(), 2);

    // Detach: detaching, then the reconciler returns the node to the pool.
    let (status, moved) = app.post(op, detach, json!({"nodes": ["n-1"]})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(moved["nodes"][0]["state"], "detaching");
    let (_, again) = app.post(op, detach, json!({"nodes": ["n-1"]})).await;
    assert_eq!(again["code"], "invalid_node_state");
    app.state.engine.pass().await.unwrap();
    let (_, node) = app.get(op, "/api/v1/nodes/n-1").await;
    assert_eq!(
        (node["state"].as_str(), &node["cluster"]),
        (Some("authorized"), &Value::Null)
    );

    // An attached node is not deauthorized: it must leave its cluster first (detach wipes it
    // and keeps etcd's quorum), and the refusal says how.
    let (status, problem) = app
        .call(op, Method::POST, "/api/v1/nodes/n-0/deauthorize", None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_node_state"))
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("detach it first (`qb cluster detach clus100 n-0`"),
        "{problem}"
    );
    app.post(op, detach, json!({"nodes": ["n-0"]})).await;
    app.state.engine.pass().await.unwrap();

    // In the pool it is; then it cannot come back by attach.
    let (_, node) = app
        .call(op, Method::POST, "/api/v1/nodes/n-0/deauthorize", None)
        .await;
    assert_eq!(
        (node["state"].as_str(), &node["cluster"]),
        (Some("deauthorized"), &Value::Null)
    );
    let (status, problem) = app.post(op, attach, json!({"nodes": ["n-0"]})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_node_state"))
    );
    let (status, _) = app.delete(op, "/api/v1/nodes/n-0").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.delete(op, "/api/v1/nodes/n-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "a pool node is not deleted");

    // The audit trail tells the story, with who did it.
    let (_, events) = app.get(&t.viewer, "/api/v1/events?object=n-1").await;
    let actions = pluck(&events["items"], "action");
    assert_eq!(
        actions,
        [
            "node.registered",
            "node.authorized",
            "node.labeled",
            "node.labeled",
            "node.attached",
            "node.detaching",
            "node.detached"
        ]
    );
    let actors = pluck(&events["items"], "actor");
    assert_eq!(actors[1], "user:op");
    assert_eq!(actors[6], "controller");
    let (_, cluster_events) = app
        .get(
            &t.viewer,
            "/api/v1/events?kind=cluster&action=cluster.nodes_",
        )
        .await;
    // Attached, n-1 detached, n-0 detached.
    assert_eq!(items(&cluster_events).len(), 4);
}

async fn impossible_attaches_change_nothing(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
    let attach = "/api/v1/clusters/c1/attach";
    app.pool(&t, "pool", 2).await;
    app.pending_nodes(t.id, "pend", 1).await;
    app.pool(&t, "gone", 1).await;
    app.call(op, Method::POST, "/api/v1/nodes/gone-0/deauthorize", None)
        .await;
    app.post(op, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    let before = app.changes(t.id).await;

    let (status, problem) = app.post(op, attach, json!({"count": 3})).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("pool_exhausted"))
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("has 2 authorized node(s)"),
        "{problem}"
    );
    let (_, problem) = app
        .post(op, attach, json!({"count": 1, "selector": "zone=a"}))
        .await;
    assert_eq!(problem["code"], "pool_exhausted");
    for bad in ["pend-0", "gone-0"] {
        let (status, problem) = app
            .post(op, attach, json!({"nodes": ["pool-0", bad]}))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::CONFLICT, Some("invalid_node_state")),
            "{bad}"
        );
        assert!(problem["detail"].as_str().unwrap().contains(bad));
    }
    assert_eq!(app.changes(t.id).await, before, "nothing was written");
    let (_, pool) = app.get(op, "/api/v1/nodes?state=authorized").await;
    assert_eq!(
        pluck(&pool["items"], "name"),
        ["pool-0", "pool-1"],
        "pool-0 was not attached by the failed request"
    );
}

async fn delete_refuses_non_empty_clusters_unless_forced(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
    app.pool(&t, "n", 3).await;
    app.post(op, "/api/v1/clusters", json!({"name": "c1"}))
        .await;
    app.post(op, "/api/v1/clusters/c1/attach", json!({"count": 2}))
        .await;
    let (status, problem) = app.delete(op, "/api/v1/clusters/c1").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("cluster_not_empty"))
    );
    assert_eq!(app.get(op, "/api/v1/clusters/c1").await.1["node_count"], 2);
    let (status, deleted) = app.delete(op, "/api/v1/clusters/c1?force=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pluck(&deleted["returned_to_pool"], "name"), ["n-0", "n-1"]);
    assert!(
        deleted["returned_to_pool"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "authorized")
    );
    assert_eq!(
        app.get(op, "/api/v1/clusters/c1").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, pool) = app.get(op, "/api/v1/nodes?state=authorized").await;
    assert_eq!(items(&pool).len(), 3);
    // An empty cluster is deleted without force.
    app.post(op, "/api/v1/clusters", json!({"name": "c2"}))
        .await;
    assert_eq!(
        app.delete(op, "/api/v1/clusters/c2").await.0,
        StatusCode::OK
    );
}

/// Many attach requests race for overlapping nodes: every node ends in at most one cluster,
/// every successful request got all its nodes, and the event log matches the outcome exactly.
async fn racing_attaches_never_share_a_node(store: Store) {
    const NODES: usize = 12;
    const CLUSTERS: usize = 6;
    let app = Arc::new(App::new(store).await);
    let t = app.tenant("a").await;
    let pool = app.pool(&t, "n", NODES).await;
    for c in 0..CLUSTERS {
        app.post(
            &t.operator,
            "/api/v1/clusters",
            json!({"name": format!("c{c}")}),
        )
        .await;
    }
    let mut tasks = Vec::new();
    for round in 0..4 {
        for c in 0..CLUSTERS {
            // Overlapping named sets, and counts from the pool, all at once.
            let body = if (round + c) % 2 == 0 {
                let start = (c * 2 + round) % NODES;
                json!({"nodes": [pool[start], pool[(start + 1) % NODES], pool[(start + 5) % NODES]]})
            } else {
                json!({"count": 2})
            };
            let (app, token) = (Arc::clone(&app), t.operator.clone());
            let path = format!("/api/v1/clusters/c{c}/attach");
            tasks.push(tokio::spawn(async move {
                let (status, resp) = app.post(&token, &path, body.clone()).await;
                (c, body, status, resp)
            }));
        }
    }
    let mut won: BTreeMap<String, String> = BTreeMap::new();
    for task in tasks {
        let (c, body, status, resp) = task.await.unwrap();
        match status {
            StatusCode::OK => {
                let got = pluck(&resp["nodes"], "name");
                let want = body["count"]
                    .as_u64()
                    .map_or_else(|| body["nodes"].as_array().unwrap().len(), |n| n as usize);
                assert_eq!(got.len(), want, "all or nothing: {resp}");
                for node in got {
                    let previous = won.insert(node.to_owned(), format!("c{c}"));
                    assert!(
                        previous.is_none(),
                        "{node} attached twice: {previous:?} and c{c}"
                    );
                }
            }
            StatusCode::CONFLICT => {
                assert!(
                    ["pool_exhausted", "invalid_node_state"]
                        .contains(&resp["code"].as_str().unwrap()),
                    "{resp}"
                );
            }
            other => panic!("unexpected {other}: {resp}"),
        }
    }
    assert!(!won.is_empty());
    // The store agrees with the responses.
    let (_, nodes) = app.get(&t.viewer, "/api/v1/nodes").await;
    let mut stored = BTreeMap::new();
    for n in items(&nodes) {
        if let Some(cluster) = n["cluster"]["name"].as_str() {
            assert_eq!(n["state"], "attached");
            stored.insert(n["name"].as_str().unwrap().to_owned(), cluster.to_owned());
        } else {
            assert_eq!(n["state"], "authorized");
        }
    }
    assert_eq!(stored, won);
    let mut total = 0;
    for c in 0..CLUSTERS {
        let (_, detail) = app.get(&t.viewer, &format!("/api/v1/clusters/c{c}")).await;
        total += detail["node_count"].as_u64().unwrap() as usize;
    }
    assert_eq!(total, won.len());
    // One node.attached event per attachment, naming the cluster that won.
    let events = app.events(t.id).await;
    let attached: BTreeMap<String, String> = events
        .iter()
        .filter(|e| e.action == "node.attached")
        .map(|e| {
            (
                e.object_name.clone(),
                e.detail["cluster"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let count = events
        .iter()
        .filter(|e| e.action == "node.attached")
        .count();
    assert_eq!(count, won.len(), "exactly one event per attachment");
    assert_eq!(attached, won);
    let summarized: BTreeSet<String> = events
        .iter()
        .filter(|e| e.action == "cluster.nodes_attached")
        .flat_map(|e| {
            e.detail["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(summarized, won.keys().cloned().collect());
}

async fn lists_page_through_everything_once(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let all = app.pending_nodes(t.id, "n", 7).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/nodes?limit=3&after={a}"),
            None => "/api/v1/nodes?limit=3".to_owned(),
        };
        let (status, page) = app.get(&t.viewer, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(items(&page).len() <= 3);
        seen.extend(pluck(&page["items"], "name").into_iter().map(str::to_owned));
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);
    let (_, events) = app.get(&t.viewer, "/api/v1/events?limit=2").await;
    assert_eq!(items(&events).len(), 2);
    let next = events["next"].as_str().unwrap();
    let (_, rest) = app
        .get(
            &t.viewer,
            &format!("/api/v1/events?after={next}&limit=1000"),
        )
        .await;
    assert!(rest["items"][0]["id"].as_i64().unwrap() > events["items"][1]["id"].as_i64().unwrap());
}
