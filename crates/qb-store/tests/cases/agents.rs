//! Bootstrap tokens, registration by machine id, certificate serials and controller secrets.

use std::sync::atomic::{AtomicU32, Ordering};

use qb_api::{NodeFacts, NodeState};
use qb_store::{
    IssuedCert, NewSecret, Registered, Registration, SeenAgent, StoreError, TokenRefusal,
};
use time::{Duration, OffsetDateTime};

use crate::{TestDb, actor, all_events, all_nodes, by_name, labels, node, node_name, tenant};

on_both_backends!(
    tokens_are_refused_for_every_reason_and_change_nothing,
    registration_by_machine_id_never_duplicates_a_host,
    a_second_host_with_an_online_hosts_machine_id_is_refused,
    racing_registrations_respect_the_token_limit,
    certificates_rotate_serials,
    controller_secrets_are_created_once,
    a_registration_whose_answer_was_lost_is_given_again,
);

fn secret(s: &str) -> NewSecret {
    NewSecret {
        secret: s.to_owned(),
        hash: format!("hash-{s}"),
    }
}

fn registration(token: &str, machine: &str, host: &str) -> Registration {
    Registration {
        token_hash: format!("hash-{token}"),
        machine_id: machine.to_owned(),
        name: node_name(host),
        facts: NodeFacts {
            hostname: host.to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            ..Default::default()
        },
        labels: labels(&[("zone", "a")]),
        agent_version: "0.1.0".to_owned(),
    }
}

fn cert(serial: &str) -> Result<IssuedCert, qb_store::IssueError> {
    Ok(IssuedCert {
        pem: format!("PEM {serial}"),
        serial: serial.to_owned(),
    })
}

/// Registers host `host` (machine `machine`) with bootstrap token `token`; its certificate gets
/// serial `serial`.
async fn register(
    db: &TestDb,
    token: &str,
    machine: &str,
    host: &str,
    serial: &str,
) -> Result<Registered, StoreError> {
    db.register_node(
        &registration(token, machine, host),
        |_| false,
        |_, _| cert(serial),
    )
    .await
}

/// A cloned host (same machine id) registering while the first host's agent is online is
/// refused, naming both hosts; the first keeps its node and certificate, the token is not used,
/// and the attempt is in the audit trail once recorded. Once the first host is offline, the same
/// machine id registers again as that node (a reinstalled host).
async fn a_second_host_with_an_online_hosts_machine_id_is_refused(db: TestDb) {
    let t = tenant(&db, "acme").await;
    bootstrap(&db, t, "tok", 2, Duration::hours(1)).await;
    let first = register(&db, "tok", "m1", "web", "s1").await.unwrap();
    let mut clone = registration("tok", "m1", "web-clone");
    clone.facts.addresses = vec!["10.0.0.2".parse().unwrap()];
    let issued = AtomicU32::new(0);
    let err = db
        .register_node(
            &clone,
            |id| id == first.node.id,
            |_, _| {
                issued.fetch_add(1, Ordering::SeqCst);
                cert("never")
            },
        )
        .await
        .expect_err("a second host with the machine id");
    let StoreError::IdentityConflict(conflict) = &err else {
        panic!("expected an identity conflict, got {err:?}");
    };
    assert_eq!(issued.load(Ordering::SeqCst), 0);
    assert_eq!(conflict.node.id, first.node.id);
    let message = err.to_string();
    for part in [
        "\"web-clone\" (10.0.0.2)",
        "machine id m1",
        "node web",
        "online",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let now = node(&db, t, "web").await;
    assert_eq!(now.state, NodeState::Pending);
    let serial = db.agent_node(t, first.node.id).await.unwrap().cert_serial;
    assert_eq!(
        serial.as_deref(),
        Some("s1"),
        "the first host keeps its certificate"
    );

    assert!(db.record_identity_conflict(conflict).await.unwrap());
    assert!(
        !db.record_identity_conflict(conflict).await.unwrap(),
        "the clone's next tries are not recorded again for a while"
    );
    let events = all_events(&db, t).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.action == "node.identity_conflict")
            .count(),
        1
    );
    let recorded = events.last().unwrap();
    assert_eq!(recorded.action, "node.identity_conflict");
    assert_eq!(recorded.object_id, first.node.id.to_string());
    assert_eq!(recorded.detail["claimant"]["hostname"], "web-clone");
    assert_eq!(recorded.detail["claimant"]["addresses"][0], "10.0.0.2");
    assert_eq!(recorded.detail["holder"]["hostname"], "web");

    // The token was not used by the refusal: its second use is the reinstalled host's.
    let again = db
        .register_node(&clone, |_| false, |_, _| cert("s2"))
        .await
        .unwrap();
    assert_eq!(again.node.id, first.node.id);
    assert!(again.existing);
}

async fn bootstrap(db: &TestDb, t: qb_api::TenantId, name: &str, uses: u32, expires_in: Duration) {
    let expires = OffsetDateTime::now_utc() + expires_in;
    db.create_bootstrap_token(t, secret(name), None, expires, uses, &actor())
        .await
        .unwrap();
}

async fn tokens_are_refused_for_every_reason_and_change_nothing(db: TestDb) {
    let t = tenant(&db, "acme").await;
    bootstrap(&db, t, "expired", 5, Duration::seconds(-1)).await;
    bootstrap(&db, t, "once", 1, Duration::hours(1)).await;
    let revoked = db
        .create_bootstrap_token(
            t,
            secret("revoked"),
            None,
            OffsetDateTime::now_utc() + Duration::hours(1),
            5,
            &actor(),
        )
        .await
        .unwrap();
    db.revoke_bootstrap_token(t, revoked.token.id, &actor())
        .await
        .unwrap();
    register(&db, "once", "m1", "h1", "s1").await.unwrap();
    let before = (all_nodes(&db, t).await, all_events(&db, t).await);

    for (token, want) in [
        ("nope", TokenRefusal::Unknown),
        ("expired", TokenRefusal::Expired),
        ("revoked", TokenRefusal::Revoked),
        ("once", TokenRefusal::UsedUp),
    ] {
        let issued = AtomicU32::new(0);
        let err = db
            .register_node(
                &registration(token, "m2", "h2"),
                |_| false,
                |_, _| {
                    issued.fetch_add(1, Ordering::SeqCst);
                    cert("never")
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TokenRefused(r) if r == want),
            "{token}: {err}"
        );
        assert_eq!(
            issued.load(Ordering::SeqCst),
            0,
            "{token}: no certificate issued"
        );
    }
    assert_eq!(
        (all_nodes(&db, t).await, all_events(&db, t).await),
        before,
        "nothing changed"
    );
    let listed = db.list_bootstrap_tokens(t, None, 10).await.unwrap().items;
    let once = listed.iter().find(|b| b.max_uses == 1).unwrap();
    assert_eq!(once.uses, 1, "the refused attempt did not count");
}

async fn registration_by_machine_id_never_duplicates_a_host(db: TestDb) {
    let t = tenant(&db, "acme").await;
    bootstrap(&db, t, "tok", 10, Duration::hours(1)).await;
    let first = register(&db, "tok", "m1", "web", "s1").await.unwrap();
    assert!(!first.existing);
    assert_eq!(
        (first.node.state, first.node.name.as_str()),
        (NodeState::Pending, "web")
    );
    assert_eq!(
        first.node.agent.as_ref().map(|a| a.version.as_str()),
        Some("0.1.0")
    );

    // Another host with the same name gets a suffixed name; the same machine again is the same node.
    let other = register(&db, "tok", "m2", "web", "s2").await.unwrap();
    assert_eq!(other.node.name.as_str(), "web-m2");
    // The same machine again, while still pending, is the same node with only the new
    // certificate valid.
    let again = db
        .register_node(
            &registration("tok", "m1", "web"),
            |_| false,
            |_, id| {
                assert_eq!(id, first.node.id, "the certificate names the existing node");
                cert("s3")
            },
        )
        .await
        .unwrap();
    assert!(again.existing);
    assert_eq!(
        (again.node.id, again.node.state),
        (first.node.id, NodeState::Pending)
    );
    assert_eq!(all_nodes(&db, t).await.len(), 2);
    let checked = db.agent_node(t, first.node.id).await.unwrap();
    assert!(
        checked.accepts_serial("s3") && !checked.accepts_serial("s1"),
        "the old key is dead"
    );

    // A host in the pool is not handed to whoever has a token and its machine id.
    db.authorize_node(t, &by_name("web"), &actor())
        .await
        .unwrap();
    let before = (all_nodes(&db, t).await, all_events(&db, t).await);
    let err = register(&db, "tok", "m1", "web", "stolen")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidNodeState { .. }), "{err}");
    assert!(err.to_string().contains("deauthorize it first"), "{err}");
    assert_eq!(
        (all_nodes(&db, t).await, all_events(&db, t).await),
        before,
        "nothing changed"
    );

    // A deauthorized host that registers again comes back as pending, never straight to the pool.
    db.deauthorize_node(t, &by_name("web"), &actor())
        .await
        .unwrap();
    let back = register(&db, "tok", "m1", "web", "s4").await.unwrap();
    assert_eq!(
        (back.node.id, back.node.state),
        (first.node.id, NodeState::Pending)
    );
    let checked = db.agent_node(t, first.node.id).await.unwrap();
    assert!(checked.accepts_serial("s4") && !checked.accepts_serial("s3"));
    let actions: Vec<String> = all_events(&db, t)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "node.registered").count(),
        2
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "node.reregistered").count(),
        2
    );
    assert_eq!(
        db.list_bootstrap_tokens(t, None, 10).await.unwrap().items[0].uses,
        4
    );

    // Tokens are per tenant: the same machine id in another tenant is another node.
    let b = tenant(&db, "other").await;
    bootstrap(&db, b, "btok", 1, Duration::hours(1)).await;
    let in_b = register(&db, "btok", "m1", "web", "b1").await.unwrap();
    assert_eq!(in_b.tenant, b);
    assert_ne!(in_b.node.id, first.node.id);
    assert!(matches!(
        db.agent_node(b, first.node.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(node(&db, t, "web").await.id, first.node.id);
}

async fn racing_registrations_respect_the_token_limit(db: TestDb) {
    let t = tenant(&db, "acme").await;
    bootstrap(&db, t, "five", 5, Duration::hours(1)).await;
    let second = db.open_again().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .register_node(
                    &registration("five", &format!("m{i:02}"), &format!("h{i}")),
                    |_| false,
                    |_, _| cert(&format!("s{i}")),
                )
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::TokenRefused(TokenRefusal::UsedUp)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(all_nodes(&db, t).await.len(), 5);
    assert_eq!(
        db.list_bootstrap_tokens(t, None, 10).await.unwrap().items[0].uses,
        5
    );
}

async fn certificates_rotate_serials(db: TestDb) {
    let t = tenant(&db, "acme").await;
    bootstrap(&db, t, "tok", 1, Duration::hours(1)).await;
    let reg = register(&db, "tok", "m1", "h1", "a").await.unwrap();
    let id = reg.node.id;
    db.renew_node_cert(t, id, || cert("b")).await.unwrap();
    let n = db.agent_node(t, id).await.unwrap();
    assert!(
        n.accepts_serial("a") && n.accepts_serial("b"),
        "the previous certificate works until the next renewal"
    );
    db.renew_node_cert(t, id, || cert("c")).await.unwrap();
    let n = db.agent_node(t, id).await.unwrap();
    assert!(!n.accepts_serial("a") && n.accepts_serial("b") && n.accepts_serial("c"));
    db.deauthorize_node(t, &by_name("h1"), &actor())
        .await
        .unwrap();
    assert!(
        !db.agent_node(t, id).await.unwrap().accepts_serial("c"),
        "nothing is accepted once deauthorized"
    );
    let err = db.renew_node_cert(t, id, || cert("d")).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidNodeState { .. }), "{err}");
    // Heartbeat bookkeeping writes no event.
    let events = all_events(&db, t).await.len();
    let seen = SeenAgent {
        version: "0.2.0",
        build: Some("ab12"),
        protocol: 3,
    };
    db.agent_seen(t, id, &seen, None, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(all_events(&db, t).await.len(), events);
    let agent = node(&db, t, "h1").await.agent.unwrap();
    assert_eq!(
        (
            agent.version.as_str(),
            agent.build.as_deref(),
            agent.protocol
        ),
        ("0.2.0", Some("ab12"), Some(3))
    );
}

async fn controller_secrets_are_created_once(db: TestDb) {
    let second = db.open_again().await;
    let (a, b) = tokio::join!(
        db.controller_secret("ca", || Ok("from-a".to_owned())),
        second.controller_secret("ca", || Ok("from-b".to_owned())),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "both replicas use the one stored value");
    let again = db
        .controller_secret("ca", || panic!("not created twice"))
        .await
        .unwrap();
    assert_eq!(again, a);
}

/// The controller died after storing a registration and before answering it: the host asks
/// again with the single-use token it used up, and gets its node again (a new certificate, the
/// token still used once). Once its agent connected, or from another machine, the used token
/// is refused as ever.
async fn a_registration_whose_answer_was_lost_is_given_again(db: TestDb) {
    let t = tenant(&db, "acme").await;
    bootstrap(&db, t, "once", 1, Duration::hours(1)).await;
    let first = register(&db, "once", "m1", "web", "s1").await.unwrap();
    let again = register(&db, "once", "m1", "web", "s2").await.unwrap();
    assert_eq!(again.node.id, first.node.id);
    assert_eq!(again.certificate.serial, "s2");
    assert_eq!(again.node.state, NodeState::Pending);
    let nodes = all_nodes(&db, t).await;
    assert_eq!(nodes.len(), 1);
    let tokens = db.list_bootstrap_tokens(t, None, 10).await.unwrap();
    assert_eq!(tokens.items[0].uses, 1);

    match register(&db, "once", "m2", "db", "s3").await {
        Err(StoreError::TokenRefused(TokenRefusal::UsedUp)) => {}
        other => panic!("another machine with the used token: {other:?}"),
    }
    let seen = SeenAgent {
        version: "0.1.0",
        build: None,
        protocol: 2,
    };
    db.agent_seen(t, first.node.id, &seen, None, OffsetDateTime::now_utc())
        .await
        .unwrap();
    match register(&db, "once", "m1", "web", "s4").await {
        Err(StoreError::TokenRefused(TokenRefusal::UsedUp)) => {}
        other => panic!("after the agent connected: {other:?}"),
    }
}
