//! Tenants, users and tokens, and the wall between tenants.

use std::collections::BTreeMap;

use qb_api::{LabelChange, NodeState, Role, TokenId};
use qb_store::{EventFilter, Key, NodeFilter, Principal, StoreError};
use time::{Duration, OffsetDateTime};

use crate::{
    TestDb, actor, all_clusters, all_events, all_nodes, all_tokens, by_name, cluster, from_pool,
    name, named, node_name, pending_node, pool_node, snapshot, tenant,
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
    let err = db.tenant_by_name("nosuch").await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "tenant", .. }),
        "{err:?}"
    );

    let before = snapshot(&db, acme.id).await;
    let err = db
        .create_tenant(&name("acme"), &name("mallory"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NameTaken { kind: "tenant", .. }),
        "{err:?}"
    );
    assert_eq!(db.tenant_count().await.unwrap(), 1);
    assert_eq!(snapshot(&db, acme.id).await, before);

    let bob = db
        .create_user(acme.id, &name("bob"), Role::Operator, &actor())
        .await
        .unwrap();
    let err = db
        .create_user(acme.id, &name("bob"), Role::Viewer, &actor())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NameTaken { kind: "user", .. }),
        "{err:?}"
    );
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
    db.create_user(bolt.id, &name("bob"), Role::Viewer, &actor())
        .await
        .unwrap();
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
    db.create_user(t, &name("bob"), Role::Operator, &actor())
        .await
        .unwrap();
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
    let err = db
        .revoke_token(t, TokenId::new(), &actor())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "token", .. }),
        "{err:?}"
    );

    let err = create("nobody", "hash-nobody", now + Duration::hours(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "user", .. }),
        "{err:?}"
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
    db.attach(a, &Key::Id(a_cluster.id), &named(&["a-member"]), &actor())
        .await
        .unwrap();
    db.detach(
        a,
        &Key::Id(a_cluster.id),
        &[node_name("a-member")],
        false,
        &actor(),
    )
    .await
    .unwrap();
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
    db.create_user(a, &name("carol"), Role::Viewer, &actor())
        .await
        .unwrap();
    let b_cluster = cluster(&db, b, "b-cluster").await;
    let a_before = snapshot(&db, a).await;
    let b_before = snapshot(&db, b).await;

    // B sees none of it.
    assert!(all_nodes(&db, b).await.is_empty());
    for state in [
        NodeState::Pending,
        NodeState::Authorized,
        NodeState::Detaching,
    ] {
        let filter = NodeFilter {
            state: Some(state),
            cluster: None,
        };
        assert!(
            db.list_nodes(b, &filter, None, 100)
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }
    let filter = NodeFilter {
        state: None,
        cluster: Some(a_cluster.id),
    };
    assert!(
        db.list_nodes(b, &filter, None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(all_clusters(&db, b).await, std::slice::from_ref(&b_cluster));
    assert!(all_tokens(&db, b).await.is_empty());
    let b_events = all_events(&db, b).await;
    assert_eq!(
        crate::actions(&b_events),
        ["tenant.created", "user.created", "cluster.created"]
    );
    for key in [Key::Id(a_free.id), by_name("a-free")] {
        let err = db.get_node(b, &key).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { kind: "node", .. }),
            "{err:?}"
        );
    }
    for key in [Key::Id(a_cluster.id), by_name("a-cluster")] {
        let err = db.get_cluster(b, &key).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotFound {
                    kind: "cluster",
                    ..
                }
            ),
            "{err:?}"
        );
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
    let not_found = |result: Result<_, StoreError>, kind: &str| match result {
        Err(StoreError::NotFound { kind: k, .. }) if k == kind => {}
        other => panic!("expected NotFound for a {kind}, got {other:?}"),
    };
    not_found(
        db.authorize_node(b, &Key::Id(a_pending.id), &actor())
            .await
            .map(drop),
        "node",
    );
    not_found(
        db.authorize_node(b, &by_name("a-pending"), &actor())
            .await
            .map(drop),
        "node",
    );
    let change = LabelChange {
        set: BTreeMap::from([("x".parse().unwrap(), "y".parse().unwrap())]),
        remove: vec![],
    };
    not_found(
        db.label_node(b, &Key::Id(a_free.id), &change, &actor())
            .await
            .map(drop),
        "node",
    );
    not_found(
        db.deauthorize_node(b, &Key::Id(a_free.id), &actor())
            .await
            .map(drop),
        "node",
    );
    not_found(
        db.delete_node(b, &Key::Id(a_pending.id), &actor()).await,
        "node",
    );
    not_found(
        db.finish_detach(b, a_member.id, &actor()).await.map(drop),
        "node",
    );
    not_found(
        db.attach(b, &Key::Id(b_cluster.id), &named(&["a-free"]), &actor())
            .await
            .map(drop),
        "node",
    );
    not_found(
        db.attach(b, &Key::Id(a_cluster.id), &from_pool(1, None), &actor())
            .await
            .map(drop),
        "cluster",
    );
    not_found(
        db.attach(b, &by_name("a-cluster"), &from_pool(1, None), &actor())
            .await
            .map(drop),
        "cluster",
    );
    not_found(
        db.detach(
            b,
            &Key::Id(a_cluster.id),
            &[node_name("a-member")],
            false,
            &actor(),
        )
        .await
        .map(drop),
        "cluster",
    );
    not_found(
        db.detach(
            b,
            &Key::Id(b_cluster.id),
            &[node_name("a-member")],
            false,
            &actor(),
        )
        .await
        .map(drop),
        "node",
    );
    not_found(
        db.delete_cluster(b, &Key::Id(a_cluster.id), true, &actor())
            .await
            .map(drop),
        "cluster",
    );
    not_found(
        db.revoke_token(b, a_token.token.id, &actor())
            .await
            .map(drop),
        "token",
    );
    // B's pool is empty however full A's is.
    let err = db
        .attach(b, &Key::Id(b_cluster.id), &from_pool(1, None), &actor())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PoolExhausted { available: 0, .. }),
        "{err:?}"
    );
    // B cannot mint tokens for A's users.
    let err = db
        .create_token(
            b,
            &name("carol"),
            "s".into(),
            "hash-x",
            None,
            OffsetDateTime::now_utc() + Duration::hours(1),
            &actor(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "user", .. }),
        "{err:?}"
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
