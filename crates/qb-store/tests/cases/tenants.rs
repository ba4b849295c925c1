//! Tenants, users and tokens, and the wall between tenants.

use std::collections::BTreeMap;

use qb_api::{LabelChange, NodeState, Role, TokenId};
use qb_store::{EventFilter, Key, NodeFilter, Principal};
use time::{Duration, OffsetDateTime};

use crate::{
    TestDb, actor, all_clusters, all_events, all_nodes, all_tokens, assert_name_taken,
    assert_not_found, assert_pool_exhausted, attach_nodes, by_name, cluster, detach_nodes,
    from_pool, name, named, new_user, node_name, pending_node, pool_node, snapshot, tenant,
};

on_both_backends!(
    tenants_and_users,
    tokens_authenticate_until_expired_or_revoked,
    tenants_cannot_see_or_touch_each_other,
);

async fn tenants_and_users(db: TestDb) {
    assert_eq!(db.tenant_count().await.unwrap(), 0);
    let (acme, admin) = db
        .create_tenant(&name("acme"), &name("alice"))
        .await
        .unwrap();
    assert_eq!(
        (acme.name.as_str(), admin.name.as_str(), admin.role),
        ("acme", "alice", Role::Admin)
    );
    assert_eq!(db.tenant_by_name("acme").await.unwrap(), acme);
    assert_not_found(&db.tenant_by_name("nosuch").await, "tenant");

    let before = snapshot(&db, acme.id).await;
    let refused = db.create_tenant(&name("acme"), &name("mallory")).await;
    assert_name_taken(&refused, "tenant", "acme");
    assert_eq!(db.tenant_count().await.unwrap(), 1);
    assert_eq!(snapshot(&db, acme.id).await, before);

    let bob = new_user(&db, acme.id, "bob", Role::Operator).await;
    let refused = db
        .create_user(acme.id, &name("bob"), Role::Viewer, &actor())
        .await;
    assert_name_taken(&refused, "user", "bob");
    assert_eq!(
        db.list_users(acme.id).await.unwrap(),
        [admin.clone(), bob.clone()]
    );

    // Another tenant may have its own alice and bob.
    let (bolt, bolt_admin) = db
        .create_tenant(&name("bolt"), &name("alice"))
        .await
        .unwrap();
    assert_ne!(bolt_admin.id, admin.id);
    new_user(&db, bolt.id, "bob", Role::Viewer).await;
    assert_eq!(db.tenant_count().await.unwrap(), 2);
    assert_eq!(db.list_users(acme.id).await.unwrap(), [admin, bob]);

    let logged = all_events(&db, acme.id).await;
    assert_eq!(
        crate::actions(&logged),
        ["tenant.created", "user.created", "user.created"]
    );
    assert_eq!(logged[0].actor, "controller");
    assert_eq!(logged[2].detail["role"], "operator");
    assert_eq!(logged[2].actor, "user:alice");
}

async fn tokens_authenticate_until_expired_or_revoked(db: TestDb) {
    let t = tenant(&db, "acme").await;
    new_user(&db, t, "bob", Role::Operator).await;
    let now = OffsetDateTime::now_utc();
    let create = |user: &'static str, hash: &'static str, expires_at: OffsetDateTime| {
        let db = &db;
        async move {
            db.create_token(
                t,
                &name(user),
                format!("secret-of-{hash}"),
                hash,
                Some("ci pipeline".parse().unwrap()),
                expires_at,
                &actor(),
            )
            .await
        }
    };
    let alice = create("alice", "hash-alice", now + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(alice.secret, "secret-of-hash-alice");
    assert_eq!(
        (alice.token.user.as_str(), alice.token.role),
        ("alice", Role::Admin)
    );
    let bob = create("bob", "hash-bob", now + Duration::hours(1))
        .await
        .unwrap();
    let expired = create("bob", "hash-expired", now - Duration::seconds(1))
        .await
        .unwrap();

    let principal = db.authenticate("hash-alice").await.unwrap().unwrap();
    assert_eq!(
        principal,
        Principal {
            tenant_id: t,
            tenant: name("acme"),
            user_id: db.list_users(t).await.unwrap()[0].id,
            user: name("alice"),
            role: Role::Admin,
            token_id: alice.token.id,
            token_expires_at: alice.token.expires_at,
        }
    );
    let principal = db.authenticate("hash-bob").await.unwrap().unwrap();
    assert_eq!(
        (principal.user.as_str(), principal.role, principal.token_id),
        ("bob", Role::Operator, bob.token.id)
    );
    assert_eq!(db.authenticate("hash-expired").await.unwrap(), None);
    assert_eq!(db.authenticate("no-such-hash").await.unwrap(), None);
    assert_eq!(db.authenticate("").await.unwrap(), None);

    // Listing shows what was created, never the secret.
    let listed = all_tokens(&db, t).await;
    let mut created = vec![
        alice.token.clone(),
        bob.token.clone(),
        expired.token.clone(),
    ];
    created.sort_by_key(|tok| tok.id);
    assert_eq!(listed, created);

    let used_at = now + Duration::minutes(5);
    db.touch_token(alice.token.id, used_at).await.unwrap();
    let listed = all_tokens(&db, t).await;
    let touched = listed.iter().find(|tok| tok.id == alice.token.id).unwrap();
    assert_eq!(
        touched.last_used_at.map(|at| at.unix_timestamp()),
        Some(used_at.unix_timestamp())
    );

    let revoked = db.revoke_token(t, bob.token.id, &actor()).await.unwrap();
    let revoked_at = revoked.revoked_at.expect("revoking sets revoked_at");
    assert_eq!(db.authenticate("hash-bob").await.unwrap(), None);
    assert!(db.authenticate("hash-alice").await.unwrap().is_some());
    // Revoking again keeps the first time.
    let again = db.revoke_token(t, bob.token.id, &actor()).await.unwrap();
    assert_eq!(again.revoked_at, Some(revoked_at));
    assert_not_found(&db.revoke_token(t, TokenId::new(), &actor()).await, "token");

    assert_not_found(
        &create("nobody", "hash-nobody", now + Duration::hours(1)).await,
        "user",
    );

    let logged = crate::events(
        &db,
        t,
        &EventFilter {
            object_kind: Some("token".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        crate::actions(&logged),
        [
            "token.created",
            "token.created",
            "token.created",
            "token.revoked",
            "token.revoked"
        ]
    );
    assert_eq!(logged[3].object_id, bob.token.id.to_string());
    assert!(
        !logged
            .iter()
            .any(|e| e.detail.to_string().contains("secret")),
        "a secret reached the log"
    );
}

async fn tenants_cannot_see_or_touch_each_other(db: TestDb) {
    let a = tenant(&db, "acme").await;
    let b = tenant(&db, "bolt").await;
    let a_pending = pending_node(&db, a, "a-pending", &[]).await;
    let a_free = pool_node(&db, a, "a-free", &[]).await;
    let a_member = pool_node(&db, a, "a-member", &[]).await;
    let a_cluster = cluster(&db, a, "a-cluster").await;
    attach_nodes(&db, a, a_cluster.id, &["a-member"]).await;
    detach_nodes(&db, a, a_cluster.id, &["a-member"]).await;
    let a_token = db
        .create_token(
            a,
            &name("alice"),
            "s".into(),
            "hash-a",
            None,
            OffsetDateTime::now_utc() + Duration::hours(1),
            &actor(),
        )
        .await
        .unwrap();
    new_user(&db, a, "carol", Role::Viewer).await;
    let b_cluster = cluster(&db, b, "b-cluster").await;
    let a_before = snapshot(&db, a).await;
    let b_before = snapshot(&db, b).await;

    // B sees none of it.
    assert!(all_nodes(&db, b).await.is_empty());
    let in_state = |state| NodeFilter {
        state: Some(state),
        cluster: None,
    };
    for filter in [
        in_state(NodeState::Pending),
        in_state(NodeState::Authorized),
        in_state(NodeState::Detaching),
        NodeFilter {
            state: None,
            cluster: Some(a_cluster.id),
        },
    ] {
        let listed = db.list_nodes(b, &filter, None, 100).await.unwrap();
        assert!(listed.items.is_empty(), "{filter:?}");
    }
    assert_eq!(all_clusters(&db, b).await, std::slice::from_ref(&b_cluster));
    assert!(all_tokens(&db, b).await.is_empty());
    let b_events = all_events(&db, b).await;
    assert_eq!(
        crate::actions(&b_events),
        ["tenant.created", "user.created", "cluster.created"]
    );
    for key in [Key::Id(a_free.id), by_name("a-free")] {
        assert_not_found(&db.get_node(b, &key).await, "node");
    }
    for key in [Key::Id(a_cluster.id), by_name("a-cluster")] {
        assert_not_found(&db.get_cluster(b, &key).await, "cluster");
    }
    for filter in [
        EventFilter {
            object: Some(a_free.id.to_string()),
            ..Default::default()
        },
        EventFilter {
            object: Some("a-cluster".into()),
            ..Default::default()
        },
        EventFilter {
            object_kind: Some("token".into()),
            ..Default::default()
        },
    ] {
        assert!(
            crate::events(&db, b, &filter).await.is_empty(),
            "{filter:?}"
        );
    }

    // ...and can change none of it.
    let change = LabelChange {
        set: BTreeMap::from([("x".parse().unwrap(), "y".parse().unwrap())]),
        remove: vec![],
    };
    let (pending, pending_name) = (Key::Id(a_pending.id), by_name("a-pending"));
    let free = Key::Id(a_free.id);
    let (a_key, a_name) = (Key::Id(a_cluster.id), by_name("a-cluster"));
    let (b_key, a_free_named) = (Key::Id(b_cluster.id), named(&["a-free"]));
    let (one, member, me) = (from_pool(1, None), [node_name("a-member")], actor());
    assert_not_found(&db.authorize_node(b, &pending, &me).await, "node");
    assert_not_found(&db.authorize_node(b, &pending_name, &me).await, "node");
    assert_not_found(&db.label_node(b, &free, &change, &me).await, "node");
    assert_not_found(&db.deauthorize_node(b, &free, &me).await, "node");
    assert_not_found(&db.delete_node(b, &pending, &me).await, "node");
    assert_not_found(&db.finish_detach(b, a_member.id, &me).await, "node");
    assert_not_found(&db.attach(b, &b_key, &a_free_named, &me).await, "node");
    assert_not_found(&db.attach(b, &a_key, &one, &me).await, "cluster");
    assert_not_found(&db.attach(b, &a_name, &one, &me).await, "cluster");
    assert_not_found(&db.detach(b, &a_key, &member, false, &me).await, "cluster");
    assert_not_found(&db.detach(b, &b_key, &member, false, &me).await, "node");
    assert_not_found(&db.delete_cluster(b, &a_key, true, &me).await, "cluster");
    assert_not_found(&db.revoke_token(b, a_token.token.id, &me).await, "token");
    // B's pool is empty however full A's is.
    assert_pool_exhausted(&db.attach(b, &b_key, &one, &me).await, 1, 0, false);
    // B cannot mint tokens for A's users.
    assert_not_found(
        &db.create_token(
            b,
            &name("carol"),
            "s".into(),
            "hash-x",
            None,
            OffsetDateTime::now_utc() + Duration::hours(1),
            &actor(),
        )
        .await,
        "user",
    );

    assert_eq!(
        snapshot(&db, a).await,
        a_before,
        "tenant B changed tenant A"
    );
    assert_eq!(
        snapshot(&db, b).await,
        b_before,
        "refused requests left traces in tenant B"
    );
    assert_eq!(
        db.authenticate("hash-a")
            .await
            .unwrap()
            .map(|p| p.tenant_id),
        Some(a)
    );
}
