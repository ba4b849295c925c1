//! The node and cluster rules through the API, including racing attach requests.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{Method, StatusCode};
use qb_store::Store;
use serde_json::{Value, json};

use crate::support::{App, on_both_stores};

on_both_stores!(
    lifecycle_through_the_api,
    impossible_attaches_change_nothing,
    delete_refuses_non_empty_clusters_unless_forced,
    racing_attaches_never_share_a_node,
    lists_page_through_everything_once,
);

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn lifecycle_through_the_api(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
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
        .call(
            op,
            Method::POST,
            "/api/v1/nodes/n-1/labels",
            Some(json!({"set": {"topology.kubernetes.io/zone": "b", "gpu": ""}})),
        )
        .await;
    assert_eq!(
        node["labels"],
        json!({"gpu": "", "topology.kubernetes.io/zone": "b"})
    );
    let (_, node) = app
        .call(
            op,
            Method::POST,
            "/api/v1/nodes/n-1/labels",
            Some(json!({"remove": ["gpu"]})),
        )
        .await;
    assert_eq!(node["labels"], json!({"topology.kubernetes.io/zone": "b"}));

    let (status, cluster) = app
        .call(
            op,
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": "clus100", "masters": 1, "roles": {"n-0": "master"}})),
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
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/clus100/attach",
            Some(json!({"count": 1, "selector": "topology.kubernetes.io/zone=b"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(names(&moved["nodes"]), ["n-1"]);
    let (_, moved) = app
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/clus100/attach",
            Some(json!({"nodes": ["n-0"]})),
        )
        .await;
    assert_eq!(moved["nodes"][0]["state"], "attached");
    assert_eq!(moved["nodes"][0]["cluster"]["name"], "clus100");
    let (_, detail) = app
        .call(&t.viewer, Method::GET, "/api/v1/clusters/clus100", None)
        .await;
    assert_eq!(
        (detail["state"].as_str(), detail["node_count"].as_u64()),
        (Some("pending"), Some(2))
    );
    assert_eq!(names(&detail["nodes"]), ["n-0", "n-1"]);
    let (_, listed) = app
        .call(
            &t.viewer,
            Method::GET,
            "/api/v1/nodes?cluster=clus100",
            None,
        )
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);

    // Detach: detaching, then the reconciler returns the node to the pool.
    let (status, moved) = app
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/clus100/detach",
            Some(json!({"nodes": ["n-1"]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(moved["nodes"][0]["state"], "detaching");
    let (_, again) = app
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/clus100/detach",
            Some(json!({"nodes": ["n-1"]})),
        )
        .await;
    assert_eq!(again["code"], "invalid_node_state");
    app.state.engine.pass().await.unwrap();
    let (_, node) = app.call(op, Method::GET, "/api/v1/nodes/n-1", None).await;
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
    app.call(
        op,
        Method::POST,
        "/api/v1/clusters/clus100/detach",
        Some(json!({"nodes": ["n-0"]})),
    )
    .await;
    app.state.engine.pass().await.unwrap();

    // In the pool it is; then it cannot come back by attach.
    let (_, node) = app
        .call(op, Method::POST, "/api/v1/nodes/n-0/deauthorize", None)
        .await;
    assert_eq!(
        (node["state"].as_str(), &node["cluster"]),
        (Some("deauthorized"), &Value::Null)
    );
    let (status, problem) = app
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/clus100/attach",
            Some(json!({"nodes": ["n-0"]})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_node_state"))
    );
    let (status, _) = app
        .call(op, Method::DELETE, "/api/v1/nodes/n-0", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(op, Method::DELETE, "/api/v1/nodes/n-1", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a pool node is not deleted");

    // The audit trail tells the story, with who did it.
    let (_, events) = app
        .call(&t.viewer, Method::GET, "/api/v1/events?object=n-1", None)
        .await;
    let actions: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
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
    let actors: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors[1], "user:op");
    assert_eq!(actors[6], "controller");
    let (_, cluster_events) = app
        .call(
            &t.viewer,
            Method::GET,
            "/api/v1/events?kind=cluster&action=cluster.nodes_",
            None,
        )
        .await;
    // Attached, n-1 detached, n-0 detached.
    assert_eq!(cluster_events["items"].as_array().unwrap().len(), 4);
}

async fn impossible_attaches_change_nothing(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
    app.pool(&t, "pool", 2).await;
    app.pending_nodes(t.id, "pend", 1).await;
    app.pool(&t, "gone", 1).await;
    app.call(op, Method::POST, "/api/v1/nodes/gone-0/deauthorize", None)
        .await;
    app.call(
        op,
        Method::POST,
        "/api/v1/clusters",
        Some(json!({"name": "c1"})),
    )
    .await;
    let before = app.events(t.id).await;

    let (status, problem) = app
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/c1/attach",
            Some(json!({"count": 3})),
        )
        .await;
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
        .call(
            op,
            Method::POST,
            "/api/v1/clusters/c1/attach",
            Some(json!({"count": 1, "selector": "zone=a"})),
        )
        .await;
    assert_eq!(problem["code"], "pool_exhausted");
    for bad in ["pend-0", "gone-0"] {
        let (status, problem) = app
            .call(
                op,
                Method::POST,
                "/api/v1/clusters/c1/attach",
                Some(json!({"nodes": ["pool-0", bad]})),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::CONFLICT, Some("invalid_node_state")),
            "{bad}"
        );
        assert!(problem["detail"].as_str().unwrap().contains(bad));
    }
    assert_eq!(app.events(t.id).await, before, "nothing was written");
    let (_, pool) = app
        .call(op, Method::GET, "/api/v1/nodes?state=authorized", None)
        .await;
    assert_eq!(
        names(&pool["items"]),
        ["pool-0", "pool-1"],
        "pool-0 was not attached by the failed request"
    );
}

async fn delete_refuses_non_empty_clusters_unless_forced(store: Store) {
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let op = t.operator.as_str();
    app.pool(&t, "n", 3).await;
    app.call(
        op,
        Method::POST,
        "/api/v1/clusters",
        Some(json!({"name": "c1"})),
    )
    .await;
    app.call(
        op,
        Method::POST,
        "/api/v1/clusters/c1/attach",
        Some(json!({"count": 2})),
    )
    .await;
    let (status, problem) = app
        .call(op, Method::DELETE, "/api/v1/clusters/c1", None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("cluster_not_empty"))
    );
    assert_eq!(
        app.call(op, Method::GET, "/api/v1/clusters/c1", None)
            .await
            .1["node_count"],
        2
    );
    let (status, deleted) = app
        .call(op, Method::DELETE, "/api/v1/clusters/c1?force=true", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&deleted["returned_to_pool"]), ["n-0", "n-1"]);
    assert!(
        deleted["returned_to_pool"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "authorized")
    );
    assert_eq!(
        app.call(op, Method::GET, "/api/v1/clusters/c1", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, pool) = app
        .call(op, Method::GET, "/api/v1/nodes?state=authorized", None)
        .await;
    assert_eq!(pool["items"].as_array().unwrap().len(), 3);
    // An empty cluster is deleted without force.
    app.call(
        op,
        Method::POST,
        "/api/v1/clusters",
        Some(json!({"name": "c2"})),
    )
    .await;
    assert_eq!(
        app.call(op, Method::DELETE, "/api/v1/clusters/c2", None)
            .await
            .0,
        StatusCode::OK
    );
}

/// Many attach requests race for overlapping nodes: every node ends in at most one cluster,
/// every successful request got all its nodes, and the event log matches the outcome exactly.
async fn racing_attaches_never_share_a_node(store: Store) {
    const NODES: usize = 12;
    const CLUSTERS: usize = 6;
    let app = App::new(store).await;
    let t = app.tenant("a").await;
    let pool = app.pool(&t, "n", NODES).await;
    for c in 0..CLUSTERS {
        app.call(
            &t.operator,
            Method::POST,
            "/api/v1/clusters",
            Some(json!({"name": format!("c{c}")})),
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
            let (router, token) = (app.router.clone(), t.operator.clone());
            let path = format!("/api/v1/clusters/c{c}/attach");
            tasks.push(tokio::spawn(async move {
                let req = axum::http::Request::post(path)
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
                let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
                let status = resp.status();
                let bytes = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (
                    c,
                    body,
                    status,
                    serde_json::from_slice::<Value>(&bytes).unwrap(),
                )
            }));
        }
    }
    let mut won: BTreeMap<String, String> = BTreeMap::new();
    for task in tasks {
        let (c, body, status, resp) = task.await.unwrap();
        match status {
            StatusCode::OK => {
                let got = names(&resp["nodes"]);
                let want = body["count"]
                    .as_u64()
                    .map_or_else(|| body["nodes"].as_array().unwrap().len(), |n| n as usize);
                assert_eq!(got.len(), want, "all or nothing: {resp}");
                for node in got {
                    let previous = won.insert(node.clone(), format!("c{c}"));
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
    let (_, nodes) = app
        .call(&t.viewer, Method::GET, "/api/v1/nodes", None)
        .await;
    let mut stored = BTreeMap::new();
    for n in nodes["items"].as_array().unwrap() {
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
        let (_, detail) = app
            .call(
                &t.viewer,
                Method::GET,
                &format!("/api/v1/clusters/c{c}"),
                None,
            )
            .await;
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
        let (status, page) = app.call(&t.viewer, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page["items"].as_array().unwrap().len() <= 3);
        seen.extend(names(&page["items"]));
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);
    let (_, events) = app
        .call(&t.viewer, Method::GET, "/api/v1/events?limit=2", None)
        .await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2);
    let next = events["next"].as_str().unwrap();
    let (_, rest) = app
        .call(
            &t.viewer,
            Method::GET,
            &format!("/api/v1/events?after={next}&limit=1000"),
            None,
        )
        .await;
    assert!(rest["items"][0]["id"].as_i64().unwrap() > events["items"][1]["id"].as_i64().unwrap());
}
