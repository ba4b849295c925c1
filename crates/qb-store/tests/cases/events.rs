//! The audit trail: append-only, written with every change or not at all.

use qb_api::{NodeState, Role};
use qb_store::{Actor, Backend, EventFilter, Key, NewNode, StoreError};
use time::{Duration, OffsetDateTime};

use crate::{
    TestDb, actor, all_events, attach_nodes, by_name, cluster, detach_nodes, events, from_pool,
    name, named, new_user, node, node_name, pending_node, pool_node, pool_nodes, snapshot, spec,
    tenant,
};

on_both_backends!(
    events_are_append_only,
    a_change_whose_event_fails_is_rolled_back,
    every_change_is_recorded,
    event_filters,
    only_events_past_the_retention_can_be_pruned,
    requests_passed_on_are_recorded,
);

async fn events_are_append_only(db: TestDb) {
    let t = tenant(&db, "acme").await;
    pool_node(&db, t, "n1", &[]).await;
    let logged = all_events(&db, t).await;
    assert_eq!(logged.len(), 4);
    let first = logged[0].id;

    let raw = db.raw().await;
    let mut attacks = vec![
        "UPDATE events SET actor = 'user:mallory'".to_owned(),
        format!("UPDATE events SET detail = '{{}}' WHERE id = {first}"),
        "DELETE FROM events".to_owned(),
        format!("DELETE FROM events WHERE id = {first}"),
    ];
    if db.backend() == qb_store::Backend::Postgres {
        attacks.push("TRUNCATE events".to_owned());
    }
    for sql in attacks {
        let err = sqlx::query(&sql).execute(&raw).await.expect_err(&sql);
        assert!(
            err.to_string().contains("events are append-only"),
            "{sql}: {err}"
        );
    }
    assert_eq!(all_events(&db, t).await, logged);

    // Appending still works, and leaves the old entries as they were.
    db.authorize_node(t, &by_name("n1"), &actor())
        .await
        .unwrap_err();
    db.label_node(t, &by_name("n1"), &Default::default(), &actor())
        .await
        .unwrap();
    let now = all_events(&db, t).await;
    assert_eq!(now.len(), logged.len() + 1);
    assert_eq!(now[..logged.len()], logged[..]);
    assert!(now[logged.len()].id > logged[logged.len() - 1].id);
}

/// Fails every write to the event log, straight in the database.
async fn break_the_event_log(db: &TestDb, raw: &sqlx::AnyPool) {
    let statements: &[&str] = match db.backend() {
        Backend::Sqlite => &["CREATE TRIGGER qb_test_no_events BEFORE INSERT ON events \
             BEGIN SELECT RAISE(ABORT, 'injected: the event log is broken'); END"],
        Backend::Postgres => &[
            "CREATE FUNCTION qb_test_no_events() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'injected: the event log is broken'; END $$",
            "CREATE TRIGGER qb_test_no_events BEFORE INSERT ON events \
             FOR EACH ROW EXECUTE FUNCTION qb_test_no_events()",
        ],
    };
    for sql in statements {
        sqlx::query(sql).execute(raw).await.unwrap();
    }
}

async fn repair_the_event_log(db: &TestDb, raw: &sqlx::AnyPool) {
    let sql = match db.backend() {
        Backend::Sqlite => "DROP TRIGGER qb_test_no_events",
        Backend::Postgres => "DROP TRIGGER qb_test_no_events ON events",
    };
    sqlx::query(sql).execute(raw).await.unwrap();
}

/// Every change writes its event in its own transaction: when the event cannot be written, the
/// change is undone too. Each request below is valid (the second half makes them again, with the
/// log repaired, and they succeed), so only the broken log can stop them.
async fn a_change_whose_event_fails_is_rolled_back(db: TestDb) {
    let t = tenant(&db, "acme").await;
    new_user(&db, t, "bob", Role::Operator).await;
    let expires = OffsetDateTime::now_utc() + Duration::hours(1);
    let token = db
        .create_token(
            t,
            &name("bob"),
            "s1".into(),
            "hash-1",
            None,
            expires,
            &actor(),
        )
        .await
        .unwrap();
    let pending = pending_node(&db, t, "pending", &[]).await;
    pool_nodes(&db, t, &["free-1", "free-2", "member", "leaving"]).await;
    let c1 = cluster(&db, t, "c1").await;
    let c2 = cluster(&db, t, "c2").await;
    attach_nodes(&db, t, c1.id, &["member", "leaving"]).await;
    detach_nodes(&db, t, c1.id, &["leaving"]).await;
    let leaving = node(&db, t, "leaving").await;
    let before = snapshot(&db, t).await;
    let raw = db.raw().await;
    break_the_event_log(&db, &raw).await;

    macro_rules! undone {
        ($op:expr) => {{
            let result = $op.await;
            assert!(
                matches!(result, Err(StoreError::Database(_))),
                "{}: expected a database error, got {:?}",
                stringify!($op),
                result.map(drop)
            );
            assert_eq!(
                snapshot(&db, t).await,
                before,
                "{} was kept without its event",
                stringify!($op)
            );
        }};
    }
    let new_node = || NewNode {
        name: node_name("new"),
        facts: Default::default(),
        labels: Default::default(),
    };
    let change = qb_api::LabelChange {
        set: [("zone".parse().unwrap(), "a".parse().unwrap())].into(),
        remove: vec![],
    };
    undone!(db.insert_node(t, new_node(), &actor()));
    undone!(db.authorize_node(t, &Key::Id(pending.id), &actor()));
    undone!(db.label_node(t, &by_name("free-1"), &change, &actor()));
    undone!(db.deauthorize_node(t, &by_name("free-2"), &actor()));
    undone!(db.delete_node(t, &Key::Id(pending.id), &actor()));
    undone!(db.create_cluster(t, &spec("c3"), &actor()));
    undone!(db.attach(t, &Key::Id(c2.id), &named(&["free-1", "free-2"]), &actor()));
    undone!(db.attach(t, &Key::Id(c2.id), &from_pool(2, None), &actor()));
    undone!(db.detach(t, &Key::Id(c1.id), &[node_name("member")], false, &actor()));
    undone!(db.finish_detach(t, leaving.id, &actor()));
    undone!(db.delete_cluster(t, &Key::Id(c2.id), false, &actor()));
    undone!(db.delete_cluster(t, &Key::Id(c1.id), true, &actor()));
    undone!(db.create_user(t, &name("carol"), Role::Viewer, &actor()));
    undone!(db.create_token(
        t,
        &name("bob"),
        "s2".into(),
        "hash-2",
        None,
        expires,
        &actor()
    ));
    undone!(db.revoke_token(t, token.token.id, &actor()));
    let result = db.create_tenant(&name("other"), &name("olga")).await;
    assert!(
        matches!(result, Err(StoreError::Database(_))),
        "{:?}",
        result.map(drop)
    );
    assert_eq!(db.tenant_count().await.unwrap(), 1);
    assert_eq!(db.authenticate("hash-2").await.unwrap(), None);
    assert!(db.authenticate("hash-1").await.unwrap().is_some());

    repair_the_event_log(&db, &raw).await;
    db.insert_node(t, new_node(), &actor()).await.unwrap();
    db.authorize_node(t, &Key::Id(pending.id), &actor())
        .await
        .unwrap();
    db.label_node(t, &by_name("free-1"), &change, &actor())
        .await
        .unwrap();
    db.create_cluster(t, &spec("c3"), &actor()).await.unwrap();
    attach_nodes(&db, t, c2.id, &["free-1", "free-2"]).await;
    detach_nodes(&db, t, c1.id, &["member"]).await;
    db.finish_detach(t, leaving.id, &actor()).await.unwrap();
    db.delete_cluster(t, &Key::Id(c1.id), true, &actor())
        .await
        .unwrap();
    db.deauthorize_node(t, &by_name("member"), &actor())
        .await
        .unwrap();
    db.delete_node(t, &by_name("member"), &actor())
        .await
        .unwrap();
    new_user(&db, t, "carol", Role::Viewer).await;
    db.create_token(
        t,
        &name("bob"),
        "s2".into(),
        "hash-2",
        None,
        expires,
        &actor(),
    )
    .await
    .unwrap();
    db.revoke_token(t, token.token.id, &actor()).await.unwrap();
    db.create_tenant(&name("other"), &name("olga"))
        .await
        .unwrap();
    let after = all_events(&db, t).await;
    assert_eq!(after.len(), before.events.len() + 17);
}

/// One event per change, in order, naming who did what to which object.
async fn every_change_is_recorded(db: TestDb) {
    let started = OffsetDateTime::now_utc() - Duration::seconds(1);
    let t = tenant(&db, "acme").await;
    let bob = new_user(&db, t, "bob", Role::Operator).await;
    let expires = OffsetDateTime::now_utc() + Duration::hours(1);
    let token = db
        .create_token(t, &name("bob"), "s".into(), "h", None, expires, &actor())
        .await
        .unwrap();
    let n1 = pending_node(&db, t, "n1", &[]).await;
    let n2 = pending_node(&db, t, "n2", &[]).await;
    db.authorize_node(t, &Key::Id(n1.id), &actor())
        .await
        .unwrap();
    db.authorize_node(t, &Key::Id(n2.id), &actor())
        .await
        .unwrap();
    db.label_node(t, &Key::Id(n1.id), &Default::default(), &actor())
        .await
        .unwrap();
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1"]).await;
    detach_nodes(&db, t, c.id, &["n1"]).await;
    db.finish_detach(t, n1.id, &Actor::controller())
        .await
        .unwrap();
    db.deauthorize_node(t, &Key::Id(n2.id), &actor())
        .await
        .unwrap();
    db.delete_node(t, &Key::Id(n2.id), &actor()).await.unwrap();
    db.revoke_token(t, token.token.id, &actor()).await.unwrap();
    db.delete_cluster(t, &Key::Id(c.id), false, &actor())
        .await
        .unwrap();
    let ended = OffsetDateTime::now_utc() + Duration::seconds(1);

    let logged = all_events(&db, t).await;
    let (n1, n2, c, bob, tok) = (
        n1.id.to_string(),
        n2.id.to_string(),
        c.id.to_string(),
        bob.id.to_string(),
        token.token.id.to_string(),
    );
    let expected: Vec<(&str, &str, &str, &str)> = vec![
        ("tenant.created", "tenant", &logged[0].object_id, "acme"),
        ("user.created", "user", &logged[1].object_id, "alice"),
        ("user.created", "user", &bob, "bob"),
        ("token.created", "token", &tok, "bob"),
        ("node.registered", "node", &n1, "n1"),
        ("node.registered", "node", &n2, "n2"),
        ("node.authorized", "node", &n1, "n1"),
        ("node.authorized", "node", &n2, "n2"),
        ("node.labeled", "node", &n1, "n1"),
        ("cluster.created", "cluster", &c, "c1"),
        ("node.attached", "node", &n1, "n1"),
        ("cluster.nodes_attached", "cluster", &c, "c1"),
        ("node.detaching", "node", &n1, "n1"),
        ("cluster.nodes_detached", "cluster", &c, "c1"),
        ("node.detached", "node", &n1, "n1"),
        ("node.deauthorized", "node", &n2, "n2"),
        ("node.deleted", "node", &n2, "n2"),
        ("token.revoked", "token", &tok, "bob"),
        ("cluster.deleted", "cluster", &c, "c1"),
    ];
    let got: Vec<(&str, &str, &str, &str)> = logged
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.object_kind.as_str(),
                e.object_id.as_str(),
                e.object_name.as_str(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(logged[0].object_id, t.to_string());
    for (i, e) in logged.iter().enumerate() {
        let who = match e.action.as_str() {
            "tenant.created" | "node.detached" => "controller",
            "user.created" if i == 1 => "controller",
            _ => "user:alice",
        };
        assert_eq!(e.actor, who, "{}", e.action);
        assert!(e.at >= started && e.at <= ended, "{} at {}", e.action, e.at);
        if i > 0 {
            assert!(e.id > logged[i - 1].id, "ids increase");
            assert!(e.at >= logged[i - 1].at, "times do not go back");
        }
    }
    // Nothing else is left in the tenant.
    let left = snapshot(&db, t).await;
    assert_eq!(
        left.nodes.iter().map(|n| n.state).collect::<Vec<_>>(),
        [NodeState::Authorized]
    );
    assert!(left.clusters.is_empty());
}

async fn event_filters(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let n1 = pool_node(&db, t, "n1", &[]).await;
    pool_node(&db, t, "n2", &[]).await;
    let c = cluster(&db, t, "c1").await;
    attach_nodes(&db, t, c.id, &["n1"]).await;

    let filtered = |kind: Option<&str>, object: Option<&str>, prefix: Option<&str>| {
        let filter = EventFilter {
            object_kind: kind.map(str::to_owned),
            object: object.map(str::to_owned),
            action_prefix: prefix.map(str::to_owned),
            newest_first: false,
        };
        let db = &db;
        async move {
            events(db, t, &filter)
                .await
                .into_iter()
                .map(|e| format!("{} {}", e.action, e.object_name))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        filtered(Some("node"), None, None).await,
        [
            "node.registered n1",
            "node.authorized n1",
            "node.registered n2",
            "node.authorized n2",
            "node.attached n1"
        ]
    );
    let about_n1 = [
        "node.registered n1",
        "node.authorized n1",
        "node.attached n1",
    ];
    assert_eq!(filtered(None, Some("n1"), None).await, about_n1);
    assert_eq!(
        filtered(None, Some(&n1.id.to_string()), None).await,
        about_n1
    );
    assert_eq!(
        filtered(None, None, Some("cluster.")).await,
        ["cluster.created c1", "cluster.nodes_attached c1"]
    );
    assert_eq!(
        filtered(Some("node"), Some("n1"), Some("node.a")).await,
        ["node.authorized n1", "node.attached n1"]
    );
    assert_eq!(
        filtered(Some("cluster"), Some("n1"), None).await,
        Vec::<String>::new()
    );
    assert_eq!(
        filtered(None, None, Some("node.deleted")).await,
        Vec::<String>::new()
    );
    // A prefix is a prefix, not a pattern.
    assert_eq!(filtered(None, None, Some("%")).await, Vec::<String>::new());
    assert_eq!(
        filtered(None, None, Some("_ode")).await,
        Vec::<String>::new()
    );
    assert_eq!(filtered(None, None, None).await.len(), 9);
}

/// Events older than the retention (400 days) may be deleted, by the controller's pruning; the
/// database refuses to delete a younger one, however asked.
async fn only_events_past_the_retention_can_be_pruned(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let now = OffsetDateTime::now_utc();
    let raw = db.raw().await;
    for days in [500, 399] {
        let at = (now - Duration::days(days)).unix_timestamp() * 1000;
        sqlx::query(&format!(
            "INSERT INTO events (tenant_id, at, actor, action, object_kind, object_id, object_name, detail) \
             VALUES ('{t}', {at}, 'controller', 'test.old', 'tenant', '{t}', '{days} days', '{{}}')"
        ))
        .execute(&raw)
        .await
        .unwrap();
    }
    let before = all_events(&db, t).await.len();

    // Asking for more than the retention allows deletes nothing.
    let refused = db
        .prune_events(now - Duration::days(398))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("append-only"),
        "{refused:?}"
    );
    assert_eq!(all_events(&db, t).await.len(), before);

    assert_eq!(db.prune_events(now - Duration::days(401)).await.unwrap(), 1);
    let left = all_events(&db, t).await;
    assert_eq!(left.len(), before - 1);
    assert!(left.iter().all(|e| e.object_name != "500 days"));
    assert!(left.iter().any(|e| e.object_name == "399 days"));
    let young = sqlx::query("DELETE FROM events WHERE object_name = '399 days'")
        .execute(&raw)
        .await
        .expect_err("a young event cannot be deleted");
    assert!(young.to_string().contains("append-only"), "{young}");
}

/// A request passed on (a Kubernetes write) is an event of its own, in its tenant only.
async fn requests_passed_on_are_recorded(db: TestDb) {
    let t = tenant(&db, "acme").await;
    let other = tenant(&db, "other").await;
    let detail = serde_json::json!({"method": "POST", "path": "/api/v1/namespaces", "status": 201});
    db.record_request(
        t,
        &Actor::user("alice"),
        "cluster.kubernetes_write",
        ("cluster", "c-1".to_owned(), "prod"),
        detail.clone(),
    )
    .await
    .unwrap();
    let recorded = all_events(&db, t).await.pop().unwrap();
    assert_eq!(
        (
            recorded.action.as_str(),
            recorded.actor.as_str(),
            recorded.object_name.as_str(),
            &recorded.detail
        ),
        ("cluster.kubernetes_write", "user:alice", "prod", &detail)
    );
    assert!(
        all_events(&db, other)
            .await
            .iter()
            .all(|e| e.action != "cluster.kubernetes_write")
    );
}
