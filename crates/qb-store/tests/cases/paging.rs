//! Lists come in pages; following `next` visits every item exactly once.

use qb_api::{NodeState, Role};
use qb_store::{EventFilter, Key, NodeFilter};
use time::{Duration, OffsetDateTime};

use crate::{
    TestDb, actor, all_events, cluster, collect_pages, events_by_pages, name, new_user,
    nodes_by_pages, pending_node, tenant,
};

on_both_backends!(pages_cover_every_item_once);

const LIMITS: [u32; 8] = [1, 2, 3, 4, 6, 7, 8, 1000];

fn pages_for(items: usize, limit: u32) -> usize {
    items.div_ceil(limit as usize).max(1)
}

async fn pages_cover_every_item_once(db: TestDb) {
    let a = tenant(&db, "acme").await;
    let b = tenant(&db, "bolt").await;
    let expires = OffsetDateTime::now_utc() + Duration::hours(1);
    // Both tenants' rows interleave in every table.
    for i in 0..7 {
        for t in [a, b] {
            let n = pending_node(&db, t, &format!("n{i}"), &[]).await;
            if i % 2 == 0 {
                db.authorize_node(t, &Key::Id(n.id), &actor())
                    .await
                    .unwrap();
            }
        }
    }
    for i in 0..6 {
        for t in [a, b] {
            cluster(&db, t, &format!("c{i}")).await;
        }
    }
    new_user(&db, a, "bob", Role::Viewer).await;
    for i in 0..5 {
        let hash = format!("hash-{i}");
        db.create_token(a, &name("bob"), "s".into(), &hash, None, expires, &actor())
            .await
            .unwrap();
    }

    let all_nodes = db
        .list_nodes(a, &NodeFilter::default(), None, 1000)
        .await
        .unwrap()
        .items;
    let all_clusters = db.list_clusters(a, None, 1000).await.unwrap().items;
    let all_tokens = db.list_tokens(a, None, 1000).await.unwrap().items;
    let all_events = all_events(&db, a).await;
    assert_eq!(
        (all_nodes.len(), all_clusters.len(), all_tokens.len()),
        (7, 6, 5)
    );
    let pool_filter = NodeFilter {
        state: Some(NodeState::Authorized),
        cluster: None,
    };
    let pool = db
        .list_nodes(a, &pool_filter, None, 1000)
        .await
        .unwrap()
        .items;
    assert_eq!(pool.len(), 4);
    let node_filter = EventFilter {
        object_kind: Some("node".into()),
        ..Default::default()
    };
    let node_events = crate::events(&db, a, &node_filter).await;
    assert_eq!(node_events.len(), 7 + 4);

    for limit in LIMITS {
        let mut pages = 0;
        let nodes = collect_pages(limit, |after| {
            pages += 1;
            let filter = NodeFilter::default();
            let db = &db;
            async move {
                db.list_nodes(a, &filter, after.as_deref(), limit)
                    .await
                    .unwrap()
            }
        })
        .await;
        assert_eq!(nodes, all_nodes, "nodes by {limit}");
        assert_eq!(pages, pages_for(7, limit), "pages of nodes by {limit}");

        let in_pool = nodes_by_pages(&db, a, &pool_filter, limit).await;
        assert_eq!(in_pool, pool, "pool by {limit}");

        let clusters = collect_pages(limit, |after| {
            let db = &db;
            async move { db.list_clusters(a, after.as_deref(), limit).await.unwrap() }
        })
        .await;
        assert_eq!(clusters, all_clusters, "clusters by {limit}");

        let tokens = collect_pages(limit, |after| {
            let db = &db;
            async move { db.list_tokens(a, after.as_deref(), limit).await.unwrap() }
        })
        .await;
        assert_eq!(tokens, all_tokens, "tokens by {limit}");

        let events = events_by_pages(&db, a, &EventFilter::default(), limit).await;
        assert_eq!(events, all_events, "events by {limit}");

        let filtered = events_by_pages(&db, a, &node_filter, limit).await;
        assert_eq!(filtered, node_events, "node events by {limit}");

        let newest_first = EventFilter {
            newest_first: true,
            ..node_filter.clone()
        };
        let newest = events_by_pages(&db, a, &newest_first, limit).await;
        let mut reversed = node_events.clone();
        reversed.reverse();
        assert_eq!(newest, reversed, "node events newest first by {limit}");
    }
    assert_eq!(
        db.latest_event_id(a).await.unwrap(),
        all_events.last().unwrap().id
    );

    // The full lists hold each item once, in cursor order, and only the tenant's own.
    let ids: Vec<String> = all_nodes.iter().map(|n| n.id.to_string()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted);
    let mut names = crate::names(&all_nodes);
    names.dedup();
    assert_eq!(names, ["n0", "n1", "n2", "n3", "n4", "n5", "n6"]);
    assert!(all_events.windows(2).all(|w| w[0].id < w[1].id));
    let b_nodes = db
        .list_nodes(b, &NodeFilter::default(), None, 1000)
        .await
        .unwrap()
        .items;
    assert!(
        b_nodes
            .iter()
            .all(|n| all_nodes.iter().all(|m| m.id != n.id))
    );
}
