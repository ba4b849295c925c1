//! Controller replicas: which are alive, which holds each agent, which runs the engine.

use qb_api::NodeId;
use qb_store::{Backend, SessionChange};
use time::{Duration, OffsetDateTime};

use crate::TestDb;

on_both_backends!(
    sessions_name_the_replica_that_holds_each_agent,
    other_replicas_hear_of_each_session_change_as_it_commits,
    one_replica_leads_until_it_lets_go,
    the_engine_hears_each_wake_up_another_replica_sends,
);

#[track_caller]
fn only_sqlite_lacks_notifications(db: &TestDb) {
    assert_eq!(
        db.backend(),
        Backend::Sqlite,
        "PostgreSQL has notifications"
    );
}

/// A replica that took a change wakes the engine wherever it runs, through the database.
async fn the_engine_hears_each_wake_up_another_replica_sends(db: TestDb) {
    let Some(mut wakes) = db.engine_wakes().await.unwrap() else {
        only_sqlite_lacks_notifications(&db);
        // One controller alone on its file: nothing to send.
        db.wake_engine().await.unwrap();
        return;
    };
    let quiet = std::time::Duration::from_millis(300);
    assert!(
        tokio::time::timeout(quiet, wakes.next()).await.is_err(),
        "no wake-up before one is sent"
    );
    for _ in 0..2 {
        db.wake_engine().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), wakes.next())
            .await
            .expect("the wake-up within 10 s")
            .unwrap();
    }
    assert!(
        tokio::time::timeout(quiet, wakes.next()).await.is_err(),
        "one per wake-up"
    );
}

async fn sessions_name_the_replica_that_holds_each_agent(db: TestDb) {
    let now = OffsetDateTime::now_utc();
    let (n1, n2) = (NodeId::new(), NodeId::new());
    db.replica_alive("a", "https://a:7444", now).await.unwrap();
    db.replica_alive("b", "https://b:7444", now).await.unwrap();
    db.agent_session_opened(n1, "a", now).await.unwrap();
    db.agent_session_opened(n2, "b", now).await.unwrap();

    let seen_by_b = db.remote_sessions("b").await.unwrap();
    assert_eq!(seen_by_b.len(), 1, "B's own agents are not remote to it");
    assert_eq!(seen_by_b[&n1], "a");
    let live = db
        .live_replicas("b", now - Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live["a"], "https://a:7444");

    // The agent moves to B before A notices its channel closed: A's late close changes nothing.
    db.agent_session_opened(n1, "b", now).await.unwrap();
    db.agent_session_closed(n1, "a").await.unwrap();
    let seen_by_a = db.remote_sessions("a").await.unwrap();
    assert_eq!(seen_by_a.len(), 2, "{seen_by_a:?}");
    assert!(seen_by_a.values().all(|replica| replica == "b"));

    // A replica that stopped refreshing itself is not alive, and is forgotten later with its
    // sessions.
    db.agent_session_opened(n2, "a", now).await.unwrap();
    let later = now + Duration::seconds(10);
    db.replica_alive("b", "https://b:7444", later)
        .await
        .unwrap();
    let live = db
        .live_replicas("b", later - Duration::seconds(5))
        .await
        .unwrap();
    assert!(live.is_empty(), "A is gone: {live:?}");
    db.forget_replicas(later - Duration::seconds(5))
        .await
        .unwrap();
    db.replica_alive("a", "https://a:7444", later)
        .await
        .unwrap();
    let seen_by_b = db.remote_sessions("b").await.unwrap();
    assert!(
        seen_by_b.is_empty(),
        "A's sessions went with it: {seen_by_b:?}"
    );
}

async fn other_replicas_hear_of_each_session_change_as_it_commits(db: TestDb) {
    let Some(mut changes) = db.session_changes().await.unwrap() else {
        only_sqlite_lacks_notifications(&db);
        return;
    };
    let now = OffsetDateTime::now_utc();
    let (n1, n2) = (NodeId::new(), NodeId::new());
    let next = async |changes: &mut qb_store::SessionChanges| {
        tokio::time::timeout(std::time::Duration::from_secs(10), changes.next())
            .await
            .expect("a change within 10 s")
            .unwrap()
    };
    let opened = |node, replica: &str| SessionChange::Opened {
        node,
        replica: replica.to_owned(),
    };
    let closed = |node, replica: &str| SessionChange::Closed {
        node,
        replica: replica.to_owned(),
    };

    db.agent_session_opened(n1, "a", now).await.unwrap();
    assert_eq!(next(&mut changes).await, opened(n1, "a"));
    db.agent_session_opened(n1, "b", now).await.unwrap();
    assert_eq!(next(&mut changes).await, opened(n1, "b"));
    // A's late close removes nothing, and tells nobody.
    db.agent_session_closed(n1, "a").await.unwrap();
    db.agent_session_opened(n2, "a", now).await.unwrap();
    assert_eq!(next(&mut changes).await, opened(n2, "a"));
    db.agent_session_closed(n1, "b").await.unwrap();
    assert_eq!(next(&mut changes).await, closed(n1, "b"));

    // A replica gone for long is forgotten: its sessions close, and others hear it.
    db.replica_alive("a", "https://a", now - Duration::hours(2))
        .await
        .unwrap();
    db.replica_alive("b", "https://b", now).await.unwrap();
    db.agent_session_opened(n1, "b", now).await.unwrap();
    assert_eq!(next(&mut changes).await, opened(n1, "b"));
    db.forget_replicas(now - Duration::hours(1)).await.unwrap();
    assert_eq!(next(&mut changes).await, closed(n2, "a"));
    db.agent_session_closed(n1, "b").await.unwrap();
    assert_eq!(next(&mut changes).await, closed(n1, "b"));

    // The listening connection is cut: the next change says changes may have been missed; a
    // new listener hears the ones after it.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .execute(&db.raw().await)
    .await
    .unwrap();
    assert_eq!(next(&mut changes).await, SessionChange::Missed);
    let mut changes = db.session_changes().await.unwrap().expect("PostgreSQL");
    db.agent_session_opened(n1, "b", now).await.unwrap();
    assert_eq!(next(&mut changes).await, opened(n1, "b"));
}

async fn one_replica_leads_until_it_lets_go(db: TestDb) {
    let mut first = db
        .try_lead()
        .await
        .unwrap()
        .expect("the first replica leads");
    assert!(first.holds().await);
    if db.backend() == Backend::Sqlite {
        // One controller alone on its file: it always leads.
        return;
    }
    let second = db.open_again().await;
    assert!(second.try_lead().await.unwrap().is_none(), "two leaders");
    drop(first);
    let mut taken = None;
    for _ in 0..50 {
        taken = second.try_lead().await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut taken = taken.expect("the lead is free once its holder let go");
    assert!(taken.holds().await);
    assert!(db.try_lead().await.unwrap().is_none());
}
